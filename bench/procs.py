"""Child processes for the benchmark: start in their own session, stop by PID, read /proc.

Owns: starting/stopping the processes the harness launches (and only those), free loopback
ports, readiness waits, and per-process-tree CPU time and RSS from /proc. Must not signal any
process it did not start or whose PID it did not read from its own child's /proc entries.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
NOFILE_WANTED = 100_000


class StartError(RuntimeError):
    """A service did not come up; the message carries its log tail."""


def raise_nofile(wanted: int = NOFILE_WANTED) -> int:
    """Raise RLIMIT_NOFILE (children inherit it); returns the soft limit now in force."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        new = max(hard, wanted) if os.geteuid() == 0 else hard
        new = min(new, int(Path("/proc/sys/fs/nr_open").read_text()))
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, new))
    except (OSError, ValueError):
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def port_accepts(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout):
            return True
    except OSError:
        return False


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class Proc:
    """One started process (its own session) and its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_port(self, port: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise StartError(f"{self.name} exited ({self.popen.returncode}):\n{self.tail()}")
            if port_accepts(port):
                return
            time.sleep(0.05)
        raise StartError(f"{self.name} did not listen on {port} in {timeout:.0f} s\n{self.tail()}")

    def wait_text(self, path: Path, needle: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if needle in path.read_text(errors="replace"):
                    return
            if not self.alive():
                raise StartError(f"{self.name} exited ({self.popen.returncode}):\n{self.tail()}")
            time.sleep(0.05)
        raise StartError(f"{self.name}: {needle!r} not in {path}\n{log_tail(path)}")

    def tail(self) -> str:
        return log_tail(self.log)

    def stop(self, timeout: float = 5.0, sig: int = signal.SIGTERM) -> None:
        """SIGTERM (or `sig`), wait, SIGKILL; then SIGKILL any leftover descendants seen
        before the stop (by PID, e.g. nginx workers or squid helpers). Always reaps."""
        kids = descendants(self.pid) if self.alive() else []
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(timeout=timeout)
        deadline = time.monotonic() + 2.0
        for kid in kids:
            while _pid_alive(kid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _pid_alive(kid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(kid, signal.SIGKILL)


def start(
    name: str,
    argv: Sequence[str],
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Proc:
    with log.open("ab") as out:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    return Proc(name, popen, log)


def _pid_alive(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after "(comm)": state is index 0 here, ppid 1, utime 11, stime 12, rss 21.
    return text.rsplit(")", 1)[1].split()


def descendants(pid: int) -> list[int]:
    """PIDs of all live descendants of `pid` (from /proc ppid links)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    out: list[int] = []
    todo = [pid]
    while todo:
        for kid in children.get(todo.pop(), []):
            out.append(kid)
            todo.append(kid)
    return out


def tree_cpu(pid: int) -> float:
    """utime+stime in seconds of `pid` and its live descendants (all threads), plus what its
    children that have ended and been waited for used (socat forks one per connection)."""
    total = 0
    for p in [pid, *descendants(pid)]:
        fields = _stat_fields(p)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])
            if p == pid:
                total += int(fields[13]) + int(fields[14])
    return total / CLK_TCK


def user_sys(pid: int) -> tuple[float, float]:
    """(utime, stime) in seconds of one process (all its threads)."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0, 0.0
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu(pid: int) -> float:
    fields = _stat_fields(pid)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_rss(pid: int, include_children: bool = True) -> int:
    """Resident set size in bytes of `pid` (and its live descendants)."""
    pids = [pid, *descendants(pid)] if include_children else [pid]
    total = 0
    for p in pids:
        fields = _stat_fields(p)
        if fields is not None:
            total += int(fields[21]) * PAGE
    return total
