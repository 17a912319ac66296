"""The demo servers against real clients: curl, aiohttp, pyspnego's NTLM client, raw sockets.

Everything runs on 127.0.0.1 with port 0; the parent never connects outside loopback.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import spnego
import trustme

from pycntlm.demo.origin import HELLO, Origin, pattern, pattern_sha256
from pycntlm.demo.parent import NtlmParent

USERS = [("CORP", "alice", "s3cret!"), ("", "bob", "pw-bob")]
T = 20.0  # every network await in these tests is bounded by this


@dataclass
class Resp:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    raw_body: bytes

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def one(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None


class Client:
    """A deliberately independent raw HTTP/1.1 client (it does not use the code under test)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Client:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, limit=1 << 20), T
        )
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), T)

    async def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> Resp:
        lines = [f"{method} {target} HTTP/1.1", "Host: demo"]
        lines += [f"{k}: {v}" for k, v in headers or []]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        await self.send(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        return await self.response(method)

    async def response(self, method: str = "GET") -> Resp:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), T)
        lines = head.decode("latin-1").split("\r\n")[:-2]
        status = int(lines[0].split(" ")[1])
        headers = [(k, v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
        resp = Resp(status, headers, b"", b"")
        no_body = method == "HEAD" or status in (204, 304) or status < 200
        if no_body or (method == "CONNECT" and status == 200):
            return resp
        if "chunked" in (resp.one("transfer-encoding") or ""):
            await self._chunked(resp)
        elif resp.one("content-length") is not None:
            resp.body = resp.raw_body = await self._exact(int(resp.one("content-length") or 0))
        else:
            resp.body = resp.raw_body = await self.read_to_eof()
        return resp

    async def _exact(self, n: int) -> bytes:
        return await asyncio.wait_for(self.reader.readexactly(n), T)

    async def _chunked(self, resp: Resp) -> None:
        for _ in range(100_000):
            line = await asyncio.wait_for(self.reader.readuntil(b"\r\n"), T)
            resp.raw_body += line
            size = int(line.split(b";")[0], 16)
            if size == 0:
                break
            data = await self._exact(size + 2)
            resp.raw_body += data
            resp.body += data[:-2]
        for _ in range(100):
            line = await asyncio.wait_for(self.reader.readuntil(b"\r\n"), T)
            resp.raw_body += line
            if line == b"\r\n":
                return

    async def read_to_eof(self) -> bytes:
        return await asyncio.wait_for(self.reader.read(), T)

    async def closed(self) -> bool:
        """True when the peer has closed (EOF with no further data)."""
        return await asyncio.wait_for(self.reader.read(1), T) == b""

    def close(self) -> None:
        self.writer.close()


def b64(data: bytes | None) -> str:
    assert data is not None
    return base64.b64encode(data).decode()


async def ntlm_get(
    client: Client,
    target: str,
    user: str,
    password: str,
    *,
    scheme: str = "NTLM",
    protocol: str = "ntlm",
    method: str = "GET",
) -> Resp:
    """The NTLM (or Negotiate) handshake on `client`, ending with the authenticated response."""
    ctx = spnego.client(user, password, protocol=protocol)
    header = [("Proxy-Authorization", f"{scheme} {b64(ctx.step())}")]
    first = await client.request(method, target, header)
    assert first.status == 407
    challenges = first.all("proxy-authenticate")
    assert len(challenges) == 1 and challenges[0].startswith(f"{scheme} ")
    answer = ctx.step(base64.b64decode(challenges[0].split(" ", 1)[1]))
    return await client.request(
        method, target, [("Proxy-Authorization", f"{scheme} {b64(answer)}")]
    )


@pytest.fixture(autouse=True)
def no_system_kerberos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With pyspnego's kerberos extra installed, its "negotiate" client tries Kerberos first
    (kinit with the password) through /etc/krb5.conf, whose Debian default names a realm on the
    internet. A config without realms and an empty ticket cache make that fail at once, offline."""
    conf = tmp_path / "krb5-none.conf"
    conf.write_text("[libdefaults]\n    dns_lookup_kdc = false\n    dns_lookup_realm = false\n")
    monkeypatch.setenv("KRB5_CONFIG", str(conf))
    monkeypatch.setenv("KRB5CCNAME", f"FILE:{tmp_path / 'no-ccache'}")


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    async with Origin() as server:
        yield server


@pytest.fixture
async def parent() -> AsyncIterator[NtlmParent]:
    async with NtlmParent(USERS) as server:
        yield server


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_origin(ca: trustme.CA) -> AsyncIterator[Origin]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    async with Origin(ssl=context) as server:
        yield server


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port bound but not listening: connecting to it is refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


async def curl(*args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    for name in ("CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR"):
        env.pop(name, None)
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        "--max-time",
        "15",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), T)
    return proc.returncode or 0, out.decode(), err.decode()


def curl_proxy(parent: NtlmParent, user: str = "CORP\\alice:s3cret!") -> list[str]:
    return ["-x", f"http://{parent.address}", "--proxy-ntlm", "--proxy-user", user]


# -- the parent with curl --------------------------------------------------------------------


async def test_curl_ntlm_get_through_parent(parent: NtlmParent, origin: Origin) -> None:
    rc, out, err = await curl(*curl_proxy(parent), origin.url("/"))
    assert (rc, out) == (0, HELLO.decode()), err
    assert parent.stats.logons_ok == 1 and parent.stats.logons_failed == 0
    assert parent.stats.type1_seen == 1 and parent.stats.requests == 1
    assert parent.stats.dialects == ["NTLMv2"]  # curl answers a target-info challenge with v2
    assert set(parent.stats.auth_headers_seen) == {"NTLM"}
    assert origin.stats.auth_headers_seen == []  # credentials stop at the parent
    assert not any(k.lower().startswith("proxy-") for k, _ in origin.stats.last_headers)
    assert ("Via", "1.1 pycntlm-demo-parent") in origin.stats.last_headers


async def test_curl_connect_to_tls_origin(
    parent: NtlmParent, tls_origin: Origin, ca: trustme.CA, tmp_path: Path
) -> None:
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    url = f"https://localhost:{tls_origin.port}/"
    rc, out, err = await curl(*curl_proxy(parent), "--cacert", str(tmp_path / "ca.pem"), url)
    assert (rc, out) == (0, HELLO.decode()), err
    assert parent.stats.logons_ok == 1 and parent.stats.requests == 1
    assert tls_origin.stats.targets == ["/"]


async def test_curl_connect_body_is_exact(
    parent: NtlmParent, tls_origin: Origin, ca: trustme.CA, tmp_path: Path
) -> None:
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    out_file = tmp_path / "body"
    url = f"https://127.0.0.1:{tls_origin.port}/chunked/300000"
    args = ["--cacert", str(tmp_path / "ca.pem"), "-o", str(out_file), url]
    rc, _, err = await curl(*curl_proxy(parent), *args)
    assert rc == 0, err
    assert out_file.read_bytes() == pattern(300000)


async def test_curl_wrong_password_gets_407(parent: NtlmParent, origin: Origin) -> None:
    args = [*curl_proxy(parent, "CORP\\alice:wrong"), "-o", "/dev/null", "-w", "%{http_code}"]
    _, out, err = await curl(*args, origin.url("/"))
    assert out == "407", err
    assert parent.stats.logons_failed >= 1 and parent.stats.logons_ok == 0
    assert origin.stats.requests == 0


async def test_curl_keeps_one_authenticated_connection(parent: NtlmParent, origin: Origin) -> None:
    urls = [origin.url("/"), origin.url("/bytes/10"), origin.url("/status/204")]
    rc, _, err = await curl(*curl_proxy(parent), *urls)
    assert rc == 0, err
    assert parent.stats.connections == 1 and parent.stats.type1_seen == 1
    assert parent.stats.requests_per_connection == [3]


async def test_curl_anyauth_restarts_after_close_after_challenge(origin: Origin) -> None:
    async with NtlmParent(USERS, offer=("NTLM",), close_after_challenge=True) as strict:
        args = ["-x", f"http://{strict.address}", "--proxy-anyauth", "--proxy-user", "bob:pw-bob"]
        rc, out, err = await curl(*args, origin.url("/"))
        assert (rc, out) == (0, HELLO.decode()), err
        assert strict.stats.connections == 2  # probe closed, NTLM on a new connection
        assert strict.stats.requests_per_connection == [0, 1]


async def test_curl_posts_through_parent(origin: Origin, tmp_path: Path) -> None:
    body = tmp_path / "body"
    body.write_bytes(pattern(2_000_000))  # big enough for curl to send Expect: 100-continue
    want = {"length": 2_000_000, "sha256": pattern_sha256(2_000_000)}
    async with NtlmParent(USERS, offer=("NTLM", 'Basic realm="corp"')) as ntlm_only:
        for auth in ("--proxy-ntlm", "--proxy-anyauth"):  # anyauth probes with the body first
            proxy = ["-x", f"http://{ntlm_only.address}", auth, "--proxy-user", "bob:pw-bob"]
            rc, out, err = await curl(*proxy, "--data-binary", f"@{body}", origin.url("/echo"))
            assert rc == 0 and json.loads(out) == want, err
        assert ntlm_only.stats.dialects == ["NTLMv2", "NTLMv2"]
        assert ntlm_only.stats.requests == 2 and origin.stats.requests == 2


async def test_curl_basic_through_parent(parent: NtlmParent, origin: Origin) -> None:
    basic = ["-x", f"http://{parent.address}", "--proxy-basic", "--proxy-user"]
    rc, out, err = await curl(*basic, "CORP\\alice:s3cret!", origin.url("/"))
    assert (rc, out) == (0, HELLO.decode()), err
    rc, out, err = await curl(
        *basic, "alice:nope", "-o", "/dev/null", "-w", "%{http_code}", origin.url("/")
    )
    assert out == "407", err
    assert parent.stats.dialects == ["Basic"] and parent.stats.logons_failed == 1
    assert parent.stats.auth_headers_seen == ["Basic", "Basic"]
    assert origin.stats.auth_headers_seen == [] and origin.stats.requests == 1


# -- the parent with pyspnego and raw sockets -------------------------------------------------


async def test_keep_alive_counts_requests_per_connection(
    parent: NtlmParent, origin: Origin
) -> None:
    client = await Client.open(parent.port)
    resp = await ntlm_get(client, origin.url("/"), "CORP\\alice", "s3cret!")
    assert (resp.status, resp.body) == (200, HELLO)
    for n in (1, 2, 3):
        resp = await client.request("GET", origin.url(f"/bytes/{n}"))
        assert (resp.status, resp.body) == (200, pattern(n))
    client.close()
    assert parent.stats.requests_per_connection == [4]
    assert parent.stats.upstream_connections == 1  # the origin connection was kept alive too
    assert origin.stats.connections == 1


async def test_unauthenticated_407_offers_and_keeps_alive(parent: NtlmParent) -> None:
    client = await Client.open(parent.port)
    for _ in range(2):
        resp = await client.request("GET", "http://127.0.0.1:9/", body=b"x" * 1000)
        assert resp.status == 407
        assert resp.all("proxy-authenticate") == list(parent.offer)
        assert resp.one("connection") is None and int(resp.one("content-length") or 0) > 0
    chunked = b"POST http://127.0.0.1:9/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    await client.send(chunked + b"5\r\nhello\r\n0\r\n\r\n")
    assert (await client.response()).status == 407
    assert (await client.request("GET", "http://127.0.0.1:9/")).status == 407
    client.close()
    assert parent.stats.logons_failed == 0 and parent.stats.connections == 1


async def test_expect_100_continue_gets_407_before_body(parent: NtlmParent) -> None:
    client = await Client.open(parent.port)
    head = "POST http://127.0.0.1:9/ HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    await client.send(head.encode())
    assert (await client.response()).status == 407  # without our having sent the body
    await client.send(b"x y\r\n")  # sent anyway: the parent must skip it, not parse it
    assert (await client.request("GET", "http://127.0.0.1:9/")).status == 407
    client.close()


async def test_head_407_has_no_body_and_bad_bodies_get_400(
    parent: NtlmParent, origin: Origin
) -> None:
    client = await Client.open(parent.port)
    resp = await client.request("HEAD", origin.url("/"))
    assert resp.status == 407 and int(resp.one("content-length") or 0) > 0
    assert (await client.request("GET", origin.url("/"))).status == 407  # still in step
    client.close()
    client = await authed(parent, origin)
    bad = f"POST {origin.url('/echo')} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
    await client.send(bad.encode())
    assert (await client.response()).status == 400
    assert await client.closed()


async def test_idle_timeout_and_close_with_open_tunnel(
    origin: Origin, caplog: pytest.LogCaptureFixture
) -> None:
    async with NtlmParent(USERS, timeout=0.3) as quick:
        idle = await Client.open(quick.port)
        assert await idle.closed()  # nothing sent: dropped after the idle timeout
    parent = NtlmParent(USERS)
    await parent.start()
    client = await Client.open(parent.port)
    assert (await ntlm_get(client, origin.url("/"), "bob", "pw-bob")).status == 200
    await client.send(f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\n\r\n".encode())
    assert (await client.response("CONNECT")).status == 200
    await asyncio.wait_for(parent.close(), T)
    assert await client.closed()
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_close_after_challenge_closes(origin: Origin) -> None:
    async with NtlmParent(USERS, close_after_challenge=True) as strict:
        client = await Client.open(strict.port)
        resp = await client.request("GET", origin.url("/"))
        assert resp.status == 407 and resp.one("connection") == "close"
        assert await client.closed()
        client = await Client.open(strict.port)  # the handshake itself is kept alive
        resp = await ntlm_get(client, origin.url("/"), "CORP\\alice", "s3cret!")
        assert resp.status == 200
        client.close()


async def test_close_after_type1_breaks_the_handshake(origin: Origin) -> None:
    async with NtlmParent(USERS, close_after_type1=True) as strict:
        ctx = spnego.client("CORP\\alice", "s3cret!", protocol="ntlm")
        client = await Client.open(strict.port)
        auth = [("Proxy-Authorization", f"NTLM {b64(ctx.step())}")]
        resp = await client.request("GET", origin.url("/"), auth)
        assert resp.status == 407 and resp.one("connection") == "close"
        assert await client.closed()
        type3 = ctx.step(base64.b64decode((resp.one("proxy-authenticate") or "").split()[1]))
        client = await Client.open(strict.port)  # a Type 3 on another connection is refused
        auth = [("Proxy-Authorization", f"NTLM {b64(type3)}")]
        resp = await client.request("GET", origin.url("/"), auth)
        assert resp.status == 407 and resp.all("proxy-authenticate") == list(strict.offer)
        client.close()
        assert strict.stats.logons_failed == 1 and origin.stats.requests == 0


@pytest.mark.parametrize("level", [0, 1, 2, 3])
async def test_every_client_dialect_is_verified(
    parent: NtlmParent, origin: Origin, level: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LM_COMPAT_LEVEL", str(level))  # read by spnego.client() when created
    monkeypatch.delenv("NTLM_USER_FILE", raising=False)
    client = await Client.open(parent.port)
    resp = await ntlm_get(client, origin.url("/"), "corp\\ALICE", "s3cret!")  # any case
    assert resp.status == 200
    client.close()
    assert parent.stats.dialects == [["NTLM", "NTLM2SR", "NTLM2SR", "NTLMv2"][level]]
    assert os.environ["LM_COMPAT_LEVEL"] == str(level)  # the parent restored both
    assert "NTLM_USER_FILE" not in os.environ


@pytest.mark.parametrize(("password", "user"), [("wrong", "CORP\\alice"), ("pw-bob", "CORP\\bob")])
async def test_wrong_credentials_refused(
    parent: NtlmParent, origin: Origin, password: str, user: str
) -> None:
    client = await Client.open(parent.port)
    resp = await ntlm_get(client, origin.url("/"), user, password)
    assert resp.status == 407 and resp.all("proxy-authenticate") == list(parent.offer)
    assert (await client.request("GET", origin.url("/"))).status == 407  # still not authed
    client.close()
    assert parent.stats.logons_failed == 1 and origin.stats.requests == 0


async def test_lm_compat_5_refuses_ntlmv1(origin: Origin, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LM_COMPAT_LEVEL", "1")
    async with NtlmParent(USERS, lm_compat_level=5) as strict:
        client = await Client.open(strict.port)
        assert (await ntlm_get(client, origin.url("/"), "CORP\\alice", "s3cret!")).status == 407
        client.close()
        assert strict.stats.logons_failed == 1


@pytest.mark.parametrize("protocol", ["negotiate", "ntlm"])
async def test_negotiate_scheme(parent: NtlmParent, origin: Origin, protocol: str) -> None:
    client = await Client.open(parent.port)
    resp = await ntlm_get(
        client, origin.url("/"), "CORP\\alice", "s3cret!", scheme="Negotiate", protocol=protocol
    )
    assert (resp.status, resp.body) == (200, HELLO)
    has_final = resp.one("proxy-authenticate") is not None
    assert has_final == (protocol == "negotiate")  # SPNEGO's mechListMIC token comes back
    client.close()
    assert parent.stats.logons_ok == 1


async def test_set_users_changes_passwords(parent: NtlmParent, origin: Origin) -> None:
    parent.set_users([("CORP", "alice", "new-pass")])
    for password, status in (("s3cret!", 407), ("new-pass", 200)):
        client = await Client.open(parent.port)
        assert (await ntlm_get(client, origin.url("/"), "CORP\\alice", password)).status == status
        client.close()
    assert (parent.stats.logons_ok, parent.stats.logons_failed) == (1, 1)
    parent.stats.reset()
    assert parent.stats.logons_ok == 0 and sum(parent.stats.requests_per_connection) == 0
    with pytest.raises(ValueError):
        parent.set_users([("CORP", "alice", "a:b")])


async def authed(parent: NtlmParent, origin: Origin) -> Client:
    client = await Client.open(parent.port)
    assert (await ntlm_get(client, origin.url("/"), "bob", "pw-bob")).status == 200
    return client


async def test_only_loopback_targets(parent: NtlmParent, origin: Origin, refused_port: int) -> None:
    client = await authed(parent, origin)
    assert (await client.request("GET", "http://example.invalid/")).status == 403
    assert (await client.request("GET", "http://10.1.2.3:80/", body=b"abc")).status == 403
    assert (await client.request("CONNECT", "example.invalid:443")).status == 403
    assert (await client.request("GET", f"http://127.0.0.1:{refused_port}/")).status == 502
    assert (await client.request("CONNECT", f"127.0.0.1:{refused_port}")).status == 502
    assert (await client.request("GET", "/not-absolute")).status == 400
    assert (await client.request("GET", f"http://localhost:{origin.port}/")).body == HELLO
    client.close()


async def test_forwarded_framings(parent: NtlmParent, origin: Origin) -> None:
    client = await authed(parent, origin)
    resp = await client.request("GET", origin.url("/chunked/100000"))
    assert resp.body == pattern(100000) and b";demo=first" in resp.raw_body
    assert resp.raw_body.endswith(b"0\r\nX-Demo-Trailer: done\r\n\r\n")
    head = await client.request("HEAD", origin.url("/chunked/10"))
    assert head.status == 200 and head.one("transfer-encoding") == "chunked"
    head = await client.request("HEAD", origin.url("/bytes/1234"))
    assert head.one("content-length") == "1234"
    for code in (204, 304, 418):
        assert (await client.request("GET", origin.url(f"/status/{code}"))).status == code
    resp = await client.request("POST", origin.url("/echo"), body=b"z" * 3000)
    assert json.loads(resp.body)["sha256"] == hashlib.sha256(b"z" * 3000).hexdigest()
    resp = await client.request("GET", origin.url("/close/50000"))
    assert resp.body == pattern(50000) and resp.one("connection") == "close"
    assert await client.closed()
    assert parent.stats.requests_per_connection == [9]


async def test_forwarded_chunked_upload_with_expect(parent: NtlmParent, origin: Origin) -> None:
    client = await authed(parent, origin)
    head = f"PUT {origin.url('/echo')} HTTP/1.1\r\nHost: demo\r\nExpect: 100-continue\r\n"
    await client.send(head.encode() + b"Transfer-Encoding: chunked\r\n\r\n")
    assert (await client.response()).status == 100  # relayed from the origin
    await client.send(b"3\r\nabc\r\n4;x=y\r\ndefg\r\n0\r\n\r\n")
    resp = await client.response()
    assert json.loads(resp.body) == {"length": 7, "sha256": hashlib.sha256(b"abcdefg").hexdigest()}
    client.close()


async def test_tunnel_moves_100_mib_and_half_closes(parent: NtlmParent, origin: Origin) -> None:
    client = await authed(parent, origin)
    size = 100 * 1024 * 1024
    await client.send(f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert (await client.response("CONNECT")).status == 200
    await client.send(f"GET /bytes/{size} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    client.writer.write_eof()  # half-close: the answer must still arrive whole
    head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), T)
    assert f"Content-Length: {size}".encode() in head
    digest, got = hashlib.sha256(), 0
    for _ in range(size):
        data = await asyncio.wait_for(client.reader.read(1 << 20), T)
        if not data:
            break
        digest.update(data)
        got += len(data)
    assert got == size and digest.hexdigest() == pattern_sha256(size)
    assert parent.stats.requests_per_connection == [2]


# -- the origin on its own --------------------------------------------------------------------


async def test_origin_routes_with_aiohttp(origin: Origin) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(origin.url("/")) as resp:
            assert await resp.read() == HELLO
        async with session.get(origin.url("/bytes/300001")) as resp:
            assert resp.content_length == 300001 and await resp.read() == pattern(300001)
        async with session.get(origin.url("/chunked/12345")) as resp:
            assert resp.headers["Transfer-Encoding"] == "chunked"
            assert await resp.read() == pattern(12345)
        async with session.head(origin.url("/bytes/77")) as resp:
            assert resp.headers["Content-Length"] == "77" and await resp.read() == b""
        async with session.get(origin.url("/status/204")) as resp:
            assert resp.status == 204 and await resp.read() == b""
        async with session.get(origin.url("/nothing")) as resp:
            assert resp.status == 404
        headers = {"Authorization": "NTLM TlRMTVNTUAABAAAA"}
        async with session.get(origin.url("/ntlm"), headers=headers) as resp:
            assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "NTLM"
    assert origin.stats.auth_headers_seen == ["NTLM"]
    assert ("Authorization", "NTLM") in origin.stats.last_headers  # the blob is not kept
    assert origin.stats.connections == 1  # aiohttp kept the connection alive


async def test_origin_close_delimited_and_head(origin: Origin) -> None:
    client = await Client.open(origin.port)
    resp = await client.request("HEAD", "/close/10")
    assert resp.one("content-length") is None and await client.closed()
    client = await Client.open(origin.port)
    resp = await client.request("GET", "/close/70000")
    assert resp.body == pattern(70000) and resp.one("content-length") is None
    resp304 = Client(*(await asyncio.open_connection("127.0.0.1", origin.port)))
    assert (await resp304.request("GET", "/status/304")).body == b""
    assert (await resp304.request("GET", "/")).body == HELLO  # still in step after a 304
    resp304.close()


async def test_origin_echo_streams_with_100_continue(origin: Origin) -> None:
    client = await Client.open(origin.port)
    body = pattern(2_000_000)
    head = f"POST /echo HTTP/1.1\r\nHost: o\r\nContent-Length: {len(body)}\r\n"
    await client.send(head.encode() + b"Expect: 100-continue\r\n\r\n")
    assert (await client.response()).status == 100
    await client.send(body)
    resp = await client.response()
    assert json.loads(resp.body) == {"length": len(body), "sha256": pattern_sha256(len(body))}
    assert resp.one("content-type") == "application/json"
    resp = await client.request("GET", "/echo")
    assert resp.status == 405
    client.close()


async def test_origin_tls(tls_origin: Origin, ca: trustme.CA) -> None:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with (
        aiohttp.ClientSession() as session,
        session.get(tls_origin.url("/chunked/5000"), ssl=context) as resp,
    ):
        assert await resp.read() == pattern(5000)


async def test_malformed_heads_get_400(parent: NtlmParent, origin: Origin) -> None:
    for port in (parent.port, origin.port):
        client = await Client.open(port)
        await client.send(b"GARBAGE\r\n\r\n")
        assert (await client.response()).status == 400
        assert await client.closed()
