"""HTTP/1.x message heads and body framing for a proxy, sans-IO.

Owns: request/response head parsing and serialising with limits; hop-by-hop and Proxy-* rules;
absolute-form <-> origin-form; body framing (Content-Length, chunked, until-close, no body).
Must not: do I/O; de-chunk bodies (a proxy relays chunks as they are).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# Limits (named, so they can be documented and configured).
MAX_HEAD_SIZE = 64 * 1024  # whole head, request line/status line + headers + CRLFCRLF
MAX_LINE_SIZE = 8 * 1024  # one request/status/header line
MAX_HEADERS = 128  # header fields in one head

Headers = tuple[tuple[str, str], ...]  # (name as received, value stripped), in order


@dataclass(frozen=True)
class Request:
    method: str  # as received (case-sensitive per RFC 9110; compare upper-case for CONNECT)
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


class Framing(enum.Enum):
    NONE = "none"
    LENGTH = "length"
    CHUNKED = "chunked"
    UNTIL_CLOSE = "until-close"


@dataclass(frozen=True)
class Body:
    framing: Framing
    length: int = 0  # for LENGTH


def find_head_end(buf: bytes | bytearray, start: int = 0) -> int:
    """Index just past the blank line that ends a head, or -1 if not complete yet.
    Accepts CRLFCRLF (and bare-LF line ends only where parse_* accepts them).
    Raises ProtocolError(431) when no end is found within MAX_HEAD_SIZE bytes.
    `start` lets a caller resume scanning without rescanning from 0."""
    raise NotImplementedError


def parse_request(head: bytes) -> Request:
    """Parse a complete request head (up to and including the blank line).
    Raises ProtocolError(400) for malformed lines, (431) for limits."""
    raise NotImplementedError


def parse_response(head: bytes) -> Response:
    """Parse a complete response head. Raises ProtocolError(502) when malformed."""
    raise NotImplementedError


def serialize_request(req: Request) -> bytes:
    raise NotImplementedError


def serialize_response(resp: Response) -> bytes:
    raise NotImplementedError


def header_values(headers: Headers, name: str) -> list[str]:
    """Every value of `name` (case-insensitive), in order."""
    raise NotImplementedError


def connection_tokens(headers: Headers) -> set[str]:
    """Lower-cased tokens of every Connection and Proxy-Connection header."""
    raise NotImplementedError


def request_target(req: Request) -> Target:
    """CONNECT authority or absolute-form URI -> Target. Origin-form (no host) is a
    ProtocolError(400) for a proxy, except that the caller may handle it first."""
    raise NotImplementedError


def forward_headers(headers: Headers, *, drop: tuple[str, ...] = ()) -> Headers:
    """Headers to send onward: removes hop-by-hop fields (Connection and the fields it names,
    Keep-Alive, Proxy-Connection, Proxy-Authorization, Proxy-Authenticate, TE, Trailer, Upgrade)
    but keeps Transfer-Encoding (bodies are relayed as they are), plus any extra names in `drop`."""
    raise NotImplementedError


def request_body(req: Request) -> Body:
    """Request body framing: chunked, Content-Length, or none. Rejects ambiguous framing
    (Transfer-Encoding with Content-Length, several different Content-Lengths, a transfer coding
    other than chunked last, negative/absurd lengths) with ProtocolError(400)."""
    raise NotImplementedError


def response_body(resp: Response, request_method: str) -> Body:
    """Response body framing per RFC 9112 6.3: HEAD, 1xx, 204, 304 and 2xx to CONNECT have
    none; chunked; Content-Length; otherwise until close."""
    raise NotImplementedError


def client_wants_keep_alive(req: Request) -> bool:
    """HTTP/1.1 default keep-alive unless "close" in Connection/Proxy-Connection;
    HTTP/1.0 only with "keep-alive"."""
    raise NotImplementedError


def response_keeps_alive(resp: Response, request_method: str) -> bool:
    """Whether the connection the response came on can be reused after its body."""
    raise NotImplementedError


class ChunkedScanner:
    """Finds where a chunked body ends without changing it.

    s = ChunkedScanner()
    n = s.feed(data)   # how many bytes of `data` belong to the body (<= len(data))
    s.done             # True once the last chunk and the trailer section are complete
    Raises ProtocolError(400) for an invalid chunk size line, or a chunk-size/trailer line
    longer than MAX_LINE_SIZE.
    """

    def __init__(self) -> None:
        raise NotImplementedError

    @property
    def done(self) -> bool:
        raise NotImplementedError

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        raise NotImplementedError


def simple_response(
    status: int, reason: str, text: str, *, keep_alive: bool = True, extra: Headers = ()
) -> bytes:
    """A complete small response (head + text/plain body) that pycntlm itself answers with."""
    raise NotImplementedError
