"""End to end: CONNECT tunnels, failover, NoProxy direct routes, and a bank of bad input."""

from __future__ import annotations

import asyncio
import hashlib
import socket
from pathlib import Path

import pytest
from proxyrun import RawClient, conf, get, running_proxy
from servers.tls import TlsMaterial

from pycntlm.demo.origin import Origin, pattern
from pycntlm.demo.parent import NtlmParent


def dead_port() -> int:
    """A loopback port with nothing listening (bound then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def tls_get_through_tunnel(
    proxy_port: int, origin: Origin, tls: TlsMaterial, path: str
) -> bytes:
    client = await RawClient.connect(proxy_port)
    authority = f"localhost:{origin.port}"
    await client.send(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b"close" not in head.lower()
    await client.writer.start_tls(tls.client_context, server_hostname="localhost")
    await client.send(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    rep = await client.reply()
    await client.close()
    assert rep.status == 200
    return rep.body


async def test_connect_tunnel_carries_tls(
    tmp_path: Path, parent: NtlmParent, tls_origin: Origin, server_tls: TlsMaterial
) -> None:
    async with running_proxy(conf(parent.address), tmp_path) as proxy:
        body = await tls_get_through_tunnel(proxy.port, tls_origin, server_tls, "/bytes/20000000")
        assert hashlib.sha256(body).digest() == hashlib.sha256(pattern(20_000_000)).digest()
        # a second tunnel reuses nothing but must authenticate fine as well
        body = await tls_get_through_tunnel(proxy.port, tls_origin, server_tls, "/")
    assert b"hello" in body
    assert parent.stats.logons_failed == 0


async def test_tunnel_half_close_delivers_everything(tmp_path: Path, parent: NtlmParent) -> None:
    got = bytearray()
    done = asyncio.Event()

    async def echo_then_close(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        data = await r.read()  # until the client half-closes
        w.write(data[::-1])
        await w.drain()
        w.close()
        done.set()

    target = await asyncio.start_server(echo_then_close, "127.0.0.1", 0)
    port = target.sockets[0].getsockname()[1]
    async with running_proxy(conf(parent.address), tmp_path) as proxy:
        client = await RawClient.connect(proxy.port)
        await client.send(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head = await client.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        await client.send(b"abc" * 1000)
        client.writer.write_eof()
        got += await asyncio.wait_for(client.reader.read(), 10)
        await client.close()
    target.close()
    assert bytes(got) == (b"abc" * 1000)[::-1]


async def test_failover_to_second_parent_and_sticky(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    down = f"127.0.0.1:{dead_port()}"
    async with running_proxy(conf(down, parent.address), tmp_path) as proxy:
        for _ in range(3):
            rep = await get(proxy.port, origin.url("/"))
            assert rep.status == 200
        assert str(proxy.ctx.upstreams.current) == parent.address
    assert parent.stats.logons_ok >= 1


async def test_all_parents_down_gives_502_naming_them(tmp_path: Path, origin: Origin) -> None:
    a, b = f"127.0.0.1:{dead_port()}", f"127.0.0.1:{dead_port()}"
    async with running_proxy(conf(a, b), tmp_path) as proxy:
        rep = await get(proxy.port, origin.url("/"))
        assert rep.status == 502
        assert a.encode() in rep.body and b.encode() in rep.body
        assert b"password" not in rep.body
        # the server keeps serving
        rep = await get(proxy.port, origin.url("/"))
        assert rep.status == 502


async def test_blackhole_parent_fails_over_within_timeout(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    async def never_answer(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    hole = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    hole_addr = f"127.0.0.1:{hole.sockets[0].getsockname()[1]}"
    text = conf(hole_addr, parent.address, extra="HandshakeTimeout 1")
    async with running_proxy(text, tmp_path) as proxy:
        rep = await asyncio.wait_for(get(proxy.port, origin.url("/")), 10)
    hole.close()
    assert rep.status == 200


async def test_noproxy_goes_direct_and_never_answers_web_ntlm(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    text = conf(parent.address, extra="NoProxy localhost, 127.0.0.*")
    async with running_proxy(text, tmp_path) as proxy:
        rep = await get(proxy.port, origin.url("/"))
        assert rep.status == 200
        rep = await get(proxy.port, origin.url("/ntlm"))
        assert rep.status == 401
    assert parent.stats.connections == 0
    assert origin.stats.auth_headers_seen == []
    assert origin.stats.targets[0] == "/"  # origin-form, not absolute


async def test_noproxy_connect_direct(
    tmp_path: Path, parent: NtlmParent, tls_origin: Origin, server_tls: TlsMaterial
) -> None:
    text = conf(parent.address, extra="NoProxy localhost")
    async with running_proxy(text, tmp_path) as proxy:
        body = await tls_get_through_tunnel(proxy.port, tls_origin, server_tls, "/")
    assert b"hello" in body
    assert parent.stats.connections == 0


BAD_REQUESTS = [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /relative HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET http://127.0.0.1/ HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400),
    (b"GET http://127.0.0.1/ HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    (b"GET http://127.0.0.1/ HTTP/1.1\r\nX: a\r\n folded\r\n\r\n", 400),
    (b"GET http://127.0.0.1/ HTTP/1.1\r\nX: a\x00b\r\n\r\n", 400),
    (b"GET http://127.0.0.1/ HTTP/9.9\r\n\r\n", 505),
    (
        b"POST http://127.0.0.1/ HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n",
        400,
    ),
    (b"POST http://127.0.0.1/ HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST http://127.0.0.1/ HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n", 400),
    (b"CONNECT nohost HTTP/1.1\r\n\r\n", 400),
    (b"CONNECT host:99999 HTTP/1.1\r\n\r\n", 400),
    (b"GET http://127.0.0.1/ HTTP/1.1\r\n" + b"X-Big: " + b"a" * 70000 + b"\r\n\r\n", 431),
    (
        b"GET http://127.0.0.1/ HTTP/1.1\r\n"
        + b"".join(b"X-%d: v\r\n" % i for i in range(500))
        + b"\r\n",
        431,
    ),
]


@pytest.mark.parametrize(("raw", "status"), BAD_REQUESTS)
async def test_bad_input_gets_4xx_and_server_keeps_serving(
    tmp_path: Path, parent: NtlmParent, origin: Origin, raw: bytes, status: int
) -> None:
    async with running_proxy(conf(parent.address), tmp_path) as proxy:
        client = await RawClient.connect(proxy.port)
        await client.send(raw)
        rep = await client.reply()
        await client.close()
        assert rep.status == status
        good = await get(proxy.port, origin.url("/"))
        assert good.status == 200


@pytest.mark.parametrize(
    ("ports", "port", "allowed"),
    [
        ("", 443, True),
        ("", 8443, True),
        ("", 25, False),
        ("", 5000, False),
        ("5000-5010", 5005, True),
        ("5000-5010", 443, False),
    ],
)
async def test_connect_port_policy(
    tmp_path: Path, parent: NtlmParent, ports: str, port: int, allowed: bool
) -> None:
    text = conf(parent.address, connect_ports=ports, extra="NoProxy 127.0.0.1")
    async with running_proxy(text, tmp_path) as proxy:
        client = await RawClient.connect(proxy.port)
        await client.send(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        rep = await client.reply("CONNECT")
        await client.close()
    if allowed:
        assert rep.status != 403  # (nothing listens there: 502 from the direct connect)
    else:
        assert rep.status == 403
        assert b"ConnectPorts" in rep.body


async def test_unknown_method_is_forwarded(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    async with running_proxy(conf(parent.address), tmp_path) as proxy:
        client = await RawClient.connect(proxy.port)
        rep = await client.request("PROPFIND", origin.url("/"))
        await client.close()
    assert rep.status in (200, 404, 405, 501)
    assert origin.stats.requests == 1


async def test_unreachable_target_answer_from_parent_passes_through(
    tmp_path: Path, parent: NtlmParent
) -> None:
    async with running_proxy(conf(parent.address), tmp_path) as proxy:
        rep = await get(proxy.port, f"http://127.0.0.1:{dead_port()}/")
    assert rep.status == 502
    assert b"pycntlm" not in rep.body  # the parent's own answer, passed through


async def test_standalone_serves_directly_while_every_parent_is_down(
    tmp_path: Path, origin: Origin, tls_origin: Origin, server_tls: TlsMaterial
) -> None:
    text = conf(f"127.0.0.1:{dead_port()}", extra="Standalone yes")
    async with running_proxy(text, tmp_path) as proxy:
        rep = await get(proxy.port, origin.url("/"))
        assert rep.status == 200
        body = await tls_get_through_tunnel(proxy.port, tls_origin, server_tls, "/")
        assert b"hello" in body
        assert proxy.ctx.stats.by_route.get("standalone") == 1


async def test_status_endpoint_has_counters_and_no_secrets(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        status_port = s.getsockname()[1]
    text = conf(parent.address, extra=f"StatusListen 127.0.0.1:{status_port}")
    async with running_proxy(text, tmp_path) as proxy:
        for _ in range(3):
            assert (await get(proxy.port, origin.url("/"))).status == 200
        r, w = await asyncio.open_connection("127.0.0.1", status_port)
        w.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        page = (await asyncio.wait_for(r.read(), 5)).decode()
        w.close()
    assert 'pycntlm_responses_total{status="200"} 3' in page
    assert f'pycntlm_parent_up{{parent="{parent.address}"}} 1' in page
    assert "pycntlm_pool_idle_connections" in page
    assert "pycntlm_auth_locked_out 0" in page
    for secret in ("password", "testuser", "corp-uk"):
        assert secret not in page


async def test_protocol_switch_101_relays_both_ways(tmp_path: Path, parent: NtlmParent) -> None:
    seen: list[bytes] = []

    async def switching_origin(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        head = await r.readuntil(b"\r\n\r\n")
        seen.append(head)
        w.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        while data := await r.read(65536):
            w.write(data.upper())
        w.close()

    srv = await asyncio.start_server(switching_origin, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    text = conf(parent.address, extra="NoProxy 127.0.0.1")
    async with running_proxy(text, tmp_path) as proxy:
        client = await RawClient.connect(proxy.port)
        await client.send(
            f"GET http://127.0.0.1:{port}/chat HTTP/1.1\r\nHost: x\r\n"
            "Connection: Upgrade\r\nUpgrade: echo\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101")
        assert b"Upgrade: echo" in head
        await client.send(b"ping")
        assert await asyncio.wait_for(client.reader.readexactly(4), 5) == b"PING"
        await client.close()
    srv.close()
    assert b"Upgrade: echo" in seen[0]


async def test_broken_chunked_answer_closes_without_injecting_an_error(
    tmp_path: Path, parent: NtlmParent
) -> None:
    async def bad_chunks(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n")
        await w.drain()
        await asyncio.sleep(5)

    srv = await asyncio.start_server(bad_chunks, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    async with running_proxy(conf(parent.address, extra="NoProxy 127.0.0.1"), tmp_path) as proxy:
        client = await RawClient.connect(proxy.port)
        await client.send(f"GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = await asyncio.wait_for(client.reader.read(), 5)  # closed, not held open
        await client.close()
    srv.close()
    assert data.startswith(b"HTTP/1.1 200 OK")
    assert b"pycntlm" not in data  # no error answer written into the middle of a body
    assert b"zz" not in data  # the broken part is not passed on
