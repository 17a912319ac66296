"""The figures: each one measures one candidate once and returns {metric: value}.

Owns: warm-ups, reading the proxy's and squid's CPU time and RSS around a measurement, turning
client results into the reported metrics. Must not: start/stop processes or rotate candidates.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from bench import client, procs
from bench.client import Target

Metrics = dict[str, Any]  # numbers, plus a few notes (str) kept in the JSON


@dataclass(frozen=True)
class Settings:
    duration: float  # seconds per req/s run
    warmup: float
    latency_n: int  # requests on a reused connection
    fresh_n: int  # fresh-connection requests
    tunnels: int  # simultaneous CONNECT tunnels
    tunnel_parallel: int  # handshakes in flight while opening them (< squid's NTLM helpers)
    tunnels_cap: float  # seconds allowed for opening them all
    bursts: int  # repetitions of the 20-CONNECT burst
    burst_size: int = 20
    bulk_cap: float = 30.0  # seconds allowed for the 1 GiB tunnel
    mib_duration: float = 3.0
    latency_cap: float = 5.0  # seconds allowed for the reused-connection latency series


@dataclass
class Subject:
    """One candidate as the figures see it: how to reach it, which PIDs to read."""

    name: str
    target: Target
    pid: int | None  # proxy process (None for direct)
    squid_pid: int


def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class CpuMeter:
    """CPU seconds of the proxy (its process tree) and of squid (with its helpers)."""

    def __init__(self, s: Subject) -> None:
        self.s = s
        self.proxy0 = procs.tree_cpu(s.pid) if s.pid else 0.0
        self.squid0 = procs.tree_cpu(s.squid_pid)

    def restart(self) -> None:
        self.__init__(self.s)  # type: ignore[misc]

    def read(self) -> tuple[float, float]:
        proxy = procs.tree_cpu(self.s.pid) - self.proxy0 if self.s.pid else float("nan")
        return proxy, procs.tree_cpu(self.s.squid_pid) - self.squid0


def tunnel_1g(s: Subject, cfg: Settings) -> Metrics:
    meter: list[CpuMeter] = []
    res = run_async(
        client.tunnel_download(s.target, "/1g", cfg.bulk_cap, lambda: meter.append(CpuMeter(s)))
    )
    proxy_cpu, squid_cpu = meter[0].read()
    mb = res["bytes"] / 1e6
    return {
        "tunnel_1g_mbps": res["mbps"],
        "tunnel_1g_mb_per_proxy_cpu_s": mb / proxy_cpu if proxy_cpu > 0 else float("nan"),
        "tunnel_1g_proxy_cpu_s_per_gib": proxy_cpu / (res["bytes"] / (1 << 30)),
        "tunnel_1g_squid_cpu_s_per_gib": squid_cpu / (res["bytes"] / (1 << 30)),
        "tunnel_1g_complete": res["complete"],
        "tunnel_1g_client_cpu_pct": res["client_cpu_pct"],
    }


def _rps(s: Subject, cfg: Settings, conns: int, path: str, duration: float, tag: str) -> Metrics:
    run_async(client.req_loop(s.target, path, conns, cfg.warmup))
    meter = CpuMeter(s)
    res = run_async(client.req_loop(s.target, path, conns, duration))
    proxy_cpu, squid_cpu = meter.read()
    n = max(res["ok"], 1)
    return {
        f"{tag}_rps": res["rps"],
        f"{tag}_mbps": res["mbps"],
        f"{tag}_errors": res["errors"],
        f"{tag}_reconnects": res["reconnects"],
        f"{tag}_proxy_cpu_us_per_req": 1e6 * proxy_cpu / n,
        f"{tag}_squid_cpu_us_per_req": 1e6 * squid_cpu / n,
        f"{tag}_client_cpu_pct": res["client_cpu_pct"],
    }


def rps_1k_c1(s: Subject, cfg: Settings) -> Metrics:
    return _rps(s, cfg, 1, "/1k", cfg.duration, "rps_1k_c1")


def rps_1k_c50(s: Subject, cfg: Settings) -> Metrics:
    return _rps(s, cfg, 50, "/1k", cfg.duration, "rps_1k_c50")


def get_1m_c1(s: Subject, cfg: Settings) -> Metrics:
    return _rps(s, cfg, 1, "/1m", cfg.mib_duration, "get_1m_c1")


def latency(s: Subject, cfg: Settings) -> Metrics:
    run_async(client.req_loop(s.target, "/1k", 1, cfg.warmup))
    res = run_async(
        client.req_loop(s.target, "/1k", 1, cfg.latency_cap, budget=cfg.latency_n, record=True)
    )
    reused = res["latencies"]
    fresh = run_async(client.fresh_latency(s.target, cfg.fresh_n, cfg.latency_cap))
    return {
        "lat_reused_p50_ms": 1e3 * statistics.median(reused) if reused else float("nan"),
        "lat_reused_p99_ms": 1e3 * percentile(reused, 0.99),
        "lat_fresh_p50_ms": 1e3 * statistics.median(fresh) if fresh else float("nan"),
        "lat_fresh_p99_ms": 1e3 * percentile(fresh, 0.99),
    }


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def tunnels_held(s: Subject, cfg: Settings) -> Metrics:
    out: Metrics = {}
    pid = s.pid
    fds_before = _fds(pid) if pid else 0

    async def while_held() -> None:
        await asyncio.sleep(0.5)
        if pid:
            out["held_rss_mib"] = procs.tree_rss(pid) / (1 << 20)
            out["held_proxy_fds"] = _fds(pid)
        out["held_squid_rss_mib"] = procs.tree_rss(s.squid_pid, False) / (1 << 20)

    res = run_async(
        client.hold_tunnels(s.target, cfg.tunnels, cfg.tunnel_parallel, cfg.tunnels_cap, while_held)
    )
    out["held_opened"] = res["opened"]
    out["held_errors"] = res["errors"]
    out["held_setup_s"] = res["setup_s"]
    if res["first_error"]:
        out["held_first_error"] = res["first_error"]
    if pid:
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and _fds(pid) > fds_before + 8:
            time.sleep(0.1)
        time.sleep(6.0)  # a housekeeping tick (5 s) for pycntlm to give memory back
        out["after_rss_mib"] = procs.tree_rss(pid) / (1 << 20)
        out["after_proxy_fds"] = _fds(pid)
    return out


def burst(s: Subject, cfg: Settings) -> Metrics:
    times = [run_async(client.burst(s.target, cfg.burst_size)) for _ in range(cfg.bursts)]
    return {"burst20_ms": 1e3 * statistics.median(times), "burst20_max_ms": 1e3 * max(times)}


def burst_cold(s: Subject, cfg: Settings) -> Metrics:
    """A `docker pull` on a proxy with no warm pool: one tunnel (the registry's token request),
    a second to let spare connections be made (PoolSpare), then 3 (dockerd's default
    max-concurrent-downloads) or 20 CONNECTs at once. Runs first, on fresh proxies."""

    async def one(n: int) -> float:
        (await client.open_tunnel(s.target)).close()
        await asyncio.sleep(1.0)
        return await client.burst(s.target, n)

    threes = [run_async(one(3)) for _ in range(cfg.bursts)]
    twenties = [run_async(one(cfg.burst_size)) for _ in range(cfg.bursts)]
    return {
        "burst3_cold_ms": 1e3 * statistics.median(threes),
        "burst20_cold_ms": 1e3 * statistics.median(twenties),
    }


FIGURES: dict[str, Callable[[Subject, Settings], Metrics]] = {
    "burst_cold": burst_cold,  # first: the proxies' pools are empty
    "tunnel_1g": tunnel_1g,
    "rps_1k_c1": rps_1k_c1,
    "rps_1k_c50": rps_1k_c50,
    "get_1m_c1": get_1m_c1,
    "latency": latency,
    "burst": burst,
    "tunnels_held": tunnels_held,  # last: it leaves the proxies' heaps grown
}
