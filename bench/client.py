"""The one load client used for every candidate (asyncio + uvloop Protocols).

Owns: opening client connections (doing the NTLM handshake itself when talking to squid
directly), closed-loop keep-alive request loops (req/s, MB/s, latency), fresh-connection
latency, a 1 GiB CONNECT download, N held tunnels and a CONNECT burst. Every loop is bounded in
count and time. Connects only to 127.0.0.1. Must not: start or stop processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bench import httpmini
from bench.httpmini import NtlmClient, Parser, Response

HOST = "127.0.0.1"
IO_TIMEOUT = 30.0
SETUP_TIMEOUT = 2.0
STALL_GRACE = 2.0
TUNNEL_STALL = 10.0  # hold_tunnels gives up when no new tunnel opened for this long


@dataclass(frozen=True)
class Target:
    """A client's view of a candidate: port to connect to, NTLM or not, origin port."""

    port: int
    ntlm: bool
    origin: int


async def open_socket(port: int) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        async with asyncio.timeout(IO_TIMEOUT):
            await loop.sock_connect(sock, (HOST, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def request(sock: socket.socket, req: bytes, head_only: bool = False) -> Response:
    """Send one request on a raw socket and read its whole response (body counted, dropped)."""
    loop = asyncio.get_running_loop()
    parser = Parser()
    parser.head_only = head_only
    async with asyncio.timeout(IO_TIMEOUT):
        await loop.sock_sendall(sock, req)
        while True:
            data = await loop.sock_recv(sock, 65536)
            if not data:
                last = parser.eof()
                if last is None:
                    raise ConnectionError("connection closed before a full response")
                return last
            done = parser.feed(data)
            if done:
                return done[0]


async def authed(
    sock: socket.socket, make: Callable[[bytes], bytes], ntlm: bool, head_only: bool = False
) -> Response:
    """One request; when `ntlm`, wrapped in the Type 1 -> 407 -> Type 3 handshake."""
    if not ntlm:
        return await request(sock, make(b""), head_only)
    auth = NtlmClient()
    first = await request(sock, make(auth.type1()), head_only)
    if first.status != 407:
        return first
    return await request(sock, make(auth.type3(first.values(b"proxy-authenticate"))), head_only)


async def open_ready(t: Target, path: str = "/1k") -> socket.socket:
    """A client connection ready for requests (for direct: NTLM-authenticated by one GET)."""
    sock = await open_socket(t.port)
    if t.ntlm:
        try:
            resp = await authed(sock, lambda h: httpmini.get_absolute(t.origin, path, h), True)
            if resp.status != 200 or resp.close:
                raise ConnectionError(f"NTLM handshake GET answered {resp.status}")
        except BaseException:
            sock.close()
            raise
    return sock


async def open_tunnel(t: Target) -> socket.socket:
    """A fresh client connection with an established CONNECT tunnel to the origin."""
    sock = await open_socket(t.port)
    try:
        resp = await authed(sock, lambda h: httpmini.connect(t.origin, h), t.ntlm, True)
        if resp.status != 200:
            raise ConnectionError(f"CONNECT answered {resp.status}")
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass
class LoopStats:
    ok: int = 0
    errors: int = 0
    body: int = 0
    reconnects: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, when recorded


class ReqLoop(asyncio.Protocol):
    """Closed loop on one connection: write a request, parse the response, write the next,
    all inside the callbacks (no task switch per request). Stops at the deadline, after
    `budget` responses, or when the server closes."""

    def __init__(
        self, req: bytes, deadline: float, budget: int, stats: LoopStats, record: bool
    ) -> None:
        self.req, self.deadline, self.budget = req, deadline, budget
        self.stats, self.record = stats, record
        self.parser = Parser()
        self.finished: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.sent_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send()

    def _send(self) -> None:
        self.sent_at = time.perf_counter()
        assert self.transport is not None
        self.transport.write(self.req)

    def _done(self, server_closed: bool) -> None:
        if not self.finished.done():
            self.finished.set_result(server_closed)

    def data_received(self, data: bytes) -> None:
        try:
            responses = self.parser.feed(data)
        except (ConnectionError, ValueError):
            self.stats.errors += 1
            self._done(True)
            return
        for resp in responses:
            st = self.stats
            if resp.status == 200:
                st.ok += 1
                st.body += self.parser.body
                if self.record:
                    st.latencies.append(time.perf_counter() - self.sent_at)
            else:
                st.errors += 1
            self.budget -= 1
            if resp.close:
                self._done(True)
                return
            if self.budget <= 0 or time.perf_counter() >= self.deadline:
                self._done(False)
                return
            self._send()

    def eof_received(self) -> bool:
        self._done(True)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._done(True)


def _factory(proto: ReqLoop) -> Callable[[], ReqLoop]:
    return lambda: proto


async def _conn_worker(
    t: Target,
    req: bytes,
    sock: socket.socket | None,
    deadline: float,
    budget: int,
    stats: LoopStats,
    record: bool,
) -> None:
    loop = asyncio.get_running_loop()
    first = sock is not None
    while budget > 0 and time.perf_counter() < deadline:
        if not first:
            try:  # a reconnect may not outlive the measurement (cntlm's backlog is 5)
                async with asyncio.timeout(max(0.05, deadline - time.perf_counter())):
                    sock = await open_ready(t)
            except (OSError, TimeoutError):
                stats.errors += 1
                await asyncio.sleep(0.01)
                continue
            stats.reconnects += 1
        first = False
        assert sock is not None
        proto = ReqLoop(req, deadline, budget, stats, record)
        transport, _ = await loop.create_connection(_factory(proto), sock=sock)
        try:
            # A response still missing STALL_GRACE after the deadline would not count anyway.
            left = deadline - time.perf_counter() + STALL_GRACE
            await asyncio.wait_for(asyncio.shield(proto.finished), max(left, 0.1))
        except TimeoutError:
            stats.errors += 1
            transport.abort()
            return
        finally:
            budget = proto.budget
            transport.close()


async def req_loop(
    t: Target, path: str, conns: int, duration: float, budget: int = 10**9, record: bool = False
) -> dict[str, float]:
    """`conns` keep-alive connections each running a closed request loop for `duration` s
    (or `budget` responses in total per connection). Returns counts, rates and client CPU."""
    req = httpmini.get_absolute(t.origin, path)

    async def prepared() -> socket.socket | None:
        # Connections not open within SETUP_TIMEOUT (cntlm's backlog is 5) open in the window.
        try:
            async with asyncio.timeout(SETUP_TIMEOUT):
                return await open_ready(t, path)
        except (OSError, TimeoutError):
            return None

    socks = await asyncio.gather(*(prepared() for _ in range(conns)))
    stats = LoopStats()
    cpu0, t0 = time.process_time(), time.perf_counter()
    deadline = t0 + duration
    await asyncio.gather(*(_conn_worker(t, req, s, deadline, budget, stats, record) for s in socks))
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    out = {
        "ok": stats.ok,
        "errors": stats.errors,
        "reconnects": stats.reconnects,
        "seconds": elapsed,
        "rps": stats.ok / elapsed,
        "mbps": stats.body / elapsed / 1e6,
        "client_cpu_pct": 100 * cpu / elapsed,
    }
    if record:
        out["latencies"] = stats.latencies  # type: ignore[assignment]
    return out


async def fresh_latency(t: Target, count: int, time_cap: float) -> list[float]:
    """Seconds from connect() to the last byte of a 1 KiB GET on a new connection each time
    (direct includes its NTLM handshake). Sequential; bounded by count and time."""
    out: list[float] = []
    req_path = "/1k"
    stop = time.perf_counter() + time_cap
    for _ in range(count):
        if time.perf_counter() > stop:
            break
        t0 = time.perf_counter()
        sock = await open_socket(t.port)
        try:
            resp = await authed(
                sock, lambda h: httpmini.get_absolute(t.origin, req_path, h), t.ntlm
            )
        finally:
            sock.close()
        if resp.status == 200:
            out.append(time.perf_counter() - t0)
    return out


class Sink(asyncio.BufferedProtocol):
    """Reads one response into a reused buffer, counting body bytes (no per-chunk objects)."""

    def __init__(self, req: bytes, time_cap: float) -> None:
        self.req, self.buf = req, bytearray(1 << 20)
        self.head = b""
        self.length = -1
        self.got = 0
        self.stop_at = time.perf_counter() + time_cap
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.req)  # type: ignore[attr-defined]

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buf)

    def buffer_updated(self, nbytes: int) -> None:
        if self.length < 0:
            self.head += bytes(self.buf[:nbytes])
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            resp = httpmini.parse_head(self.head[:end])
            self.length = resp.length or 0
            nbytes = len(self.head) - end - 4
        self.got += nbytes
        if self.got >= self.length or time.perf_counter() > self.stop_at:
            self._finish()

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def eof_received(self) -> bool:
        self._finish()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()


async def tunnel_download(
    t: Target, path: str, time_cap: float, on_start: Callable[[], None]
) -> dict[str, float]:
    """CONNECT to the origin, GET `path` through the tunnel, count the bytes (time-capped)."""
    loop = asyncio.get_running_loop()
    sock = await open_tunnel(t)
    on_start()
    cpu0, t0 = time.process_time(), time.perf_counter()
    transport, sink = await loop.create_connection(
        lambda: Sink(httpmini.get_origin(t.origin, path), time_cap), sock=sock
    )
    try:
        async with asyncio.timeout(time_cap + IO_TIMEOUT):
            await sink.done
    finally:
        elapsed = time.perf_counter() - t0
        transport.abort()
    return {
        "bytes": sink.got,
        "complete": float(sink.got >= sink.length > 0),
        "seconds": elapsed,
        "mbps": sink.got / elapsed / 1e6,
        "client_cpu_pct": 100 * (time.process_time() - cpu0) / elapsed,
    }


async def hold_tunnels(
    t: Target,
    count: int,
    parallel: int,
    time_cap: float,
    while_held: Callable[[], Awaitable[None]],
) -> dict[str, Any]:
    """Open `count` CONNECT tunnels (at most `parallel` handshakes at a time), each carrying one
    1 KiB GET, hold them all while `while_held()` runs, then close them."""
    sem = asyncio.Semaphore(parallel)
    progress = [time.perf_counter()]  # when the last tunnel opened (stall detection)
    socks: list[socket.socket] = []
    errors = 0
    first_error = ""
    stop = time.perf_counter() + time_cap
    req = httpmini.get_origin(t.origin, "/1k")

    def failed(exc: BaseException | str) -> None:
        nonlocal errors, first_error
        errors += 1
        if not first_error:
            first_error = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"

    async def one() -> None:
        async with sem:
            give_up = min(stop, progress[0] + TUNNEL_STALL)
            if time.perf_counter() > give_up:
                failed("not started: time cap reached or no tunnel opened for a while")
                return
            try:
                async with asyncio.timeout(max(0.1, give_up - time.perf_counter())):
                    sock = await open_tunnel(t)
            except (OSError, TimeoutError) as exc:
                failed(exc)
                return
            progress[0] = time.perf_counter()
            socks.append(sock)
            try:
                async with asyncio.timeout(max(1.0, stop - time.perf_counter())):
                    resp = await request(sock, req)
                if resp.status != 200:
                    failed(f"GET through the tunnel answered {resp.status}")
            except (OSError, TimeoutError) as exc:
                failed(exc)

    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(one() for _ in range(count)))
        setup = time.perf_counter() - t0
        await while_held()
    finally:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.close()
    return {"opened": len(socks), "errors": errors, "setup_s": setup, "first_error": first_error}


async def burst(t: Target, n: int) -> float:
    """Seconds until `n` simultaneous fresh CONNECTs are all established (inf on failure)."""
    t0 = time.perf_counter()
    results = await asyncio.gather(*(open_tunnel(t) for _ in range(n)), return_exceptions=True)
    elapsed = time.perf_counter() - t0
    ok = True
    for r in results:
        if isinstance(r, BaseException):
            ok = False
        else:
            r.close()
    return elapsed if ok else float("inf")
