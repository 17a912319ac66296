"""NTLMToBasic (-B): clients log in with Basic; pycntlm authenticates upstream as each of them."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

from proxyrun import RawClient, running_proxy

from pycntlm.demo.origin import Origin
from pycntlm.demo.parent import NtlmParent

USERS = [("corp-uk", "alice", "alice-pw"), ("corp-uk", "bob", "bob-pw")]


def basic(login: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{login}:{password}".encode()).decode()
    return {"Proxy-Authorization": f"Basic {token}"}


def conf_b(parent: NtlmParent) -> str:
    return f"Domain corp-uk\nNTLMToBasic yes\nProxy {parent.address}\nListen 3128\n"


async def test_two_users_at_once_never_share_connections(tmp_path: Path, origin: Origin) -> None:
    async with NtlmParent(USERS) as parent, running_proxy(conf_b(parent), tmp_path) as proxy:
        alice = await RawClient.connect(proxy.port)
        bob = await RawClient.connect(proxy.port)
        try:
            for _ in range(5):
                ra, rb = await asyncio.gather(
                    alice.request("GET", origin.url("/"), basic("alice", "alice-pw")),
                    bob.request("GET", origin.url("/"), basic("corp-uk\\bob", "bob-pw")),
                )
                assert (ra.status, rb.status) == (200, 200)
        finally:
            await alice.close()
            await bob.close()
        keys = {key[1] for key in proxy.ctx.pool._idle}
        assert keys == {"corp-uk\\alice", "corp-uk\\bob"}
    # one NTLM logon per user, each on its own upstream connection, never shared
    assert parent.stats.logons_ok == 2
    assert sorted(parent.stats.requests_per_connection) == [5, 5]
    assert "Basic" not in parent.stats.auth_headers_seen


async def test_no_basic_credentials_gets_a_basic_challenge(tmp_path: Path, origin: Origin) -> None:
    async with NtlmParent(USERS) as parent, running_proxy(conf_b(parent), tmp_path) as proxy:
        client = await RawClient.connect(proxy.port)
        rep = await client.request("GET", origin.url("/"))
        assert rep.status == 407
        assert rep.header("proxy-authenticate") == 'Basic realm="pycntlm"'
        # the same connection then logs in
        rep = await client.request("GET", origin.url("/"), basic("bob@corp-uk", "bob-pw"))
        assert rep.status == 200
        await client.close()
    assert parent.stats.connections == 1


async def test_one_users_wrong_password_does_not_lock_out_the_other(
    tmp_path: Path, origin: Origin
) -> None:
    async with NtlmParent(USERS) as parent, running_proxy(conf_b(parent), tmp_path) as proxy:
        c = await RawClient.connect(proxy.port)
        for _ in range(10):
            rep = await c.request("GET", origin.url("/"), basic("alice", "wrong"))
            assert rep.status == 407
            assert b"rejected pycntlm's credentials" in rep.body
        rep = await c.request("GET", origin.url("/"), basic("bob", "bob-pw"))
        assert rep.status == 200
        await c.close()
    assert parent.stats.logons_failed == 1
    assert parent.stats.logons_ok == 1
