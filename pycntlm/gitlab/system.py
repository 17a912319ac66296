"""The host around the files: docker0's address, systemd, and the systemctl commands.

Owns: asking `ip` for docker0's IPv4 address, telling whether systemd runs here, naming the
proxy's unit, running systemctl, and reading a unit's loaded Environment.
Must not: run anything when the root is not "/" (callers check `is_real_root`); write files.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from pycntlm.gitlab.model import parse_dropin

_INET_RE = re.compile(r"\binet\s+(\d{1,3}(?:\.\d{1,3}){3})/")
_UNIT_DIRS = ("etc/systemd/system", "lib/systemd/system", "usr/lib/systemd/system")
TIMEOUT = 60.0  # restarting docker can take a while


def is_real_root(root: Path) -> bool:
    return root.resolve() == Path("/")


def docker0_ipv4() -> str | None:
    """docker0's first IPv4 address (`ip -4 -oneline addr show dev docker0`), or None."""
    ip = shutil.which("ip") or ("/usr/sbin/ip" if Path("/usr/sbin/ip").exists() else None)
    if ip is None:
        return None
    try:
        out = subprocess.run(
            [ip, "-4", "-oneline", "addr", "show", "dev", "docker0"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = _INET_RE.search(out.stdout) if out.returncode == 0 else None
    return match.group(1) if match else None


def systemd_running() -> bool:
    """systemctl is installed and systemd is PID 1 (sd_booted's test)."""
    return shutil.which("systemctl") is not None and Path("/run/systemd/system").is_dir()


def proxy_unit(root: Path) -> str:
    """The unit that runs the proxy: pycntlm.service when installed, else cntlm.service."""
    for name in ("pycntlm", "cntlm"):
        if any((root / d / f"{name}.service").exists() for d in _UNIT_DIRS):
            return name
    return "cntlm"


def run(command: list[str]) -> tuple[int, str]:
    """Run a command; (exit status, its output) — status 127 when it cannot start."""
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    return out.returncode, (out.stdout + out.stderr).strip()


def loaded_environment(unit: str) -> dict[str, str] | None:
    """The Environment systemd has loaded for a unit, or None when it cannot be asked."""
    status, text = run(["systemctl", "show", "--property=Environment", unit])
    if status != 0:
        return None
    _, _, value = text.partition("Environment=")
    return parse_dropin(f"[Service]\nEnvironment={value}") if value.strip() else {}
