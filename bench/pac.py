"""What `Pac` costs per request: the engine per decision, and pycntlm end to end with and without.

`python -m bench.pac [--reps 3] [--duration 1.5] [--conns 8] [--only engine,e2e]` (~45 s).

Engine (in this process, on uvloop when importable): PacEngine.afind() as handler._pac_route
calls it, and the sync find(), per decision in microseconds, for a trivial PAC, a ~50-line
corporate PAC and the same with one `url` rule; a new host name every call (uncached), the same
host every call (cached), the same host with a new http path every call (is the cache per host?),
and new/same host timed call by call with ~0.2 ms of unrelated work between calls ("cold CPU
caches": closer to what a decision costs inside the proxy than a tight loop, see churn()).
Median of --engine-runs runs, each bounded in calls and time. Also: the split of an uncached
decision (URL normalisation, the JavaScript call, the rest), cProfile's top functions, and checks
of the cache and of the event loop (see report_checks).

End to end: two pycntlm processes (`python -m pycntlm -c CONF -f`), same config except that one
has `Pac corporate.pac` and the other `NoProxy 127.0.0.1` instead. Both have `Proxy` lines naming
two tiny local parents that answer every request themselves (no auth, no DNS), so distinct host
names can be routed without resolving them. Three workloads, each measured on both processes
side by side (order alternating per repetition), closed loop over keep-alive connections:
- origin, 1 host: GET http://127.0.0.1:ORIGIN/1k; the PAC says DIRECT (isInNet on the IP literal),
  the other process matches NoProxy; both connect to the origin (pooled).
- parent, 1 host: GET http://app.bench.invalid/1k; the PAC runs every rule and answers
  "PROXY a; PROXY b; DIRECT" once, then hits its cache; the other process uses its Proxy lines.
- parent, new host every request: h<N>.bench.invalid, never repeated in a run, so every request
  is a decision-cache miss; the upstream connection to the parent stays pooled, so the difference
  between the two processes is the PAC decision, not connection setup.
Distinct hosts are not measured on the direct route: a direct request to a new host needs a
listener on that address (only 127.0.0.1 here) and a new upstream connection (the pool is per
host:port), which would swamp the decision cost.

Owns: the PAC texts, the load loop of this benchmark, the two pycntlm processes and the tiny
origin/parents (127.0.0.1 only; processes stopped by PID in `finally`), the table and
bench/results/pac-<time>.json. Must not: change pycntlm's code or touch the network beyond
loopback (the PACs resolve no names: isInNet only on IP literals; find() gets a resolver that
raises, and the names afind() resolved are counted and shown, expected 0).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import datetime
import gc
import importlib.metadata
import itertools
import json
import os
import platform
import pstats
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/pac.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import client, figures, procs, report, services
from bench.httpmini import Parser
from pycntlm.pac import PacEngine, PacError
from pycntlm.pacfuncs import PacOptions, pac_query

RESULTS = Path(__file__).resolve().parent / "results"
LOOPBACK = procs.LOOPBACK
MY_IP = "10.20.30.40"  # myIpAddress() in the engine runs (fixed: no interface look-up)
STALL_GRACE = 2.0

TRIVIAL_PAC = 'function FindProxyForURL(url, host) {\n    return "DIRECT";\n}\n'
# End to end the trivial PAC must still send names to the parents (they are never resolved).
TRIVIAL_E2E_PAC = (
    "function FindProxyForURL(url, host) {\n"
    '    return host == "127.0.0.1" ? "DIRECT" : "PROXY @A@; PROXY @B@; DIRECT";\n}\n'
)

# The shape of a typical corporate PAC file. @A@ / @B@ are the two proxies. isInNet is only
# called on IP literals (guarded by the regular expression), so no rule resolves a name.
CORPORATE_PAC = r"""// Corporate PAC: intranet and split-tunnel services direct, partners and
// updates via one proxy, everything else through the proxy pair, DIRECT last.
function FindProxyForURL(url, host) {
    var proxies = "PROXY @A@; PROXY @B@; DIRECT";
    host = host.toLowerCase();
    //@URL_RULE@
    if (isPlainHostName(host) || host == "localhost")
        return "DIRECT";
    if (/^\d{1,3}(\.\d{1,3}){3}$/.test(host)) {
        if (isInNet(host, "10.0.0.0", "255.0.0.0") ||
            isInNet(host, "172.16.0.0", "255.240.0.0") ||
            isInNet(host, "192.168.0.0", "255.255.0.0") ||
            isInNet(host, "127.0.0.0", "255.0.0.0"))
            return "DIRECT";
        return proxies;
    }
    if (dnsDomainIs(host, ".corp.example") ||
        dnsDomainIs(host, ".intranet.example") ||
        dnsDomainIs(host, ".lab.example.net") ||
        localHostOrDomainIs(host, "wiki.corp.example"))
        return "DIRECT";
    if (shExpMatch(host, "*.partner-a.example.com") ||
        shExpMatch(host, "*.partner-b.example.org"))
        return "PROXY @A@";
    // Microsoft 365 optimised endpoints: split tunnel
    if (shExpMatch(host, "*.teams.microsoft.com") ||
        shExpMatch(host, "*.lync.com") ||
        shExpMatch(host, "outlook.office365.com") ||
        shExpMatch(host, "*.sharepoint.com"))
        return "DIRECT";
    if (shExpMatch(host, "*.windowsupdate.com") ||
        shExpMatch(host, "download.microsoft.com") ||
        shExpMatch(host, "*.update.microsoft.com"))
        return "PROXY @B@; PROXY @A@";
    if (shExpMatch(host, "build??.ci.example.com") ||
        shExpMatch(host, "*.s3.*.amazonaws.com"))
        return "PROXY @A@";
    // On the VPN address pool the VPN portal must not go through the proxies
    if (isInNet(myIpAddress(), "10.200.0.0", "255.255.0.0") &&
        dnsDomainIs(host, "vpn.example.com"))
        return "DIRECT";
    if (dnsDomainLevels(host) > 8)
        return "PROXY @B@";
    return proxies;
}
"""
URL_RULE = 'if (url.substring(0, 4) == "ftp:") return "DIRECT";'


def corporate_pac(a: str, b: str, url_rule: bool = False) -> str:
    text = CORPORATE_PAC.replace("@A@", a).replace("@B@", b)
    # Without the rule the line stays empty: even a comment naming `url` would make pycntlm
    # key the cache by URL (its check counts the parameter's name anywhere in the source).
    return text.replace("//@URL_RULE@", URL_RULE if url_rule else "")


ENGINE_PACS = {
    "trivial": TRIVIAL_PAC,
    "corporate": corporate_pac("proxy-a.corp.example:3128", "proxy-b.corp.example:3128"),
    "corporate+url": corporate_pac("proxy-a.corp.example:3128", "proxy-b.corp.example:3128", True),
}
_serial = itertools.count()  # host names are never reused within a run: no accidental hits


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Engine


def new_hosts(n: int) -> list[tuple[str, str]]:
    """(url, host) pairs as handler._pac_route passes them, every host new. Mix: 5/8 internet
    names (they run every rule of the corporate PAC), 1/8 intranet, 1/8 10.x literals, 1/8
    SharePoint; half as CONNECT ("https://host:443/"), half as absolute http URLs."""
    out = []
    for _ in range(n):
        i = next(_serial)
        kind = i % 8
        if kind < 5:
            host = f"www{i}.site{i % 97}.example.com"
        elif kind == 5:
            host = f"app{i}.corp.example"
        elif kind == 6:
            host = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        else:
            host = f"tenant{i}.sharepoint.com"
        url = f"https://{host}:443/" if i % 2 else f"http://{host}/index.html?q={i}"
        out.append((url, host))
    return out


def new_paths(n: int) -> list[tuple[str, str]]:
    return [(f"http://www.example.com/p/{next(_serial)}", "www.example.com") for _ in range(n)]


SAME_HOST = ("https://www.example.com:443/", "www.example.com")


async def time_afind(engine: PacEngine, queries: list[tuple[str, str]], cap: float) -> float:
    """Microseconds per awaited afind() (stops early after `cap` seconds)."""
    afind = engine.afind
    n = 0
    t0 = time.perf_counter()
    stop = t0 + cap
    for url, host in queries:
        await afind(url, host)
        n += 1
        if not n & 127 and time.perf_counter() > stop:
            break
    return (time.perf_counter() - t0) / n * 1e6


_CHURN_BYTES = bytearray(4 << 20)
_CHURN_DOC = {f"k{i}": [i, str(i), {"x": i}] for i in range(300)}


def churn() -> None:
    """~0.2 ms of unrelated work (a 4 MiB copy, a json.dumps), as a proxy does between two
    decisions: it evicts the JS interpreter's code and data from the CPU caches."""
    bytes(_CHURN_BYTES)
    json.dumps(_CHURN_DOC)


async def time_afind_cold(engine: PacEngine, queries: list[tuple[str, str]], cap: float) -> float:
    """Microseconds per afind() timed one by one, with churn() before each call."""
    afind = engine.afind
    total = n = 0
    stop = time.perf_counter() + cap
    for url, host in queries:
        churn()
        t0 = time.perf_counter_ns()
        await afind(url, host)
        total += time.perf_counter_ns() - t0
        n += 1
        if time.perf_counter() > stop:
            break
    return total / n / 1e3


def time_find(engine: PacEngine, queries: list[tuple[str, str]], cap: float) -> float:
    find = engine.find
    n = 0
    t0 = time.perf_counter()
    stop = t0 + cap
    for url, host in queries:
        find(url, host)
        n += 1
        if not n & 127 and time.perf_counter() > stop:
            break
    return (time.perf_counter() - t0) / n * 1e6


def no_dns(name: str) -> str | None:
    raise AssertionError(f"the benchmark PAC resolved {name!r}: it must not touch DNS")


async def make_engine(text: str, **kwargs: Any) -> PacEngine:
    return await PacEngine.create(text, my_ip=MY_IP, resolver=no_dns, **kwargs)


@dataclass
class EngineSettings:
    runs: int = 5
    uncached: int = 2000
    cached: int = 20000
    cold: int = 300  # calls per cold-cache measurement (each after ~0.2 ms of churn)
    cap: float = 0.5  # seconds per measurement at most


async def engine_figures(cfg: EngineSettings) -> dict[str, Any]:
    """Per PAC: median microseconds per decision for each variant, compile ms, uses_url."""
    engines = {name: await make_engine(text) for name, text in ENGINE_PACS.items()}
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in engines}
    for eng in engines.values():  # warm: pattern memo in JS, parse_result memo, cache entry
        await eng.afind(*SAME_HOST)
        await time_afind(eng, new_hosts(200), cfg.cap)
    for _ in range(cfg.runs):
        for name, eng in engines.items():
            got = samples[name]
            variants: list[tuple[str, Callable[[], Any]]] = [
                ("afind_uncached", lambda e=eng: time_afind(e, new_hosts(cfg.uncached), cfg.cap)),
                ("afind_cached", lambda e=eng: time_afind(e, [SAME_HOST] * cfg.cached, cfg.cap)),
                ("afind_paths", lambda e=eng: time_afind(e, new_paths(cfg.uncached), cfg.cap)),
                (
                    "afind_uncached_cold",
                    lambda e=eng: time_afind_cold(e, new_hosts(cfg.cold), cfg.cap),
                ),
                (
                    "afind_cached_cold",
                    lambda e=eng: time_afind_cold(e, [SAME_HOST] * cfg.cold, cfg.cap),
                ),
            ]
            for key, run in variants:
                got.setdefault(key, []).append(await run())
            got.setdefault("find_uncached", []).append(
                time_find(eng, new_hosts(cfg.uncached), cfg.cap)
            )
            got.setdefault("find_cached", []).append(
                time_find(eng, [SAME_HOST] * cfg.cached, cfg.cap)
            )
    out: dict[str, Any] = {}
    for name, eng in engines.items():
        compile_ms = []
        for _ in range(3):
            t0 = time.perf_counter()
            await make_engine(ENGINE_PACS[name])
            compile_ms.append((time.perf_counter() - t0) * 1e3)
        out[name] = {
            **{k: statistics.median(v) for k, v in samples[name].items()},
            "samples": samples[name],
            "compile_ms": statistics.median(compile_ms),
            "uses_url": eng.uses_url,
            "lines": ENGINE_PACS[name].count("\n"),
            "names_resolved": eng.cache_info()["names"],
        }
    return out


async def decomposition(cfg: EngineSettings) -> dict[str, Any]:
    """One uncached corporate decision split up: pac_query (URL normalisation, lru-memoised
    per (url, host)), the bare JavaScript call (__pycntlm_find -> FindProxyForURL), and the
    rest of afind (cache look-up and store, generator, parse memo, list of routes)."""
    eng = await make_engine(ENGINE_PACS["corporate"])
    js = eng._find_fn  # internal: only to split the cost up
    parts: dict[str, list[float]] = {"pac_query": [], "js_call": [], "afind": []}
    for _ in range(cfg.runs):
        qs = new_hosts(cfg.uncached)
        t0 = time.perf_counter()
        normalised = [pac_query(url, host) for url, host in qs]
        parts["pac_query"].append((time.perf_counter() - t0) / len(qs) * 1e6)
        t0 = time.perf_counter()
        for q in normalised:
            js(q.url, q.host, -1.0)
        parts["js_call"].append((time.perf_counter() - t0) / len(qs) * 1e6)
        parts["afind"].append(await time_afind(eng, new_hosts(cfg.uncached), cfg.cap))
    med = {k: statistics.median(v) for k, v in parts.items()}
    med["rest"] = med["afind"] - med["pac_query"] - med["js_call"]
    # cProfile of the afind loop (it cannot see into the JS call: that is one C function)
    prof = cProfile.Profile()
    qs = new_hosts(cfg.uncached)
    prof.enable()
    await time_afind(eng, qs, 5.0)
    prof.disable()
    stats = pstats.Stats(prof)
    rows = []
    for (path, line, func), (_cc, ncalls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{Path(path).name}:{line}({func})" if line else func
        rows.append((tottime, where, ncalls, cumtime))
    rows.sort(reverse=True)
    med["cprofile_top"] = [
        {
            "function": where,
            "calls_per_decision": ncalls / len(qs),
            "self_us_per_decision": tottime / len(qs) * 1e6,
            "cum_us_per_decision": cum / len(qs) * 1e6,
        }
        for tottime, where, ncalls, cum in rows[:8]
    ]
    return med


async def report_checks() -> dict[str, Any]:
    """Cache per host? A cached error's traceback? How long does one decision block the loop?"""
    out: dict[str, Any] = {}
    for name in ("corporate", "corporate+url"):  # decisions cached for 500 paths on one host
        eng = await make_engine(ENGINE_PACS[name])
        for url, host in new_paths(500):
            await eng.afind(url, host)
        out[f"entries_after_500_paths_one_host_{name}"] = eng.cache_info()["decisions"]
    # A PAC that throws for a host: the failure is cached per host and raised per request. A
    # raised error whose traceback grew from call to call (one shared exception object) would
    # keep every caller's frames and their locals (here a 1 KiB stand-in for the request that
    # handler._pac_route holds) alive until the entry expires: the frames of the last raised
    # error and the memory still held after 1000 requests show it.
    eng = await make_engine('function FindProxyForURL(url, host) { throw "broken"; }')
    last: list[BaseException] = []

    async def handler_like() -> None:
        head = bytes(1024)  # noqa: F841 - a local the retained frame keeps alive
        try:
            await eng.afind("http://broken.example/", "broken.example")
        except PacError as exc:
            last[:] = [exc]

    tracemalloc.start()
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    for _ in range(1000):
        await handler_like()
    spent = time.perf_counter() - t0
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    frames, tb = 0, last[0].__traceback__ if last else None
    while tb is not None:
        frames += 1
        tb = tb.tb_next
    out["error_1000_raises_traceback_frames"] = frames
    out["error_1000_raises_retained_kib"] = grown / 1024
    out["error_cached_us_per_request"] = spent / 1000 * 1e6
    # A PAC that loops: every new host runs it to the CPU limit on the event loop's thread.
    looping = "function FindProxyForURL(url, host) { while (true) {} }"
    eng = await make_engine(looping, options=PacOptions(time_limit=0.05))
    blocked = []
    for url, host in new_hosts(2):
        t0 = time.perf_counter()
        with contextlib.suppress(PacError):
            await eng.afind(url, host)
        blocked.append((time.perf_counter() - t0) * 1e3)
    out["looping_pac_ms_blocked_per_new_host_at_time_limit_50ms"] = statistics.median(blocked)
    return out


# ---------------------------------------------------------------------------------------------
# End to end

RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 1024\r\n\r\n"
    + bytes(1024)
)


class Tiny(asyncio.Protocol):
    """The origin and the parents: every request head (no bodies here) gets 200 and 1 KiB,
    keep-alive; origin-form and absolute-form alike, no authentication."""

    def __init__(self, hits: list[int]) -> None:
        self.hits = hits
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        buf = self.buf + data
        n = buf.count(b"\r\n\r\n")
        if n:
            self.hits[0] += n
            self.transport.write(RESPONSE * n)
            buf = buf[buf.rfind(b"\r\n\r\n") + 4 :]
        if len(buf) > 65536:
            self.transport.abort()
        self.buf = buf


@dataclass
class Counts:
    ok: int = 0
    errors: int = 0
    stop: bool = False


class Closed(asyncio.Protocol):
    """Closed loop on one keep-alive connection; the next request is made by `make()` and
    written from data_received (no task switch per request). Ends when told or on close."""

    def __init__(self, make: Callable[[], bytes], counts: Counts) -> None:
        self.make, self.counts = make, counts
        self.parser = Parser()
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.make())

    def _done(self) -> None:
        if not self.finished.done():
            self.finished.set_result(None)

    def data_received(self, data: bytes) -> None:
        try:
            responses = self.parser.feed(data)
        except (ConnectionError, ValueError):
            self.counts.errors += 1
            self._done()
            return
        for resp in responses:
            if resp.status == 200:
                self.counts.ok += 1
            else:
                self.counts.errors += 1
            if resp.close or self.counts.stop:
                self._done()
                return
            assert self.transport is not None
            self.transport.write(self.make())

    def eof_received(self) -> bool:
        self._done()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._done()


def absolute_get(host: str) -> bytes:
    return (
        f"GET http://{host}/1k HTTP/1.1\r\nHost: {host}\r\nUser-Agent: pycntlm-bench\r\n\r\n"
    ).encode()


def new_host_request() -> bytes:
    return absolute_get(f"h{next(_serial)}.bench.invalid")


@dataclass
class World:
    root: Path
    origin: int = 0
    parents: tuple[int, int] = (0, 0)
    hits: dict[str, list[int]] = field(default_factory=dict)  # origin, parent_a, parent_b
    ports: dict[str, int] = field(default_factory=dict)  # pycntlm processes: pac, nopac
    started: list[procs.Proc] = field(default_factory=list)
    servers: list[asyncio.AbstractServer] = field(default_factory=list)

    async def start_servers(self) -> None:
        loop = asyncio.get_running_loop()
        for name in ("origin", "parent_a", "parent_b"):
            hits = self.hits[name] = [0]
            srv = await loop.create_server(lambda h=hits: Tiny(h), LOOPBACK, 0, backlog=512)
            self.servers.append(srv)
            self.ports[name] = srv.sockets[0].getsockname()[1]
        self.origin = self.ports["origin"]
        self.parents = (self.ports["parent_a"], self.ports["parent_b"])

    def start_proxies(self, pac_text: str) -> None:
        """Both pycntlm processes (blocking wait: our servers get no traffic meanwhile)."""
        a, b = (f"{LOOPBACK}:{p}" for p in self.parents)
        pac = self.root / "corporate.pac"
        pac.write_text(pac_text.replace("@A@", a).replace("@B@", b))
        env = dict(os.environ, PYTHONPATH=str(services.REPO))
        common = (
            "Username benchuser\nDomain CORP\nPassword benchpass\nAuth NTLMv2\n"
            f"Proxy {a}\nProxy {b}\n"
        )
        extra = {"nopac": f"NoProxy {LOOPBACK}\n", "pac": f"Pac {pac}\n"}
        for name in ("nopac", "pac"):
            port = procs.free_port()
            conf = self.root / f"{name}.conf"
            conf.write_text(common + extra[name] + f"Listen {LOOPBACK}:{port}\n")
            conf.chmod(0o600)
            argv = [sys.executable, "-m", "pycntlm", "-c", str(conf), "-f"]
            proc = procs.start(f"pycntlm-{name}", argv, self.root / f"{name}.log", env, self.root)
            self.started.append(proc)
            proc.wait_port(port)
            if name == "pac":
                proc.wait_text(proc.log, "PAC file")
                if "loaded" not in procs.log_tail(proc.log, 50):
                    raise procs.StartError(f"the PAC did not load:\n{proc.tail()}")
            self.ports[name] = port

    def pid(self, name: str) -> int | None:
        found = [p for p in self.started if p.name == f"pycntlm-{name}"]
        return found[0].pid if found else None

    def stop(self) -> None:
        for proc in reversed(self.started):
            try:
                proc.stop()
            except Exception as exc:  # keep stopping the others
                log(f"  stopping {proc.name} ({proc.pid}) failed: {exc}")
        for srv in self.servers:
            srv.close()


async def window(
    world: World,
    port: int,
    pid: int | None,
    make: Callable[[], bytes],
    conns: int,
    warmup: float,
    duration: float,
) -> dict[str, float]:
    """`conns` closed loops for warmup + duration s; counts and CPU over the last `duration`."""
    loop = asyncio.get_running_loop()
    counts = Counts()
    protos: list[Closed] = []
    transports: list[asyncio.BaseTransport] = []
    try:
        for _ in range(conns):
            sock = await client.open_socket(port)
            transport, proto = await loop.create_connection(lambda: Closed(make, counts), sock=sock)
            transports.append(transport)
            protos.append(proto)
        await asyncio.sleep(warmup)
        hits0 = {k: v[0] for k, v in world.hits.items()}
        ok0, err0 = counts.ok, counts.errors
        cpu0, me0 = (procs.cpu(pid) if pid else 0.0), time.process_time()
        t0 = time.perf_counter()
        await asyncio.sleep(duration)
        elapsed = time.perf_counter() - t0
        ok, errors = counts.ok - ok0, counts.errors - err0
        cpu = (procs.cpu(pid) - cpu0) if pid else float("nan")
        me = time.process_time() - me0
        hits = {k: v[0] - hits0[k] for k, v in world.hits.items()}
        counts.stop = True
        await asyncio.wait([p.finished for p in protos], timeout=STALL_GRACE)
    finally:
        for transport in transports:
            transport.abort()
    return {
        "ok": ok,
        "errors": errors,
        "seconds": elapsed,
        "rps": ok / elapsed,
        "proxy_cpu_us_per_req": cpu / ok * 1e6 if ok else float("nan"),
        "proxy_cpu_pct": 100 * cpu / elapsed,
        "client_cpu_pct": 100 * me / elapsed,  # load client + origin + parents (this process)
        **{f"hits_{k}": float(v) for k, v in hits.items()},
    }


WORKLOADS = {  # name: (label, where the requests must land)
    "origin_1host": ("origin via DIRECT, 1 host", "origin"),
    "parent_1host": ("parent via PROXY, 1 host", "parent_a"),
    "parent_newhost": ("parent via PROXY, new host per request", "parent_a"),
}


def request_maker(world: World, workload: str) -> Callable[[], bytes]:
    if workload == "origin_1host":
        fixed = absolute_get(f"{LOOPBACK}:{world.origin}")
        return lambda: fixed
    if workload == "parent_1host":
        fixed = absolute_get("app.bench.invalid")
        return lambda: fixed
    return new_host_request


@dataclass
class E2eSettings:
    reps: int = 3
    duration: float = 1.5
    warmup: float = 0.3
    conns: int = 8


async def e2e_figures(world: World, cfg: E2eSettings) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    ceiling = await window(
        world, world.origin, None, request_maker(world, "origin_1host"), cfg.conns, 0.2, 1.0
    )
    log(f"  client ceiling straight at the origin: {ceiling['rps']:.0f} req/s")
    for rep in range(cfg.reps):
        for i, workload in enumerate(WORKLOADS):
            order = ["nopac", "pac"] if (rep + i) % 2 == 0 else ["pac", "nopac"]
            for cand in order:
                res = await window(
                    world,
                    world.ports[cand],
                    world.pid(cand),
                    request_maker(world, workload),
                    cfg.conns,
                    cfg.warmup,
                    cfg.duration,
                )
                landed = res[f"hits_{WORKLOADS[workload][1]}"]
                res["misrouted"] = float(res["ok"] - landed)
                runs.append({"rep": rep, "workload": workload, "candidate": cand, **res})
                log(
                    f"  rep {rep + 1} {workload:15} {cand:5} {res['rps']:6.0f} req/s "
                    f"{res['proxy_cpu_us_per_req']:5.0f} us CPU/req errors={res['errors']} "
                    f"misrouted={res['misrouted']:.0f}"
                )
    summary: dict[str, Any] = {}
    for workload in WORKLOADS:
        per: dict[str, dict[int, dict[str, Any]]] = {"pac": {}, "nopac": {}}
        for r in runs:
            if r["workload"] == workload:
                per[r["candidate"]][r["rep"]] = r
        reps = sorted(set(per["pac"]) & set(per["nopac"]))

        def med(values: list[float]) -> float:
            values = [v for v in values if v == v]  # drop NaN
            return statistics.median(values) if values else float("nan")

        summary[workload] = {
            "nopac_rps": med([per["nopac"][r]["rps"] for r in reps]),
            "pac_rps": med([per["pac"][r]["rps"] for r in reps]),
            "rps_ratio": med([per["pac"][r]["rps"] / per["nopac"][r]["rps"] for r in reps]),
            "rps_ratios": [per["pac"][r]["rps"] / per["nopac"][r]["rps"] for r in reps],
            "nopac_cpu_us": med([per["nopac"][r]["proxy_cpu_us_per_req"] for r in reps]),
            "pac_cpu_us": med([per["pac"][r]["proxy_cpu_us_per_req"] for r in reps]),
            "cpu_delta_us": med(
                [
                    per["pac"][r]["proxy_cpu_us_per_req"] - per["nopac"][r]["proxy_cpu_us_per_req"]
                    for r in reps
                ]
            ),
            "cpu_deltas_us": [
                per["pac"][r]["proxy_cpu_us_per_req"] - per["nopac"][r]["proxy_cpu_us_per_req"]
                for r in reps
            ],
            "errors": sum(per[c][r]["errors"] for c in per for r in reps),
            "misrouted": sum(abs(per[c][r]["misrouted"]) for c in per for r in reps),
        }
    return {"ceiling": ceiling, "runs": runs, "summary": summary}


# ---------------------------------------------------------------------------------------------
# Report


def engine_table(eng: dict[str, Any], runs: int, loop_name: str) -> list[str]:
    names = list(eng)
    rows = [
        ("afind, new host each call (uncached)", "afind_uncached", "{:.1f}"),
        ("afind, same host (cached)", "afind_cached", "{:.2f}"),
        ("afind, same host, new http path each call", "afind_paths", "{:.1f}"),
        ("afind, new host, cold CPU caches", "afind_uncached_cold", "{:.1f}"),
        ("afind, same host, cold CPU caches", "afind_cached_cold", "{:.2f}"),
        ("find (sync), new host each call", "find_uncached", "{:.1f}"),
        ("find (sync), same host", "find_cached", "{:.2f}"),
        ("compile (PacEngine.create), ms", "compile_ms", "{:.2f}"),
    ]
    head = f"engine, us per decision (median of {runs} runs, {loop_name})"
    lines = [f"{head:46}" + "".join(f"{n:>15}" for n in names)]
    for label, key, fmt in rows:
        lines.append(f"{label:46}" + "".join(f"{fmt.format(eng[n][key]):>15}" for n in names))
    uses = "".join(f"{('yes' if eng[n]['uses_url'] else 'no'):>15}" for n in names)
    lines.append(f"{'cache key holds the URL (PAC reads url)':46}" + uses)
    resolved = "".join(f"{eng[n]['names_resolved']:>15}" for n in names)
    lines.append(f"{'names the PAC resolved (expected 0)':46}" + resolved)
    ratio = "".join(f"{eng[n]['afind_uncached'] / eng[n]['afind_cached']:>14.1f}x" for n in names)
    lines.append(f"{'uncached / cached':46}" + ratio)
    return lines


def e2e_table(e2e: dict[str, Any], cfg: E2eSettings) -> list[str]:
    lines = [
        f"end to end: corporate PAC vs NoProxy/Proxy lines, {cfg.conns} keep-alive conns, "
        f"1 KiB GET, median of {cfg.reps} x {cfg.duration:g} s (ratio, delta: per rep)",
        f"{'workload':40}{'noPAC r/s':>10}{'PAC r/s':>9}{'PAC/no (range)':>18}"
        f"{'noPAC us':>10}{'PAC us':>8}{'delta us (range)':>20}",
    ]
    for workload, s in e2e["summary"].items():
        ratios, deltas = s["rps_ratios"], s["cpu_deltas_us"]
        ratio = f"{s['rps_ratio']:.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
        delta = f"{s['cpu_delta_us']:+.0f} ({min(deltas):+.0f}..{max(deltas):+.0f})"
        lines.append(
            f"{WORKLOADS[workload][0]:40}{s['nopac_rps']:>10.0f}{s['pac_rps']:>9.0f}{ratio:>18}"
            f"{s['nopac_cpu_us']:>10.0f}{s['pac_cpu_us']:>8.0f}{delta:>20}"
        )
    lines.append(
        "  us = pycntlm CPU (user+sys from /proc) per request; PAC/no and delta (PAC - noPAC)"
        " are taken per repetition, side by side, then the median"
    )
    # A few requests in flight at a window's edges count on one side only: not misrouted.
    slack = 4 * cfg.conns * cfg.reps
    bad = {w: s for w, s in e2e["summary"].items() if s["errors"] or s["misrouted"] > slack}
    for workload, s in bad.items():
        lines.append(
            f"  WARNING {workload}: {s['errors']} errors, {s['misrouted']:.0f} requests not "
            "seen where they were expected"
        )
    c = e2e["ceiling"]
    lines.append(
        f"  client ceiling (same client straight at the origin): {c['rps']:.0f} req/s, "
        f"bench process CPU {c['client_cpu_pct']:.0f} %"
    )
    return lines


def detail_lines(dec: dict[str, Any], checks: dict[str, Any]) -> list[str]:
    lines = [
        f"uncached corporate decision ({dec['afind']:.1f} us): JS call {dec['js_call']:.1f}, "
        f"pac_query {dec['pac_query']:.1f}, rest of afind {dec['rest']:.1f} us",
        "cProfile of that afind loop, top self time (us/decision, calls/decision):",
    ]
    for row in dec["cprofile_top"][:6]:
        lines.append(
            f"  {row['self_us_per_decision']:6.2f} {row['calls_per_decision']:5.1f}x  "
            f"{row['function'][:80]}"
        )
    lines += [
        "checks:",
        "  decision-cache entries after 500 http paths on one host: corporate "
        f"{checks['entries_after_500_paths_one_host_corporate']}, corporate+url "
        f"{checks['entries_after_500_paths_one_host_corporate+url']}",
        f"  throwing PAC, 1000 requests to one host: cached error re-raised in "
        f"{checks['error_cached_us_per_request']:.1f} us, the last one raised has "
        f"{checks['error_1000_raises_traceback_frames']} frames holding "
        f"{checks['error_1000_raises_retained_kib']:.0f} KiB",
        "  looping PAC (time limit 50 ms): event loop blocked "
        f"{checks['looping_pac_ms_blocked_per_new_host_at_time_limit_50ms']:.0f} ms per new host",
    ]
    return lines


# ---------------------------------------------------------------------------------------------
# Main


def environment() -> dict[str, Any]:
    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    try:
        commit = subprocess.run(
            ["git", "-C", str(services.REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit = ""
    return {
        "when": datetime.datetime.now().isoformat(timespec="seconds"),
        "commit": commit,
        "python": platform.python_version(),
        "quickjs-ng": version("quickjs-ng"),
        "uvloop": version("uvloop"),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.pac", description=__doc__.splitlines()[0])
    p.add_argument("--only", default="engine,e2e", help="engine, e2e or both (comma-separated)")
    p.add_argument("--reps", type=int, default=3, help="end-to-end repetitions (default 3)")
    p.add_argument("--duration", type=float, default=1.5, help="s per end-to-end figure")
    p.add_argument("--conns", type=int, default=8, help="client keep-alive connections")
    p.add_argument("--engine-runs", type=int, default=5, help="engine runs (median)")
    p.add_argument("--trivial-e2e", action="store_true", help="end to end with the trivial PAC")
    p.add_argument("--out", type=Path, help="JSON path (default bench/results/pac-<ts>.json)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    return p.parse_args(argv)


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


async def measure(args: argparse.Namespace, payload: dict[str, Any], root: Path) -> list[str]:
    parts = {p.strip() for p in args.only.split(",")}
    loop_name = type(asyncio.get_running_loop()).__module__.split(".")[0]
    lines: list[str] = []
    if "engine" in parts:
        ecfg = EngineSettings(runs=max(1, args.engine_runs))
        log(f"engine figures ({ecfg.runs} runs)")
        eng = await engine_figures(ecfg)
        dec = await decomposition(ecfg)
        checks = await report_checks()
        payload.update(engine=eng, decomposition=dec, checks=checks, engine_settings=ecfg.__dict__)
        lines += engine_table(eng, ecfg.runs, loop_name)
        lines += detail_lines(dec, checks)
    if "e2e" in parts:
        cfg = E2eSettings(reps=max(1, args.reps), duration=args.duration, conns=args.conns)
        world = World(root)
        try:
            await world.start_servers()
            text = TRIVIAL_E2E_PAC if args.trivial_e2e else corporate_pac("@A@", "@B@")
            log(f"starting two pycntlm processes in {root}")
            world.start_proxies(text)
            e2e = await e2e_figures(world, cfg)
        finally:
            world.stop()
        payload.update(e2e=e2e, e2e_settings=cfg.__dict__, e2e_pac=text)
        lines += e2e_table(e2e, cfg)
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    root = Path(tempfile.mkdtemp(prefix="pycntlm-bench-pac-"))
    started = time.monotonic()
    shown = {**vars(args), "out": str(args.out) if args.out else None}
    payload: dict[str, Any] = {"environment": environment(), "args": shown}
    try:
        lines = figures.run_async(measure(args, payload, root))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    payload["environment"]["loadavg_end"] = os.getloadavg()
    payload["seconds"] = time.monotonic() - started
    payload["table"] = lines
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or RESULTS / f"pac-{stamp}.json"
    report.write_json(out, payload)
    print("\n".join(lines))
    print(f"{payload['seconds']:.0f} s; JSON: {out}")
    return 0


def cli() -> int:
    try:
        return main()
    except KeyboardInterrupt:
        log("interrupted; every started process was stopped")
        return 130


if __name__ == "__main__":
    sys.exit(cli())
