"""End to end: -s (serialize) through the NTLM-verifying parent. With -s, concurrent requests to
an origin that records how many are in flight never overlap; without it they do; a CONNECT
tunnel, once established, and an idle keep-alive client do not block anyone."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from proxyrun import RawClient, conf, get, running_proxy

from pycntlm.demo.origin import HELLO, Origin
from pycntlm.demo.parent import NtlmParent

DELAY = 0.4  # seconds each request spends at the slow origin
CLIENTS = 3


class SlowOrigin:
    """Answers every GET after DELAY seconds, and records the most requests in flight at once."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.peak = 0
        self.served = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                assert head.startswith(b"GET ")
                self.in_flight += 1
                self.peak = max(self.peak, self.in_flight)
                await asyncio.sleep(DELAY)
                self.in_flight -= 1
                self.served += 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nslow\n")
                await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        try:
            yield f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/slow"
        finally:
            self._server.close()
            for writer in self._writers:
                writer.transport.abort()


async def _concurrent_gets(port: int, url: str, slow: SlowOrigin) -> list[int]:
    """One request first (pycntlm gates new credentials until the parent accepts them), then
    CLIENTS at once."""
    assert (await get(port, url)).status == 200
    slow.peak = slow.served = 0
    replies = await asyncio.gather(*(get(port, url) for _ in range(CLIENTS)))
    assert all(r.body == b"slow\n" for r in replies if r.status == 200)
    return [r.status for r in replies]


async def test_serialize_never_overlaps(parent: NtlmParent, tmp_path: Path) -> None:
    slow = SlowOrigin()
    text = conf(parent.address)
    async with slow.running() as url, running_proxy(text, tmp_path, serialize=True) as proxy:
        started = asyncio.get_running_loop().time()
        assert await _concurrent_gets(proxy.port, url, slow) == [200] * CLIENTS
        took = asyncio.get_running_loop().time() - started
    assert slow.served == CLIENTS
    assert slow.peak == 1
    assert took >= CLIENTS * DELAY * 0.9


async def test_without_serialize_requests_overlap(parent: NtlmParent, tmp_path: Path) -> None:
    slow = SlowOrigin()
    async with slow.running() as url, running_proxy(conf(parent.address), tmp_path) as proxy:
        assert await _concurrent_gets(proxy.port, url, slow) == [200] * CLIENTS
    assert slow.peak == CLIENTS


async def test_serialize_tunnel_does_not_block_others(
    parent: NtlmParent, origin: Origin, tmp_path: Path
) -> None:
    async with running_proxy(conf(parent.address), tmp_path, serialize=True) as proxy:
        tunnel = await RawClient.connect(proxy.port)
        idle = await RawClient.connect(proxy.port)
        try:
            # an idle keep-alive client, after one request, holds nothing
            assert (await idle.request("GET", origin.url("/"))).status == 200
            await tunnel.send(f"CONNECT {origin.address} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert (await tunnel.reply("CONNECT", timeout=10)).status == 200
            # the tunnel is open (and silent): others are still served, one at a time
            for _ in range(2):
                reply = await asyncio.wait_for(get(proxy.port, origin.url("/")), 10)
                assert reply.status == 200 and reply.body == HELLO
            # the tunnel itself works
            await tunnel.send(f"GET / HTTP/1.1\r\nHost: {origin.address}\r\n\r\n".encode())
            reply = await tunnel.reply("GET", timeout=10)
            assert reply.status == 200 and reply.body == HELLO
            assert (await idle.request("GET", origin.url("/"))).status == 200
        finally:
            await tunnel.close()
            await idle.close()
    assert proxy.ctx.config.serialize
