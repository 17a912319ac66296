"""SOCKS5 front end: the sans-IO parsers (a bank of malformed input, fed whole, byte by byte and
with trailing data; hypothesis), end to end with curl through the verifying NTLM parent, reply
codes, and the configuration rules (accounts, the open-relay refusal)."""

from __future__ import annotations

import asyncio
import ipaddress
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from proxyrun import conf, running_proxy
from test_frontends import free_port, run

from pycntlm import config, socks5
from pycntlm.demo.origin import HELLO, Origin
from pycntlm.demo.parent import NtlmParent
from pycntlm.errors import ConfigError
from pycntlm.socks5 import Greeting, Login, Request, SocksError

# ---------------------------------------------------------------- sans-IO: well-formed input


def request_bytes(host: str, port: int, command: int = 1) -> bytes:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        addr = bytes((socks5.ATYP_DOMAIN, len(host))) + host.encode()
    else:
        addr = bytes((socks5.ATYP_IPV4 if ip.version == 4 else socks5.ATYP_IPV6,)) + ip.packed
    return bytes((5, command, 0)) + addr + struct.pack("!H", port)


def login_bytes(user: bytes, password: bytes) -> bytes:
    return bytes((1, len(user))) + user + bytes((len(password),)) + password


def feed_in_pieces(parse, data: bytes):  # type: ignore[no-untyped-def]
    """Feed one byte at a time: None until the last byte, then the same as fed whole."""
    for end in range(len(data)):
        assert parse(data[:end]) is None, end
    return parse(data)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (request_bytes("127.0.0.1", 80), Request(1, 1, "127.0.0.1", 80)),
        (request_bytes("::1", 443), Request(1, 4, "::1", 443)),
        (request_bytes("git.corp.example", 22), Request(1, 3, "git.corp.example", 22)),
        (request_bytes("10.1.2.3", 65535, command=2), Request(2, 1, "10.1.2.3", 65535)),
        (request_bytes("a" * 255, 1), Request(1, 3, "a" * 255, 1)),
        # names that are IP literals are normalised; a bracketed IPv6 literal is accepted
        (b"\x05\x01\x00\x03\x05[::1]\x00\x50", Request(1, 3, "::1", 80)),
        (b"\x05\x01\x00\x03\x09127.0.0.1\x00\x50", Request(1, 3, "127.0.0.1", 80)),
        (b"\x05\x01\x07\x01\x7f\x00\x00\x01\x00\x50", Request(1, 1, "127.0.0.1", 80)),  # RSV
    ],
)
def test_parse_request(data: bytes, expected: Request) -> None:
    assert socks5.parse_request(data) == (expected, len(data))
    assert feed_in_pieces(socks5.parse_request, data) == (expected, len(data))
    assert socks5.parse_request(data + b"GET / HTTP/1.1\r\n") == (expected, len(data))


def test_parse_greeting_and_choose_method() -> None:
    data = b"\x05\x02\x00\x02"
    assert feed_in_pieces(socks5.parse_greeting, data) == (Greeting(b"\x00\x02"), 4)
    assert socks5.parse_greeting(data + b"\x05\x01") == (Greeting(b"\x00\x02"), 4)
    assert socks5.choose_method(Greeting(b"\x00\x02"), need_login=False) == socks5.NO_AUTH
    assert socks5.choose_method(Greeting(b"\x00\x02"), need_login=True) == socks5.USER_PASS
    assert socks5.choose_method(Greeting(b"\x00"), need_login=True) == socks5.NO_ACCEPTABLE
    assert socks5.choose_method(Greeting(b"\x02"), need_login=False) == socks5.NO_ACCEPTABLE
    assert socks5.method_reply(socks5.USER_PASS) == b"\x05\x02"


def test_login_parse_check_and_secrecy() -> None:
    data = login_bytes(b"alice", b"s3cret-pw")
    login, used = feed_in_pieces(socks5.parse_login, data)
    assert (login, used) == (Login(b"alice", b"s3cret-pw"), len(data))
    assert "s3cret" not in repr(login)
    accounts = [(b"bob", b"x"), (b"alice", b"s3cret-pw")]
    assert socks5.check_login(accounts, login)
    assert not socks5.check_login(accounts, Login(b"alice", b"s3cret-pW"))
    assert not socks5.check_login(accounts, Login(b"bob", b"s3cret-pw"))  # another user's
    assert not socks5.check_login([], login)
    assert socks5.parse_login(login_bytes(b"", b"")) == (Login(b"", b""), 3)
    assert socks5.login_reply(True) == b"\x01\x00" and socks5.login_reply(False) == b"\x01\x01"


def test_reply_layout() -> None:
    assert socks5.reply(socks5.SUCCEEDED) == b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    assert socks5.reply(socks5.COMMAND_NOT_SUPPORTED)[1] == 7


# ---------------------------------------------------------------- sans-IO: malformed input

MALFORMED_GREETINGS = [
    (b"\x04\x01\x00\x50", "not SOCKS5"),  # SOCKS4
    (b"GET / HTTP/1.1\r\n\r\n", "not SOCKS5"),  # HTTP sent to the SOCKS port
    (b"\x00", "not SOCKS5"),
    (b"\x05\x00", "no authentication method"),
]


@pytest.mark.parametrize(("data", "why"), MALFORMED_GREETINGS)
def test_malformed_greetings(data: bytes, why: str) -> None:
    with pytest.raises(SocksError, match=why) as info:
        socks5.parse_greeting(data)
    assert info.value.reply is None  # not SOCKS5: close without a reply


MALFORMED_REQUESTS = [
    (b"\x04\x01\x00\x01\x7f\x00\x00\x01\x00\x50", socks5.GENERAL_FAILURE),
    (b"\x05\x01\x00\x02\x7f\x00\x00\x01\x00\x50", socks5.ADDRESS_TYPE_NOT_SUPPORTED),
    (b"\x05\x01\x00\xff", socks5.ADDRESS_TYPE_NOT_SUPPORTED),
    (b"\x05\x01\x00\x03\x00\x00\x50", socks5.GENERAL_FAILURE),  # empty name
    (b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x00", socks5.GENERAL_FAILURE),  # port 0
    # names that could smuggle a header or a line into the CONNECT we send the parent
    (b"\x05\x01\x00\x03\x0ca\r\nX-Evil: 1\x00\x50", socks5.HOST_UNREACHABLE),
    (b"\x05\x01\x00\x03\x03a b\x00\x50", socks5.HOST_UNREACHABLE),
    (b"\x05\x01\x00\x03\x07a:1@b/c\x00\x50", socks5.HOST_UNREACHABLE),
    (b"\x05\x01\x00\x03\x02\xc3\xa9\x00\x50", socks5.HOST_UNREACHABLE),  # not ASCII
    (b"\x05\x01\x00\x03\x01-\x00\x50", socks5.HOST_UNREACHABLE),
]


@pytest.mark.parametrize(("data", "code"), MALFORMED_REQUESTS)
def test_malformed_requests(data: bytes, code: int) -> None:
    with pytest.raises(SocksError) as info:
        socks5.parse_request(data)
    assert info.value.reply == code


def test_truncated_messages_wait_for_more() -> None:
    # a length byte claims more than was sent: wait (the caller's timeout bounds the wait)
    assert socks5.parse_greeting(b"\x05\xff" + b"\x00" * 254) is None
    assert socks5.parse_login(b"\x01\xff" + b"u" * 200) is None
    assert socks5.parse_login(b"\x01\x01u\xff" + b"p" * 254) is None
    assert socks5.parse_request(b"\x05\x01\x00\x03\xff" + b"a" * 255 + b"\x00") is None
    assert socks5.parse_request(b"\x05\x01\x00\x04" + b"\x00" * 17) is None
    with pytest.raises(SocksError):
        socks5.parse_login(b"\x05\x01u\x01p")  # a greeting where a login belongs


parsers = st.sampled_from([socks5.parse_greeting, socks5.parse_login, socks5.parse_request])


@given(parse=parsers, data=st.binary(max_size=600))
def test_parsers_never_fail_otherwise(parse, data: bytes) -> None:  # type: ignore[no-untyped-def]
    """Any bytes: need more (only below the largest message), a message, or SocksError."""
    try:
        parsed = parse(data)
    except SocksError:
        return
    if parsed is None:
        assert len(data) < socks5.MAX_MESSAGE
    else:
        assert 0 < parsed[1] <= len(data)


@given(
    host=st.one_of(
        st.ip_addresses().map(str),
        st.from_regex(r"[a-z0-9][a-z0-9.-]{0,60}", fullmatch=True),
    ),
    port=st.integers(1, 65535),
    tail=st.binary(max_size=20),
)
def test_requests_round_trip(host: str, port: int, tail: bytes) -> None:
    data = request_bytes(host, port)
    parsed = socks5.parse_request(data + tail)
    assert parsed is not None
    assert parsed[1] == len(data)
    assert (parsed[0].host, parsed[0].port) == (host, port)


# ---------------------------------------------------------------- end to end with curl


def socks_conf(parent: NtlmParent | None, sport: int, extra: str = "") -> str:
    text = f"SOCKS5Proxy 127.0.0.1:{sport}\n{extra}"
    return conf(parent.address, extra=text) if parent else conf(extra=text)


async def curl_socks(proxy: str, url: str, *args: str) -> tuple[int, str, str]:
    return await run("curl", "-sS", "--max-time", "20", "-x", proxy, *args, url)


async def test_curl_socks5_hostname_through_parent(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    sport = free_port()
    async with running_proxy(socks_conf(parent, sport), tmp_path):
        rc, out, err = await run(
            "curl", "-sS", "--max-time", "20", "--socks5-hostname", f"127.0.0.1:{sport}",
            f"http://localhost:{origin.port}/",
        )  # fmt: skip
        assert (rc, out.encode()) == (0, HELLO), err
        rc, out, err = await curl_socks(f"socks5h://127.0.0.1:{sport}", origin.url("/"))
        assert (rc, out.encode()) == (0, HELLO), err
    assert parent.stats.requests == 2  # both CONNECTs went through the verifying parent
    assert parent.stats.logons_ok == 2 and parent.stats.logons_failed == 0


async def test_domain_name_is_resolved_by_the_parent(tmp_path: Path, parent: NtlmParent) -> None:
    """A name nobody can resolve reaches the parent as it is (it refuses non-loopback targets
    with 403, which becomes SOCKS5 reply 2, "not allowed by ruleset")."""
    sport = free_port()
    async with running_proxy(socks_conf(parent, sport), tmp_path):
        rc, _, err = await curl_socks(f"socks5h://127.0.0.1:{sport}", "http://no-such.invalid/")
    assert rc == 97 and "(2)" in err, err
    assert parent.stats.logons_ok == 1


async def test_accounts_required_and_checked(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    sport = free_port()
    users = "SOCKS5User alice:wonder land\nSOCKS5Users bob:builder"
    async with running_proxy(socks_conf(parent, sport, users), tmp_path):
        good = await curl_socks(f"socks5h://bob:builder@127.0.0.1:{sport}", origin.url("/"))
        spaced = await curl_socks(
            f"socks5h://127.0.0.1:{sport}", origin.url("/"), "--proxy-user", "alice:wonder land"
        )
        seen = parent.stats.connections
        wrong = await curl_socks(f"socks5h://bob:builder2@127.0.0.1:{sport}", origin.url("/"))
        swapped = await curl_socks(f"socks5h://alice:builder@127.0.0.1:{sport}", origin.url("/"))
        anonymous = await curl_socks(f"socks5h://127.0.0.1:{sport}", origin.url("/"))
    assert good[:2] == (0, HELLO.decode()) and spaced[:2] == (0, HELLO.decode())
    for rc, out, _ in (wrong, swapped, anonymous):
        assert rc != 0 and out == ""
    assert parent.stats.connections == seen == 2  # failed logins never reached the parent
    assert origin.stats.requests == 2


async def test_direct_for_noproxy(tmp_path: Path, parent: NtlmParent, origin: Origin) -> None:
    sport = free_port()
    async with running_proxy(socks_conf(parent, sport, "NoProxy localhost"), tmp_path):
        rc, out, err = await curl_socks(f"socks5h://127.0.0.1:{sport}", origin.url("/"))
        rc2, out2, err2 = await curl_socks(
            f"socks5h://127.0.0.1:{sport}", f"http://localhost:{origin.port}/"
        )
    assert (rc, out.encode()) == (0, HELLO), err
    assert (rc2, out2.encode()) == (0, HELLO), err2
    assert parent.stats.requests == 1  # 127.0.0.1 through the parent; localhost direct


# ---------------------------------------------------------------- end to end, raw client


class RawSocks:
    """A SOCKS5 client speaking bytes, to reach every reply code and malformed input."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> RawSocks:
        return cls(*await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read(self, n: int) -> bytes:
        return await asyncio.wait_for(self.reader.readexactly(n), 10)

    async def rest(self) -> bytes:
        """Everything until the server closes (bounded in time)."""
        return await asyncio.wait_for(self.reader.read(), 10)

    def close(self) -> None:
        self.writer.close()

    async def request(self, host: str, port: int, command: int = 1) -> int:
        """No-auth greeting, then a request: the reply code."""
        await self.send(b"\x05\x01\x00" + request_bytes(host, port, command))
        assert await self.read(2) == b"\x05\x00"
        reply = await self.read(10)
        assert reply[0] == 5 and reply[3] == 1
        return reply[1]


async def socks_reply(port: int, host: str, target_port: int, command: int = 1) -> int:
    client = await RawSocks.connect(port)
    try:
        code = await client.request(host, target_port, command)
        if code != socks5.SUCCEEDED:
            assert await client.rest() == b""  # and then the connection is closed
        return code
    finally:
        client.close()


async def test_reply_codes(tmp_path: Path, parent: NtlmParent, origin: Origin) -> None:
    sport = free_port()
    dead = free_port()
    async with running_proxy(socks_conf(parent, sport, "NoProxy 127.0.0.2"), tmp_path):
        assert await socks_reply(sport, "127.0.0.1", origin.port) == socks5.SUCCEEDED
        assert await socks_reply(sport, "127.0.0.1", dead) == socks5.HOST_UNREACHABLE  # 502
        assert await socks_reply(sport, "192.0.2.1", 80) == socks5.NOT_ALLOWED  # 403
        assert await socks_reply(sport, "127.0.0.2", dead) == socks5.CONNECTION_REFUSED
        for command in (socks5.CMD_BIND, socks5.CMD_UDP, 9):
            code = await socks_reply(sport, "127.0.0.1", origin.port, command)
            assert code == socks5.COMMAND_NOT_SUPPORTED
    assert parent.stats.logons_failed == 0


async def test_reply_codes_for_parent_trouble(tmp_path: Path, parent: NtlmParent) -> None:
    sport = free_port()
    async with running_proxy(socks_conf(None, sport, f"Proxy 127.0.0.1:{free_port()}"), tmp_path):
        assert await socks_reply(sport, "127.0.0.1", 80) == socks5.NETWORK_UNREACHABLE
    text = conf(parent.address, creds_lines="Password wrong", extra=f"SOCKS5Proxy {sport}")
    async with running_proxy(text, tmp_path):
        assert await socks_reply(sport, "127.0.0.1", 80) == socks5.GENERAL_FAILURE
        assert await socks_reply(sport, "127.0.0.1", 80) == socks5.GENERAL_FAILURE  # locked out
    assert parent.stats.logons_failed == 1


async def test_ipv6_target_and_early_data(tmp_path: Path, parent: NtlmParent) -> None:
    async with Origin(host="::1") as origin6:
        sport = free_port()
        async with running_proxy(socks_conf(parent, sport), tmp_path):
            client = await RawSocks.connect(sport)
            # greeting, request and the HTTP request in one write, before any reply
            get = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            await client.send(b"\x05\x01\x00" + request_bytes("::1", origin6.port) + get)
            assert await client.read(12) == b"\x05\x00" + socks5.reply(0)
            answer = await client.rest()
            client.close()
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(HELLO)
    assert parent.stats.requests == 1


BAD_INPUT = [
    b"",  # connect and close
    b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00",  # SOCKS4
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\x05\x00",  # zero methods
    b"\x05\x01\x02",  # only username/password offered, no accounts configured
    b"\x05\x01\x00\x05\x01\x00\x02\x7f\x00\x00\x01\x00\x50",  # address type 2
    b"\x05\x01\x00\x05\x01\x00\x03\x00\x00\x50",  # empty name
    b"\x05\x01\x00\x05\x01\x00\x03\x0ca\r\nX-Evil: 1\x00\x50",  # CRLF in the name
    b"\x05\x01\x00\x06\x01\x00\x01\x7f\x00\x00\x01\x00\x50",  # bad request version
    b"\x05\xff" + bytes(range(255)),  # every method
    b"\x05\x01\x00\x05\x01\x00\x03\xff" + b"a" * 10,  # huge length, truncated, then EOF
    b"\x05\x01\x00\x05\x01\x00\x04\x00",  # truncated IPv6, then EOF
    b"\x05" * 4096,
]


async def test_malformed_input_closes_cleanly_and_server_keeps_serving(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    sport = free_port()
    async with running_proxy(socks_conf(parent, sport), tmp_path) as proxy:
        for data in BAD_INPUT:
            client = await RawSocks.connect(sport)
            await client.send(data)
            client.writer.write_eof()
            answer = await client.rest()  # some get a method reply and an error reply first
            client.close()
            assert len(answer) <= 12, (data, answer)
            if answer:
                assert answer[0] == 5, (data, answer)
        rc, out, err = await curl_socks(f"socks5h://127.0.0.1:{sport}", origin.url("/"))
        assert (rc, out.encode()) == (0, HELLO), err
        await asyncio.sleep(0.1)
        assert proxy.ctx.stats.clients_active == 0
    assert parent.stats.requests == 1


async def test_slow_client_is_timed_out(
    tmp_path: Path, parent: NtlmParent, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pycntlm import frontends

    monkeypatch.setattr(frontends, "NEGOTIATION_TIMEOUT", 0.3)
    sport = free_port()
    async with running_proxy(socks_conf(parent, sport), tmp_path):
        client = await RawSocks.connect(sport)
        await client.send(b"\x05\x01")  # and then nothing
        assert await client.rest() == b""
        client.close()
    assert parent.stats.connections == 0


# ---------------------------------------------------------------- configuration


def parse(text: str) -> config.Config:
    return config.parse_file(text, "/etc/cntlm.conf")


def test_socks5_config_values() -> None:
    cfg = parse("SOCKS5Proxy 1080\nSOCKS5User a:b:c\nSOCKS5Users d:\n")
    assert [config.socks5_listen(v) for v in cfg.socks5_proxies] == [config.ListenAddr(None, 1080)]
    assert [config.socks5_account(v) for v in cfg.socks5_users] == [("a", "b:c"), ("d", "")]
    assert cfg.warnings == ()
    assert "b:c" not in repr(cfg)
    cli = config.load(["-O", "127.0.0.1:1081", "-R", "x:y"], default_path="/nonexistent")
    assert (cli.socks5_proxies, cli.socks5_users) == (("127.0.0.1:1081",), ("x:y",))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("SOCKS5Proxy 0", "/etc/cntlm.conf:1: SOCKS5Proxy needs [addr:]port"),
        ("SOCKS5Proxy a:b", "/etc/cntlm.conf:1: SOCKS5Proxy needs [addr:]port"),
        ("Username u\nSOCKS5User nocolon", "/etc/cntlm.conf:2: SOCKS5User needs user:password"),
        ("SOCKS5User :pw", "/etc/cntlm.conf:1: SOCKS5User needs user:password"),
        ("SOCKS5User u:" + "p" * 256, "/etc/cntlm.conf:1: SOCKS5User needs user:password"),
        ("SOCKS5Open maybe", "/etc/cntlm.conf:1: SOCKS5Open needs yes or no"),
    ],
)
def test_socks5_config_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text + "\n")
    assert str(info.value).startswith(message)
    assert "pw" not in str(info.value) and "ppp" not in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "SOCKS5Proxy 0.0.0.0:1080",
        "SOCKS5Proxy [::]:1080",
        "SOCKS5Proxy 10.1.2.3:1080",
        "SOCKS5Proxy docker0:1080",
        "SOCKS5Proxy proxy.example:1080",
        "Gateway yes\nSOCKS5Proxy 1080",
        "SOCKS5Proxy 127.0.0.1:1080\nSOCKS5Proxy 0.0.0.0:1081",
    ],
)
def test_open_relay_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="no SOCKS5User: anyone there could use your proxy"):
        parse(text + "\n")
    with pytest.raises(ConfigError, match="SOCKS5Open yes"):
        parse(text + "\n")
    # explicit consent, or accounts, make it acceptable
    assert parse(text + "\nSOCKS5Open yes\n").socks5_open
    assert parse(text + "\nSOCKS5User u:p\n").socks5_users == ("u:p",)


@pytest.mark.parametrize(
    "text",
    ["SOCKS5Proxy 1080", "SOCKS5Proxy 127.0.0.1:1080", "SOCKS5Proxy [::1]:1080",
     "SOCKS5Proxy localhost:1080", "SOCKS5Proxy 127.8.9.10:1080"],
)  # fmt: skip
def test_loopback_socks5_without_accounts_is_fine(text: str) -> None:
    assert parse(text + "\n").socks5_proxies


def test_open_relay_refused_from_the_command_line() -> None:
    with pytest.raises(ConfigError, match="SOCKS5Proxy 1080 is reachable from other hosts"):
        config.load(["-g", "-O", "1080"], default_path="/nonexistent")
    assert config.load(["-g", "-O", "1080", "-R", "u:p"], default_path="/nonexistent")
