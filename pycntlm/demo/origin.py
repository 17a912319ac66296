"""A small origin web server on loopback with the shapes of response a proxy must relay.

Owns: the demo origin (every body framing, 100-continue, an NTLM-challenging page) and the small
HTTP/1.1 wire helpers the demo servers share (heads, body framing, timed reads and writes).
Must not: import pycntlm's proxy modules, listen anywhere but where it is told, hold whole bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http
import json
import logging
import ssl as ssl_module
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

from pycntlm.errors import ProtocolError

log = logging.getLogger(__name__)

READ_SIZE = 256 * 1024  # relay/read granularity: large reads keep bulk transfers cheap
STREAM_LIMIT = 256 * 1024  # StreamReader limit: also the largest head we accept
MAX_HEADERS = 100
MAX_TRAILER_LINES = 100
HELLO = b"hello from the pycntlm demo origin\n"
_UNIT = bytes(range(251))  # pattern period: a prime, so it never lines up with chunk sizes
_BLOCK = _UNIT * (READ_SIZE // len(_UNIT))  # whole periods, so consecutive blocks continue it


def pattern(length: int, offset: int = 0) -> bytes:
    """The deterministic body bytes of /bytes/N: byte i is i % 251."""
    start = offset % len(_UNIT)
    reps = (start + length) // len(_UNIT) + 1
    return (_UNIT * reps)[start : start + length]


def pattern_sha256(length: int) -> str:
    """sha256 hex digest of pattern(length), computed in blocks."""
    digest = hashlib.sha256()
    for piece in _pattern_blocks(length):
        digest.update(piece)
    return digest.hexdigest()


def _pattern_blocks(length: int) -> list[bytes]:
    full, rest = divmod(length, len(_BLOCK))
    return [_BLOCK] * full + ([_BLOCK[:rest]] if rest else [])


@dataclass(frozen=True)
class Head:
    """A request or response head: the three start-line parts and the headers in order."""

    start: tuple[str, str, str]
    headers: tuple[tuple[str, str], ...]

    def get_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]

    def get(self, name: str) -> str | None:
        values = self.get_all(name)
        return values[0] if values else None

    def tokens(self, name: str) -> list[str]:
        """Comma-separated, lower-cased tokens of every `name` header (Connection, Expect...)."""
        return [t.strip().lower() for v in self.get_all(name) for t in v.split(",") if t.strip()]


@dataclass(frozen=True)
class Body:
    """How a message body is delimited."""

    kind: Literal["none", "length", "chunked", "close"]
    length: int = 0


NO_BODY = Body("none")


async def read_head(reader: asyncio.StreamReader, timeout: float) -> Head | None:
    """Read one head; None on a clean EOF before any byte. Malformed heads raise ProtocolError."""
    try:
        async with asyncio.timeout(timeout):
            raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise ProtocolError("connection closed inside a head") from None
    except asyncio.LimitOverrunError:
        raise ProtocolError("head too large", 431) from None
    lines = raw[:-4].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) != 3 or len(lines) > MAX_HEADERS + 1:
        raise ProtocolError("malformed start line or too many headers")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or " " in name:
            raise ProtocolError("malformed header line")
        headers.append((name, value.strip()))
    return Head((parts[0], parts[1], parts[2]), tuple(headers))


def request_body(head: Head) -> Body:
    """The framing of a request body (RFC 9112 section 6.3); smuggling-prone heads raise."""
    codings = head.tokens("transfer-encoding")
    lengths = head.get_all("content-length")
    if codings:
        if lengths or codings[-1] != "chunked":
            raise ProtocolError("unacceptable Transfer-Encoding in a request")
        return Body("chunked")
    if not lengths:
        return NO_BODY
    values = {v.strip() for v in ",".join(lengths).split(",")}
    if len(values) != 1 or not next(iter(values)).isdigit():
        raise ProtocolError("bad Content-Length")
    length = int(values.pop())
    return Body("length", length) if length else NO_BODY


def response_body(method: str, status: int, head: Head) -> Body:
    """The framing of a response body, given the request method it answers."""
    if method == "HEAD" or status < 200 or status in (204, 304):
        return NO_BODY
    codings = head.tokens("transfer-encoding")
    if codings:
        return Body("chunked") if codings[-1] == "chunked" else Body("close")
    lengths = head.get_all("content-length")
    if lengths and lengths[0].strip().isdigit():
        return Body("length", int(lengths[0].strip()))
    return Body("close")


def wants_close(head: Head) -> bool:
    """Whether the peer asked for the connection to end after this message."""
    tokens = head.tokens("connection")
    if head.start[0] == "HTTP/1.0" or head.start[2] == "HTTP/1.0":
        return "keep-alive" not in tokens
    return "close" in tokens


async def _exactly(
    reader: asyncio.StreamReader, count: int, timeout: float
) -> AsyncIterator[bytes]:
    while count > 0:
        async with asyncio.timeout(timeout):
            data = await reader.read(min(count, READ_SIZE))
        if not data:
            raise ConnectionError("peer closed inside a body")
        count -= len(data)
        yield data


async def _line(reader: asyncio.StreamReader, timeout: float) -> bytes:
    try:
        async with asyncio.timeout(timeout):
            return await reader.readuntil(b"\r\n")
    except asyncio.IncompleteReadError:
        raise ConnectionError("peer closed inside a chunked body") from None
    except asyncio.LimitOverrunError:
        raise ProtocolError("chunk line too long") from None


async def _chunked(
    reader: asyncio.StreamReader, timeout: float
) -> AsyncIterator[tuple[bytes, bool]]:
    while True:
        line = await _line(reader, timeout)
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ProtocolError("bad chunk size") from None
        yield line, False
        if size == 0:
            break
        async for data in _exactly(reader, size, timeout):
            yield data, True
        if await _line(reader, timeout) != b"\r\n":
            raise ProtocolError("chunk not followed by CRLF")
        yield b"\r\n", False
    for _ in range(MAX_TRAILER_LINES):
        line = await _line(reader, timeout)
        yield line, False
        if line == b"\r\n":
            return
    raise ProtocolError("too many trailer lines")


async def body_pieces(
    reader: asyncio.StreamReader, body: Body, timeout: float
) -> AsyncIterator[tuple[bytes, bool]]:
    """The body's bytes exactly as sent, each flagged True when it is payload (not framing)."""
    if body.kind == "length":
        async for data in _exactly(reader, body.length, timeout):
            yield data, True
    elif body.kind == "chunked":
        async for piece in _chunked(reader, timeout):
            yield piece
    elif body.kind == "close":
        while True:
            async with asyncio.timeout(timeout):
                data = await reader.read(READ_SIZE)
            if not data:
                return
            yield data, True


async def send(writer: asyncio.StreamWriter, data: bytes, timeout: float) -> None:
    """Write and wait for the transport to take it (backpressure), within `timeout`."""
    writer.write(data)
    async with asyncio.timeout(timeout):
        await writer.drain()


async def discard_body(reader: asyncio.StreamReader, body: Body, timeout: float) -> None:
    async for _ in body_pieces(reader, body, timeout):
        pass


def render_head(start: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [start, *(f"{k}: {v}" for k, v in headers), "", ""]
    return "\r\n".join(lines).encode("latin-1")


def reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Status"


@dataclass
class OriginStats:
    """What the origin saw. Authorization values are reduced to their scheme name."""

    connections: int = 0
    requests: int = 0
    targets: list[str] = field(default_factory=list)
    auth_headers_seen: list[str] = field(default_factory=list)
    last_headers: list[tuple[str, str]] = field(default_factory=list)

    def reset(self) -> None:
        self.connections = self.requests = 0
        self.targets.clear()
        self.auth_headers_seen.clear()
        self.last_headers.clear()


_REDACT = frozenset({"authorization", "proxy-authorization", "cookie"})


class Origin:
    """An HTTP/1.1 origin server (optionally TLS) on loopback; see the module docstring."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ssl: ssl_module.SSLContext | None = None,
        idle_timeout: float = 30.0,
    ) -> None:
        self.host = host
        self.port = port
        self.stats = OriginStats()
        self._ssl = ssl
        self._timeout = idle_timeout
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def url(self, path: str = "/") -> str:
        return f"{'https' if self._ssl else 'http'}://{self.address}{path}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, ssl=self._ssl, limit=STREAM_LIMIT
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening, abort open connections and wait (bounded) for their handlers."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()  # handlers then end on EOF/reset, never cancelled
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)

    async def __aenter__(self) -> Origin:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.stats.connections += 1
        try:
            while True:
                head = await read_head(reader, self._timeout)
                if head is None or not await self._respond(reader, writer, head):
                    break
        except ProtocolError as exc:
            with contextlib.suppress(OSError, TimeoutError):
                await self._reply(writer, exc.status, b"bad request\n", close=True)
        except (OSError, TimeoutError) as exc:
            log.debug("origin connection ended: %s", type(exc).__name__)
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.close()

    def _record(self, head: Head) -> None:
        self.stats.requests += 1
        self.stats.targets.append(head.start[1])
        headers = []
        for name, value in head.headers:
            if name.lower() in _REDACT:
                value = value.split(" ", 1)[0]
                if name.lower() == "authorization":
                    self.stats.auth_headers_seen.append(value)
            headers.append((name, value))
        self.stats.last_headers = headers

    async def _respond(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: Head
    ) -> bool:
        """Answer one request; False when the connection must end."""
        self._record(head)
        method, target, _ = head.start
        body = request_body(head)
        if body.kind != "none" and "100-continue" in head.tokens("expect"):
            await send(writer, b"HTTP/1.1 100 Continue\r\n\r\n", self._timeout)
        close = wants_close(head)
        path = target.split("?", 1)[0]
        if path == "/echo":
            return await self._echo(reader, writer, method, body, close)
        await discard_body(reader, body, self._timeout)
        if path == "/ntlm":
            extra = [("WWW-Authenticate", "NTLM")]
            return await self._reply(writer, 401, b"NTLM required\n", close, extra, method)
        if method not in ("GET", "HEAD"):
            return await self._reply(writer, 405, b"method not allowed\n", close, [], method)
        return await self._route(writer, method, path, close)

    async def _route(
        self, writer: asyncio.StreamWriter, method: str, path: str, close: bool
    ) -> bool:
        _, _, arg = path.rpartition("/")
        number = int(arg) if arg.isdigit() and len(arg) < 16 else None
        if path == "/":
            return await self._reply(writer, 200, HELLO, close, [], method)
        if number is not None and path.startswith("/bytes/"):
            return await self._bytes(writer, method, number, close)
        if number is not None and path.startswith("/chunked/"):
            return await self._chunked(writer, method, number, close)
        if number is not None and path.startswith("/close/"):
            return await self._close_delimited(writer, method, number)
        if number is not None and path.startswith("/status/") and 200 <= number <= 599:
            text = f"status {number}\n".encode()
            return await self._reply(writer, number, text, close, [], method)
        return await self._reply(writer, 404, b"not found\n", close, [], method)

    async def _reply(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        close: bool,
        extra: list[tuple[str, str]] | None = None,
        method: str = "GET",
    ) -> bool:
        headers = [("Server", "pycntlm-demo-origin"), *(extra or [])]
        if status in (204, 304):
            body = b""
        else:
            if not any(k == "Content-Type" for k, _ in headers):
                headers.append(("Content-Type", "text/plain"))
            headers.append(("Content-Length", str(len(body))))
        if close:
            headers.append(("Connection", "close"))
        payload = b"" if method == "HEAD" else body
        await send(
            writer,
            render_head(f"HTTP/1.1 {status} {reason(status)}", headers) + payload,
            self._timeout,
        )
        return not close

    async def _bytes(self, writer: asyncio.StreamWriter, method: str, n: int, close: bool) -> bool:
        headers = [("Content-Type", "application/octet-stream"), ("Content-Length", str(n))]
        if close:
            headers.append(("Connection", "close"))
        await send(writer, render_head("HTTP/1.1 200 OK", headers), self._timeout)
        if method == "GET":
            for piece in _pattern_blocks(n):
                await send(writer, piece, self._timeout)
        return not close

    async def _chunked(
        self, writer: asyncio.StreamWriter, method: str, n: int, close: bool
    ) -> bool:
        headers = [
            ("Content-Type", "application/octet-stream"),
            ("Transfer-Encoding", "chunked"),
            ("Trailer", "X-Demo-Trailer"),
        ]
        if close:
            headers.append(("Connection", "close"))
        await send(writer, render_head("HTTP/1.1 200 OK", headers), self._timeout)
        if method == "HEAD":
            return not close
        size = min(max(1, -(-n // 4)), 64 * 1024)  # several chunks, never one huge one
        offset, ext = 0, ";demo=first"  # a chunk extension: proxies must relay it untouched
        while offset < n:
            data = pattern(min(size, n - offset), offset)
            await send(writer, f"{len(data):x}{ext}\r\n".encode() + data + b"\r\n", self._timeout)
            offset, ext = offset + len(data), ""
        await send(writer, b"0\r\nX-Demo-Trailer: done\r\n\r\n", self._timeout)
        return not close

    async def _close_delimited(self, writer: asyncio.StreamWriter, method: str, n: int) -> bool:
        headers = [("Content-Type", "application/octet-stream"), ("Connection", "close")]
        await send(writer, render_head("HTTP/1.0 200 OK", headers), self._timeout)
        if method == "GET":
            for piece in _pattern_blocks(n):
                await send(writer, piece, self._timeout)
        if writer.can_write_eof() and not writer.transport.is_closing():
            writer.write_eof()
        return False

    async def _echo(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        method: str,
        body: Body,
        close: bool,
    ) -> bool:
        digest, length = hashlib.sha256(), 0
        async for data, payload in body_pieces(reader, body, self._timeout):
            if payload:
                digest.update(data)
                length += len(data)
        if method not in ("POST", "PUT"):
            return await self._reply(writer, 405, b"POST or PUT\n", close, [("Allow", "POST, PUT")])
        answer = json.dumps({"length": length, "sha256": digest.hexdigest()}).encode() + b"\n"
        return await self._reply(writer, 200, answer, close, [("Content-Type", "application/json")])
