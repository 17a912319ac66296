"""PoolSpare: pre-authenticated spare connections, end to end against Debian's squid (NTLM).

After a tunnel took its connection, pycntlm authenticates PoolSpare new connections to the
parent with `TRACE http://<parent>/` + `Max-Forwards: 0` (answered by squid itself), so the
next burst of CONNECTs (a `docker pull`) finds them in the pool and pays no NTLM round trips:
in squid's access log those CONNECTs have no 407 before them. The demo parent forwards the
TRACE to itself instead (its inner hop answers 407): pycntlm must then stop priming that parent
without counting a rejection, and keep serving.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from proxyrun import RawClient, conf, get, running_proxy, wait_for
from servers.procs import free_port
from servers.squid import SquidInfo
from servers.squid_tls import SquidTls, squid_tls, squid_tls_session  # noqa: F401

from pycntlm import config, context, creds, server
from pycntlm.demo.origin import Origin
from pycntlm.demo.parent import NtlmParent

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def echo() -> AsyncIterator[int]:
    """A CONNECT target on loopback that echoes what it gets."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()


async def tunnel(port: int, target_port: int) -> RawClient:
    """An established CONNECT tunnel through pycntlm, checked to carry bytes."""
    client = await RawClient.connect(port)
    target = f"127.0.0.1:{target_port}"
    await client.send(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    reply = await client.reply("CONNECT")
    assert reply.status == 200, reply
    await client.send(b"ping")
    assert await asyncio.wait_for(client.reader.readexactly(4), 5) == b"ping"
    return client


def squid_conf(squid: SquidInfo, spares: int) -> str:
    return conf(f"127.0.0.1:{squid.port}", auth="NTLM", spares=spares)


async def test_a_burst_after_a_tunnel_uses_the_spares(
    tmp_path: Path, squid_ntlm: SquidInfo, echo: int
) -> None:
    async with running_proxy(squid_conf(squid_ntlm, 3), tmp_path) as proxy:
        first = await tunnel(proxy.port, echo)
        pool = proxy.ctx.pool
        key = (f"127.0.0.1:{squid_ntlm.port}", proxy.ctx.creds.identity)  # type: ignore[union-attr]
        assert await wait_for(lambda: pool.idle_count(key) == 3)
        assert pool.spares_made == 3
        # three TRACE handshakes, answered by squid itself after the Type 3
        assert await wait_for(lambda: squid_ntlm.count_requests("TRACE", 200) == 3)
        assert squid_ntlm.count_requests("TRACE", 407) == 3
        burst = await asyncio.gather(*(tunnel(proxy.port, echo) for _ in range(3)))
        assert pool.spares_used == 3
        for client in (first, *burst):
            await client.close()
        # squid logs a tunnel when it closes: 4 tunnels, and only the first paid a 407
        assert await wait_for(lambda: squid_ntlm.count_requests("CONNECT", 200) == 4)
        assert squid_ntlm.count_requests("CONNECT", 407) == 1
        assert squid_ntlm.failed_logins() == 0
        # the burst took the spares, so more are made for the next one (bounded by PoolSpare)
        assert await wait_for(lambda: pool.idle_count(key) == 3)
        assert pool.spares_made == 6


async def test_pool_spare_0_makes_none(tmp_path: Path, squid_ntlm: SquidInfo, echo: int) -> None:
    async with running_proxy(squid_conf(squid_ntlm, 0), tmp_path) as proxy:
        client = await tunnel(proxy.port, echo)
        await asyncio.sleep(0.5)
        await client.close()
        assert proxy.ctx.pool.spares_made == 0 and proxy.ctx.pool.idle_count() == 0
    assert squid_ntlm.count_requests("TRACE") == 0


async def test_plain_requests_make_no_spares(
    tmp_path: Path, squid_ntlm: SquidInfo, origin: Origin
) -> None:
    """A GET returns its connection to the pool: nothing to replace."""
    async with running_proxy(squid_conf(squid_ntlm, 3), tmp_path) as proxy:
        assert (await get(proxy.port, origin.url("/"))).status == 200
        await asyncio.sleep(0.5)
        assert proxy.ctx.pool.spares_made == 0
    assert squid_ntlm.count_requests("TRACE") == 0


async def test_no_spares_with_unproven_or_rejected_credentials(
    tmp_path: Path, squid_basic: SquidInfo, echo: int
) -> None:
    """squid with Basic only: a wrong password is rejected once, and nothing else is tried
    in the background (spares need proven NTLM credentials)."""
    text = conf(f"127.0.0.1:{squid_basic.port}", creds_lines="Password wrong", spares=3)
    async with running_proxy(text, tmp_path) as proxy:
        client = await RawClient.connect(proxy.port)
        try:
            target = f"127.0.0.1:{echo}"
            await client.send(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            assert (await client.reply("CONNECT")).status == 407
        finally:
            await client.close()
        await asyncio.sleep(0.5)
        assert proxy.ctx.pool.spares_made == 0
    assert squid_basic.failed_logins() == 1
    assert squid_basic.count_requests("TRACE") == 0


async def test_a_parent_that_forwards_the_trace_is_left_alone(
    tmp_path: Path, parent: NtlmParent, echo: int, caplog: pytest.LogCaptureFixture
) -> None:
    """The demo parent forwards TRACE to itself and its inner hop answers 407: no spare, no
    rejection counted (the guard stays proven), no second try, and tunnels still work."""
    caplog.set_level(logging.INFO, logger="pycntlm")
    async with running_proxy(conf(parent.address, spares=2), tmp_path) as proxy:
        first = await tunnel(proxy.port, echo)
        pool = proxy.ctx.pool
        assert await wait_for(lambda: str(parent.address) in pool.spares_resting)
        assert pool.spares_made == 0 and pool.idle_count() == 0
        assert proxy.ctx.guard.proven and proxy.ctx.stats.auth_rejections == 0
        second = await tunnel(proxy.port, echo)
        await asyncio.sleep(0.3)
        assert pool.filling == set() and pool.spares_made == 0
        await first.close()
        await second.close()
    assert "no spare connections for 300 s (the parent answered 407 to the Type 3)" in caplog.text
    assert parent.stats.logons_failed == 0


async def test_reload_drops_the_spares_and_makes_new_ones(
    tmp_path: Path, squid_ntlm: SquidInfo, echo: int
) -> None:
    """Spares belong to a configuration generation: a reload closes them; the next tunnel makes
    spares for the new generation; shutdown leaves no spare task behind."""
    port = free_port()
    path = tmp_path / "c.conf"
    text = squid_conf(squid_ntlm, 2).replace("Listen 127.0.0.1:3128", f"Listen 127.0.0.1:{port}")
    path.write_text(text)

    def build() -> context.Context:
        cfg = config.load(["-c", str(path), "-f"], default_path="/nonexistent")
        return context.build(dataclasses.replace(cfg, password=None), creds.from_config(cfg, "WS"))

    srv = server.Server(build(), build)
    await srv.start()
    task = asyncio.get_running_loop().create_task(srv.serve_until_stopped(grace=1))
    try:
        first = await tunnel(port, echo)
        old = srv.ctx.pool
        assert await wait_for(lambda: old.idle_count() == 2)
        srv.reload()
        new = srv.ctx.pool
        assert new is not old and old.idle_count() == 0 and new.idle_count() == 0
        second = await tunnel(port, echo)
        assert await wait_for(lambda: new.idle_count() == 2)
        assert new.spares_made == 2 and old.spares_made == 2
        await first.close()
        await second.close()
    finally:
        srv.stop()
        await asyncio.wait_for(task, 10)
    assert new.idle_count() == 0 and not new.spare_tasks and not old.spare_tasks
    assert await wait_for(lambda: squid_ntlm.count_requests("TRACE", 200) == 4)


async def test_spares_over_a_tls_parent(
    tmp_path: Path,
    squid_tls: SquidTls,  # noqa: F811
    echo: int,
) -> None:
    """`Proxy https://`: the spares are TLS connections, primed the same way (squid's TLS port
    answers the TRACE itself), and a burst uses them."""
    parent = squid_tls.https_parent
    text = conf(parent, auth="NTLM", spares=2, extra=f"ProxyCAFile {squid_tls.ca_pem}")
    async with running_proxy(text, tmp_path) as proxy:
        first = await tunnel(proxy.port, echo)
        pool = proxy.ctx.pool
        assert await wait_for(lambda: pool.idle_count() == 2)
        burst = await asyncio.gather(*(tunnel(proxy.port, echo) for _ in range(2)))
        assert pool.spares_used == 2
        for client in (first, *burst):
            await client.close()
    assert await wait_for(lambda: squid_tls.info.count_requests("TRACE", 200) >= 2)
    assert await wait_for(lambda: squid_tls.info.count_requests("CONNECT", 200) == 3)
    assert squid_tls.info.count_requests("CONNECT", 407) == 1
