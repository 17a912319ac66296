"""The relay fast paths: splice.SpliceRelay on real loopback sockets, the promotion of a bulk
tunnel from the Protocol relay to splice inside pycntlm, and many simultaneous tunnels.

Correctness only (bytes, order, half-close, resets, backpressure, descriptors); speed is
bench/'s business."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import resource
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from proxyrun import RawClient, conf, running_proxy

from pycntlm import net, splice
from pycntlm.context import Context
from pycntlm.demo.origin import Origin, pattern, pattern_sha256
from pycntlm.demo.parent import NtlmParent

pytestmark = pytest.mark.skipif(not splice.AVAILABLE, reason="os.splice is Linux-only")

MIB = 1024 * 1024


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two connected, non-blocking loopback TCP sockets."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        a = socket.create_connection(srv.getsockname())
        b, _ = srv.accept()
    for s in (a, b):
        s.setblocking(False)
    return a, b


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


class Ends:
    """outer_a <-> [inner_a ==SpliceRelay== inner_b] <-> outer_b"""

    def __init__(self) -> None:
        self.outer_a, inner_a = tcp_pair()
        inner_b, self.outer_b = tcp_pair()
        self.inner = (inner_a, inner_b)

    def relay(self, a_pending: bytes = b"", b_pending: bytes = b"") -> splice.SpliceRelay:
        a, b = self.inner
        return splice.SpliceRelay(a.detach(), b.detach(), a_pending, b_pending)

    def close(self) -> None:
        for s in (self.outer_a, self.outer_b, *self.inner):
            s.close()


@pytest.fixture
def ends() -> Iterator[Ends]:
    e = Ends()
    yield e
    e.close()


async def send_all(sock: socket.socket, data: bytes, eof: bool = True) -> None:
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, data)
    if eof:
        sock.shutdown(socket.SHUT_WR)


async def recv_all(sock: socket.socket, limit: int = 1 << 30) -> bytes:
    loop = asyncio.get_running_loop()
    out = bytearray()
    while len(out) <= limit:
        chunk = await loop.sock_recv(sock, 1 << 20)
        if not chunk:
            break
        out += chunk
    return bytes(out)


async def test_bulk_both_ways_with_half_close(ends: Ends) -> None:
    up, down = os.urandom(24 * MIB), os.urandom(40 * MIB)
    sr = ends.relay()
    sr.start()
    got_b, got_a, _, _ = await asyncio.wait_for(
        asyncio.gather(
            recv_all(ends.outer_b),
            recv_all(ends.outer_a),
            send_all(ends.outer_a, up),
            send_all(ends.outer_b, down),
        ),
        60,
    )
    await asyncio.wait_for(sr.done, 10)
    assert sr.error is None
    assert hashlib.sha256(got_b).digest() == hashlib.sha256(up).digest()
    assert hashlib.sha256(got_a).digest() == hashlib.sha256(down).digest()
    assert (sr.a_to_b, sr.b_to_a) == (len(up), len(down))
    sr.close()


async def test_pending_bytes_go_first_in_order(ends: Ends) -> None:
    sr = ends.relay(a_pending=b"first-", b_pending=b"early-")
    sr.start()
    _, _, got_b, got_a = await asyncio.wait_for(
        asyncio.gather(
            send_all(ends.outer_a, b"then-the-rest"),
            send_all(ends.outer_b, b"late"),
            recv_all(ends.outer_b),
            recv_all(ends.outer_a),
        ),
        10,
    )
    assert got_b == b"first-then-the-rest"
    assert got_a == b"early-late"
    sr.close()


async def test_one_way_eof_keeps_the_other_direction_open(ends: Ends) -> None:
    sr = ends.relay()
    sr.start()
    loop = asyncio.get_running_loop()
    ends.outer_a.shutdown(socket.SHUT_WR)  # a is done sending; it still reads
    assert await asyncio.wait_for(loop.sock_recv(ends.outer_b, 10), 5) == b""  # EOF passed on
    await send_all(ends.outer_b, b"answer after the half-close")
    assert await asyncio.wait_for(recv_all(ends.outer_a), 5) == b"answer after the half-close"
    await asyncio.wait_for(sr.done, 5)
    assert sr.error is None
    sr.close()


async def test_backpressure_slow_reader_bounds_what_is_in_flight(ends: Ends) -> None:
    """The destination does not read: the relay must stop reading the source (the sender's
    send buffer fills up) instead of buffering without limit."""
    sr = ends.relay()
    sr.start()
    ends.outer_a.setblocking(False)
    sent = 0
    chunk = b"x" * 65536
    for _ in range(4000):  # bounded: at most 256 MiB offered
        try:
            sent += ends.outer_a.send(chunk)
        except BlockingIOError:
            await asyncio.sleep(0.05)
            try:
                sent += ends.outer_a.send(chunk)
            except BlockingIOError:
                break
        if sent % (4 * MIB) == 0:
            await asyncio.sleep(0)
    # socket buffers on loopback (a few MiB each) plus one pipe: far below what was offered
    assert sent < 64 * MIB, sent
    assert sr.a_to_b <= sent
    got = await asyncio.wait_for(_drain_then_finish(ends, sent), 30)
    assert got == sent
    sr.close()


async def _drain_then_finish(ends: Ends, expected: int) -> int:
    loop = asyncio.get_running_loop()
    total = 0
    while total < expected:
        chunk = await loop.sock_recv(ends.outer_b, 1 << 20)
        assert chunk
        total += len(chunk)
    return total


async def test_reset_ends_the_relay_with_the_error(ends: Ends) -> None:
    sr = ends.relay()
    sr.start()
    ends.outer_b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ends.outer_b.close()  # RST
    loop = asyncio.get_running_loop()
    for _ in range(50):  # bounded: keep sending until the relay notices the reset
        if sr.done.done():
            break
        with contextlib.suppress(OSError):
            await loop.sock_sendall(ends.outer_a, b"y" * 65536)
        await asyncio.sleep(0.02)
    await asyncio.wait_for(sr.done, 5)
    assert sr.error is not None
    sr.close()


async def test_close_releases_every_descriptor() -> None:
    before = fd_count()
    for _ in range(20):
        e = Ends()
        sr = e.relay()
        sr.start()
        sr.close()
        e.close()
    assert fd_count() <= before


# ---------------------------------------------------------------- inside pycntlm


async def connect_tunnel(port: int, authority: str) -> RawClient:
    client = await RawClient.connect(port)
    await client.send(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    rep = await client.reply("CONNECT", timeout=10)
    assert rep.status == 200
    return client


@pytest.mark.parametrize("spliced", [True, False], ids=["splice", "protocol"])
async def test_tunnel_100_mib_down_and_20_mib_up_sha256(
    tmp_path: Path,
    parent: NtlmParent,
    origin: Origin,
    spliced: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(net, "SPLICE_ON", spliced)
    size = 100 * MIB
    upload = pattern(20 * MIB)
    before = net.SPLICED[0]
    async with running_proxy(conf(parent.address), tmp_path) as proxy:
        client = await connect_tunnel(proxy.port, origin.address)
        try:
            await client.send(f"GET /bytes/{size} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            rep = await client.reply(timeout=60)
            assert hashlib.sha256(rep.body).hexdigest() == pattern_sha256(size)
            head = f"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {len(upload)}\r\n\r\n"
            await client.send(head.encode() + upload)
            rep = await client.reply(timeout=60)
            assert rep.status == 200
            assert hashlib.sha256(upload).hexdigest().encode() in rep.body
            # the tunnel still carries small exchanges after the bulk ones
            await client.send(b"GET /bytes/10 HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await client.reply(timeout=10)).body == pattern(10)
        finally:
            await client.close()
        assert proxy.ctx.stats.tunnels_active == 0 or await _settles(proxy.ctx)
    assert (net.SPLICED[0] > before) is spliced


async def _settles(ctx: Context) -> bool:
    for _ in range(100):
        if ctx.stats.tunnels_active == 0:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_spliced_tunnel_half_close_and_no_descriptor_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Direct tunnel (no parent) to an echo server that answers only after the client's EOF:
    promotion happens mid-upload, the EOF must still arrive, and every descriptor the splice
    path opened (dups, pipes) must be closed afterwards."""
    monkeypatch.setattr(net, "PROMOTE_AT", 256 * 1024)
    payload = os.urandom(8 * MIB)

    async def reverse_after_eof(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        data = await r.read()
        w.write(hashlib.sha256(data).digest() + data[:1000])
        await w.drain()
        w.close()

    srv = await asyncio.start_server(reverse_after_eof, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    before_spliced = net.SPLICED[0]
    try:
        async with running_proxy(conf(), tmp_path) as proxy:
            fds = fd_count()
            client = await connect_tunnel(proxy.port, f"127.0.0.1:{port}")
            client.writer.write(payload)
            await client.writer.drain()
            client.writer.write_eof()
            got = await asyncio.wait_for(client.reader.read(), 20)
            await client.close()
            assert got == hashlib.sha256(payload).digest() + payload[:1000]
            for _ in range(100):  # bounded settle
                if fd_count() <= fds:
                    break
                await asyncio.sleep(0.05)
            assert fd_count() <= fds
    finally:
        srv.close()
        await srv.wait_closed()
    assert net.SPLICED[0] == before_spliced + 1


async def test_2000_simultaneous_tunnels_all_carry_data(tmp_path: Path) -> None:
    n = 2000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = n * 4 + 500  # client + proxy's two + echo server's one per tunnel
    if hard < need:
        pytest.fail(f"this test needs RLIMIT_NOFILE >= {need}; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))

    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
        w.close()

    srv = await asyncio.start_server(echo, "127.0.0.1", 0, backlog=4096)
    port = srv.sockets[0].getsockname()[1]
    clients: list[RawClient] = []
    try:
        async with running_proxy(conf(), tmp_path) as proxy:
            sem = asyncio.Semaphore(200)

            async def open_one() -> RawClient:
                async with sem:
                    return await connect_tunnel(proxy.port, f"127.0.0.1:{port}")

            clients = list(
                await asyncio.wait_for(asyncio.gather(*(open_one() for _ in range(n))), 120)
            )
            assert proxy.ctx.stats.tunnels_active == n

            async def ping(i: int, c: RawClient) -> bytes:
                msg = f"tunnel {i} ".encode() * 50
                await c.send(msg)
                return await c.reader.readexactly(len(msg))

            answers = await asyncio.wait_for(
                asyncio.gather(*(ping(i, c) for i, c in enumerate(clients))), 120
            )
            assert all(a == f"tunnel {i} ".encode() * 50 for i, a in enumerate(answers))
    finally:
        for c in clients:
            c.writer.close()
        srv.close()
        await srv.wait_closed()
