"""Where pycntlm's CPU goes: py-spy on the running proxy under the benchmark's own load.

`python -m bench.profile [--seconds 5] [--native]` starts nginx, squid and pycntlm on loopback,
then samples pycntlm with `py-spy record` (by PID, --nonblocking) during four loads: 1 KiB GETs
on 1 and on 50 keep-alive connections, one 1 GiB CONNECT download, and opening 1000 tunnels.
It prints the proxy's CPU per request (or per GiB / per tunnel) and the functions that take it,
as self time and inclusive time, converted to microseconds per request. Everything is stopped by
PID at the end. Needs py-spy (pip install py-spy).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import client, figures, procs, services
from bench.client import Target


def pyspy_record(pid: int, seconds: float, out: Path, native: bool) -> procs.Proc:
    argv = ["py-spy", "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
    argv += ["--rate", "250", "--format", "raw", "--output", str(out)]
    # --native cannot be combined with --nonblocking (py-spy must pause the process to unwind)
    argv.append("--native" if native else "--nonblocking")
    proc = procs.start("py-spy", argv, out.with_suffix(".log"))
    time.sleep(0.5)  # let it attach
    return proc


# Frames every sample passes through (program entry, the event loop): not informative.
_ENTRY = {
    "<module> (__main__.py)",
    "_run_module_as_main (<frozen runpy>)",
    "_run_code (<frozen runpy>)",
    "main (cli.py)",
    "_main (cli.py)",
    "run_loop (cli.py)",
    "Runner.run (runners.py)",
    "serve_client (handler.py)",
}


def _frame(frame: str) -> str:
    # "name (path/to/file.py:123)" -> "name (file.py)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({where.rsplit('/', 1)[-1]})" if where else name


def summarize(raw: Path, top: int) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """(samples, [(function, self samples)], [(function, inclusive samples)])."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";") if not f.startswith("process ")]
        frames = [f for f in frames if not f.startswith("thread ")]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for f in set(frames) - _ENTRY:
            incl[f] += count
    return total, own.most_common(top), incl.most_common(top)


def report(title: str, unit: str, n: float, cpu_s: float, raw: Path, top: int) -> dict[str, Any]:
    if not raw.exists():
        print(f"\n== {title}: py-spy wrote nothing:\n{procs.log_tail(raw.with_suffix('.log'))}")
        return {"title": title, "n": n, "cpu_s": cpu_s}
    total, own, incl = summarize(raw, top)
    per = 1e6 * cpu_s / n if n else float("nan")
    print(f"\n== {title}: {n:.0f} {unit}, pycntlm CPU {cpu_s:.2f} s = {per:.0f} us/{unit}")
    if not total:
        print("   (no samples: is py-spy allowed to ptrace?)")
        return {"title": title, "n": n, "cpu_s": cpu_s}
    for label, rows in (("self", own), ("inclusive", incl)):
        print(f"   top {label} (share of samples, us/{unit}):")
        for name, count in rows:
            share = count / total
            print(f"   {100 * share:5.1f}% {share * per:8.1f}  {name}")
    return {"title": title, "n": n, "cpu_s": cpu_s, "samples": total, "self": own, "incl": incl}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--top", type=int, default=14)
    p.add_argument("--native", action="store_true", help="include C frames (uvloop, libc)")
    args = p.parse_args(argv)
    if shutil.which("py-spy") is None:
        print("py-spy is missing: pip install py-spy", file=sys.stderr)
        return 2
    procs.raise_nofile()
    root = Path(tempfile.mkdtemp(prefix="pycntlm-profile-"))
    root.chmod(0o755)
    started: list[procs.Proc] = []
    try:
        nginx, origin = services.start_nginx(root)
        started.append(nginx)
        squid, squid_port = services.start_squid(root)
        started.append(squid)
        ep = services.start_candidate("pycntlm", root, squid_port, origin)
        assert ep.proc is not None and ep.pid is not None
        started.append(ep.proc)
        pid, t = ep.pid, Target(ep.port, False, origin)
        secs = args.seconds

        def profiled(name: str, load: Callable[[], float]) -> tuple[float, float, Path]:
            out = root / f"{name}.txt"
            spy = pyspy_record(pid, secs, out, args.native)
            started.append(spy)
            user0, sys0 = procs.user_sys(pid)
            n = load()
            user1, sys1 = procs.user_sys(pid)
            spy.popen.wait(timeout=secs + 30)
            print(f"\n{name}: pycntlm user {user1 - user0:.2f} s, system {sys1 - sys0:.2f} s")
            return n, user1 - user0 + sys1 - sys0, out

        def gets(conns: int) -> Callable[[], float]:
            return lambda: float(figures.run_async(client.req_loop(t, "/1k", conns, secs))["ok"])

        for conns in (1, 50):
            figures.run_async(client.req_loop(t, "/1k", conns, 0.5))  # fill the pool
            n, cpu, out = profiled(f"rps-c{conns}", gets(conns))
            report(f"1 KiB GETs, {conns} conn(s)", "req", n, cpu, out, args.top)

        def bulk() -> float:
            res = figures.run_async(client.tunnel_download(t, "/1g", secs, lambda: None))
            return float(res["bytes"]) / (1 << 30)

        n, cpu, out = profiled("tunnel", bulk)
        report("CONNECT download", "GiB", n, cpu, out, args.top)

        async def nothing() -> None:
            return None

        def tunnels() -> float:
            res = figures.run_async(client.hold_tunnels(t, 1000, 50, secs, nothing))
            return float(res["opened"])

        n, cpu, out = profiled("tunnels", tunnels)
        report("opening CONNECT tunnels (NTLM handshake each)", "tunnel", n, cpu, out, args.top)
    finally:
        for proc in reversed(started):
            proc.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
