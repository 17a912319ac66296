"""TLS to the parent proxy (`Proxy https://host:port`) end to end, and IPv6 parents and targets.

Real TLS endpoints on loopback: Debian's squid with `https_port` (GnuTLS, NTLM via
ntlm_fake_auth), and a TLS-terminating forwarder (servers/tls_front.py) in front of the demo
parent that verifies NTLMv2 and counts handshakes per connection. The CA is a throw-away trustme
CA (servers/tls.py); nothing here trusts the system store except where that is the point.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
from proxyrun import USER, RawClient, conf, get, running_proxy, wait_for
from servers.procs import free_port, run_client
from servers.squid_tls import SquidTls, squid_tls, squid_tls_session  # noqa: F401
from servers.tls import TlsMaterial, clean_env
from servers.tls_front import TlsFront

from pycntlm import config, context, creds, magic, server
from pycntlm.demo.origin import HELLO, Origin, pattern, pattern_sha256
from pycntlm.demo.parent import NtlmParent
from pycntlm.errors import ConfigError

MIB = 1024 * 1024
BIG = 4 * MIB


def tls_conf(*parents: str, ca: Path | None, extra: str = "", auth: str = "NTLMv2") -> str:
    lines = [extra] if extra else []
    if ca is not None:
        lines.append(f"ProxyCAFile {ca}")
    return conf(*parents, auth=auth, extra="\n".join(lines))


@pytest.fixture
async def tls_parent(server_tls: TlsMaterial, parent: NtlmParent) -> AsyncIterator[TlsFront]:
    """The NTLMv2-verifying demo parent behind TLS (certificate for localhost/127.0.0.1/::1)."""
    async with TlsFront("127.0.0.1", parent.port, server_tls.server_context) as front:
        yield front


# ---------------------------------------------------------------- helpers


async def through_tunnel(port: int, target: str, path: str) -> tuple[int, bytes]:
    """CONNECT `target` through pycntlm, then one GET `path` inside the tunnel."""
    client = await RawClient.connect(port)
    try:
        await client.send(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        established = await client.reply("CONNECT")
        assert established.status == 200, established
        await client.send(f"GET {path} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        reply = await client.reply()
        return reply.status, reply.body
    finally:
        await client.close()


async def curl(*args: str) -> tuple[int, str, str]:
    """curl as a real client (no CA or proxy variables from this machine)."""
    rc, out, err = await run_client(
        ["curl", "-sS", "--max-time", "60", *args], env=clean_env(), timeout=90
    )
    return rc, out.decode(errors="replace"), err.decode(errors="replace")


def other_ca(directory: Path, *names: str) -> tuple[Path, ssl.SSLContext]:
    """A CA nobody else trusts (its PEM) and a server context with its certificate for names."""
    ca = trustme.CA()
    directory.mkdir(parents=True, exist_ok=True)
    ca_pem = directory / "other-ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*(names or ("localhost", "127.0.0.1"))).configure_cert(server)
    return ca_pem, server


# ---------------------------------------------------------------- squid https_port


async def test_squid_https_parent_get_post_connect_one_handshake(
    tmp_path: Path,
    squid_tls: SquidTls,  # noqa: F811
    origin: Origin,
) -> None:
    """GET, POST and a CONNECT tunnel, a few MiB each and checked by sha256, through squid's
    https_port, authenticated once: the TLS connection is pooled and reused."""
    text = tls_conf(squid_tls.https_parent, ca=squid_tls.ca_pem, auth="NTLM")
    async with running_proxy(text, tmp_path) as proxy:
        client = await RawClient.connect(proxy.port)
        try:
            small = await client.request("GET", origin.url("/"))
            assert (small.status, small.body) == (200, HELLO)
            big = await client.request("GET", origin.url(f"/bytes/{BIG}"))
            assert big.status == 200
            assert hashlib.sha256(big.body).hexdigest() == pattern_sha256(BIG)
            upload = pattern(3 * MIB)
            posted = await client.request("POST", origin.url("/echo"), body=upload)
            assert posted.status == 200
            assert json.loads(posted.body) == {
                "length": len(upload),
                "sha256": hashlib.sha256(upload).hexdigest(),
            }
        finally:
            await client.close()
        for _ in range(3):  # new client connections reuse the pooled TLS connection
            assert (await get(proxy.port, origin.url("/"))).status == 200
        assert proxy.ctx.stats.handshakes == 1
        status, body = await through_tunnel(proxy.port, origin.address, f"/bytes/{BIG}")
        assert status == 200 and hashlib.sha256(body).hexdigest() == pattern_sha256(BIG)
    assert await wait_for(lambda: squid_tls.info.count_requests("CONNECT", 200) == 1)
    assert squid_tls.info.count_requests("GET", 200) == 5
    assert squid_tls.info.count_requests("POST", 200) == 1
    assert squid_tls.info.count_requests(code=407) == 1  # one NTLM handshake for all, tunnel too


async def test_curl_through_pycntlm_to_squid_https_parent(
    tmp_path: Path,
    squid_tls: SquidTls,  # noqa: F811
    origin: Origin,
    tls_origin: Origin,
    server_tls: TlsMaterial,
) -> None:
    """curl -> pycntlm -> TLS -> squid -> origin; and https:// (TLS inside the TLS parent)."""
    text = tls_conf(squid_tls.https_parent, ca=squid_tls.ca_pem, auth="NTLM")
    async with running_proxy(text, tmp_path) as proxy:
        out = tmp_path / "big"
        rc, code, err = await curl(
            "-x", proxy.url, "-o", str(out), "-w", "%{http_code}", origin.url(f"/bytes/{BIG}")
        )
        assert (rc, code) == (0, "200"), err
        assert hashlib.sha256(out.read_bytes()).hexdigest() == pattern_sha256(BIG)
        url = f"https://127.0.0.1:{tls_origin.port}/bytes/{BIG}"
        rc, code, err = await curl(
            "-x", proxy.url, "--cacert", str(server_tls.ca_pem), "-o", str(out),
            "-w", "%{http_code}", url,
        )  # fmt: skip
        assert (rc, code) == (0, "200"), err
        assert hashlib.sha256(out.read_bytes()).hexdigest() == pattern_sha256(BIG)
    assert await wait_for(lambda: squid_tls.info.count_requests("CONNECT", 200) == 1)


async def test_wrong_ca_is_a_clear_502_and_fails_over_to_a_plain_parent(
    tmp_path: Path,
    squid_tls: SquidTls,  # noqa: F811
    origin: Origin,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong, _ = other_ca(tmp_path / "other")
    reason = "TLS: certificate verify failed: unable to get local issuer certificate"
    caplog.set_level(logging.WARNING, logger="pycntlm")
    text = tls_conf(squid_tls.https_parent, ca=wrong, auth="NTLM")
    async with running_proxy(text, tmp_path) as proxy:
        reply = await get(proxy.port, origin.url("/"))
    assert reply.status == 502
    assert f"{squid_tls.https_parent} ({reason})".encode() in reply.body
    assert f"parent {squid_tls.https_parent}: {reason}; trying the next one" in caplog.text

    text = tls_conf(squid_tls.https_parent, squid_tls.http_parent, ca=wrong, auth="NTLM")
    async with running_proxy(text, tmp_path) as proxy:
        for _ in range(3):
            reply = await get(proxy.port, origin.url("/"))
            assert (reply.status, reply.body) == (200, HELLO)
    assert await wait_for(lambda: squid_tls.info.count_requests("GET", 200) == 3)


async def test_verification_is_on_by_default_with_the_system_store(
    tmp_path: Path,
    squid_tls: SquidTls,  # noqa: F811
    origin: Origin,
) -> None:
    """Without ProxyCAFile the system's CAs decide, and they do not know the test CA."""
    async with running_proxy(tls_conf(squid_tls.https_parent, ca=None), tmp_path) as proxy:
        reply = await get(proxy.port, origin.url("/"))
    assert reply.status == 502
    assert b"(TLS: certificate verify failed: unable to get local issuer certificate)" in reply.body
    # squid logs the failed TLS handshake (a moment later), but no request reached it
    assert await wait_for(lambda: bool(squid_tls.info.entries()))
    assert [e.url for e in squid_tls.info.entries()] == ["error:transaction-end-before-headers"]


async def test_verify_off_works_and_is_warned_about(
    tmp_path: Path,
    squid_tls: SquidTls,  # noqa: F811
    origin: Origin,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="pycntlm")
    text = tls_conf(squid_tls.https_parent, ca=None, auth="NTLM", extra="ProxyTLSVerify no")
    async with running_proxy(text, tmp_path) as proxy:
        assert proxy.ctx.parent_tls is not None
        assert proxy.ctx.parent_tls.verify_mode == ssl.CERT_NONE
        assert (await get(proxy.port, origin.url("/"))).status == 200
    warned = [r for r in caplog.records if "ProxyTLSVerify no" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    assert "NOT checked" in warned[0].getMessage()


async def test_tls_and_plain_ports_mixed_up_are_named_clearly(
    tmp_path: Path,
    squid_tls: SquidTls,  # noqa: F811
    origin: Origin,
) -> None:
    """https:// to a plain port, and a plain Proxy line to a TLS port: a 502 that says what
    happened, once ("bad answer: bad answer: ..." before the fix), and failover still works."""
    ca = squid_tls.ca_pem
    to_plain = f"https://{squid_tls.http_parent}"
    to_tls = f"127.0.0.1:{squid_tls.tls_port}"
    async with running_proxy(tls_conf(to_plain, to_tls, ca=ca, auth="NTLM"), tmp_path) as proxy:
        reply = await get(proxy.port, origin.url("/"))
    assert reply.status == 502
    assert (
        f"{to_plain} (TLS: wrong version number (does the parent speak TLS on this port? "
        f"if not, drop https://)), {to_tls} (bad answer: connection closed in the middle of a "
        f"message head))"
    ).encode() in reply.body
    good = squid_tls.https_parent
    async with running_proxy(tls_conf(to_tls, good, ca=ca, auth="NTLM"), tmp_path) as proxy:
        assert (await get(proxy.port, origin.url("/"))).status == 200


async def test_ipv6_target_through_squid_https_parent(
    tmp_path: Path,
    squid_tls: SquidTls,  # noqa: F811
) -> None:
    text = tls_conf(squid_tls.https_parent, ca=squid_tls.ca_pem, auth="NTLM")
    async with Origin(host="::1") as origin6, running_proxy(text, tmp_path) as proxy:
        reply = await get(proxy.port, origin6.url("/"))
        assert (reply.status, reply.body) == (200, HELLO)
        assert await through_tunnel(proxy.port, origin6.address, "/") == (200, HELLO)
    assert origin6.stats.requests == 2


# ---------------------------------------------------------------- the verifying demo parent


async def test_pooled_tls_connection_one_ntlmv2_logon_for_many_requests(
    tmp_path: Path,
    server_tls: TlsMaterial,
    tls_parent: TlsFront,
    parent: NtlmParent,
    origin: Origin,
) -> None:
    text = tls_conf(tls_parent.parent, ca=server_tls.ca_pem)
    async with running_proxy(text, tmp_path) as proxy:
        for _ in range(10):
            reply = await get(proxy.port, origin.url("/"))
            assert (reply.status, reply.body) == (200, HELLO)
    assert tls_parent.stats.accepted == 1 and parent.stats.connections == 1
    assert parent.stats.type1_seen == 1 and parent.stats.logons_ok == 1
    assert parent.stats.dialects == ["NTLMv2"] and parent.stats.requests == 10


async def test_post_as_the_first_request_on_a_fresh_tls_connection(
    tmp_path: Path,
    server_tls: TlsMaterial,
    tls_parent: TlsFront,
    parent: NtlmParent,
    origin: Origin,
) -> None:
    """The body waits for the challenge (HEAD + Type 1 first), then goes once with the Type 3."""
    upload = pattern(2 * MIB + 7)
    text = tls_conf(tls_parent.parent, ca=server_tls.ca_pem)
    async with running_proxy(text, tmp_path) as proxy:
        client = await RawClient.connect(proxy.port)
        try:
            reply = await client.request("POST", origin.url("/echo"), body=upload)
        finally:
            await client.close()
    assert reply.status == 200
    assert json.loads(reply.body)["sha256"] == hashlib.sha256(upload).hexdigest()
    assert parent.stats.logons_ok == 1 and tls_parent.stats.accepted == 1


@pytest.mark.parametrize("graceful", [False, True], ids=["reset", "close_notify"])
async def test_parent_dropping_an_idle_pooled_tls_connection(
    tmp_path: Path,
    server_tls: TlsMaterial,
    tls_parent: TlsFront,
    parent: NtlmParent,
    origin: Origin,
    graceful: bool,
) -> None:
    """A pooled TLS connection the parent closed is noticed and replaced, not answered 502."""
    text = tls_conf(tls_parent.parent, ca=server_tls.ca_pem)
    async with running_proxy(text, tmp_path) as proxy:
        assert (await get(proxy.port, origin.url("/"))).status == 200
        tls_parent.drop_connections(graceful)
        await asyncio.sleep(0.1)
        assert (await get(proxy.port, origin.url("/"))).status == 200
    assert tls_parent.stats.accepted == 2 and parent.stats.logons_ok == 2


async def test_no_asyncio_warning_when_a_tls_parent_closes(
    tmp_path: Path,
    server_tls: TlsMaterial,
    tls_parent: TlsFront,
    origin: Origin,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A TLS parent's close_notify: no 'returning true from eof_received()' warning (a Conn on
    a TLS transport does not ask to stay half-open), and the next request is served."""
    caplog.set_level(logging.WARNING, logger="asyncio")
    text = tls_conf(tls_parent.parent, ca=server_tls.ca_pem)
    async with running_proxy(text, tmp_path) as proxy:
        assert (await get(proxy.port, origin.url("/"))).status == 200
        tls_parent.drop_connections(graceful=True)
        await asyncio.sleep(0.2)
        assert (await get(proxy.port, origin.url("/"))).status == 200
    assert "eof_received" not in caplog.text


async def _answer_after(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A target that reads 5 bytes, waits a moment, then answers and closes."""
    data = await asyncio.wait_for(reader.readexactly(5), 10)
    await asyncio.sleep(0.3)
    writer.write(b"got " + data)
    await writer.drain()
    writer.close()


async def test_client_half_close_in_a_tunnel_over_a_tls_parent(
    tmp_path: Path, server_tls: TlsMaterial, tls_parent: TlsFront
) -> None:
    """asyncio's TLS transports cannot half-close, so a client's EOF cannot be passed on to a
    TLS parent (README: it stays with us); the tunnel must not be cut for it: the target's
    later answer still reaches the client, then the tunnel ends."""
    target = await asyncio.start_server(_answer_after, "127.0.0.1", 0)
    port = target.sockets[0].getsockname()[1]
    try:
        text = tls_conf(tls_parent.parent, ca=server_tls.ca_pem)
        async with running_proxy(text, tmp_path) as proxy:
            client = await RawClient.connect(proxy.port)
            try:
                await client.send(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())
                assert (await client.reply("CONNECT")).status == 200
                client.writer.write(b"hello")
                client.writer.write_eof()
                assert await asyncio.wait_for(client.reader.read(), 5) == b"got hello"
            finally:
                await client.close()
    finally:
        target.close()


async def test_hostname_mismatch_is_refused(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    """A certificate from a trusted CA, but for another name, is refused (IP and DNS names)."""
    ca_pem, server = other_ca(tmp_path / "ca", "other.test")
    async with TlsFront("127.0.0.1", parent.port, server) as front:
        for where, what in (
            (front.parent, "IP address mismatch, certificate is not valid for '127.0.0.1'"),
            (f"https://localhost:{front.port}", "Hostname mismatch"),
        ):
            async with running_proxy(tls_conf(where, ca=ca_pem), tmp_path) as proxy:
                reply = await get(proxy.port, origin.url("/"))
            assert reply.status == 502
            assert f"{where} (TLS: certificate verify failed: {what}".encode() in reply.body
    assert parent.stats.connections == 0  # no byte reached the parent


async def test_failover_from_tls_parent_to_plain_and_back(
    tmp_path: Path,
    server_tls: TlsMaterial,
    parent: NtlmParent,
    parent2: NtlmParent,
    origin: Origin,
) -> None:
    front = TlsFront("127.0.0.1", parent.port, server_tls.server_context)
    await front.start()
    port = front.port
    extra = "FailbackInterval 0.05"
    text = tls_conf(front.parent, parent2.address, ca=server_tls.ca_pem, extra=extra)
    try:
        async with running_proxy(text, tmp_path) as proxy:
            assert (await get(proxy.port, origin.url("/"))).status == 200
            assert parent.stats.requests == 1 and parent2.stats.requests == 0
            await front.close()  # the TLS parent goes away (pooled connection included)
            for _ in range(2):
                assert (await get(proxy.port, origin.url("/"))).status == 200
            assert parent.stats.requests == 1 and parent2.stats.requests == 2
            front = TlsFront("127.0.0.1", parent.port, server_tls.server_context, port=port)
            await front.start()  # back, on the same port: preferred again after the interval
            await asyncio.sleep(0.1)
            assert (await get(proxy.port, origin.url("/"))).status == 200
            assert parent.stats.requests == 2 and parent2.stats.requests == 2
    finally:
        await front.close()


async def test_failover_from_plain_parent_to_tls(
    tmp_path: Path,
    server_tls: TlsMaterial,
    tls_parent: TlsFront,
    parent: NtlmParent,
    origin: Origin,
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    async with running_proxy(
        tls_conf(dead, tls_parent.parent, ca=server_tls.ca_pem), tmp_path
    ) as proxy:
        assert (await get(proxy.port, origin.url("/"))).status == 200
    assert parent.stats.requests == 1


async def test_tunnel_and_socks5_front_ends_through_tls_parent(
    tmp_path: Path,
    server_tls: TlsMaterial,
    tls_parent: TlsFront,
    parent: NtlmParent,
    origin: Origin,
) -> None:
    lport, sport = free_port(), free_port()
    extra = f"Tunnel 127.0.0.1:{lport}:127.0.0.1:{origin.port}\nSOCKS5Proxy 127.0.0.1:{sport}"
    text = tls_conf(tls_parent.parent, ca=server_tls.ca_pem, extra=extra)
    async with running_proxy(text, tmp_path):
        out = tmp_path / "via-tunnel"
        rc, code, err = await curl(
            "-o", str(out), "-w", "%{http_code}", f"http://127.0.0.1:{lport}/bytes/{BIG}"
        )
        assert (rc, code) == (0, "200"), err
        assert hashlib.sha256(out.read_bytes()).hexdigest() == pattern_sha256(BIG)
        rc, body, err = await curl("--socks5-hostname", f"127.0.0.1:{sport}", origin.url("/"))
        assert (rc, body.encode()) == (0, HELLO), err
    assert parent.stats.requests == 2  # two CONNECTs through the verifying parent over TLS
    assert parent.stats.logons_ok == 2 and tls_parent.stats.accepted == 2


async def test_magic_probes_an_https_parent_over_tls(
    tmp_path: Path,
    server_tls: TlsMaterial,
    tls_parent: TlsFront,
    parent: NtlmParent,
    origin: Origin,
) -> None:
    text = tls_conf(tls_parent.parent, ca=server_tls.ca_pem)
    cfg = config.parse_file(text, str(tmp_path / "cntlm.conf"))
    result = await magic.detect(cfg, origin.url("/"))
    assert result.found is not None and result.found.dialect == "NTLMv2"
    assert result.failed_logons == 0 and parent.stats.logons_ok == 1

    wrong, _ = other_ca(tmp_path / "other")
    cfg = config.parse_file(tls_conf(tls_parent.parent, ca=wrong), str(tmp_path / "c.conf"))
    result = await magic.detect(cfg, origin.url("/"))
    assert result.found is None and result.failed_logons == 0
    assert result.probes[0].outcome == "unreachable"
    assert "TLS: certificate verify failed" in result.probes[0].text
    assert parent.stats.type1_seen == 1  # the second run never reached the parent


# ---------------------------------------------------------------- ProxyCAFile errors and reload


def test_client_context_settings(tmp_path: Path, server_tls: TlsMaterial) -> None:
    """One context per config, shared by derived contexts; verifying unless told otherwise."""
    plain = config.parse_file(conf("127.0.0.1:1"), str(tmp_path / "a.conf"))
    assert context.parent_tls_context(plain) is None
    text = tls_conf("https://127.0.0.1:1", "127.0.0.1:2", ca=server_tls.ca_pem)
    cfg = config.parse_file(text, str(tmp_path / "b.conf"))
    ctx = context.build(cfg, creds.from_config(cfg, "WS"))
    tls = ctx.parent_tls
    assert tls is not None
    assert (tls.verify_mode, tls.check_hostname) == (ssl.CERT_REQUIRED, True)
    assert tls.minimum_version == ssl.TLSVersion.TLSv1_2
    assert len(tls.get_ca_certs()) == 1  # only ProxyCAFile's CA, not the system's
    assert ctx.with_parents((config.HostPort("127.0.0.1", 3, tls=True),)).parent_tls is tls
    assert ctx.for_user("u", "d", "p").parent_tls is tls
    off = config.parse_file(text + "ProxyTLSVerify no\n", str(tmp_path / "c.conf"))
    tls = context.parent_tls_context(off)
    assert tls is not None and (tls.verify_mode, tls.check_hostname) == (ssl.CERT_NONE, False)


def build_from(path: Path) -> context.Context:
    cfg = config.load(["-c", str(path), "-f"], default_path="/nonexistent")
    return context.build(dataclasses.replace(cfg, password=None), creds.from_config(cfg, "WS"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read: No such file or directory"),
        ("dir", "cannot read: Is a directory"),
        ("not a certificate\n", "no PEM certificate in it"),
        ("", "no PEM certificate in it"),
        (
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
            "bad PEM",
        ),
    ],
)
def test_bad_proxy_ca_file_is_a_config_error(
    tmp_path: Path, content: str | None, message: str
) -> None:
    ca = tmp_path / "ca.pem"
    if content == "dir":
        ca.mkdir()
    elif content is not None:
        ca.write_text(content)
    path = tmp_path / "c.conf"
    path.write_text(tls_conf("https://127.0.0.1:1", ca=ca))
    with pytest.raises(ConfigError) as caught:
        build_from(path)
    assert str(caught.value).startswith(f"{path}: ProxyCAFile {ca}: {message}")


async def test_bad_proxy_ca_file_exits_2_with_one_line(tmp_path: Path) -> None:
    ca = tmp_path / "missing.pem"
    path = tmp_path / "c.conf"
    path.write_text(tls_conf("https://127.0.0.1:1", ca=ca))
    path.chmod(0o600)
    rc, _, err = await run_client(
        [sys.executable, "-m", "pycntlm", "-c", str(path), "-t"], env=clean_env(), timeout=30
    )
    assert rc == 2, err
    assert err.decode().splitlines() == [
        f"pycntlm: {path}: ProxyCAFile {ca}: cannot read: No such file or directory"
    ]


async def test_verify_off_is_warned_about_at_start_up(tmp_path: Path) -> None:
    path = tmp_path / "c.conf"
    path.write_text(tls_conf("https://127.0.0.1:1", ca=None, extra="ProxyTLSVerify no"))
    path.chmod(0o600)
    rc, out, err = await run_client(
        [sys.executable, "-m", "pycntlm", "-c", str(path), "-t"], env=clean_env(), timeout=30
    )
    assert rc == 0 and b"configuration OK" in out, err
    assert (
        b"WARNING pycntlm: ProxyTLSVerify no: the certificates of https:// parents are NOT" in err
    )


async def test_reload_with_a_bad_proxy_ca_file_keeps_the_running_config(
    tmp_path: Path,
    server_tls: TlsMaterial,
    tls_parent: TlsFront,
    parent: NtlmParent,
    origin: Origin,
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    ca = tmp_path / "ca.pem"
    ca.write_bytes(server_tls.ca_pem.read_bytes())
    path = tmp_path / "c.conf"
    text = tls_conf(tls_parent.parent, ca=ca).replace("Listen 127.0.0.1:3128", f"Listen {port}")
    path.write_text(text)
    srv = server.Server(build_from(path), lambda: build_from(path))
    await srv.start()
    task = asyncio.get_running_loop().create_task(srv.serve_until_stopped(grace=1))
    try:
        assert (await get(port, origin.url("/"))).status == 200
        running = srv.ctx
        ca.write_text("garbage\n")
        srv.reload()
        assert srv.ctx is running
        assert f"ProxyCAFile {ca}: no PEM certificate in it" in caplog.text
        assert (await get(port, origin.url("/"))).status == 200  # still over the pooled TLS
        running.pool.clear()
        assert (await get(port, origin.url("/"))).status == 200  # and over a new one
        wrong, _ = other_ca(tmp_path / "other")
        ca.write_bytes(wrong.read_bytes())
        srv.reload()  # a good file with another CA: applied, and now the parent is refused
        assert srv.ctx is not running
        assert (await get(port, origin.url("/"))).status == 502
    finally:
        srv.stop()
        await asyncio.wait_for(task, 10)
    assert tls_parent.stats.accepted == 2


# ---------------------------------------------------------------- IPv6


async def test_ipv6_parent_and_ipv6_targets(tmp_path: Path, origin: Origin) -> None:
    async with (
        NtlmParent([USER], host="::1") as parent6,
        Origin(host="::1") as origin6,
        running_proxy(conf(parent6.address), tmp_path) as proxy,
    ):
        assert parent6.address.startswith("[::1]:")
        for url in (origin6.url("/"), origin.url("/")):
            reply = await get(proxy.port, url)
            assert (reply.status, reply.body) == (200, HELLO)
        assert await through_tunnel(proxy.port, origin6.address, "/") == (200, HELLO)
        upload = pattern(MIB)
        client = await RawClient.connect(proxy.port)
        try:
            reply = await client.request("POST", origin6.url("/echo"), body=upload)
        finally:
            await client.close()
        assert json.loads(reply.body)["sha256"] == hashlib.sha256(upload).hexdigest()
    assert origin6.stats.requests == 3 and parent6.stats.logons_ok >= 1


async def test_ipv6_tls_parent(tmp_path: Path, server_tls: TlsMaterial, parent: NtlmParent) -> None:
    """`Proxy https://[::1]:port`: connected over IPv6, the certificate checked for IP ::1."""
    async with (
        TlsFront("127.0.0.1", parent.port, server_tls.server_context, host="::1") as front6,
        Origin(host="::1") as origin6,
    ):
        assert front6.parent.startswith("https://[::1]:")
        async with running_proxy(tls_conf(front6.parent, ca=server_tls.ca_pem), tmp_path) as proxy:
            assert (await get(proxy.port, origin6.url("/"))).status == 200
            assert await through_tunnel(proxy.port, origin6.address, "/") == (200, HELLO)
    assert front6.stats.accepted >= 1 and parent.stats.logons_ok >= 1


async def test_ipv6_target_direct_by_noproxy(tmp_path: Path, parent: NtlmParent) -> None:
    async with (
        Origin(host="::1") as origin6,
        running_proxy(conf(parent.address, extra="NoProxy ::1"), tmp_path) as proxy,
    ):
        assert (await get(proxy.port, origin6.url("/"))).status == 200
        assert await through_tunnel(proxy.port, origin6.address, "/") == (200, HELLO)
    assert parent.stats.requests == 0 and origin6.stats.requests == 2
