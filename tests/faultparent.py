"""Fault injection on loopback for tests: a controllable fake parent, and a slow target.

FaultParent listens on 127.0.0.1 and treats each new connection as its current `mode` says
(the mode can change at any time; it applies to connections accepted afterwards):

  relay      pass bytes both ways to `backend` (usually a real NtlmParent). Options:
             idle_close=S   close (FIN) a connection after S seconds with no traffic, the way
                            squid/Bluecoat drop idle keep-alive connections;
             stale_after=S  a connection idle for S seconds is reset (RST) when the next request
                            bytes arrive, and those bytes are dropped: the keep-alive race where
                            the parent's close crosses our request on the wire;
             reset_on_head=N  reset the connection instead of forwarding its Nth request head
                            (1: after NTLM Type 1, before the challenge; 2: after Type 3);
             respond_on_head=N  answer the Nth request head with `response` (not forwarded)
                            and close: a pooled, authenticated connection that answers garbage.
  blackhole  accept, read and drop everything, never answer.
  reset      read one request head, then reset the connection (RST).
  respond    read one request head, send `response` (any bytes: garbage, a partial head, a
             head with a short body), then close.
  refuse     nothing listens on the port (connect gets ECONNREFUSED): see refuse() / listen().

die() aborts every open connection on both sides (mid-tunnel, mid-response).
Counters live in .stats. Only ever binds 127.0.0.1 and connects to the given loopback backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any

HEAD_END = b"\r\n\r\n"


@dataclass
class FaultStats:
    connections: int = 0  # accepted
    heads: int = 0  # request heads seen from clients (relay mode: approximate, by CRLFCRLF)
    bytes_in: int = 0  # bytes received from clients
    resets: int = 0  # connections we reset on purpose
    idle_closed: int = 0  # connections closed by idle_close
    live: int = 0  # connections open now


class FaultParent:
    def __init__(
        self,
        backend: tuple[str, int] | None = None,
        *,
        mode: str = "relay",
        idle_close: float | None = None,
        stale_after: float | None = None,
        reset_on_head: int | None = None,
        respond_on_head: int | None = None,
        response: bytes = b"",
    ) -> None:
        self.backend = backend
        self.mode = mode
        self.idle_close = idle_close
        self.stale_after = stale_after
        self.reset_on_head = reset_on_head
        self.respond_on_head = respond_on_head
        self.response = response
        self.port = 0
        self.stats = FaultStats()
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.BaseTransport] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def listen(self) -> None:
        """Start (or start again, on the same port) listening."""
        if self._server is None:
            self._server = await asyncio.start_server(
                self._serve, "127.0.0.1", self.port, reuse_address=True
            )
            self.port = self._server.sockets[0].getsockname()[1]

    def refuse(self) -> None:
        """Stop listening: new connections are refused; open ones are left alone."""
        if self._server is not None:
            self._server.close()
            self._server = None

    def die(self) -> None:
        """Abort every open connection, client and backend side (the parent crashed)."""
        for transport in list(self._transports):
            transport.abort()

    async def close(self) -> None:
        self.refuse()
        self.die()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    async def __aenter__(self) -> FaultParent:
        await self.listen()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- per connection ------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._transports.add(writer.transport)
        self.stats.connections += 1
        self.stats.live += 1
        try:
            if self.mode == "relay":
                await self._relay(reader, writer)
            elif self.mode == "blackhole":
                while data := await reader.read(65536):
                    self.stats.bytes_in += len(data)
            else:
                await self._one_head(reader, writer)
        except (OSError, RuntimeError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # RuntimeError: uvloop's write on a transport aborted meanwhile
        finally:
            self.stats.live -= 1
            self._transports.discard(writer.transport)
            self._tasks.discard(task)
            writer.close()

    async def _one_head(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(HEAD_END)
        self.stats.bytes_in += len(head)
        self.stats.heads += 1
        if self.mode == "reset":
            self.stats.resets += 1
            writer.transport.abort()
            return
        writer.write(self.response)
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        # wait (bounded) for the other side to close, so the bytes are not lost to an RST
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader.read(), 5)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self.backend is not None
        up_r, up_w = await asyncio.wait_for(asyncio.open_connection(*self.backend), 5)
        self._transports.add(up_w.transport)
        last = [time.monotonic()]
        heads = [0]
        try:
            pumps = [
                asyncio.ensure_future(self._pump_up(reader, up_w, last, heads, writer)),
                asyncio.ensure_future(self._pump_down(up_r, writer, last)),
            ]
            watch = None
            if self.idle_close is not None:
                watch = asyncio.ensure_future(self._idle_watch(last, writer, up_w))
            try:
                # both directions until EOF (half-close kept), or the first error
                await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
            finally:
                for t in [*pumps, watch]:
                    if t is not None:
                        t.cancel()
                await asyncio.gather(*pumps, *([watch] if watch else []), return_exceptions=True)
        finally:
            self._transports.discard(up_w.transport)
            up_w.close()

    async def _pump_up(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        last: list[float],
        heads: list[int],
        client: asyncio.StreamWriter,
    ) -> None:
        while data := await src.read(65536):
            now = time.monotonic()
            if self.stale_after is not None and now - last[0] >= self.stale_after:
                self.stats.resets += 1
                client.transport.abort()
                dst.transport.abort()
                return
            self.stats.bytes_in += len(data)
            n = data.count(HEAD_END)
            self.stats.heads += n
            heads[0] += n
            if self.reset_on_head is not None and heads[0] >= self.reset_on_head:
                self.stats.resets += 1
                client.transport.abort()
                dst.transport.abort()
                return
            if self.respond_on_head is not None and heads[0] >= self.respond_on_head:
                client.write(self.response)
                await client.drain()
                client.close()
                dst.close()
                return
            last[0] = now
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()

    @staticmethod
    async def _pump_down(
        src: asyncio.StreamReader, dst: asyncio.StreamWriter, last: list[float]
    ) -> None:
        while data := await src.read(65536):
            last[0] = time.monotonic()
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()

    async def _idle_watch(
        self, last: list[float], client: asyncio.StreamWriter, up: asyncio.StreamWriter
    ) -> None:
        assert self.idle_close is not None
        while True:
            idle = time.monotonic() - last[0]
            if idle >= self.idle_close:
                self.stats.idle_closed += 1
                client.close()
                up.close()
                return
            await asyncio.sleep(self.idle_close - idle + 0.01)


class SlowTarget:
    """An HTTP/1.1 target on 127.0.0.1 that waits `delay` seconds before each answer, then
    sends `size` bytes of body in `pieces` pieces spread over `trickle` seconds."""

    def __init__(
        self, delay: float = 0.0, size: int = 1000, pieces: int = 1, trickle: float = 0.0
    ) -> None:
        self.delay = delay
        self.size = size
        self.pieces = pieces
        self.trickle = trickle
        self.port = 0
        self.requests = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def __aenter__(self) -> SlowTarget:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            while await reader.readuntil(HEAD_END):
                self.requests += 1
                await asyncio.sleep(self.delay)
                writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {self.size}\r\n\r\n".encode())
                step = max(1, self.size // self.pieces)
                for i in range(0, self.size, step):
                    writer.write(b"s" * min(step, self.size - i))
                    await writer.drain()
                    if self.pieces > 1:
                        await asyncio.sleep(self.trickle / self.pieces)
        except (OSError, RuntimeError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # RuntimeError: uvloop's write on a transport aborted meanwhile
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def live_tasks() -> int:
    return len(asyncio.all_tasks())


class LeakCheck:
    """Open fds and asyncio tasks of this process (pycntlm in-process and the test servers),
    compared before and after a fault with the pool emptied on both sides (pooled connections
    are kept on purpose, everything else must be gone once things settle)."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.fds = 0
        self.tasks = 0

    async def _settled(self) -> tuple[int, int]:
        self.ctx.pool.clear()
        seen: list[tuple[int, int]] = []
        for _ in range(20):  # until two readings 0.1 s apart agree (at most 2 s)
            await asyncio.sleep(0.1)
            seen.append((open_fds(), live_tasks()))
            if len(seen) >= 2 and seen[-1] == seen[-2]:
                break
        return seen[-1]

    async def __aenter__(self) -> LeakCheck:
        self.fds, self.tasks = await self._settled()
        return self

    async def __aexit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None:
            return
        await self.check()

    async def check(self, settle: float = 8.0) -> None:
        """Wait (bounded) until fds and tasks are back at the baseline; assert they are."""
        deadline = time.monotonic() + settle
        while True:
            fds, tasks = await self._settled()
            stats = self.ctx.stats
            clean = (
                fds <= self.fds
                and tasks <= self.tasks
                and stats.clients_active == 0
                and stats.tunnels_active == 0
            )
            if clean or time.monotonic() > deadline:
                break
        assert fds <= self.fds, f"fd leak: {self.fds} before, {fds} after {settle} s"
        assert tasks <= self.tasks, f"task leak: {self.tasks} before, {tasks} after {settle} s"
        assert stats.clients_active == 0, f"{stats.clients_active} clients still active"
        assert stats.tunnels_active == 0, f"{stats.tunnels_active} tunnels still active"
