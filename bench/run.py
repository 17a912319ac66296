"""pycntlm vs cntlm vs px vs direct, side by side on loopback: `python -m bench [--quick]`.

Owns: the command line, the services' lifetime (all stopped by PID in `finally`, also on
Ctrl-C/SIGTERM), rotating the candidate order per figure and repetition, the client-ceiling
check, the printed table and bench/results/*.json. Must not: measure by itself (figures.py).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import client, figures, procs, report, services, wrk
from bench.client import Target
from bench.figures import Settings, Subject

CANDIDATES = (
    "direct",
    "pycntlm",
    "cntlm",
    "px",
    "pycntlm-protocol",
    "pycntlm-spare20",
    "socat",
    "pycntlm-base",
)
RESULTS = Path(__file__).resolve().parent / "results"
FD_RESERVE = 500  # squid's helpers, logs and reserved descriptors
QUICK = Settings(
    duration=2.0,
    warmup=0.3,
    latency_n=1000,
    fresh_n=50,
    tunnels=1000,
    tunnel_parallel=50,
    tunnels_cap=12.0,
    bursts=3,
    bulk_cap=15.0,
    mib_duration=1.5,
    latency_cap=1.5,
)
FULL = Settings(
    duration=5.0,
    warmup=1.0,
    latency_n=3000,
    fresh_n=200,
    tunnels=10000,
    tunnel_parallel=50,
    tunnels_cap=120.0,
    bursts=5,
    bulk_cap=30.0,
    mib_duration=3.0,
    latency_cap=10.0,
)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class World:
    """nginx, squid and the candidates, all under one temp dir; stop() stops them by PID.
    Each repetition gets a fresh squid and fresh candidates (fresh_parent_and_proxies), so a
    proxy left degraded by the tunnel figure (cntlm leaks fds there) cannot spoil the next."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[procs.Proc] = []
        self.eps: dict[str, services.Endpoint] = {}
        self.crashes: dict[str, int] = {}
        self.skipped: dict[str, str] = {}
        self.idle_rss: dict[str, list[float]] = {}
        self.squid: procs.Proc | None = None
        self.squid_port = self.origin = 0
        self.squid_pid = 0

    def start(self, names: list[str]) -> None:
        nginx, self.origin = services.start_nginx(self.root)
        self.started.append(nginx)
        self.fresh_parent_and_proxies(names)

    def fresh_parent_and_proxies(self, names: list[str]) -> None:
        """(Re)start squid and every candidate; record each proxy's idle RSS."""
        for ep in self.eps.values():
            if ep.proc is not None:
                ep.proc.stop()
        if self.squid is not None:
            self.squid.stop()
        self.squid, self.squid_port = services.start_squid(self.root)
        self.started.append(self.squid)
        self.squid_pid = self.squid.pid
        for name in names:
            if name in self.skipped:
                continue
            try:
                self._start_one(name)
            except (procs.StartError, OSError) as exc:
                self.skipped[name] = str(exc).splitlines()[0]
                self.eps.pop(name, None)
                log(f"  {name}: not measured: {self.skipped[name]}")
        time.sleep(1.0)  # let them settle before reading idle RSS
        for name, ep in self.eps.items():
            if ep.pid is not None:
                rss = procs.tree_rss(ep.pid) / (1 << 20)
                self.idle_rss.setdefault(name, []).append(rss)

    def _start_one(self, name: str) -> None:
        ep = services.start_candidate(name, self.root, self.squid_port, self.origin)
        if ep.proc is not None:
            self.started.append(ep.proc)
        self.eps[name] = ep
        self.crashes.setdefault(name, 0)

    def subject(self, name: str) -> Subject:
        """The candidate, restarted first if its process died (counted as a crash)."""
        ep = self.eps[name]
        if ep.proc is not None and not ep.proc.alive():
            self.crashes[name] += 1
            log(f"  {name} died (exit {ep.proc.popen.returncode}); restarting\n{ep.proc.tail()}")
            self._start_one(name)
            ep = self.eps[name]
        return Subject(name, Target(ep.port, ep.ntlm, self.origin), ep.pid, self.squid_pid)

    def stop(self) -> None:
        for proc in reversed(self.started):
            try:
                proc.stop()
            except Exception as exc:  # keep stopping the others
                log(f"  stopping {proc.name} ({proc.pid}) failed: {exc}")


def ceiling(world: World, cfg: Settings) -> dict[str, Any]:
    """Our client and wrk straight at nginx: the load generator's own limits."""
    t = Target(world.origin, False, world.origin)
    dur = max(1.0, cfg.duration / 3)
    out: dict[str, Any] = {}
    for conns in (1, 50):
        res = figures.run_async(client.req_loop(t, "/1k", conns, dur))
        out[f"client_rps_1k_c{conns}"] = res["rps"]
        out[f"client_cpu_pct_c{conns}"] = res["client_cpu_pct"]
        out[f"wrk_rps_1k_c{conns}"] = wrk.rps(
            world.origin, world.origin, "/1k", conns, dur, world.root
        )
    res = figures.run_async(client.req_loop(t, "/1m", 1, dur))
    out["client_1m_mbps"] = res["mbps"]
    return out


def wrk_crosscheck(world: World, names: list[str], cfg: Settings) -> dict[str, Any]:
    """wrk at 50 connections through each proxy (absolute-form), to compare with our client."""
    out: dict[str, Any] = {}
    for name in names:
        if name == "direct" or name not in world.eps:
            continue
        s = world.subject(name)
        out[name] = wrk.rps(s.target.port, world.origin, "/1k", 50, cfg.duration, world.root)
    return out


def run_figures(
    world: World, names: list[str], cfg: Settings, reps: int, only: list[str] | None = None
) -> report.Runs:
    runs: report.Runs = []
    figs = [(n, f) for n, f in figures.FIGURES.items() if only is None or n in only]
    for rep in range(reps):
        if rep > 0:
            log(f"rep {rep + 1}: fresh squid and proxies")
            world.fresh_parent_and_proxies(names)
        for i, (fig_name, fig) in enumerate(figs):
            shift = (rep + i) % len(names)
            order = names[shift:] + names[:shift]
            for name in order:
                t0 = time.monotonic()
                try:
                    metrics = fig(world.subject(name), cfg)
                    note = ""
                except Exception as exc:  # one failing figure must not end the run
                    metrics, note = {}, f" FAILED: {type(exc).__name__}: {exc}"
                runs.append(
                    {
                        "rep": rep,
                        "figure": fig_name,
                        "candidate": name,
                        "order": order,
                        "metrics": metrics,
                        "error": note or None,
                    }
                )
                shown = ", ".join(
                    f"{k}={v:.4g}" if isinstance(v, float | int) else f"{k}={v}"
                    for k, v in list(metrics.items())[:3]
                )
                if "held_first_error" in metrics:
                    shown += f", opened={metrics['held_opened']}, first error: "
                    shown += metrics["held_first_error"]
                log(
                    f"  rep {rep + 1} {fig_name:12} {name:8} {time.monotonic() - t0:5.1f}s "
                    f"{shown}{note}"
                )
    return runs


def environment() -> dict[str, Any]:
    def cmd(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
            return out.strip().splitlines()[0] if out.strip() else ""
        except (OSError, subprocess.TimeoutExpired):
            return ""

    return {
        "when": datetime.datetime.now().isoformat(timespec="seconds"),
        "commit": cmd(["git", "-C", str(services.REPO), "rev-parse", "--short", "HEAD"]),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "squid": cmd(["squid", "-v"]),
        "cntlm": cmd(["dpkg-query", "-W", "-f", "${Version}", "cntlm"]),
        "nginx": cmd(["dpkg-query", "-W", "-f", "${Version}", "nginx"]),
        "px": services.px_version(),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 repetition, 1000 tunnels (<2 min)")
    p.add_argument("--only", default=",".join(CANDIDATES[:4]), help="comma-separated candidates")
    p.add_argument("--figures", help=f"comma-separated figures ({', '.join(figures.FIGURES)})")
    p.add_argument("--reps", type=int, help="repetitions (default: quick 1, full 3)")
    p.add_argument("--tunnels", type=int, help="simultaneous tunnels (quick 1000, full 10000)")
    p.add_argument("--duration", type=float, help="seconds per req/s measurement")
    p.add_argument("--wrk", action="store_true", help="also cross-check req/s with wrk")
    p.add_argument("--out", type=Path, help="JSON path (default bench/results/<mode>-<ts>.json)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    return p.parse_args(argv)


def _since(t0: float) -> str:
    return f"{time.monotonic() - t0:.1f} s"


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown_figures = set(args.figures.split(",") if args.figures else ()) - set(figures.FIGURES)
    if unknown_figures:
        log(f"unknown figures: {', '.join(sorted(unknown_figures))}")
        return 2
    unknown = set(names) - set(CANDIDATES)
    if unknown:
        log(f"unknown candidates: {', '.join(sorted(unknown))} (known: {', '.join(CANDIDATES)})")
        return 2
    base = QUICK if args.quick else FULL
    cfg = Settings(
        **{
            **base.__dict__,
            **({"tunnels": args.tunnels} if args.tunnels else {}),
            **({"duration": args.duration} if args.duration else {}),
        }
    )
    reps = args.reps or (1 if args.quick else 3)
    nofile = procs.raise_nofile()
    fits = (nofile - FD_RESERVE) // 2  # squid and each proxy hold 2 fds per tunnel
    if cfg.tunnels > fits:
        log(
            f"RLIMIT_NOFILE is {nofile} (the hard limit cannot be raised here): "
            f"{cfg.tunnels} tunnels need ~{2 * cfg.tunnels + FD_RESERVE} fds in squid; "
            f"measuring {fits}"
        )
        cfg = Settings(**{**cfg.__dict__, "tunnels": fits})
    signal.signal(signal.SIGTERM, _on_sigterm)
    root = Path(tempfile.mkdtemp(prefix="pycntlm-bench-"))
    root.chmod(0o755)  # squid drops to the proxy user and must reach its subdirectory
    world = World(root)
    started_at = time.monotonic()
    payload: dict[str, Any] = {
        "environment": environment(),
        "settings": cfg.__dict__,
        "reps": reps,
        "nofile": nofile,
    }
    try:
        log(f"starting nginx, squid and {', '.join(names)} in {root}")
        world.start(names)
        names = [n for n in names if n in world.eps]
        log(f"client ceiling (our client and wrk straight at nginx) at {_since(started_at)}")
        payload["ceiling"] = ceiling(world, cfg)
        log(f"  {payload['ceiling']}")
        log(f"figures from {_since(started_at)}")
        only = args.figures.split(",") if args.figures else None
        runs = run_figures(world, names, cfg, reps, only)
        if args.wrk:
            payload["wrk_c50_rps"] = wrk_crosscheck(world, names, cfg)
    finally:
        log(f"stopping everything at {_since(started_at)}")
        world.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    med = report.medians(runs, names)
    for n in names:
        if n in world.idle_rss:
            med[n]["idle_rss_mib"] = statistics.median(world.idle_rss[n])
        med[n]["crashes"] = world.crashes.get(n, 0)
    text = report.table(med, names, reps)
    payload.update(
        runs=runs,
        medians=med,
        skipped=world.skipped,
        table=text.splitlines(),
        seconds=time.monotonic() - started_at,
    )
    payload["environment"]["loadavg_end"] = os.getloadavg()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or RESULTS / f"{'quick' if args.quick else 'full'}-{stamp}.json"
    report.write_json(out, payload)
    print(text)
    if "wrk_c50_rps" in payload:
        print(f"wrk cross-check, 1 KiB req/s at 50 conns: {payload['wrk_c50_rps']}")
    c = payload["ceiling"]
    print(
        f"client ceiling vs nginx: ours {c['client_rps_1k_c1']:.0f}/"
        f"{c['client_rps_1k_c50']:.0f} req/s (1/50 conns), wrk {c['wrk_rps_1k_c1']}/"
        f"{c['wrk_rps_1k_c50']}; {c['client_1m_mbps']:.0f} MB/s 1 MiB GETs"
    )
    for n, why in world.skipped.items():
        print(f"not measured: {n}: {why}")
    print(f"{time.monotonic() - started_at:.0f} s; JSON: {out}")
    return 0


def cli() -> int:
    try:
        return main()
    except KeyboardInterrupt:
        log("interrupted; every started process was stopped")
        return 130


if __name__ == "__main__":
    sys.exit(cli())
