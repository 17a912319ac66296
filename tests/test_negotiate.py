"""Kerberos (pycntlm.negotiate) against a real MIT KDC and the Kerberos-enabled demo parent.

Everything runs on 127.0.0.1: the KDC (tests/servers/kdc.py) with its own krb5.conf, keytab and
ticket caches in temp dirs; the parent verifies tokens with pyspnego's acceptor and the keytab.
"""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import spnego
from servers.kdc import CLOCK_SKEW, KdcInfo, kdc, kerberos_env  # noqa: F401

from pycntlm.demo.origin import HELLO, Origin
from pycntlm.demo.parent import DEFAULT_OFFER, NtlmParent
from pycntlm.errors import HandshakeError
from pycntlm.negotiate import (
    MEMO,
    NOT_INSTALLED,
    KerberosHandshake,
    KerberosMemo,
    is_kerberos_token,
    kerberos_failed,
    kerberos_ready,
)

USERS = [("CORP", "alice", "s3cret!")]
T = 20.0  # every network await here is bounded by this


@dataclass
class Resp:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


class RawClient:
    """A minimal HTTP/1.1 client on one loopback connection (independent of pycntlm's code)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> RawClient:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), T)
        return cls(reader, writer)

    async def request(self, method: str, target: str, auth: str | None = None) -> Resp:
        lines = [f"{method} {target} HTTP/1.1", "Host: demo"]
        lines += [f"Proxy-Authorization: {auth}"] if auth else []
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await asyncio.wait_for(self.writer.drain(), T)
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), T)
        first, *rest = head.decode("latin-1").split("\r\n")[:-2]
        headers = [(k, v.strip()) for k, _, v in (line.partition(":") for line in rest)]
        resp = Resp(int(first.split(" ")[1]), headers, b"")
        if not (method == "CONNECT" and resp.status == 200):
            length = int(next(iter(resp.all("content-length")), "0"))
            resp.body = await asyncio.wait_for(self.reader.readexactly(length), T)
        return resp

    def close(self) -> None:
        self.writer.close()


@pytest.fixture(autouse=True)
def fresh_memo() -> Iterator[None]:
    MEMO.forget()
    yield
    MEMO.forget()


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    async with Origin() as server:
        yield server


@pytest.fixture
async def krb_parent(kerberos_env: KdcInfo) -> AsyncIterator[NtlmParent]:  # noqa: F811
    async with NtlmParent(USERS, keytab=str(kerberos_env.keytab)) as parent:
        yield parent


async def get(port: int, target: str, auth: str | None) -> Resp:
    client = await RawClient.open(port)
    try:
        return await client.request("GET", target, auth)
    finally:
        client.close()


# --- the round trip ---------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
async def test_one_leg_logon_with_mutual_auth(
    krb_parent: NtlmParent, origin: Origin, host: str
) -> None:
    assert kerberos_ready(host)
    hs = KerberosHandshake(host)
    value = hs.start()
    assert value.startswith("Negotiate ")
    assert is_kerberos_token(base64.b64decode(value.split(" ", 1)[1]))
    client = await RawClient.open(krb_parent.port)
    resp = await client.request("GET", origin.url("/"), value)
    assert (resp.status, resp.body) == (200, HELLO)
    hs.finish(resp.all("proxy-authenticate"))  # the AP-REP: mutual authentication
    assert hs.mutual_verified
    again = await client.request("GET", origin.url("/"))  # the connection stays authenticated
    assert (again.status, again.body) == (200, HELLO)
    client.close()
    stats = krb_parent.stats
    assert stats.dialects == ["Kerberos"] and stats.logons_ok == 1 and stats.logons_failed == 0
    assert stats.requests_per_connection == [2]


async def test_connect_tunnel_with_kerberos(krb_parent: NtlmParent, origin: Origin) -> None:
    hs = KerberosHandshake("localhost")
    client = await RawClient.open(krb_parent.port)
    resp = await client.request("CONNECT", f"127.0.0.1:{origin.port}", hs.start())
    assert resp.status == 200
    hs.finish(resp.all("proxy-authenticate"))
    assert hs.mutual_verified
    client.writer.write(b"GET / HTTP/1.1\r\nHost: origin\r\nConnection: close\r\n\r\n")
    data = await asyncio.wait_for(client.reader.read(), T)
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(HELLO)
    client.close()
    assert krb_parent.stats.dialects == ["Kerberos"]


async def test_ntlm_still_verified_by_a_kerberos_parent(
    krb_parent: NtlmParent, origin: Origin
) -> None:
    ctx = spnego.client("CORP\\alice", "s3cret!", protocol="ntlm")
    client = await RawClient.open(krb_parent.port)
    first = await client.request("GET", origin.url("/"), f"NTLM {_b64(ctx.step())}")
    assert first.status == 407
    challenge = base64.b64decode(first.all("proxy-authenticate")[0].split(" ", 1)[1])
    resp = await client.request("GET", origin.url("/"), f"NTLM {_b64(ctx.step(challenge))}")
    client.close()
    assert resp.status == 200 and krb_parent.stats.dialects == ["NTLMv2"]


async def test_spnego_wrapped_kerberos_is_accepted_too(
    krb_parent: NtlmParent,
    origin: Origin,
    kerberos_env: KdcInfo,  # noqa: F811
) -> None:
    """What curl --proxy-negotiate sends; pycntlm sends raw Kerberos, as cntlm does."""
    ctx = spnego.client(
        spnego.KerberosCCache(ccache=kerberos_env.ccache),
        hostname="localhost",
        service="HTTP",
        protocol="negotiate",
    )
    resp = await get(krb_parent.port, origin.url("/"), f"Negotiate {_b64(ctx.step())}")
    assert resp.status == 200 and krb_parent.stats.dialects == ["Kerberos"]


def _b64(data: bytes | None) -> str:
    assert data is not None
    return base64.b64encode(data).decode()


# --- refusals ---------------------------------------------------------------------------------


def _refused(resp: Resp, parent: NtlmParent, origin: Origin) -> None:
    assert resp.status == 407
    assert resp.all("proxy-authenticate") == list(DEFAULT_OFFER)  # still offers all three
    assert parent.stats.logons_failed == 1 and parent.stats.logons_ok == 0
    assert parent.stats.dialects == [] and origin.stats.requests == 0


async def test_ticket_for_an_old_key_is_refused(
    kerberos_env: KdcInfo,  # noqa: F811
    origin: Origin,
    tmp_path: Path,
) -> None:
    value = KerberosHandshake("localhost").start()  # a ticket for the current key
    new_keytab = kerberos_env.rekey("HTTP/localhost", tmp_path / "new.keytab")
    async with NtlmParent(USERS, keytab=str(new_keytab)) as parent:
        _refused(await get(parent.port, origin.url("/"), value), parent, origin)


async def test_expired_ticket_is_refused(
    kerberos_env: KdcInfo,  # noqa: F811
    krb_parent: NtlmParent,
    origin: Origin,
    tmp_path: Path,
) -> None:
    short = kerberos_env.kinit(tmp_path / "short", lifetime="2s")
    value = KerberosHandshake("localhost", ccache=short).start()
    time.sleep(2 + CLOCK_SKEW + 0.5)  # blocking on purpose: nothing else runs in this test
    _refused(await get(krb_parent.port, origin.url("/"), value), krb_parent, origin)
    assert not kerberos_ready("localhost", ccache=short)
    with pytest.raises(HandshakeError, match="expired"):
        KerberosHandshake("localhost", ccache=short).start()


async def test_replayed_token_is_refused(krb_parent: NtlmParent, origin: Origin) -> None:
    value = KerberosHandshake("localhost").start()
    assert (await get(krb_parent.port, origin.url("/"), value)).status == 200
    replay = await get(krb_parent.port, origin.url("/"), value)  # a new connection, same token
    assert replay.status == 407
    assert krb_parent.stats.logons_ok == 1 and krb_parent.stats.logons_failed == 1


async def test_parent_without_keytab_refuses_kerberos(
    kerberos_env: KdcInfo,  # noqa: F811
    origin: Origin,
) -> None:
    value = KerberosHandshake("localhost").start()
    async with NtlmParent(USERS) as parent:  # never falls back to the system keytab
        _refused(await get(parent.port, origin.url("/"), value), parent, origin)


# --- client side: readiness, failures, no NTLM fallback --------------------------------------


def test_not_ready_without_a_ticket_cache(
    kerberos_env: KdcInfo,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert kerberos_ready("localhost")
    assert not kerberos_ready("localhost", ccache=f"FILE:{tmp_path / 'none'}")
    monkeypatch.setenv("KRB5CCNAME", f"FILE:{tmp_path / 'none'}")
    assert not kerberos_ready("localhost")
    with pytest.raises(HandshakeError, match="no Kerberos ticket for HTTP@localhost"):
        KerberosHandshake("localhost").start()


def test_no_ntlm_fallback(
    kerberos_env: KdcInfo,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without a ticket pyspnego's "negotiate" quietly sends NTLM; KerberosHandshake refuses."""
    users = tmp_path / "ntlm-users"
    users.write_text("CORP:alice:s3cret!\n")
    monkeypatch.setenv("NTLM_USER_FILE", str(users))
    monkeypatch.setenv("KRB5CCNAME", f"FILE:{tmp_path / 'none'}")
    quiet = spnego.client(hostname="localhost", service="HTTP", protocol="negotiate").step()
    assert quiet is not None and b"NTLMSSP" in quiet  # the trap this module avoids
    with pytest.raises(HandshakeError) as info:
        KerberosHandshake("localhost").start()
    assert "NTLMSSP" not in str(info.value) and "TlRMTVNT" not in str(info.value)


def test_unknown_service_fails_and_parent_is_skipped_a_while(
    kerberos_env: KdcInfo,  # noqa: F811
) -> None:
    host = "nohttp.pycntlm.test"  # in the realm, but without an HTTP/ principal
    assert kerberos_ready(host)
    with pytest.raises(HandshakeError, match="not found in Kerberos database"):
        KerberosHandshake(host).start()
    assert not kerberos_ready(host) and kerberos_ready("localhost")
    kerberos_failed("localhost")  # what the session reports after a 407 to our token
    assert not kerberos_ready("localhost")


def test_finish_tolerates_no_token_and_rejects_a_bad_one(
    kerberos_env: KdcInfo,  # noqa: F811
) -> None:
    quiet = KerberosHandshake("localhost")
    quiet.start()
    quiet.finish(["Basic realm=x", "Negotiate"])  # no mutual-authentication token: fine
    assert not quiet.mutual_verified
    for challenge in ("Negotiate !!!", f"Negotiate {_b64(b'not an AP-REP')}"):
        hs = KerberosHandshake("localhost")
        hs.start()
        with pytest.raises(HandshakeError) as info:
            hs.finish([challenge])
        assert challenge.split(" ", 1)[1] not in str(info.value)
    with pytest.raises(RuntimeError):
        KerberosHandshake("localhost").finish([])


def test_missing_extra_means_not_ready_and_a_clear_error() -> None:
    """A fresh interpreter in which gssapi cannot be imported (as without the kerberos extra)."""
    code = (
        "import sys; sys.modules['gssapi'] = None\n"
        "from pycntlm.errors import HandshakeError\n"
        "from pycntlm.negotiate import KerberosHandshake, kerberos_ready\n"
        "assert not kerberos_ready('localhost')\n"
        "try:\n    KerberosHandshake('localhost').start()\n"
        "except HandshakeError as exc:\n    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=T, check=True
    )
    assert done.stdout.strip() == NOT_INSTALLED


def test_token_recognition() -> None:
    assert not is_kerberos_token(b"NTLMSSP\x00\x01\x00\x00\x00")
    assert not is_kerberos_token(b"`\x06\x06\x06+\x06\x01\x05\x05\x02")  # SPNEGO OID
    assert is_kerberos_token(b"`\x0d\x06\x09\x2a\x86\x48\x86\xf7\x12\x01\x02\x02\x01\x00")
    assert not is_kerberos_token(b"")
    with pytest.raises(ValueError):
        KerberosHandshake("HTTP/evil@REALM")


def test_memo_caches_briefly_and_remembers_failures() -> None:
    now = [0.0]
    calls: list[str | None] = []

    def lifetime(ccache: str | None) -> int:
        calls.append(ccache)
        return 100 if ccache == "FILE:good" else 0

    memo = KerberosMemo(clock=lambda: now[0], ttl=10.0, failure_ttl=60.0, lifetime=lifetime)
    assert memo.ready("p", "FILE:good") and memo.ready("p", "FILE:good")
    assert not memo.ready("p", "FILE:none") and not memo.ready("p", "FILE:none")
    assert calls == ["FILE:good", "FILE:none"]  # one cache read each within the TTL
    now[0] = 11.0
    assert memo.ready("p", "FILE:good") and len(calls) == 3
    memo.failed("P")
    assert not memo.ready("p", "FILE:good") and memo.ready("q", "FILE:good")
    now[0] = 72.0
    assert memo.ready("p", "FILE:good")
