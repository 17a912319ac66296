"""Parents that offer only Basic: pycntlm -> Debian's squid (basic_ncsa_auth) or the demo parent
-> origin. Basic authenticates each request, so every request carries the header, on fresh and
pooled connections and CONNECT, and a wrong password costs at most one failed login."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from proxyrun import PASS_NT, PASS_NTLMV2, RawClient, Reply, conf, get, running_proxy, wait_for
from servers.squid import SquidInfo, squid_proxy

from pycntlm import config, context, server
from pycntlm.cli import credentials_for
from pycntlm.demo.origin import Origin
from pycntlm.demo.parent import NtlmParent

LOGIN = "corp-uk\\testuser"  # Domain is set, so pycntlm sends DOMAIN\user
SQUID_USERS = {LOGIN: "password"}
TOKEN = base64.b64encode(f"{LOGIN}:password".encode()).decode()
BASIC_ONLY = ('Basic realm="corp"',)
USERS = [("corp-uk", "testuser", "password")]


@pytest.fixture(scope="module")
def squid_domain_session() -> Iterator[SquidInfo]:
    with squid_proxy("basic", users=SQUID_USERS) as info:
        yield info


@pytest.fixture
def squid(squid_domain_session: SquidInfo) -> SquidInfo:
    return squid_domain_session.fresh_view()


def assert_clean(rep: Reply) -> None:
    """Nothing of the parent's authentication reaches the client."""
    names = {name.lower() for name, _ in rep.headers}
    assert not names & {"proxy-authorization", "proxy-authenticate"}
    assert TOKEN.encode() not in rep.body


async def tunnel_get(port: int, origin: Origin) -> Reply:
    client = await RawClient.connect(port)
    try:
        authority = f"127.0.0.1:{origin.port}"
        await client.send(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        established = await client.reply("CONNECT")
        assert established.status == 200
        assert_clean(established)
        await client.send(f"GET / HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        return await client.reply()
    finally:
        await client.close()


async def test_squid_basic_get_and_connect_send_the_header_on_every_request(
    tmp_path: Path, squid: SquidInfo, origin: Origin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="pycntlm")
    async with running_proxy(conf(f"127.0.0.1:{squid.port}"), tmp_path) as proxy:
        client = await RawClient.connect(proxy.port)
        try:
            for i in range(5):
                rep = await client.request("GET", origin.url(f"/bytes/{100 + i}"))
                assert rep.status == 200
                assert len(rep.body) == 100 + i
                assert_clean(rep)
                names = {name.lower() for name, _ in origin.stats.last_headers}
                assert "proxy-authorization" not in names
        finally:
            await client.close()
        # the first CONNECT takes the pooled connection, the second a fresh one
        for _ in range(2):
            rep = await tunnel_get(proxy.port, origin)
            assert rep.status == 200
            assert rep.body.startswith(b"hello")
        assert proxy.ctx.pool.reused >= 4
    assert await wait_for(lambda: squid.count_requests("CONNECT", 200) == 2)
    authed = [e for e in squid.entries() if e.code == 200]
    assert len(authed) == 7
    assert {e.user for e in authed} == {LOGIN.replace("\\", "\\\\")}  # squid escapes it
    # one 407 only: the first contact's NTLM Type 1, which taught pycntlm the parent's offer
    assert squid.count_requests(code=407) == 1
    assert squid.failed_logins() == 0
    assert origin.stats.auth_headers_seen == []
    assert TOKEN not in caplog.text
    assert "password" not in caplog.text


async def test_squid_basic_wrong_password_costs_one_failed_login_for_20_requests(
    tmp_path: Path, squid: SquidInfo, origin: Origin
) -> None:
    text = conf(f"127.0.0.1:{squid.port}", creds_lines="Password wrong-password")
    async with running_proxy(text, tmp_path) as proxy:
        client = await RawClient.connect(proxy.port)
        try:
            for _ in range(10):
                rep = await client.request("GET", origin.url("/"))
                assert rep.status == 407
                assert b"rejected pycntlm's credentials" in rep.body
                assert rep.header("proxy-authenticate") is None
        finally:
            await client.close()
        replies = await asyncio.gather(*(get(proxy.port, origin.url("/")) for _ in range(10)))
        assert [r.status for r in replies] == [407] * 10
        assert proxy.ctx.guard.rejections_total == 1
    assert await wait_for(lambda: squid.failed_logins() >= 1)
    await asyncio.sleep(0.3)  # a second failure would be logged by now
    assert squid.failed_logins() == 1
    assert origin.stats.requests == 0


@pytest.mark.parametrize("hashes", [f"PassNT {PASS_NT}", f"PassNTLMv2 {PASS_NTLMV2}"])
async def test_squid_basic_with_hashes_only_gives_a_clear_502(
    tmp_path: Path,
    squid: SquidInfo,
    origin: Origin,
    hashes: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    text = conf(f"127.0.0.1:{squid.port}", creds_lines=hashes)
    async with running_proxy(text, tmp_path) as proxy:
        for _ in range(3):
            rep = await get(proxy.port, origin.url("/"))
            assert rep.status == 502
            assert b"only Basic" in rep.body
            assert b"plaintext password" in rep.body
            assert f"127.0.0.1:{squid.port}".encode() in rep.body
        assert proxy.ctx.guard.rejections_total == 0
    assert "Traceback" not in caplog.text
    assert await wait_for(lambda: squid.count_requests(code=407) >= 1)
    await asyncio.sleep(0.3)
    assert squid.count_requests(code=407) == 1  # learned once, then not asked again
    assert squid.failed_logins() == 0


async def test_demo_basic_parent_post_body_and_reconnects(tmp_path: Path, origin: Origin) -> None:
    # A parent that closes after every 407: the first contact restarts on a new connection,
    # which then carries Basic at once; request bodies are sent once, with the header.
    parent = NtlmParent(USERS, offer=BASIC_ONLY, close_after_challenge=True)
    async with parent, running_proxy(conf(parent.address), tmp_path) as proxy:
        client = await RawClient.connect(proxy.port)
        try:
            for i in range(3):
                body = bytes([65 + i]) * 100_000
                rep = await client.request("POST", origin.url("/echo"), body=body)
                assert rep.status == 200
                echo = json.loads(rep.body)
                assert echo["length"] == len(body)
                assert echo["sha256"] == hashlib.sha256(body).hexdigest()
        finally:
            await client.close()
    assert parent.stats.dialects == ["Basic"] * 3
    assert parent.stats.logons_failed == 0
    assert parent.stats.requests_per_connection[-1] == 3  # the pooled one carried all three


async def test_demo_basic_password_changed_on_a_pooled_connection_is_one_rejection(
    tmp_path: Path, origin: Origin
) -> None:
    parent = NtlmParent(USERS, offer=BASIC_ONLY)
    async with parent, running_proxy(conf(parent.address), tmp_path) as proxy:
        rep = await get(proxy.port, origin.url("/"))
        assert rep.status == 200
        assert proxy.ctx.pool.idle_count() == 1
        parent.set_users([("corp-uk", "testuser", "new-password")])
        replies = [await get(proxy.port, origin.url("/")) for _ in range(5)]
        assert [r.status for r in replies] == [407] * 5
        replies = await asyncio.gather(*(get(proxy.port, origin.url("/")) for _ in range(5)))
        assert [r.status for r in replies] == [407] * 5
    assert parent.stats.logons_failed == 1
    assert parent.stats.dialects == ["Basic"]


def conf_b(parent: NtlmParent) -> str:
    return f"Domain corp-uk\nNTLMToBasic yes\nProxy {parent.address}\nListen 3128\n"


async def test_ntlm_to_basic_users_log_on_to_a_basic_parent_as_themselves(
    tmp_path: Path, origin: Origin
) -> None:
    users = [("corp-uk", "alice", "alice-pw"), ("corp-uk", "bob", "bob-pw")]
    parent = NtlmParent(users, offer=BASIC_ONLY)
    async with parent, running_proxy(conf_b(parent), tmp_path) as proxy:
        for user in ("alice", "bob", "alice"):
            token = base64.b64encode(f"{user}:{user}-pw".encode()).decode()
            rep = await get(proxy.port, origin.url("/"), {"Proxy-Authorization": f"Basic {token}"})
            assert rep.status == 200
        token = base64.b64encode(b"bob:wrong").decode()
        rep = await get(proxy.port, origin.url("/"), {"Proxy-Authorization": f"Basic {token}"})
        assert rep.status == 407
    assert parent.stats.dialects == ["Basic"] * 3
    assert parent.stats.logons_failed == 1


async def test_reload_forgets_the_basic_parent_and_rearms_the_password(
    tmp_path: Path, origin: Origin
) -> None:
    path = tmp_path / "c.conf"
    parent = NtlmParent(USERS, offer=BASIC_ONLY)
    listen = f"Listen 127.0.0.1:{free_port()}"
    async with parent:
        text = conf(parent.address, creds_lines="Password wrong")
        path.write_text(text.replace("Listen 127.0.0.1:3128", listen))
        srv = server.Server(build(path), lambda: build(path))
        await srv.start()
        task = asyncio.get_running_loop().create_task(srv.serve_until_stopped(grace=1))
        try:
            port = srv.addresses[0][1]
            assert (await get(port, origin.url("/"))).status == 407
            assert (await get(port, origin.url("/"))).status == 407  # locked: not sent
            assert parent.stats.auth_headers_seen == ["NTLM", "Basic"]
            path.write_text(conf(parent.address).replace("Listen 127.0.0.1:3128", listen))
            srv.reload()
            port = srv.addresses[0][1]
            assert (await get(port, origin.url("/"))).status == 200
        finally:
            srv.stop()
            await asyncio.wait_for(task, 10)
    # a new generation learns the parent's offer again (it may have changed with the config)
    assert parent.stats.auth_headers_seen == ["NTLM", "Basic", "NTLM", "Basic"]
    assert parent.stats.logons_failed == 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build(path: Path) -> context.Context:
    cfg = config.load(["-c", str(path), "-f"], default_path="/nonexistent")
    return context.build(dataclasses.replace(cfg, password=None), credentials_for(cfg))
