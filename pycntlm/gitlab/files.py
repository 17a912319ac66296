"""Planned file changes: read, diff, back up, write atomically.

Owns: the Change value (a file under the root, its old and new text), the unified diff shown by
--dry-run, the backup FILE.pycntlm-backup-TIMESTAMP written before a file is changed, and the
atomic write that keeps an existing file's mode and owner.
Must not: decide what a file should contain (model.py and its siblings do), or run commands.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pycntlm.errors import ConfigError

MAX_READ = 4 * 1024 * 1024  # no config file of ours is anywhere near this


@dataclass(frozen=True)
class Change:
    """One file: its path, `label` for diffs (the path under the root: "etc/cntlm.conf"), the
    text it has (`old`, None when absent) and the text it should have."""

    path: Path
    label: str
    old: str | None
    new: str
    mode: int = 0o644  # for a file we create; an existing file keeps its own

    @property
    def changed(self) -> bool:
        return self.old != self.new


def under(root: Path, rel: str, old: str | None, new: str, mode: int = 0o644) -> Change:
    """A Change of the file `rel` under `root`."""
    return Change(root / rel, rel, old, new, mode)


def read_text(path: Path) -> str | None:
    """A file's text, or None when it does not exist. Errors name the file."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_READ + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", str(path)) from None
    if len(data) > MAX_READ:
        raise ConfigError(f"larger than {MAX_READ} bytes", str(path))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", str(path)) from None


def diff(change: Change) -> str:
    """A unified diff of the change, with git-style a/ b/ names relative to the root."""
    before = "/dev/null" if change.old is None else f"a/{change.label}"
    lines = difflib.unified_diff(
        (change.old or "").splitlines(keepends=True),
        change.new.splitlines(keepends=True),
        fromfile=before,
        tofile=f"b/{change.label}",
    )
    marker = "\n\\ No newline at end of file\n"
    return "".join(line if line.endswith("\n") else line + marker for line in lines)


def backup_path(path: Path, now: float) -> Path:
    """FILE.pycntlm-backup-YYYYmmddTHHMMSS, with -2, -3 ... when that name is taken."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(now))
    candidate = path.with_name(f"{path.name}.pycntlm-backup-{stamp}")
    n = 2
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.pycntlm-backup-{stamp}-{n}")
        n += 1
    return candidate


def apply(change: Change, now: float) -> Path | None:
    """Write the change (nothing when unchanged); return the backup's path, if one was made.
    Refuses when the file changed since it was read."""
    if not change.changed:
        return None
    target = Path(os.path.realpath(change.path))  # a symlinked config: write its target
    if read_text(target) != change.old:
        raise ConfigError("changed while pycntlm setup ran; run it again", str(change.path))
    backup: Path | None = None
    try:
        if change.old is not None:
            backup = backup_path(target, now)
            shutil.copy2(target, backup)  # keeps the mode: config.toml holds runner tokens
        target.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(target, change.new, change.mode)
    except PermissionError as exc:
        raise ConfigError(
            f"permission denied ({exc.filename}): run pycntlm setup as root", str(change.path)
        ) from None
    return backup


def _atomic_write(target: Path, text: str, mode: int) -> None:
    """Write through a temporary file in the same directory and rename it over the target,
    keeping an existing file's mode and (when we may) its owner."""
    try:
        st: os.stat_result | None = target.stat()
    except FileNotFoundError:
        st = None
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), (st.st_mode & 0o7777) if st is not None else mode)
            if st is not None and (st.st_uid, st.st_gid) != (os.getuid(), os.getgid()):
                with contextlib.suppress(PermissionError):
                    os.fchown(f.fileno(), st.st_uid, st.st_gid)
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
