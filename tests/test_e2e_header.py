"""End to end: Header / -r, cntlm's header substitution, seen where the request lands.

Each Header line replaces every field of its name in a forwarded request, or adds it when the
client sent none: through the verifying parent (both legs of a fresh handshake and a pooled
connection, GET and POST with a body), direct for NoProxy hosts, and on the CONNECT sent to the
parent. The origin records the head it got (Origin.stats.last_headers), the parent the heads it
read (NtlmParent.stats.heads).

Where cntlm 0.92.3 differs (measured against the installed cntlm): it only replaces a field the
client sent, in forwarded requests and CONNECTs alike, never adds one, while its manual says it
adds; pycntlm adds, as the manual says.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from proxyrun import RawClient, conf, get, running_proxy
from servers.procs import free_port
from test_e2e_cli import proxy_conf, pycntlm_process

from pycntlm.demo.origin import HELLO, Head, Origin
from pycntlm.demo.parent import NtlmParent

UA = "Foo/1.0"
HEADER = f"Header User-Agent: {UA}"
BODY = b"a request body the origin hashes\n" * 100


def values(headers: list[tuple[str, str]] | tuple[tuple[str, str], ...], name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name.lower()]


def heads_to(parent: NtlmParent, method: str) -> list[Head]:
    return [h for h in parent.stats.heads if h.start[0] == method]


async def send(
    port: int, method: str, origin: Origin, client_headers: dict[str, str]
) -> tuple[int, bytes]:
    """One request through the proxy on a new client connection: (status, body)."""
    client = await RawClient.connect(port)
    try:
        if method == "POST":
            rep = await client.request("POST", origin.url("/echo"), client_headers, BODY)
        else:
            rep = await client.request("GET", origin.url("/"), client_headers)
    finally:
        await client.close()
    return rep.status, rep.body


def check_body(method: str, body: bytes) -> None:
    if method == "POST":
        assert json.loads(body) == {
            "length": len(BODY),
            "sha256": hashlib.sha256(BODY).hexdigest(),
        }
    else:
        assert body == HELLO


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize(
    "client_headers",
    [{}, {"User-Agent": "Client/9"}, {"user-agent": "lower-case/2"}],
    ids=["added", "replaced", "replaced-any-case"],
)
async def test_parent_gets_it_on_a_fresh_handshake_and_a_pooled_connection(
    tmp_path: Path,
    parent: NtlmParent,
    origin: Origin,
    method: str,
    client_headers: dict[str, str],
) -> None:
    async with running_proxy(conf(parent.address, extra=HEADER), tmp_path) as proxy:
        for turn in (1, 2):  # 1: a fresh connection and handshake; 2: the pooled connection
            status, body = await send(proxy.port, method, origin, client_headers)
            assert status == 200
            check_body(method, body)
            assert values(origin.stats.last_headers, "User-Agent") == [UA]
            assert origin.stats.requests == turn
    assert parent.stats.type1_seen == parent.stats.logons_ok == 1  # the second was pooled
    assert parent.stats.connections == 1 and parent.stats.requests == 2
    # every head the parent read: the handshake's two legs (HEAD first for a POST), the pooled one
    seen = [(h.start[0], values(h.headers, "User-Agent")) for h in parent.stats.heads]
    leg1 = "HEAD" if method == "POST" else method
    assert seen == [(leg1, [UA]), (method, [UA]), (method, [UA])]
    # the recorded heads keep the scheme only; the pooled request carried no authorization
    auth = [values(h.headers, "Proxy-Authorization") for h in parent.stats.heads]
    assert auth == [["NTLM"], ["NTLM"], []]


async def test_every_header_line_applies_and_replaces_every_field_of_its_name(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    extra = f"{HEADER}\nHeader X-Corp-Id: 42"
    async with running_proxy(conf(parent.address, extra=extra), tmp_path) as proxy:
        client = await RawClient.connect(proxy.port)
        try:
            host = origin.address
            await client.send(
                f"GET {origin.url('/')} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: one/1\r\n"
                f"X-Other: kept\r\nUSER-AGENT: two/2\r\nX-Corp-Id: 7\r\n"
                "Cookie: session=s3cret\r\n\r\n".encode()
            )
            rep = await client.reply()
        finally:
            await client.close()
    assert rep.status == 200 and rep.body == HELLO
    got = origin.stats.last_headers
    assert values(got, "User-Agent") == [UA]
    assert values(got, "X-Corp-Id") == ["42"]
    assert values(got, "X-Other") == ["kept"]
    assert [values(h.headers, "User-Agent") for h in parent.stats.heads] == [[UA], [UA]]
    assert [values(h.headers, "Cookie") for h in parent.stats.heads] == [["(redacted)"]] * 2


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_noproxy_direct_request_carries_it(
    tmp_path: Path, parent: NtlmParent, origin: Origin, method: str
) -> None:
    text = conf(parent.address, extra=f"{HEADER}\nNoProxy 127.0.0.1")
    async with running_proxy(text, tmp_path) as proxy:
        status, body = await send(proxy.port, method, origin, {"User-Agent": "Client/9"})
        assert status == 200
        check_body(method, body)
        assert values(origin.stats.last_headers, "User-Agent") == [UA]
        status, _ = await send(proxy.port, method, origin, {})
        assert status == 200
        assert values(origin.stats.last_headers, "User-Agent") == [UA]
    assert parent.stats.connections == 0  # direct: the parent never saw them


async def test_connect_to_the_parent_carries_it_and_the_tunnel_is_untouched(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    async with running_proxy(conf(parent.address, extra=HEADER), tmp_path) as proxy:
        client = await RawClient.connect(proxy.port)
        try:
            authority = origin.address
            await client.send(
                f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
                "User-Agent: Client/9\r\n\r\n".encode()
            )
            assert (await client.reply("CONNECT")).status == 200
            # inside the tunnel the bytes are the client's own: no substitution there
            await client.send(
                f"GET / HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: Inner/3\r\n\r\n".encode()
            )
            rep = await client.reply()
        finally:
            await client.close()
    assert rep.status == 200 and rep.body == HELLO
    assert values(origin.stats.last_headers, "User-Agent") == ["Inner/3"]
    connects = heads_to(parent, "CONNECT")
    assert len(connects) == 2 and parent.stats.logons_ok == 1  # the Type 1 leg and the Type 3 leg
    assert [values(h.headers, "User-Agent") for h in connects] == [[UA], [UA]]


async def test_dash_r_on_the_command_line(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    port = free_port()
    path = proxy_conf(tmp_path / "cntlm.conf", parent.address, port, "password")
    args = ["-c", str(path), "-f", "-r", "User-Agent: Cli/1.0", "-r", "X-Corp-Id: 42"]
    async with pycntlm_process(args, port, tmp_path) as p:
        reply = await get(port, origin.url("/"), {"User-Agent": "Client/9"})
        assert await p.terminate() == 0
    assert reply.status == 200 and reply.body == HELLO
    assert values(origin.stats.last_headers, "User-Agent") == ["Cli/1.0"]
    assert values(origin.stats.last_headers, "X-Corp-Id") == ["42"]
    assert parent.stats.logons_ok == 1
    assert all(values(h.headers, "User-Agent") == ["Cli/1.0"] for h in parent.stats.heads)


async def test_dash_r_and_a_header_line_of_the_same_name_send_one_field(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    """One field per name, as cntlm 0.92.3 sends: -r beats the file's Header line, and of two
    file lines of one name the first wins (a regression: every entry used to be sent)."""
    port = free_port()
    path = proxy_conf(tmp_path / "cntlm.conf", parent.address, port, "password")
    extra = "Header User-Agent: File/1.0\nHeader X-A: first\nHeader x-a: second\n"
    path.write_text(path.read_text() + extra)
    args = ["-c", str(path), "-f", "-r", "User-Agent: Cli/1.0"]
    async with pycntlm_process(args, port, tmp_path) as p:
        reply = await get(port, origin.url("/"), {"User-Agent": "Client/9"})
        assert await p.terminate() == 0
    assert reply.status == 200
    assert values(origin.stats.last_headers, "User-Agent") == ["Cli/1.0"]
    assert values(origin.stats.last_headers, "X-A") == ["first"]
