"""wrk as a reference load generator: proves our client is not the bottleneck.

Owns: running Debian's wrk (bounded by -d and a subprocess timeout) against nginx directly, or
against a proxy with absolute-form requests (a Lua script sets the request target). wrk cannot do
NTLM, so it never drives "direct". Must not: run when wrk is missing (returns None).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from bench.procs import LOOPBACK

_RPS = re.compile(r"Requests/sec:\s+([0-9.]+)")
_NON2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")


def available() -> bool:
    return shutil.which("wrk") is not None


def rps(
    port: int, origin: int, path: str, conns: int, duration: float, workdir: Path
) -> float | None:
    """Requests/s from wrk with `conns` connections on one thread (like our client); through a
    proxy on `port` when port != origin. None when wrk is missing or failed."""
    if not available():
        return None
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(duration))}s"]
    if port != origin:
        script = workdir / f"wrk-{origin}{path.replace('/', '-')}.lua"
        script.write_text(
            f'wrk.path = "http://{LOOPBACK}:{origin}{path}"\n'
            f'wrk.headers["Host"] = "{LOOPBACK}:{origin}"\n'
        )
        argv += ["-s", str(script)]
    argv.append(f"http://{LOOPBACK}:{port}{path}")
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30).stdout
    except subprocess.TimeoutExpired:
        return None
    m = _RPS.search(out)
    if m is None or _NON2XX.search(out):
        return None
    return float(m.group(1))
