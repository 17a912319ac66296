"""SOCKS5 (RFC 1928) and its username/password sub-negotiation (RFC 1929), sans-IO.

Owns: parsing the client's greeting, login and request from a byte buffer (fed whole, in pieces
or with trailing data), choosing the method, checking a login in constant time, and building the
server's replies. Must not: do I/O, resolve names (a domain name goes to the parent as it is),
or put a password in an exception, a repr or a log.

Each parse_* takes the bytes received so far and returns None when more are needed, else
(message, bytes consumed); bytes past the message belong to the next step. Every message has a
hard size limit set by the protocol's one-byte lengths (at most MAX_MESSAGE bytes), so a caller
that gets None with MAX_MESSAGE bytes buffered has a bug, not a slow client. Malformed input
raises SocksError; its `reply` (if not None) is the code to answer before closing.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from pycntlm.errors import PycntlmError

VERSION = 5
AUTH_VERSION = 1  # RFC 1929 sub-negotiation version

NO_AUTH = 0x00
USER_PASS = 0x02
NO_ACCEPTABLE = 0xFF

CMD_CONNECT, CMD_BIND, CMD_UDP = 1, 2, 3
ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 1, 3, 4

# Reply codes (RFC 1928 section 6).
SUCCEEDED = 0x00
GENERAL_FAILURE = 0x01
NOT_ALLOWED = 0x02
NETWORK_UNREACHABLE = 0x03
HOST_UNREACHABLE = 0x04
CONNECTION_REFUSED = 0x05
TTL_EXPIRED = 0x06
COMMAND_NOT_SUPPORTED = 0x07
ADDRESS_TYPE_NOT_SUPPORTED = 0x08

# The largest message: greeting 2 + 255, login 3 + 255 + 255, request 5 + 255 + 2 bytes.
MAX_MESSAGE = 3 + 255 + 255

# A domain name we pass on in a CONNECT line: letters, digits, '-', '.', '_' only, so nothing
# a client sends can add a header or a line to the request we send the parent.
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


class SocksError(PycntlmError):
    """A malformed or unacceptable SOCKS message. `reply`: the code to send before closing, or
    None to close without a reply (the client does not speak SOCKS5 at all)."""

    def __init__(self, message: str, reply: int | None = None) -> None:
        self.message = message
        self.reply = reply
        super().__init__(message)


@dataclass(frozen=True)
class Greeting:
    methods: bytes  # the authentication methods the client offers, in its order


@dataclass(frozen=True)
class Login:
    username: bytes
    password: bytes = field(repr=False)


@dataclass(frozen=True)
class Request:
    command: int
    atyp: int
    host: str  # a domain name as sent, or an IP address in text form (IPv6 without brackets)
    port: int


def parse_greeting(buf: bytes | bytearray) -> tuple[Greeting, int] | None:
    """VER NMETHODS METHODS..."""
    if len(buf) < 1:
        return None
    if buf[0] != VERSION:
        raise SocksError(f"not SOCKS5 (version byte {buf[0]})")
    if len(buf) < 2:
        return None
    count = buf[1]
    if count == 0:
        raise SocksError("greeting offers no authentication method")
    if len(buf) < 2 + count:
        return None
    return Greeting(bytes(buf[2 : 2 + count])), 2 + count


def choose_method(greeting: Greeting, need_login: bool) -> int:
    """USER_PASS when accounts are configured, else NO_AUTH; NO_ACCEPTABLE if not offered."""
    wanted = USER_PASS if need_login else NO_AUTH
    return wanted if wanted in greeting.methods else NO_ACCEPTABLE


def method_reply(method: int) -> bytes:
    return bytes((VERSION, method))


def parse_login(buf: bytes | bytearray) -> tuple[Login, int] | None:
    """RFC 1929: VER ULEN UNAME PLEN PASSWD. Lengths of 0 are parsed (and then fail the check)."""
    if len(buf) < 1:
        return None
    if buf[0] != AUTH_VERSION:
        raise SocksError(f"bad username/password sub-negotiation version {buf[0]}")
    if len(buf) < 2:
        return None
    ulen = buf[1]
    if len(buf) < 3 + ulen:
        return None
    plen = buf[2 + ulen]
    end = 3 + ulen + plen
    if len(buf) < end:
        return None
    return Login(bytes(buf[2 : 2 + ulen]), bytes(buf[3 + ulen : end])), end


def login_reply(ok: bool) -> bytes:
    return bytes((AUTH_VERSION, 0 if ok else 1))


def check_login(accounts: Iterable[tuple[bytes, bytes]], login: Login) -> bool:
    """True when (username, password) is one of `accounts`. Every account is compared, each in
    constant time for equal lengths, so the answer time does not tell which part was wrong."""
    ok = False
    for user, password in accounts:
        same_user = hmac.compare_digest(user, login.username)
        same_password = hmac.compare_digest(password, login.password)
        ok |= same_user and same_password
    return ok


def parse_request(buf: bytes | bytearray) -> tuple[Request, int] | None:
    """VER CMD RSV ATYP DST.ADDR DST.PORT. The command is not judged here (see the caller)."""
    if len(buf) < 1:
        return None
    if buf[0] != VERSION:
        raise SocksError(f"bad request version {buf[0]}", GENERAL_FAILURE)
    if len(buf) < 4:
        return None
    command, atyp = buf[1], buf[3]
    if atyp == ATYP_IPV4:
        start, size = 4, 4
    elif atyp == ATYP_IPV6:
        start, size = 4, 16
    elif atyp == ATYP_DOMAIN:
        if len(buf) < 5:
            return None
        start, size = 5, buf[4]
        if size == 0:
            raise SocksError("empty domain name", GENERAL_FAILURE)
    else:
        raise SocksError(f"address type {atyp} is not supported", ADDRESS_TYPE_NOT_SUPPORTED)
    end = start + size + 2
    if len(buf) < end:
        return None
    raw = bytes(buf[start : start + size])
    (port,) = struct.unpack_from("!H", buf, start + size)
    host = _host(atyp, raw)
    if port == 0:
        raise SocksError("port 0", GENERAL_FAILURE)
    return Request(command, atyp, host, port), end


def _host(atyp: int, raw: bytes) -> str:
    if atyp == ATYP_IPV4:
        return str(ipaddress.IPv4Address(raw))
    if atyp == ATYP_IPV6:
        return str(ipaddress.IPv6Address(raw))
    text = raw.decode("ascii", errors="replace")
    if text.startswith("[") and text.endswith("]"):  # some clients bracket an IPv6 literal
        text = text[1:-1]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not _NAME_RE.fullmatch(text):
        raise SocksError("invalid domain name", HOST_UNREACHABLE)
    return text


def reply(code: int) -> bytes:
    """VER REP RSV ATYP BND.ADDR BND.PORT with 0.0.0.0:0 as the bound address: through a parent
    we do not know it, and clients do not use it for CONNECT (cntlm sends the same)."""
    return bytes((VERSION, code, 0, ATYP_IPV4, 0, 0, 0, 0, 0, 0))
