"""Connections: buffered reads for heads and bodies, then a zero-await relay (the hot loop).

Owns: one TCP connection as an asyncio Protocol (`Conn`), connect with timeout, bounded head
reads, and `relay()` which splices two connections together with backpressure, half-close and
an idle timeout. Must not: parse HTTP beyond finding a head's end, know about NTLM or routing.

Why a Protocol and not streams: in relay mode `data_received` writes straight into the peer's
transport and flow control is the transports' own pause/resume callbacks, so a tunnel costs no
task wake-ups, awaits or extra copies per chunk (see ../shared/FACTS.md: ~2-3x less CPU/GiB).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
from typing import cast

from pycntlm import http1, splice
from pycntlm.errors import ProtocolError

READ_HIGH_WATER = 1 << 20  # buffered bytes before we stop reading from the socket
# A relayed stream that has moved this many bytes one way is handed to the splice relay
# (splice.py): half the CPU per byte, but four more descriptors, so only for bulk tunnels.
# PYCNTLM_SPLICE=0 keeps every relay on the Protocol path (for side-by-side benchmarks).
PROMOTE_AT = 1 << 20
SPLICE_ON = splice.AVAILABLE and os.environ.get("PYCNTLM_SPLICE", "1") != "0"
SPLICED = [0]  # relays moved to splice so far (for tests and the status endpoint)
READ_CHUNK = 256 * 1024  # largest piece handed out by read_some()
WRITE_HIGH_WATER = 1 << 20  # transport write buffer before pause_writing()
JOIN_LIMIT = 64 * 1024  # a head and up to this much body go out in one write (one syscall)


class ConnectionClosed(Exception):
    """The peer went away (EOF or reset) while we were waiting for it."""

    def __init__(self, conn: Conn, what: str = "connection closed") -> None:
        self.conn = conn
        super().__init__(what)


class Conn(asyncio.Protocol):
    """One TCP connection. Starts in buffered mode; `relay()` switches a pair to relay mode."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._eof = False
        self._lost = False
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._can_write = True
        self._peer: Conn | None = None  # set in relay mode
        # Relay mode: resolved when the relay should end; its result True means "move this
        # relay to splice" (set by data_received once PROMOTE_AT bytes have gone through).
        self._relay_done: asyncio.Future[bool] | None = None
        self._may_promote = False
        self._eof_sent = False
        self.relayed = 0  # bytes this side received and handed to its peer in relay mode
        self.on_made: asyncio.Future[None] | None = None
        # Client side: True while waiting for the next request on a kept-alive connection
        # (shutdown closes those at once); `stop_after_response` ends the keep-alive loop.
        self.idle = False
        self.stop_after_response = False
        self.last_method = ""  # client side: the method of the request being answered
        self.peername: tuple[str, int] = ("?", 0)
        self.tls = False  # a TLS transport: no half-close (asyncio's cannot write_eof)
        # Body mode (relay_length): this side hands the next `_left` bytes to `_sink` straight
        # from data_received; `_feeder` is the reverse link, for backpressure only.
        self._sink: Conn | None = None
        self._left = 0
        self._body_done: asyncio.Future[bool] | None = None
        self._feeder: Conn | None = None
        self.spare = False  # an authenticated spare not yet used (spares.py, pool.py)

    # -- asyncio.Protocol callbacks -------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the Transport API without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self.tls = transport.get_extra_info("ssl_object") is not None
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peername = (str(peer[0]), int(peer[1]))
        if self.on_made is not None and not self.on_made.done():
            self.on_made.set_result(None)

    def data_received(self, data: bytes) -> None:
        sink = self._sink
        if sink is not None:
            data = self._to_sink(sink, data)
            if not data:
                return
        peer = self._peer
        if peer is not None:
            self.relayed += len(data)
            assert peer.transport is not None
            peer.transport.write(data)
            if self._may_promote and self.relayed >= PROMOTE_AT:
                self._may_promote = peer._may_promote = False
                done = self._relay_done
                if done is not None and not done.done():
                    done.set_result(True)
            return
        self._buf += data
        if len(self._buf) > READ_HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
        self._wake()

    def _to_sink(self, sink: Conn, data: bytes) -> bytes:
        """Body mode: pass on what belongs to the body; return the bytes after it."""
        left = self._left
        if sink._lost or sink.transport is None:
            self._end_body(False)
            return data
        if len(data) < left:
            sink.transport.write(data)
            self._left = left - len(data)
            return b""
        sink.transport.write(data[:left] if len(data) > left else data)
        self._left = 0
        self._end_body(True)
        return data[left:]

    def _end_body(self, complete: bool) -> None:
        sink = self._sink
        if sink is not None:
            sink._feeder = None
        self._sink = None
        done = self._body_done
        if done is not None and not done.done():
            done.set_result(complete)

    def eof_received(self) -> bool:
        if self._sink is not None:
            self._end_body(False)
        self._eof = True
        peer = self._peer
        if peer is not None:
            peer._send_eof()
            self._check_relay_done()
        self._wake()
        # Keep the transport open: we may still write (half-close). A TLS transport closes
        # itself after EOF whatever we answer (and asyncio warns if we answer True).
        return not self.tls

    def connection_lost(self, exc: Exception | None) -> None:
        if self._sink is not None:
            self._end_body(False)
        if self._feeder is not None:
            self._feeder._end_body(False)
        self._eof = True
        self._lost = True
        self._can_write = False
        self._wake()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)
        if self._relay_done is not None and not self._relay_done.done():
            self._relay_done.set_result(False)

    def pause_writing(self) -> None:
        self._can_write = False
        feeder = self._feeder
        if feeder is not None and feeder.transport is not None and not feeder._lost:
            feeder.transport.pause_reading()
        peer = self._peer
        if peer is not None and peer.transport is not None and not peer._lost:
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        self._can_write = True
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)
        feeder = self._feeder
        if feeder is not None and feeder.transport is not None and not feeder._lost:
            feeder.transport.resume_reading()
        peer = self._peer
        if peer is not None and peer.transport is not None and not peer._lost:
            peer.transport.resume_reading()

    # -- buffered mode ----------------------------------------------------------------------
    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _wait_data(self, timeout: float) -> None:
        """Wait for data, EOF or loss; TimeoutError after `timeout` seconds. A plain timer on
        the future, cheaper than asyncio.timeout (no task cancellation): this runs twice per
        request (the client's next head, the parent's answer)."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _time_out, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _take(self, n: int) -> bytes:
        data = bytes(self._buf[:n])
        del self._buf[:n]
        if (
            self.transport is not None
            and not self._lost
            and len(self._buf) <= READ_HIGH_WATER
            and not self.transport.is_reading()
        ):
            self.transport.resume_reading()
        return data

    @property
    def at_eof(self) -> bool:
        """True when the peer has sent EOF and nothing is left in our buffer."""
        return self._eof and not self._buf

    @property
    def is_closed(self) -> bool:
        return self._lost or self.transport is None or self.transport.is_closing()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def is_reusable(self) -> bool:
        """An idle connection can be reused when open, not at EOF, with nothing unread."""
        return not self.is_closed and not self._eof and not self._buf

    async def read_head(
        self, timeout: float, total: float | None = None, max_size: int = http1.MAX_HEAD_SIZE
    ) -> bytes | None:
        """The next message head (through its blank line), or None at a clean EOF before any
        byte. `timeout` bounds the wait for the first byte; once a head has begun, `total`
        (default: `timeout`) bounds the whole head, so a trickled head cannot hold us for long.
        Raises TimeoutError, ProtocolError (431 too big, 400 truncated)."""
        scan_from = 0
        deadline: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            if self._buf and deadline is None:
                deadline = loop.time() + (timeout if total is None else total)
            end = http1.find_head_end(self._buf, scan_from, max_size)
            if end >= 0:
                return self._take(end)
            if self._eof:
                if not self._buf:
                    return None
                raise ProtocolError("connection closed in the middle of a message head", 400)
            scan_from = max(0, len(self._buf) - 3)
            wait = timeout if deadline is None else deadline - loop.time()
            if wait <= 0:
                raise TimeoutError
            await self._wait_data(wait)

    async def read_some(self, timeout: float, limit: int = READ_CHUNK) -> bytes:
        """Whatever is available (at most `limit` bytes), waiting for some; b"" at EOF."""
        while not self._buf:
            if self._eof:
                return b""
            await self._wait_data(timeout)
        return self._take(min(limit, len(self._buf)))

    def unread(self, data: bytes) -> None:
        """Put back bytes that belong to the next message."""
        if data:
            self._buf[:0] = data

    # -- writing ------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self._lost or self.transport is None:
            raise ConnectionClosed(self)
        self.transport.write(data)

    async def drain(self, timeout: float) -> None:
        if self._lost:
            raise ConnectionClosed(self)
        if self._can_write:
            return
        loop = asyncio.get_running_loop()
        self._drain_waiter = loop.create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._drain_waiter
        finally:
            self._drain_waiter = None
        if self._lost:
            raise ConnectionClosed(self)

    async def send(self, data: bytes, timeout: float) -> None:
        self.write(data)
        await self.drain(timeout)

    def _send_eof(self) -> None:
        if self._eof_sent or self._lost or self.transport is None:
            return
        self._eof_sent = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._check_relay_done()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- relay mode -----------------------------------------------------------------------------
    def _check_relay_done(self) -> None:
        peer = self._peer
        if peer is None or self._relay_done is None or self._relay_done.done():
            return
        if self._eof and peer._eof and self._eof_sent and peer._eof_sent:
            self._relay_done.set_result(False)


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


async def open_conn(
    host: str, port: int, timeout: float, tls: ssl.SSLContext | None = None
) -> Conn:
    """Connect with a timeout (TLS handshake included when `tls` is given; the server name is
    `host`). Raises OSError / TimeoutError / ssl.SSLError as they come (callers translate)."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        if tls is None:
            _, proto = await loop.create_connection(Conn, host, port)
        else:
            _, proto = await loop.create_connection(
                Conn, host, port, ssl=tls, server_hostname=host, ssl_handshake_timeout=timeout
            )
    return proto


async def relay_length(
    src: Conn, dst: Conn, length: int, idle_timeout: float, prefix: bytes = b""
) -> None:
    """Move exactly `length` body bytes from src to dst in body mode: src's data_received
    writes them straight into dst's transport (no task wake-up per chunk; dst's backpressure
    pauses src); bytes after the body stay in src's buffer for the next message. `prefix` (the
    message's head) goes first, in one write with the bytes already here when they are few.
    Raises ConnectionClosed when src ends early or dst goes away, TimeoutError when nothing
    moves for idle_timeout seconds."""
    first = min(len(src._buf), length)
    if first and prefix and first <= JOIN_LIMIT:
        dst.write(prefix + src._take(first))
    else:
        if prefix:
            dst.write(prefix)
        if first:
            dst.write(src._take(first))
    if first == length:
        return
    if src._lost or src._eof:
        raise ConnectionClosed(src, "body ended early")
    if dst._lost or dst.transport is None or src.transport is None:
        raise ConnectionClosed(dst)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bool] = loop.create_future()
    src._sink, src._left, src._body_done, dst._feeder = dst, length - first, done, src
    if dst._can_write:
        src.transport.resume_reading()
    else:
        src.transport.pause_reading()
    last = -1
    try:
        while not done.done():
            try:
                async with asyncio.timeout(idle_timeout):
                    await asyncio.shield(done)
            except TimeoutError:
                if src._left == last:
                    raise
                last = src._left
    finally:
        src._end_body(False)
        src._body_done = None
    if not done.result():
        if dst._lost:
            raise ConnectionClosed(dst)
        raise ConnectionClosed(src, "body ended early")
    # dst's backpressure may have left src paused: reading now follows src's own buffer again
    if not src._lost:
        if len(src._buf) > READ_HIGH_WATER:
            src.transport.pause_reading()
        else:
            src.transport.resume_reading()


async def relay(a: Conn, b: Conn, idle_timeout: float) -> tuple[int, int]:
    """Relay bytes both ways until both sides have closed (or one resets, or nothing moves for
    idle_timeout seconds). Returns (bytes a->b, bytes b->a), counting what was buffered before.
    Starts on the Protocol relay; a stream that turns out to be bulk moves to splice.py."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bool] = loop.create_future()
    _attach(a, b, done)
    a._may_promote = b._may_promote = SPLICE_ON and _spliceable(a) and _spliceable(b)
    start_a, start_b = len(a._buf), len(b._buf)
    counted = (0, 0)
    last = (-1, -1)
    try:
        while True:
            if done.done():
                if not done.result():
                    break
                spliced = await _splice(a, b, idle_timeout)
                if spliced is not None:
                    counted = spliced
                    break
                done = loop.create_future()  # splice was not possible: Protocol relay again
                _attach(a, b, done)
                continue
            try:
                async with asyncio.timeout(idle_timeout):
                    await asyncio.shield(done)
            except TimeoutError:
                now = (a.relayed, b.relayed)
                if now == last:
                    break
                last = now
    finally:
        a._peer = b._peer = None
        a._relay_done = b._relay_done = None
        a._may_promote = b._may_promote = False
        a.close()
        b.close()
    return a.relayed + start_a + counted[0], b.relayed + start_b + counted[1]


def _attach(a: Conn, b: Conn, done: asyncio.Future[bool]) -> None:
    """Put a pair in Protocol relay mode: hand over what each had buffered, wire the peers,
    mirror the current backpressure and EOF state."""
    a._relay_done = b._relay_done = done
    for src, dst in ((a, b), (b, a)):
        if src._buf and not dst._lost and dst.transport is not None:
            dst.transport.write(bytes(src._buf))
        src._buf.clear()
        src._peer = dst
    for src, dst in ((a, b), (b, a)):
        if src.transport is not None and not src._lost:
            if dst._can_write:
                src.transport.resume_reading()
            else:
                src.transport.pause_reading()
        if src._eof:
            dst._send_eof()
    if (a._lost or b._lost) and not done.done():
        done.set_result(False)


def _spliceable(conn: Conn) -> bool:
    t = conn.transport
    if t is None or conn._lost:
        return False
    if conn.tls:
        return False  # TLS: the bytes on the socket are not the bytes we relay
    sock = t.get_extra_info("socket")
    return sock is not None and sock.type == socket.SOCK_STREAM


async def _splice(a: Conn, b: Conn, idle_timeout: float) -> tuple[int, int] | None:
    """Move a running Protocol relay onto splice: stop both transports reading, let their write
    buffers empty, then relay on duplicated descriptors. Returns the bytes it moved each way,
    or None when it cannot (out of descriptors, a side closing): the caller re-attaches the
    Protocol relay, which carries on where this left off (bytes read meanwhile are in _buf)."""
    conns = (a, b)
    for c in conns:
        c._peer = None
        c._relay_done = None
        if c.transport is not None and not c._lost:
            c.transport.pause_reading()
            c.transport.set_write_buffer_limits(high=0)
    try:
        for c in conns:
            await c.drain(idle_timeout)
        fds = [_dup(c) for c in conns] if not (a._lost or b._lost) else []
    except (ConnectionClosed, TimeoutError, OSError):
        fds = []
    for c in conns:
        if c.transport is not None and not c._lost:
            c.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
    if len(fds) != 2 or -1 in fds:
        for fd in fds:
            if fd >= 0:
                os.close(fd)
        return None
    try:
        sr = splice.SpliceRelay(fds[0], fds[1], bytes(a._buf), bytes(b._buf))
    except OSError:
        return None  # SpliceRelay closed the descriptors
    SPLICED[0] += 1
    pending = (len(a._buf), len(b._buf))
    a._buf.clear()
    b._buf.clear()
    last = (-1, -1)
    try:
        sr.start(a._eof, b._eof)
        while not sr.done.done():
            try:
                async with asyncio.timeout(idle_timeout):
                    await asyncio.shield(sr.done)
            except TimeoutError:
                now = (sr.a_to_b, sr.b_to_a)
                if now == last:
                    break
                last = now
    finally:
        sr.close()
    return sr.a_to_b + pending[0], sr.b_to_a + pending[1]


def _dup(conn: Conn) -> int:
    """A duplicate of the connection's socket descriptor, or -1 when its write buffer is not
    empty (bytes would be reordered) or it has no socket."""
    t = conn.transport
    if t is None or t.get_write_buffer_size():
        return -1
    sock = t.get_extra_info("socket")
    return -1 if sock is None else os.dup(sock.fileno())


def set_keepalive(conn: Conn) -> None:
    """TCP keepalive on long-lived connections so dead peers are found (best effort)."""
    if conn.transport is None:
        return
    sock = conn.transport.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
