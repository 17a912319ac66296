"""PAC: evaluate a PAC file's FindProxyForURL per request, and keep the PAC file fresh.

Owns: `PacEngine` (one QuickJS context with the PAC helper library, a CPU-time and memory
limit, a decision cache and a DNS table) and `PacSource` (a PAC file from a path or an http(s)
URL, refreshed in the background, the last good copy kept when a refresh fails).
Must not: let JavaScript call into Python (QuickJS refuses that while a time limit is set, and
it would let a PAC block the event loop); resolve names anywhere but the local resolver; use
the JS context from another thread (QuickJS contexts are not thread-safe).

Engine: quickjs-ng (PyPI "quickjs-ng", module `quickjs`, QuickJS-ng compiled in, abi3 wheels).
"""

from __future__ import annotations

import asyncio  # noqa: TID251 - shell module: DNS look-ups and the refresh loop
import contextlib
import fcntl
import json
import logging
import socket  # noqa: TID251 - shell module: the local resolver and myIpAddress
import struct
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from pycntlm.pacfuncs import (
    FOUND_PREFIX,
    PAC_JS_LIBRARY,
    DecisionKeys,
    PacError,
    PacOptions,
    PacQuery,
    Route,
    TtlLru,
    connect_url,
    pac_query,
    pac_text,
    parse_result,
    parse_result_cached,
    uses_first_argument,
)

__all__ = ["PacEngine", "PacError", "PacOptions", "PacSource", "Route", "connect_url"]
__all__ += ["local_ipv4", "parse_result", "resolve_ipv4"]

log = logging.getLogger("pycntlm.pac")

Resolver = Callable[[str], "str | None"]


def resolve_ipv4(name: str) -> str | None:
    """The first IPv4 address of `name` from the local resolver (blocking), or None."""
    if not name or len(name) > 253:
        return None
    try:
        infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return None
    return str(infos[0][4][0]) if infos else None


async def aresolve_ipv4(name: str, timeout: float) -> str | None:
    """resolve_ipv4 through the event loop's resolver, giving up after `timeout` seconds."""
    if not name or len(name) > 253:
        return None
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            infos = await loop.getaddrinfo(name, None, family=socket.AF_INET)
    except (OSError, UnicodeError, TimeoutError):
        return None
    return str(infos[0][4][0]) if infos else None


def _default_route_interface() -> str | None:
    with contextlib.suppress(OSError), open("/proc/net/route", encoding="ascii") as routes:
        best: tuple[int, str] | None = None
        for line in routes.readlines()[1:]:
            fields = line.split()
            if len(fields) > 6 and fields[1] == "00000000" and int(fields[3], 16) & 1:
                candidate = (int(fields[6]), fields[0])
                best = candidate if best is None else min(best, candidate)
        return best[1] if best else None
    return None


def local_ipv4() -> str:
    """myIpAddress(): the IPv4 address of the default-route interface (read from the kernel,
    no packet sent), else the host name's first non-loopback IPv4 address from the local
    resolver, else 127.0.0.1. Blocking; PacSource runs it in a thread, once."""
    interface = _default_route_interface()
    if interface:
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            request = struct.pack("256s", interface.encode()[:15])
            reply = fcntl.ioctl(s.fileno(), 0x8915, request)  # SIOCGIFADDR
            return socket.inet_ntoa(reply[20:24])
    with contextlib.suppress(OSError, UnicodeError):
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            address = str(info[4][0])
            if not address.startswith("127."):
                return address
    return "127.0.0.1"


def _quickjs() -> Any:
    """The engine module, imported on first use: importing it starts an idle worker thread
    (its Function helper's, which pycntlm does not use), so only configs with a PAC pay."""
    import quickjs  # type: ignore[import-untyped]

    return quickjs


def _short(exc: Exception, options: PacOptions) -> str:
    """A JS exception as one short line: the message and, for a load error, the line."""
    lines = str(exc).splitlines()
    first = lines[0].strip() if lines else ""
    if isinstance(exc, _quickjs().StackOverflow):
        return "stack overflow (recursion too deep)"
    if first == "InternalError: interrupted":
        return f"ran over its CPU time limit of {options.time_limit:g} s"
    if first in ("", "null"):
        return "threw null or ran out of memory"
    where = lines[1].strip() if len(lines) > 1 else ""
    if where.startswith("at <input>:"):
        first += f" (line {where.split(':')[1]})"
    return first[:200]


class _NeedDns(Exception):
    """Loading the PAC file resolved names the seed did not have (PacEngine.create's signal)."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(", ".join(names))
        self.names = names


@dataclass(frozen=True, slots=True)
class _Failure:
    """A cached PacError: its message only, raised afresh on each hit (an exception object
    raised again would collect every request's frames in its __traceback__)."""

    message: str


class PacEngine:
    """One compiled PAC file. find() / afind() answer FindProxyForURL(url, host) as routes.

    Decisions are cached per (scheme, host, port), plus the URL handed to the PAC when its
    FindProxyForURL might read its url argument (`uses_url`); errors are cached too, so a PAC
    that loops costs its time limit once per key per cache_ttl (re-raised with `cached` set).
    For a PAC that ignores the url, a hit parses nothing (DecisionKeys knows the key of each
    scheme://authority seen). Not thread-safe: use it from the event loop's thread only.
    """

    def __init__(
        self,
        source: str,
        *,
        options: PacOptions | None = None,
        my_ip: str | None = None,
        resolver: Resolver = resolve_ipv4,
        dns_seed: dict[str, str | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] | None = None,
        resolve_at_load: bool = True,
    ) -> None:
        """Compile `source`; raises PacError. `resolver` answers names a PAC asks about in
        find() (blocking); `wall_clock` (epoch seconds) replaces the JS clock, for tests."""
        self._js = _quickjs()
        self.options = options or PacOptions()
        self.my_ip = my_ip if my_ip is not None else local_ipv4()
        self._resolver = resolver
        self._clock = clock
        self._wall_clock = wall_clock
        self._decisions: TtlLru[tuple[str, ...], tuple[Route, ...] | _Failure] = TtlLru(
            self.options.cache_size, self.options.cache_ttl
        )
        self._keys = DecisionKeys(self.options.cache_size)
        self._dns: TtlLru[str, str | None] = TtlLru(
            self.options.dns_cache_size, self.options.dns_ttl
        )
        self._noted: set[str] = set()
        self.source = source
        seed = dict(dns_seed or {})
        for _ in range(self.options.max_dns_rounds + 1):
            missing = self._load(source, seed)
            if not missing:
                break
            if not resolve_at_load:
                raise _NeedDns(missing)
            seed.update((name, resolver(name)) for name in missing)
        else:
            raise PacError("PAC file resolves too many names while loading")
        self._next_sweep = self._clock() + self.options.dns_negative_ttl

    @classmethod
    async def create(cls, source: str, **kwargs: Any) -> PacEngine:
        """PacEngine(source, **kwargs), with names the file resolves while loading (top-level
        code) looked up through the event loop instead of blocking it; my_ip found in a thread."""
        if kwargs.get("my_ip") is None:
            kwargs["my_ip"] = await asyncio.to_thread(local_ipv4)
        options: PacOptions = kwargs.get("options") or PacOptions()
        seed: dict[str, str | None] = dict(kwargs.pop("dns_seed", None) or {})
        for _ in range(options.max_dns_rounds + 1):
            try:
                return cls(source, dns_seed=seed, resolve_at_load=False, **kwargs)
            except _NeedDns as need:
                for name in need.names:
                    seed[name] = await aresolve_ipv4(name, options.dns_timeout)
        raise PacError("PAC file resolves too many names while loading")

    def _load(self, source: str, seed: dict[str, str | None]) -> list[str]:
        """A fresh context with the library, seeded names and the PAC; returns missing names."""
        ctx = self._js.Context()
        ctx.set_memory_limit(self.options.memory_limit)
        ctx.set_time_limit(self.options.time_limit)
        ctx.eval(PAC_JS_LIBRARY)
        ctx.get("__pycntlm_set_myip")(self.my_ip)
        self._ctx = ctx
        self._find_fn = ctx.get("__pycntlm_find")
        self._dns_set = ctx.get("__pycntlm_dns_set")
        self._dns_del = ctx.get("__pycntlm_dns_del")
        self._dns.clear()
        now = self._clock()
        for name, ip in seed.items():
            self._remember(name, ip, now)
        try:
            ctx.eval(source)
        except self._js.JSException as exc:
            raise PacError(f"PAC file does not load: {_short(exc, self.options)}") from None
        missing = str(ctx.get("__pycntlm_missing")())
        if missing:
            return missing.split("\n")
        if ctx.eval("typeof FindProxyForURL") != "function":
            raise PacError("PAC file defines no FindProxyForURL function")
        try:
            self.uses_url = uses_first_argument(str(ctx.get("__pycntlm_source")()))
        except self._js.JSException:  # its text is not to be had: assume it reads the url
            self.uses_url = True
        return []

    def _remember(self, name: str, ip: str | None, now: float) -> None:
        ttl = self.options.dns_ttl if ip else self.options.dns_negative_ttl
        for dropped in self._dns.put(name, ip, now, ttl):
            self._dns_del(dropped)
        self._dns_set(name, ip or "")

    def _sweep(self, now: float) -> None:
        if now >= self._next_sweep:
            for gone in self._dns.expire(now):
                self._dns_del(gone)
            self._next_sweep = now + self.options.dns_negative_ttl

    def _key(self, query: PacQuery) -> tuple[str, ...]:
        base = (query.scheme, query.host, str(query.port))
        return (*base, query.url) if self.uses_url else base

    def _evaluate(self, query: PacQuery) -> tuple[tuple[Route, ...], list[str]]:
        """One run of FindProxyForURL: its routes, or the names it asked for that are missing."""
        now_ms = -1.0 if self._wall_clock is None else self._wall_clock() * 1000.0
        try:
            answer = self._find_fn(query.url, query.host, now_ms)
        except self._js.JSException as exc:
            raise PacError(f"FindProxyForURL failed: {_short(exc, self.options)}") from None
        if not isinstance(answer, str):
            raise PacError("FindProxyForURL returned no string")
        if answer.startswith(FOUND_PREFIX):
            extra = json.loads(answer[len(FOUND_PREFIX) :])
            if extra["m"]:
                return (), [str(name) for name in extra["m"]]
            for message in extra["a"]:
                log.info("PAC alert: %s", " ".join(str(message).split()))
            if extra["f"]:  # FindProxyForURL was replaced: key on the url from now on
                self.uses_url = True
                self._ctx.get("__pycntlm_watch")()
            if extra["e"] is not None:
                raise PacError(f"FindProxyForURL failed: {extra['e']}")
            if extra["r"] is None:
                raise PacError(f"FindProxyForURL returned {extra['t']}")
            answer = extra["r"]
        if len(answer) > self.options.max_answer:
            raise PacError(f"FindProxyForURL answered {len(answer)} characters")
        routes, notes = parse_result_cached(answer)
        for note in notes:
            if note not in self._noted and len(self._noted) < 64:
                self._noted.add(note)
                log.warning("PAC answer %s", note)
        return routes, []

    def _decide(self, url: str, host: str) -> Generator[str, str | None, list[Route]]:
        """The cached decision, or a fresh one (cached, errors too). Yields each name the PAC
        needs resolved and takes its address (or None) back, then runs the PAC again."""
        query = pac_query(url, host) if self.uses_url else None
        key = self._key(query) if query is not None else self._keys.key(url, host)
        now = self._clock()
        hit = self._decisions.get(key, now)
        if isinstance(hit, _Failure):
            raise PacError(hit.message, cached=True)
        if hit is not None:
            return list(hit)
        query = query or pac_query(url, host)  # a miss: only now is the whole URL needed
        self._sweep(now)
        try:
            for _ in range(self.options.max_dns_rounds + 1):
                routes, missing = self._evaluate(query)
                if not missing:
                    self._decisions.put(self._key(query), routes, self._clock())
                    return list(routes)
                for name in missing:
                    self._remember(name, (yield name), self._clock())
            raise PacError("FindProxyForURL resolves too many names")
        except PacError as exc:
            self._decisions.put(self._key(query), _Failure(str(exc)), self._clock())
            raise

    def find(self, url: str, host: str = "") -> list[Route]:
        """FindProxyForURL(url, host) as routes (see pacfuncs.pac_query for what the PAC is
        handed). Names the PAC resolves go to `resolver`, blocking. Raises PacError."""
        decide = self._decide(url, host)
        try:
            name = next(decide)
            while True:
                name = decide.send(self._resolver(name))
        except StopIteration as done:
            routes: list[Route] = done.value
            return routes

    async def afind(self, url: str, host: str = "") -> list[Route]:
        """find(), with names the PAC resolves looked up through the event loop (never
        blocking it; dns_timeout each). Use this one from request handlers."""
        decide = self._decide(url, host)
        try:
            name = next(decide)
            while True:
                name = decide.send(await aresolve_ipv4(name, self.options.dns_timeout))
        except StopIteration as done:
            routes: list[Route] = done.value
            return routes

    def cache_info(self) -> dict[str, int]:
        """Sizes of the decision cache and the DNS table, and the decision cache's hits and
        misses since this engine was compiled (for the status page)."""
        decisions = self._decisions
        return {
            "decisions": len(decisions),
            "names": len(self._dns),
            "decision_hits": decisions.hits,
            "decision_misses": decisions.misses,
        }


class PacSource:
    """A PAC file from a path (or file:// URL) or an http(s) URL, compiled into `engine`.

    refresh() fetches (directly: no proxy from the environment; If-None-Match /
    If-Modified-Since; at most max_bytes) and recompiles when the text or myIpAddress changed.
    When fetching or compiling fails, `engine` stays the last good one and `last_error` says
    why. The lead awaits refresh() once at start-up and runs run(interval) as a task; on a
    reload the new source starts from the old one's last good copy (inherit).
    """

    def __init__(
        self,
        location: str,
        *,
        options: PacOptions | None = None,
        fetch_timeout: float = 10.0,
        max_bytes: int = 1024 * 1024,
        my_ip: str | None = None,
    ) -> None:
        self.location = location
        self.options = options or PacOptions()
        self.fetch_timeout = fetch_timeout
        self.max_bytes = max_bytes
        self.engine: PacEngine | None = None
        self.last_error: str | None = None
        self.my_ip = my_ip
        self._validators: dict[str, str] = {}

    def inherit(self, previous: PacSource) -> None:
        """Start from `previous`'s last good copy (a reload): its engine, used until a refresh
        of this source succeeds, and, for the same location, the validators that let that
        refresh be answered 304 Not Modified."""
        if self.engine is not None or previous.engine is None:
            return
        self.engine = previous.engine
        if previous.location == self.location:
            self._validators = dict(previous._validators)

    async def load(self, within: float) -> bool:
        """refresh(), given up after `within` seconds in all (fetch, myIpAddress, the names the
        file resolves while loading, compiling): a reload waits for it."""
        try:
            async with asyncio.timeout(within):
                return await self.refresh()
        except TimeoutError:
            return self._failed(f"not loaded within {within:g} s")

    async def _fetch_url(self) -> tuple[bytes | None, dict[str, str]]:
        """The body (None when the server answers 304 Not Modified) and its validators."""
        timeout = aiohttp.ClientTimeout(total=self.fetch_timeout)
        async with (
            aiohttp.ClientSession(timeout=timeout, trust_env=False) as session,
            session.get(self.location, headers=self._validators) as response,
        ):
            if response.status == 304 and self._validators and self.engine is not None:
                return None, self._validators
            if response.status != 200:
                raise PacError(f"HTTP {response.status} {response.reason or ''}".strip())
            body = bytearray()
            async for chunk in response.content.iter_chunked(65536):
                body += chunk
                if len(body) > self.max_bytes:
                    raise PacError(f"PAC file larger than {self.max_bytes} bytes")
            validators = {
                ask: response.headers[header]
                for ask, header in (
                    ("If-None-Match", "ETag"),
                    ("If-Modified-Since", "Last-Modified"),
                )
                if header in response.headers
            }
        return bytes(body), validators

    async def _fetch(self) -> tuple[str | None, dict[str, str]]:
        if self.location.lower().startswith(("http://", "https://")):
            body, validators = await self._fetch_url()
            return (None if body is None else pac_text(body)), validators
        path = Path(self.location.removeprefix("file://"))
        data = await asyncio.to_thread(path.read_bytes)
        if len(data) > self.max_bytes:
            raise PacError(f"PAC file larger than {self.max_bytes} bytes")
        return pac_text(data), {}

    async def refresh(self) -> bool:
        """Fetch and, when needed, recompile. True when `engine` is the current file's; False
        when this refresh failed (the last good engine, if any, stays in place)."""
        try:
            text, validators = await self._fetch()
            my_ip = self.my_ip or await asyncio.to_thread(local_ipv4)
            current = self.engine
            if text is None:  # 304 Not Modified: only possible once an engine is in place
                text = current.source if current is not None else ""
            if current is None or current.source != text or current.my_ip != my_ip:
                self.engine = await PacEngine.create(text, options=self.options, my_ip=my_ip)
                log.info("PAC file %s loaded (%d characters)", self.location, len(text))
            self._validators = validators
        except TimeoutError:
            return self._failed(f"no answer within {self.fetch_timeout:g} s")
        except (PacError, OSError, aiohttp.ClientError, UnicodeError) as exc:
            return self._failed(str(exc) or type(exc).__name__)
        self.last_error = None
        return True

    def _failed(self, reason: str) -> bool:
        self.last_error = reason
        kept = "keeping the last good copy" if self.engine else "no PAC file yet"
        log.warning("PAC file %s: %s (%s)", self.location, reason, kept)
        return False

    async def run(self, interval: float) -> None:
        """refresh() every `interval` seconds, forever (cancel the task to stop)."""
        while True:
            await asyncio.sleep(interval)
            await self.refresh()
