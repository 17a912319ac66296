"""HTTP/1.x message heads and body framing for a proxy, sans-IO.

Owns: request/response head parsing and serialising with limits; hop-by-hop and Proxy-* rules;
absolute-form <-> origin-form; body framing (Content-Length, chunked, until-close, no body).
Must not: do I/O; de-chunk bodies (a proxy relays chunks as they are; see pycntlm.chunked).

Line ends: a request head must use CRLF; a bare LF or bare CR in it is a 400, because lenient
line splitting is a request smuggling vector between us and the parent. Response heads come from
parents, some of them sloppy, so a bare LF is accepted there (RFC 9112 section 2.2); a bare CR is
still rejected. One empty line before a request line is ignored (RFC 9112 section 2.2).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

# Body, ChunkedScanner and Framing live in pycntlm.chunked and are re-exported from here.
from pycntlm.chunked import Body as Body
from pycntlm.chunked import ChunkedScanner as ChunkedScanner
from pycntlm.chunked import Framing as Framing
from pycntlm.chunked import chunked_is_final, content_length
from pycntlm.errors import ProtocolError

# Limits (named, so they can be documented and configured).
MAX_HEAD_SIZE = 64 * 1024  # whole head, request line/status line + headers + CRLFCRLF
MAX_LINE_SIZE = 8 * 1024  # one request/status/header line
MAX_HEADERS = 128  # header fields in one head

Headers = tuple[tuple[str, str], ...]  # (name as received, value stripped), in order

_TCHAR = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_BAD_OCTETS = bytes(c for c in range(32) if c not in (9, 10, 13)) + b"\x7f"  # CTLs but HTAB
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-._~")
_USERINFO_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~%!$&'()*+,;=:"
)
_VERSIONS = frozenset(("HTTP/1.1", "HTTP/1.0"))
_COMMON_METHODS = frozenset(("GET", "POST", "CONNECT", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH"))
_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOP_BY_HOP = frozenset(
    {
        *("connection", "keep-alive", "proxy-connection", "proxy-authorization"),
        *("proxy-authenticate", "te", "trailer", "upgrade"),
    }
)
_FRAMING_FIELDS = frozenset(("transfer-encoding", "content-length"))


@dataclass(frozen=True)
class Request:
    method: str  # as received; case-sensitive (RFC 9110 9.1): "connect" is not CONNECT
    target: str  # request-target as received
    version: str  # "HTTP/1.1" or "HTTP/1.0"
    headers: Headers


@dataclass(frozen=True)
class Response:
    version: str
    status: int
    reason: str
    headers: Headers


@dataclass(frozen=True)
class Target:
    """Where a request goes. For CONNECT: host/port of the authority, path "".
    For absolute-form: scheme, host, port (default by scheme), origin-form path ("/" if empty)."""

    scheme: str  # "http", "https", "" for CONNECT
    host: str  # lower-cased; IPv6 without brackets
    port: int
    path: str


# --- heads -----------------------------------------------------------------------------------


def find_head_end(buf: bytes | bytearray, start: int = 0, max_size: int = MAX_HEAD_SIZE) -> int:
    """Index just past the blank line that ends a head, or -1 if not complete yet.
    Accepts CRLFCRLF (and bare-LF line ends only where parse_* accepts them).
    Raises ProtocolError(431) when no end is found within MAX_HEAD_SIZE bytes.
    `start` lets a caller resume scanning without rescanning from 0.

    The head starts at buf[0]; `start` is a resume hint (typically the previous len(buf)): the
    search backs up over a terminator that straddles it. A bare-LF end ("\\n\\n") is found too,
    so a bare-LF request is answered with parse_request's 400 instead of waiting for more.
    """
    stop = min(len(buf), max_size)
    crlf = buf.find(b"\n\r\n", max(0, start - 2), stop)
    lf = buf.find(b"\n\n", max(0, start - 1), crlf + 2 if crlf >= 0 else stop)
    if lf >= 0:
        return lf + 2
    if crlf >= 0:
        return crlf + 3
    if len(buf) >= max_size:
        raise ProtocolError("header section too large", 431)
    return -1


def parse_request(
    head: bytes, *, max_size: int = MAX_HEAD_SIZE, max_headers: int = MAX_HEADERS
) -> Request:
    """Parse a complete request head (up to and including the blank line).
    Raises ProtocolError(400) for malformed lines, (431) for limits (MaxHeadSize, MaxHeaders)."""
    if head.startswith(b"\r\n"):
        head = head[2:]
    if len(head) > max_size:
        raise ProtocolError("request header section too large", 431)
    if not head.endswith(b"\r\n\r\n"):
        raise ProtocolError("incomplete request head", 400)
    if head.translate(None, _BAD_OCTETS) != head:
        raise ProtocolError("control character in request head", 400)
    lines = head.decode("latin-1")[:-4].split("\r\n")
    joined = "".join(lines)
    if "\n" in joined:
        raise ProtocolError("bare LF in request head", 400)
    if "\r" in joined:
        raise ProtocolError("bare CR in request head", 400)
    _check_sizes(len(head), lines, 431, max_headers)
    method, target, version = _request_line(lines[0])
    return Request(method, target, version, _fields(lines, 400))


def _request_line(line: str) -> tuple[str, str, str]:
    parts = line.split(" ")
    if len(parts) != 3:
        raise ProtocolError("malformed request line", 400)
    method, target, version = parts
    if method not in _COMMON_METHODS and not _is_token(method):
        raise ProtocolError("invalid method", 400)
    if not target or "\t" in target:
        raise ProtocolError("invalid request target", 400)
    if version not in _VERSIONS:
        if _looks_like_version(version):
            raise ProtocolError("HTTP version not supported", 505)
        raise ProtocolError("invalid HTTP version", 400)
    return method, target, version


def _is_token(text: str) -> bool:
    if text.isascii() and text.replace("-", "").isalnum():  # the usual case, fast
        return True
    return bool(text) and text.isascii() and not text.encode("ascii").translate(None, _TCHAR)


def _looks_like_version(version: str) -> bool:
    """HTTP/<digit> or HTTP/<digit>.<digit>: a well-formed version we do not speak."""
    v = version[5:]
    if not version.startswith("HTTP/") or not v.isascii() or not v[:1].isdigit():
        return False
    return len(v) == 1 or (len(v) == 3 and v[1] == "." and v[2].isdigit())


def parse_response(head: bytes) -> Response:
    """Parse a complete response head. Raises ProtocolError(502) when malformed."""
    if len(head) > MAX_HEAD_SIZE:
        raise ProtocolError("response header section too large", 502)
    if head.translate(None, _BAD_OCTETS) != head:
        raise ProtocolError("control character in response head", 502)
    text = head.decode("latin-1")
    if "\r" in text:
        text = text.replace("\r\n", "\n")
        if "\r" in text:
            raise ProtocolError("bare CR in response head", 502)
    if not text.endswith("\n\n"):
        raise ProtocolError("incomplete response head", 502)
    lines = text[:-2].split("\n")
    _check_sizes(len(head), lines, 502)
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if version not in _VERSIONS:
        raise ProtocolError("invalid response version", 502)
    if len(code) != 3 or not code.isascii() or not code.isdigit() or code[0] == "0":
        raise ProtocolError("invalid response status", 502)
    return Response(version, int(code), reason, _fields(lines, 502))


def _check_sizes(
    head_size: int, lines: list[str], status: int, max_headers: int = MAX_HEADERS
) -> None:
    if len(lines) > max_headers + 1:
        raise ProtocolError("too many header fields", status)
    if head_size > MAX_LINE_SIZE and max(map(len, lines)) > MAX_LINE_SIZE:
        raise ProtocolError("header line too long", status)


def _fields(lines: list[str], status: int) -> Headers:
    """Header fields of lines[1:] (lines[0] is the start line). Names must be tokens."""
    fields = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name:
            raise _field_error(name, status)
        fields.append((name, value.strip(" \t")))
    if fields and not _is_token("".join([name for name, _ in fields])):  # one check for all
        raise _field_error(next(name for name, _ in fields if not _is_token(name)), status)
    return tuple(fields)


def _field_error(name: str, status: int) -> ProtocolError:
    if name[:1] in (" ", "\t"):
        return ProtocolError("obsolete line folding in header", status)
    if name.rstrip(" \t") != name:
        return ProtocolError("whitespace before colon in header", status)
    return ProtocolError("malformed header field", status)


def serialize_request(req: Request) -> bytes:
    return _serialize(f"{req.method} {req.target} {req.version}", req.headers)


def serialize_response(resp: Response) -> bytes:
    return _serialize(f"{resp.version} {resp.status} {resp.reason}", resp.headers)


def _serialize(start_line: str, headers: Headers) -> bytes:
    text = "\r\n".join([start_line, *[f"{n}: {v}" for n, v in headers], "\r\n"])
    if text.count("\n") != len(headers) + 2 or text.count("\r") != len(headers) + 2:
        raise ValueError("CR or LF inside a start line or header field")  # header injection
    return text.encode("latin-1")


# --- header rules ----------------------------------------------------------------------------


def header_values(headers: Headers, name: str) -> list[str]:
    """Every value of `name` (case-insensitive), in order."""
    name = name.lower()
    return [v for n, v in headers if n.lower() == name]


def _tokens(values: list[str]) -> list[str]:
    """Comma-separated list elements of every value, stripped and lower-cased, empty ones out."""
    return [t for t in (e.strip(" \t").lower() for v in values for e in v.split(",")) if t]


def connection_tokens(headers: Headers) -> set[str]:
    """Lower-cased tokens of every Connection and Proxy-Connection header."""
    values = [v for n, v in headers if n.lower() in ("connection", "proxy-connection")]
    return set(_tokens(values)) if values else set()


def forward_headers(headers: Headers, *, drop: tuple[str, ...] = ()) -> Headers:
    """Headers to send onward: removes hop-by-hop fields (Connection and the fields it names,
    Keep-Alive, Proxy-Connection, Proxy-Authorization, Proxy-Authenticate, TE, Trailer, Upgrade)
    but keeps Transfer-Encoding (bodies are relayed as they are), plus any extra names in `drop`.
    Connection tokens never remove Transfer-Encoding or Content-Length (the framing we relay
    by); a name in `drop` is removed whatever it is."""
    remove = _HOP_BY_HOP | (connection_tokens(headers) - _FRAMING_FIELDS)
    remove |= {d.lower() for d in drop}
    return tuple([(n, v) for n, v in headers if n.lower() not in remove])


# --- request targets -------------------------------------------------------------------------


def request_target(req: Request) -> Target:
    """CONNECT authority or absolute-form URI -> Target. Origin-form (no host) is a
    ProtocolError(400) for a proxy, except that the caller may handle it first.
    Userinfo in an absolute URI is dropped (never forwarded); so is a fragment."""
    target = req.target
    if req.method == "CONNECT":
        host, port = _authority(target, None)
        return Target("", host, port, "")
    if target.startswith("/") or target == "*":
        raise ProtocolError("proxy request needs an absolute URI", 400)
    scheme, sep, rest = target.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _DEFAULT_PORTS:
        raise ProtocolError("invalid request target", 400)
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=-1)
    authority, path = (rest, "") if cut < 0 else (rest[:cut], rest[cut:])
    userinfo, at, hostport = authority.rpartition("@")
    if at and not _USERINFO_CHARS.issuperset(userinfo):
        raise ProtocolError("invalid userinfo in request target", 400)
    host, port = _authority(hostport, _DEFAULT_PORTS[scheme])
    path = path.partition("#")[0]
    if not path.startswith("/"):
        path = "/" + path
    return Target(scheme, host, port, path)


def _authority(text: str, default_port: int | None) -> tuple[str, int]:
    """host:port or [v6]:port -> (host lower-cased without brackets, port). The port may be
    missing or empty only when default_port is given."""
    if text.startswith("["):
        close = text.find("]")
        host, rest = text[1:close], text[close + 1 :]
        if close < 0 or (rest and not rest.startswith(":")) or not _is_ipv6(host):
            raise ProtocolError("invalid IPv6 host in request target", 400)
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text_ = text.partition(":")
        port_text = port_text_ if colon else None
        if not host or len(host) > 255 or not _HOST_CHARS.issuperset(host.lower()):
            raise ProtocolError("invalid host in request target", 400)
    return host.lower(), _port(port_text, default_port)


def _is_ipv6(text: str) -> bool:
    if "%" in text:  # zone identifiers are meaningless to a proxy
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _port(text: str | None, default_port: int | None) -> int:
    if not text:
        if default_port is None:
            raise ProtocolError("CONNECT target needs a port", 400)
        return default_port
    if len(text) > 5 or not text.isascii() or not text.isdigit() or not 0 < int(text) < 65536:
        raise ProtocolError("invalid port in request target", 400)
    return int(text)


def log_target(target: str) -> str:
    """A request target as it may be logged: userinfo (`user:password@`, a client's credentials
    in an absolute URI or a CONNECT authority) replaced by `***@`."""
    start = target.find("://")
    start = 0 if start < 0 else start + 3
    if start == 0 and target.startswith("/"):
        return target  # origin-form: no authority
    cut = [i for i in (target.find(c, start) for c in "/?#") if i >= 0]
    at = target.rfind("@", start, min(cut, default=len(target)))
    return target if at < 0 else f"{target[:start]}***{target[at:]}"


def absolute_uri(target: Target) -> str:
    """The absolute-form URI of a non-CONNECT Target (default port left out, no userinfo)."""
    host = f"[{target.host}]" if ":" in target.host else target.host
    if target.port != _DEFAULT_PORTS.get(target.scheme):
        host = f"{host}:{target.port}"
    return f"{target.scheme}://{host}{target.path}"


# --- body framing and connection reuse -------------------------------------------------------


def request_body(req: Request) -> Body:
    """Request body framing: chunked, Content-Length, or none. Rejects ambiguous framing
    (Transfer-Encoding with Content-Length, several different Content-Lengths, a transfer coding
    other than chunked last, negative/absurd lengths) with ProtocolError(400).
    Transfer-Encoding in an HTTP/1.0 request is a 400 too (RFC 9112 section 6.1)."""
    te = header_values(req.headers, "transfer-encoding")
    cl = header_values(req.headers, "content-length")
    if te:
        if cl:
            raise ProtocolError("both Transfer-Encoding and Content-Length", 400)
        if req.version == "HTTP/1.0":
            raise ProtocolError("Transfer-Encoding in an HTTP/1.0 request", 400)
        if not chunked_is_final(te):
            raise ProtocolError("request transfer coding is not chunked", 400)
        return Body(Framing.CHUNKED)
    if cl:
        return Body(Framing.LENGTH, content_length(cl, 400))
    return Body(Framing.NONE)


def response_body(resp: Response, request_method: str) -> Body:
    """Response body framing per RFC 9112 6.3: HEAD, 1xx, 204, 304 and 2xx to CONNECT have
    none; chunked; Content-Length; otherwise until close.
    Transfer-Encoding overrides Content-Length; chunked not last, or any Transfer-Encoding in
    an HTTP/1.0 response (RFC 9112 6.1: faulty framing), reads until close. An invalid
    Content-Length is a ProtocolError(502)."""
    method = request_method  # case-sensitive (RFC 9110 9.1): "head" is not HEAD
    status = resp.status
    if method == "HEAD" or status < 200 or status in (204, 304):
        return Body(Framing.NONE)
    if method == "CONNECT" and status < 300:
        return Body(Framing.NONE)
    te = header_values(resp.headers, "transfer-encoding")
    if te:
        if resp.version == "HTTP/1.1" and chunked_is_final(te):
            return Body(Framing.CHUNKED)
        return Body(Framing.UNTIL_CLOSE)
    cl = header_values(resp.headers, "content-length")
    if cl:
        return Body(Framing.LENGTH, content_length(cl, 502))
    return Body(Framing.UNTIL_CLOSE)


def client_wants_keep_alive(req: Request) -> bool:
    """HTTP/1.1 default keep-alive unless "close" in Connection/Proxy-Connection;
    HTTP/1.0 only with "keep-alive"."""
    tokens = connection_tokens(req.headers)
    if "close" in tokens:
        return False
    return req.version == "HTTP/1.1" or "keep-alive" in tokens


def response_keeps_alive(resp: Response, request_method: str) -> bool:
    """Whether the connection the response came on can be reused after its body.
    Not after: "close", HTTP/1.0 without "keep-alive", until-close framing, Transfer-Encoding
    together with Content-Length (RFC 9112 6.3), an invalid Content-Length, a 101, or a 2xx to
    CONNECT (the connection became a tunnel)."""
    tokens = connection_tokens(resp.headers)
    if "close" in tokens or (resp.version == "HTTP/1.0" and "keep-alive" not in tokens):
        return False
    if resp.status == 101 or (request_method == "CONNECT" and 200 <= resp.status < 300):
        return False
    try:
        body = response_body(resp, request_method)
    except ProtocolError:
        return False
    if body.framing is Framing.UNTIL_CLOSE:
        return False
    framed_twice = header_values(resp.headers, "transfer-encoding") and header_values(
        resp.headers, "content-length"
    )
    return not framed_twice


def simple_response(
    status: int, reason: str, text: str, *, keep_alive: bool = True, extra: Headers = ()
) -> bytes:
    """A complete small response (head + text/plain body) that pycntlm itself answers with."""
    body = (text + "\n").encode("utf-8")
    connection = "keep-alive" if keep_alive else "close"
    headers: Headers = (
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Connection", connection),
        ("Proxy-Connection", connection),
        *extra,
    )
    return serialize_response(Response("HTTP/1.1", status, reason, headers)) + body
