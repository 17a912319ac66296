"""net.relay_length: a fixed-length body moved from one Conn to another in body mode.

outer_src -> [src Conn ==relay_length==> dst Conn] -> outer_dst, on real loopback sockets.
Correctness only: exact bytes, what follows the body stays for the next message, backpressure
from a slow reader, and the failures (source ends early, destination goes away, stall)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from pycntlm import net

MIB = 1024 * 1024


@dataclass
class Pair:
    outer_src: socket.socket
    src: net.Conn
    dst: net.Conn
    outer_dst: socket.socket


async def conn_pair() -> tuple[socket.socket, net.Conn]:
    """A raw non-blocking socket and a Conn at the other end of one loopback connection."""
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as srv:
        outer = socket.create_connection(srv.getsockname())
        inner, _ = srv.accept()
    outer.setblocking(False)
    inner.setblocking(False)
    _, conn = await loop.connect_accepted_socket(net.Conn, inner)
    return outer, conn


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    outer_src, src = await conn_pair()
    outer_dst, dst = await conn_pair()
    yield Pair(outer_src, src, dst, outer_dst)
    for c in (src, dst):
        c.abort()
    for s in (outer_src, outer_dst):
        s.close()


async def recv_exactly(sock: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    out = bytearray()
    while len(out) < n:
        chunk = await loop.sock_recv(sock, min(1 << 20, n - len(out)))
        assert chunk, f"EOF after {len(out)} of {n} bytes"
        out += chunk
    return bytes(out)


async def test_exact_body_and_the_next_message_stays(pair: Pair) -> None:
    body = os.urandom(20 * MIB)
    loop = asyncio.get_running_loop()
    sender = loop.create_task(loop.sock_sendall(pair.outer_src, body + b"NEXT / HTTP/1.1\r\n\r\n"))
    await asyncio.sleep(0.01)  # part of the body is buffered before body mode starts
    got, _ = await asyncio.wait_for(
        asyncio.gather(
            recv_exactly(pair.outer_dst, len(body)),
            net.relay_length(pair.src, pair.dst, len(body), 10),
        ),
        60,
    )
    await sender
    assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest()
    assert await pair.src.read_head(5) == b"NEXT / HTTP/1.1\r\n\r\n"


async def test_slow_reader_holds_the_source_back_then_reading_resumes(pair: Pair) -> None:
    """dst's reader pauses: src must stop reading (bounded memory), and once the body is
    through, src reads again (its next message is not stuck behind a pause)."""
    body = os.urandom(48 * MIB)
    loop = asyncio.get_running_loop()
    sender = loop.create_task(loop.sock_sendall(pair.outer_src, body + b"AFTER\r\n\r\n"))
    relay = loop.create_task(net.relay_length(pair.src, pair.dst, len(body), 10))
    await asyncio.sleep(0.5)  # nobody reads outer_dst: everything backs up
    assert not relay.done()
    buffered = pair.src.buffered + pair.dst.transport.get_write_buffer_size()  # type: ignore[union-attr]
    assert buffered <= 4 * MIB, buffered
    got = await asyncio.wait_for(recv_exactly(pair.outer_dst, len(body)), 60)
    await asyncio.wait_for(relay, 10)
    await sender
    assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest()
    assert await pair.src.read_head(5) == b"AFTER\r\n\r\n"


async def test_source_ending_early_is_connection_closed(pair: Pair) -> None:
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(pair.outer_src, b"x" * 1000)
    pair.outer_src.shutdown(socket.SHUT_WR)
    with pytest.raises(net.ConnectionClosed) as info:
        await asyncio.wait_for(net.relay_length(pair.src, pair.dst, 5000, 10), 10)
    assert info.value.conn is pair.src
    assert await recv_exactly(pair.outer_dst, 1000) == b"x" * 1000


async def test_destination_going_away_is_connection_closed(pair: Pair) -> None:
    loop = asyncio.get_running_loop()
    relay = loop.create_task(net.relay_length(pair.src, pair.dst, 10 * MIB, 10))
    await loop.sock_sendall(pair.outer_src, b"y" * 65536)
    await asyncio.sleep(0.05)
    pair.dst.abort()
    with pytest.raises(net.ConnectionClosed) as info:
        await asyncio.wait_for(relay, 10)
    assert info.value.conn is pair.dst


async def test_nothing_moving_times_out(pair: Pair) -> None:
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(pair.outer_src, b"z" * 100)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(net.relay_length(pair.src, pair.dst, 1000, 0.3), 10)


async def test_a_body_already_buffered_needs_no_body_mode(pair: Pair) -> None:
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(pair.outer_src, b"abcdefREST\r\n\r\n")
    await pair.src.read_some(5, 1)  # wait until the bytes are in src's buffer, take "a"
    await net.relay_length(pair.src, pair.dst, 5, 5)
    assert await recv_exactly(pair.outer_dst, 5) == b"bcdef"
    assert await pair.src.read_head(5) == b"REST\r\n\r\n"


@pytest.mark.parametrize("size", [100, net.JOIN_LIMIT + 1], ids=["joined", "separate"])
async def test_the_head_goes_first(pair: Pair, size: int) -> None:
    """A prefix (the message head) is written before the body: with the buffered body bytes
    in one write when they are few, else on its own; the bytes are the same either way."""
    loop = asyncio.get_running_loop()
    body = os.urandom(size)
    await loop.sock_sendall(pair.outer_src, body)
    while pair.src.buffered < size:  # bounded by the test timeout
        await asyncio.sleep(0.01)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size
    await net.relay_length(pair.src, pair.dst, size, 5, head)
    assert await recv_exactly(pair.outer_dst, len(head) + size) == head + body
