"""A TLS-terminating TCP forwarder: TLS on a loopback port in front of a plain server.

Owns putting a real TLS endpoint (a test CA's certificate) in front of a real plain server such
as the demo NTLM-verifying parent, one backend connection per accepted connection, so the
backend's per-connection counters still mean what they say. Must not: listen or connect anywhere
but loopback, look at the bytes it pipes, or outlive `close()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass

READ_SIZE = 256 * 1024


@dataclass
class FrontStats:
    accepted: int = 0  # TLS handshakes completed (asyncio calls the handler after the handshake)
    bytes_in: int = 0  # client -> backend
    bytes_out: int = 0  # backend -> client


class TlsFront:
    """TLS on host:port (port 0: any), piping each connection to backend_host:backend_port."""

    def __init__(
        self,
        backend_host: str,
        backend_port: int,
        tls: ssl.SSLContext,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        idle_timeout: float = 30.0,
    ) -> None:
        self.backend = (backend_host, backend_port)
        self.host = host
        self.port = port
        self.stats = FrontStats()
        self._tls = tls
        self._timeout = idle_timeout
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def parent(self) -> str:
        """The `Proxy` value that reaches this front over TLS."""
        return f"https://{self.address}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, ssl=self._tls, ssl_handshake_timeout=10
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening, abort open connections, wait (bounded) for their handlers."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)

    def drop_connections(self, graceful: bool = False) -> None:
        """Close every open connection (as a parent closing idle ones; graceful: TLS
        close_notify and FIN, else a reset); keep listening."""
        for writer in list(self._writers):
            if graceful:
                writer.close()
            else:
                writer.transport.abort()

    async def __aenter__(self) -> TlsFront:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.stats.accepted += 1
        up_writer: asyncio.StreamWriter | None = None
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.backend), self._timeout
            )
            self._writers.add(up_writer)
            await asyncio.gather(
                self._pipe(reader, up_writer, "bytes_in"),
                self._pipe(up_reader, writer, "bytes_out"),
            )
        except (OSError, TimeoutError):
            pass
        finally:
            self._tasks.discard(task)
            for w in (writer, up_writer):
                if w is not None:
                    self._writers.discard(w)
                    w.close()

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, counter: str
    ) -> None:
        """Copy until EOF or an idle timeout; then pass the EOF on (or close, where TLS cannot
        half-close). An error aborts `dst`, which ends the other direction too."""
        try:
            while True:
                data = await asyncio.wait_for(src.read(READ_SIZE), self._timeout)
                if not data:
                    break
                setattr(self.stats, counter, getattr(self.stats, counter) + len(data))
                dst.write(data)
                await asyncio.wait_for(dst.drain(), self._timeout)
        except (OSError, TimeoutError):
            dst.transport.abort()
            return
        if dst.transport.is_closing():
            return
        with contextlib.suppress(OSError, RuntimeError):  # uvloop: RuntimeError once closed
            if dst.can_write_eof():
                dst.write_eof()
            else:
                dst.close()
