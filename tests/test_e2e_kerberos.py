"""Auth GSS end to end: pycntlm -> a parent that verifies Kerberos (keytab) -> origin, with
a real MIT KDC on loopback and the user's ticket cache (KRB5CCNAME)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from proxyrun import RawClient, Reply, conf, get, running_proxy, wait_for
from servers.kdc import KdcInfo, kdc, kerberos_env  # noqa: F401
from servers.squid import SquidInfo, SquidKerberos, squid_proxy

from pycntlm.demo.origin import Origin
from pycntlm.demo.parent import NtlmParent
from pycntlm.negotiate import MEMO

USERS = [("corp-uk", "testuser", "password")]


def gss_conf(parent_port: int) -> str:
    # SPN HTTP@localhost: the parent is named by the host its service principal has
    return f"Auth GSS\nProxy localhost:{parent_port}\nListen 3128\nConnectPorts *\n"


async def test_auth_gss_logs_on_with_the_ticket_and_reuses_the_connection(
    tmp_path: Path,
    kerberos_env: KdcInfo,  # noqa: F811
    origin: Origin,
) -> None:
    MEMO.forget()
    parent = NtlmParent(USERS, keytab=str(kerberos_env.keytab))
    async with parent, running_proxy(gss_conf(parent.port), tmp_path) as proxy:
        client = await RawClient.connect(proxy.port)
        for _ in range(3):
            rep = await client.request("GET", origin.url("/"))
            assert rep.status == 200
        await client.close()
    assert parent.stats.dialects == ["Kerberos"]
    assert parent.stats.logons_ok == 1
    assert parent.stats.logons_failed == 0


async def test_auth_gss_refused_ticket_gives_the_clear_407(
    tmp_path: Path,
    kerberos_env: KdcInfo,  # noqa: F811
    origin: Origin,
) -> None:
    MEMO.forget()
    parent = NtlmParent(USERS)  # no keytab: it refuses every Kerberos ticket
    async with parent, running_proxy(gss_conf(parent.port), tmp_path) as proxy:
        rep = await get(proxy.port, origin.url("/"))
    assert rep.status == 407
    assert b"rejected pycntlm's credentials" in rep.body
    assert parent.stats.logons_failed == 1


# --- AutoKerberos: Auth NTLMv2 (the default) uses the ticket when the parent offers Negotiate ---

NEGOTIATE_NTLM = ("Negotiate", "NTLM")


def ntlm_conf(parent_port: int, extra: str = "") -> str:
    return conf(f"localhost:{parent_port}", extra=extra)


async def three_requests(port: int, origin: Origin) -> None:
    """Two GETs and a POST with a body on one client connection, all answered 200."""
    client = await RawClient.connect(port)
    try:
        for _ in range(2):
            assert (await client.request("GET", origin.url("/"))).status == 200
        rep = await client.request("POST", origin.url("/echo"), body=b"x" * 50_000)
        assert rep.status == 200
        assert b'"length": 50000' in rep.body
    finally:
        await client.close()


async def test_auto_kerberos_uses_the_ticket_when_the_parent_offers_negotiate(
    tmp_path: Path,
    kerberos_env: KdcInfo,  # noqa: F811
    origin: Origin,
) -> None:
    MEMO.forget()
    parent = NtlmParent(USERS, offer=NEGOTIATE_NTLM, keytab=str(kerberos_env.keytab))
    async with parent, running_proxy(ntlm_conf(parent.port), tmp_path) as proxy:
        await three_requests(proxy.port, origin)
        # a second client connection reuses the Kerberos-authenticated parent connection, and
        # a new one (the pool emptied) goes straight to Kerberos: the offer is known
        await three_requests(proxy.port, origin)
        proxy.ctx.pool.clear()
        await three_requests(proxy.port, origin)
        assert proxy.ctx.guard.rejections_total == 0
    assert parent.stats.dialects == ["Kerberos", "Kerberos"]
    assert parent.stats.logons_failed == 0
    assert parent.stats.type1_seen == 2
    assert "NTLM" not in parent.stats.auth_headers_seen


async def test_auto_kerberos_with_an_empty_ticket_cache_uses_ntlm(
    tmp_path: Path,
    kerberos_env: KdcInfo,  # noqa: F811
    origin: Origin,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    MEMO.forget()
    monkeypatch.setenv("KRB5CCNAME", f"FILE:{tmp_path / 'empty-ccache'}")
    parent = NtlmParent(USERS, offer=NEGOTIATE_NTLM, keytab=str(kerberos_env.keytab))
    async with parent, running_proxy(ntlm_conf(parent.port), tmp_path) as proxy:
        await three_requests(proxy.port, origin)
    assert parent.stats.dialects == ["NTLMv2"]
    assert parent.stats.auth_headers_seen == ["NTLM", "NTLM"]  # no probe without a ticket


async def test_auto_kerberos_parent_offering_only_ntlm_gets_ntlm(
    tmp_path: Path,
    kerberos_env: KdcInfo,  # noqa: F811
    origin: Origin,
) -> None:
    MEMO.forget()
    parent = NtlmParent(USERS, offer=("NTLM",), keytab=str(kerberos_env.keytab))
    async with parent, running_proxy(ntlm_conf(parent.port), tmp_path) as proxy:
        await three_requests(proxy.port, origin)
        proxy.ctx.pool.clear()
        await three_requests(proxy.port, origin)
    assert parent.stats.dialects == ["NTLMv2", "NTLMv2"]
    assert parent.stats.logons_failed == 0
    # one credential-less probe on the first connection, then NTLM only
    assert parent.stats.auth_headers_seen == ["NTLM"] * 4


async def test_auto_kerberos_no_uses_ntlm(
    tmp_path: Path,
    kerberos_env: KdcInfo,  # noqa: F811
    origin: Origin,
) -> None:
    MEMO.forget()
    parent = NtlmParent(USERS, offer=NEGOTIATE_NTLM, keytab=str(kerberos_env.keytab))
    async with parent, running_proxy(ntlm_conf(parent.port, "AutoKerberos no"), tmp_path) as proxy:
        await three_requests(proxy.port, origin)
    assert parent.stats.dialects == ["NTLMv2"]
    assert "Negotiate" not in parent.stats.auth_headers_seen


async def test_auto_kerberos_refused_falls_back_to_ntlm_without_a_rejection(
    tmp_path: Path,
    kerberos_env: KdcInfo,  # noqa: F811
    origin: Origin,
) -> None:
    MEMO.forget()
    # the parent's keytab holds another service's keys: it cannot read our HTTP/localhost ticket
    other = kerberos_env.add_service("HTTP/elsewhere.pycntlm.test", tmp_path / "other.keytab")
    parent = NtlmParent(USERS, offer=NEGOTIATE_NTLM, keytab=str(other))
    async with parent, running_proxy(ntlm_conf(parent.port), tmp_path) as proxy:
        await three_requests(proxy.port, origin)
        proxy.ctx.pool.clear()
        await three_requests(proxy.port, origin)  # remembered: NTLM at once
        assert proxy.ctx.stats.auth_rejections == 0
        assert proxy.ctx.guard.rejections_total == 0
        assert proxy.ctx.guard.proven
    assert parent.stats.dialects == ["NTLMv2", "NTLMv2"]
    assert parent.stats.logons_failed == 1  # the one refused ticket
    assert parent.stats.auth_headers_seen.count("Negotiate") == 1


def basic_conf(parent_port: int) -> str:
    return f"Domain corp-uk\nNTLMToBasic yes\nProxy localhost:{parent_port}\nListen 3128\n"


async def test_auto_kerberos_is_off_with_ntlm_to_basic(
    tmp_path: Path,
    kerberos_env: KdcInfo,  # noqa: F811
    origin: Origin,
) -> None:
    # every client logs on as itself, never with the ticket of the user pycntlm runs as
    MEMO.forget()
    parent = NtlmParent(USERS, offer=NEGOTIATE_NTLM, keytab=str(kerberos_env.keytab))
    login = base64.b64encode(b"testuser:password").decode()
    async with parent, running_proxy(basic_conf(parent.port), tmp_path) as proxy:
        headers = {"Proxy-Authorization": f"Basic {login}"}
        rep = await get(proxy.port, origin.url("/"), headers)
        assert rep.status == 200
    assert parent.stats.dialects == ["NTLMv2"]


# --- the same against Debian's squid: negotiate_kerberos_auth first, ntlm_fake_auth second ---


async def squid_requests(port: int, origin: Origin, squid: SquidInfo) -> None:
    await three_requests(port, origin)
    rep = await tunnel_get(port, origin)
    assert rep.status == 200
    assert rep.body.startswith(b"hello")
    assert await wait_for(lambda: squid.count_requests("CONNECT", 200) >= 1)


async def tunnel_get(port: int, origin: Origin) -> Reply:
    client = await RawClient.connect(port)
    try:
        authority = f"127.0.0.1:{origin.port}"
        await client.send(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        assert (await client.reply("CONNECT")).status == 200
        await client.send(f"GET / HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        return await client.reply()
    finally:
        await client.close()


def users_logged(squid: SquidInfo) -> set[str]:
    return {entry.user for entry in squid.entries() if entry.code == 200}


async def test_auto_kerberos_through_squid_negotiate(
    tmp_path: Path,
    kerberos_env: KdcInfo,  # noqa: F811
    origin: Origin,
) -> None:
    MEMO.forget()
    kerberos = SquidKerberos(kerberos_env.keytab, kerberos_env.krb5_config)
    with squid_proxy("negotiate", kerberos=kerberos) as squid:
        text = conf(f"localhost:{squid.port}", auth="NTLM")  # squid's fake NTLM has no NTLMv2
        async with running_proxy(text, tmp_path) as proxy:
            await squid_requests(proxy.port, origin, squid)
            assert proxy.ctx.guard.rejections_total == 0
        assert users_logged(squid) == {f"{kerberos_env.user}@{kerberos_env.realm}"}
        # first contact: one credential-less probe learns the offer; Kerberos needs no 407
        assert squid.count_requests(code=407) == 1


async def test_squid_negotiate_without_a_ticket_gets_ntlm(
    tmp_path: Path,
    kerberos_env: KdcInfo,  # noqa: F811
    origin: Origin,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    MEMO.forget()
    monkeypatch.setenv("KRB5CCNAME", f"FILE:{tmp_path / 'empty-ccache'}")
    kerberos = SquidKerberos(kerberos_env.keytab, kerberos_env.krb5_config)
    with squid_proxy("negotiate", kerberos=kerberos) as squid:
        text = conf(f"localhost:{squid.port}", auth="NTLM")
        async with running_proxy(text, tmp_path) as proxy:
            await squid_requests(proxy.port, origin, squid)
        assert not any("@" in user for user in users_logged(squid))
        assert squid.failed_logins() == 0


async def test_squid_refusing_the_ticket_falls_back_to_ntlm(
    tmp_path: Path,
    kerberos_env: KdcInfo,  # noqa: F811
    origin: Origin,
) -> None:
    MEMO.forget()
    other = kerberos_env.add_service("HTTP/elsewhere.pycntlm.test", tmp_path / "other.keytab")
    with squid_proxy("negotiate", kerberos=SquidKerberos(other, kerberos_env.krb5_config)) as squid:
        text = conf(f"localhost:{squid.port}", auth="NTLM")
        async with running_proxy(text, tmp_path) as proxy:
            await squid_requests(proxy.port, origin, squid)
            proxy.ctx.pool.clear()
            await squid_requests(proxy.port, origin, squid)
            assert proxy.ctx.stats.auth_rejections == 0
            assert proxy.ctx.guard.rejections_total == 0
        assert users_logged(squid) and not any("@" in u for u in users_logged(squid))
