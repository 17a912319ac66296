"""End to end: client -> pycntlm -> verifying NTLM parent -> origin, all real, on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from pathlib import Path

import pytest
from proxyrun import PASS_LM, PASS_NT, PASS_NTLMV2, RawClient, conf, get, running_proxy

from pycntlm.demo.origin import Origin, pattern
from pycntlm.demo.parent import NtlmParent

CRED_FORMS = {
    "password": "Password password",
    "nt+lm hashes": f"PassNT {PASS_NT}\nPassLM {PASS_LM}",
    "ntlmv2 hash only": f"PassNTLMv2 {PASS_NTLMV2}",
}
DIALECT_FORMS = [
    ("NTLMv2", "password"),
    ("NTLMv2", "nt+lm hashes"),
    ("NTLMv2", "ntlmv2 hash only"),
    ("NTLM2SR", "password"),
    ("NTLM2SR", "nt+lm hashes"),
    ("NTLM", "password"),
    ("NTLM", "nt+lm hashes"),
    ("NT", "password"),
    ("NT", "nt+lm hashes"),
    ("LM", "password"),
    ("LM", "nt+lm hashes"),
]


@pytest.mark.parametrize(("dialect", "form"), DIALECT_FORMS)
async def test_each_dialect_and_credential_form_is_verified(
    tmp_path: Path, origin: Origin, dialect: str, form: str
) -> None:
    # lm_compat_level 0 makes the parent accept every response type, LM included.
    async with NtlmParent([("corp-uk", "testuser", "password")], lm_compat_level=0) as parent:
        text = conf(parent.address, auth=dialect, creds_lines=CRED_FORMS[form])
        async with running_proxy(text, tmp_path) as proxy:
            rep = await get(proxy.port, origin.url("/"))
    assert rep.status == 200, rep
    assert b"hello" in rep.body
    assert parent.stats.logons_ok == 1
    assert parent.stats.logons_failed == 0


async def test_wrong_password_gets_clear_407_and_no_challenge(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    text = conf(parent.address, creds_lines="Password wrong-password")
    async with running_proxy(text, tmp_path) as proxy:
        rep = await get(proxy.port, origin.url("/"))
    assert rep.status == 407
    assert rep.header("proxy-authenticate") is None
    assert b"rejected pycntlm's credentials" in rep.body
    assert b"wrong-password" not in rep.body


async def test_lockout_100_sequential_and_20_concurrent_cost_at_most_2_failed_logons(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    text = conf(parent.address, creds_lines="Password wrong-password")
    async with running_proxy(text, tmp_path) as proxy:
        for _ in range(100):
            rep = await get(proxy.port, origin.url("/"))
            assert rep.status == 407
        reps = await asyncio.gather(*(get(proxy.port, origin.url("/")) for _ in range(20)))
        assert {r.status for r in reps} == {407}
    assert parent.stats.logons_failed <= 2
    assert parent.stats.logons_failed >= 1


async def test_lockout_concurrent_first_burst_costs_one_failed_logon(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    text = conf(parent.address, creds_lines="Password wrong-password")
    async with running_proxy(text, tmp_path) as proxy:
        reps = await asyncio.gather(*(get(proxy.port, origin.url("/")) for _ in range(20)))
    assert {r.status for r in reps} == {407}
    assert parent.stats.logons_failed == 1


async def test_keep_alive_many_requests_one_upstream_handshake(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    async with running_proxy(conf(parent.address), tmp_path) as proxy:
        client = await RawClient.connect(proxy.port)
        try:
            for i in range(20):
                # Go's net/http sends no Proxy-Connection header: keep-alive must still hold.
                rep = await client.request("GET", origin.url(f"/bytes/{100 + i}"))
                assert rep.status == 200
                assert rep.body == pattern(100 + i)
        finally:
            await client.close()
    assert parent.stats.logons_ok == 1
    assert parent.stats.requests_per_connection == [20]


async def test_client_connection_close_is_still_authenticated(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    # Python's urllib sends "Connection: close"; cntlm copies it into its handshake -> 407.
    async with running_proxy(conf(parent.address), tmp_path) as proxy:
        for _ in range(3):
            rep = await get(proxy.port, origin.url("/"), {"Connection": "close"})
            assert rep.status == 200
            assert rep.header("connection") == "close"
    # The upstream connection stayed alive and was reused.
    assert parent.stats.logons_ok == 1


async def test_client_basic_credentials_are_never_forwarded(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    async with running_proxy(conf(parent.address), tmp_path) as proxy:
        rep = await get(
            proxy.port, origin.url("/"), {"Proxy-Authorization": "Basic dXNlcjpzZWNyZXQ="}
        )
    assert rep.status == 200
    assert "Basic" not in parent.stats.auth_headers_seen
    assert origin.stats.auth_headers_seen == []


async def test_parent_closing_after_its_plain_challenge_is_no_problem(
    tmp_path: Path, origin: Origin
) -> None:
    # We send Type 1 in the first request, so a parent that closes after its plain
    # "407, here are my schemes" answer never gets the chance.
    p = NtlmParent([("corp-uk", "testuser", "password")], close_after_challenge=True)
    async with p, running_proxy(conf(p.address), tmp_path) as proxy:
        rep = await get(proxy.port, origin.url("/"))
    assert rep.status == 200
    assert p.stats.logons_ok == 1


async def test_parent_closing_after_type2_restarts_then_gives_up_cleanly(
    tmp_path: Path, origin: Origin
) -> None:
    # A Type 3 is never sent on a connection that did not see the Type 2: the handshake is
    # restarted on new connections (bounded); such a parent can never be satisfied -> 502.
    p = NtlmParent([("corp-uk", "testuser", "password")], close_after_type1=True)
    async with p, running_proxy(conf(p.address), tmp_path) as proxy:
        rep = await get(proxy.port, origin.url("/"))
    assert rep.status == 502
    assert b"closes the connection after its challenge" in rep.body
    assert p.stats.logons_failed == 0
    assert 2 <= p.stats.connections <= 4


@pytest.mark.parametrize(
    ("path", "method", "status", "body"),
    [
        ("/chunked/70000", "GET", 200, pattern(70000)),
        ("/close/50000", "GET", 200, pattern(50000)),
        ("/bytes/1000", "HEAD", 200, b""),
        ("/status/204", "GET", 204, b""),
        ("/status/304", "GET", 304, b""),
        ("/bytes/3000000", "GET", 200, pattern(3000000)),
    ],
)
async def test_response_framings(
    tmp_path: Path,
    parent: NtlmParent,
    origin: Origin,
    path: str,
    method: str,
    status: int,
    body: bytes,
) -> None:
    async with running_proxy(conf(parent.address), tmp_path) as proxy:
        client = await RawClient.connect(proxy.port)
        try:
            rep = await client.request(method, origin.url(path))
            assert rep.status == status
            assert rep.body == body
            if not path.startswith("/close/"):
                # the connection is still usable afterwards
                again = await client.request("GET", origin.url("/"))
                assert again.status == 200
        finally:
            await client.close()


async def _upload(
    port: int, url: str, headers: dict[str, str], chunks: list[bytes]
) -> dict[str, object]:
    client = await RawClient.connect(port)
    try:
        head = f"POST {url} HTTP/1.1\r\nHost: x\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()
        )
        await client.send(head.encode() + b"\r\n")
        if headers.get("Expect") == "100-continue":
            interim = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 10)
            assert interim.startswith(b"HTTP/1.1 100")
        for c in chunks:
            await client.send(c)
        rep = await client.reply("POST")
        assert rep.status == 200, rep
        return json.loads(rep.body)  # type: ignore[no-any-return]
    finally:
        await client.close()


async def test_chunked_upload_survives_handshake(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    data = pattern(3_000_000)
    pieces = [data[i : i + 100_000] for i in range(0, len(data), 100_000)]
    chunks = [f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces] + [b"0\r\n\r\n"]
    async with running_proxy(conf(parent.address), tmp_path) as proxy:
        got = await _upload(
            proxy.port, origin.url("/echo"), {"Transfer-Encoding": "chunked"}, chunks
        )
    assert got == {"length": len(data), "sha256": hashlib.sha256(data).hexdigest()}


async def test_expect_100_continue_upload(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    data = pattern(1_000_000)
    async with running_proxy(conf(parent.address), tmp_path) as proxy:
        got = await _upload(
            proxy.port,
            origin.url("/echo"),
            {"Content-Length": str(len(data)), "Expect": "100-continue"},
            [data],
        )
    assert got == {"length": len(data), "sha256": hashlib.sha256(data).hexdigest()}


async def test_small_post_is_replayed_on_a_fresh_connection(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    data = b"x" * 5000
    async with running_proxy(conf(parent.address), tmp_path) as proxy:
        for _ in range(3):
            got = await _upload(
                proxy.port, origin.url("/echo"), {"Content-Length": str(len(data))}, [data]
            )
            assert got["length"] == len(data)
    assert parent.stats.logons_ok == 1


@pytest.mark.parametrize("route", ["parent", "direct"])
async def test_userinfo_in_a_request_url_never_reaches_the_access_log(
    tmp_path: Path,
    parent: NtlmParent,
    origin: Origin,
    caplog: pytest.LogCaptureFixture,
    route: str,
) -> None:
    """`GET http://alice:S3cret-pw@host/` carries a client's credentials in the URL: the
    request is forwarded without them, and the access line shows `***@` in their place."""
    caplog.set_level(logging.INFO, logger="pycntlm.access")
    extra = "NoProxy 127.0.0.1" if route == "direct" else ""
    url = origin.url("/").replace("http://", "http://alice:S3cret-pw@")
    async with running_proxy(conf(parent.address, extra=extra), tmp_path) as proxy:
        assert (await get(proxy.port, url)).status == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "pycntlm.access"]
    assert len(lines) == 1 and f" {route} " in lines[0], lines
    assert "S3cret-pw" not in lines[0] and "alice" not in lines[0]
    assert "http://***@127.0.0.1:" in lines[0]
