"""Auth GSS end to end: pycntlm -> a parent that verifies Kerberos (keytab) -> origin, with
a real MIT KDC on loopback and the user's ticket cache (KRB5CCNAME)."""

from __future__ import annotations

from pathlib import Path

from proxyrun import RawClient, get, running_proxy
from servers.kdc import KdcInfo, kdc, kerberos_env  # noqa: F401

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
