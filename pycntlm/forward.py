"""Moving one HTTP message's head and body between two connections.

Owns: building the head sent upstream (parent: absolute-form; direct: origin-form), the head sent
back to the client, streaming bodies by their framing (never buffering a whole body), and
skipping bodies we do not pass on. Must not: choose routes, authenticate, or log.
"""

from __future__ import annotations

from pycntlm import http1
from pycntlm.http1 import Body, Framing, Request, Response
from pycntlm.net import READ_CHUNK, Conn, ConnectionClosed, relay_length

# A 407/401 body we skip to keep a connection usable is small; past this we close instead.
MAX_SKIPPED_BODY = 1 << 20
BODY_HEADERS = ("content-length", "transfer-encoding", "expect")


def with_headers(
    headers: http1.Headers, substitutions: tuple[tuple[str, str], ...]
) -> http1.Headers:
    """Apply `Header` lines: each replaces every field of the same name, or is added."""
    if not substitutions:
        return headers
    names = {name.lower() for name, _ in substitutions}
    kept = tuple(h for h in headers if h[0].lower() not in names)
    return kept + substitutions


def upstream_head(
    req: Request,
    target: str,
    *,
    auth: str | None = None,
    substitutions: tuple[tuple[str, str], ...] = (),
    method: str | None = None,
    drop_body: bool = False,
) -> bytes:
    """The request head to send upstream. `target` is absolute-form for a parent, origin-form
    for a direct connection. `drop_body` sends the head without its body framing (a handshake
    leg); `method` overrides the method (HEAD for the first leg of a request with a body)."""
    extra_drop = BODY_HEADERS if drop_body else ()
    headers = with_headers(http1.forward_headers(req.headers, drop=extra_drop), substitutions)
    upgrade = http1.header_values(req.headers, "upgrade")
    if upgrade and "upgrade" in http1.connection_tokens(req.headers):
        # A protocol switch (WebSocket over plain HTTP) must reach the server.
        headers = (*headers, ("Connection", "Upgrade"), ("Upgrade", ", ".join(upgrade)))
    if auth is not None:
        headers = (*headers, ("Proxy-Authorization", auth))
    if drop_body and (method or req.method) not in ("GET", "HEAD", "CONNECT"):
        headers = (*headers, ("Content-Length", "0"))
    version = "HTTP/1.1"
    out = Request(method or req.method, target, version, headers)
    return http1.serialize_request(out)


def client_head(resp: Response, keep_alive: bool) -> bytes:
    """The response head for the client: hop-by-hop fields and any Proxy-Authenticate removed,
    our own connection management added."""
    if resp.status == 101:  # the switch's own Connection/Upgrade fields must reach the client
        kept = tuple(h for h in resp.headers if h[0].lower() != "proxy-authenticate")
        return http1.serialize_response(Response("HTTP/1.1", 101, resp.reason, kept))
    headers = http1.forward_headers(resp.headers, drop=("proxy-authenticate",))
    token = "keep-alive" if keep_alive else "close"
    if resp.status >= 200 or resp.status == 101:
        headers = (*headers, ("Connection", token), ("Proxy-Connection", token))
    return http1.serialize_response(Response("HTTP/1.1", resp.status, resp.reason, headers))


Sink = Conn | bytearray | None  # where a body goes: a connection, memory (small bodies), nowhere


async def relay_body(src: Conn, dst: Sink, body: Body, timeout: float, prefix: bytes = b"") -> int:
    """Stream one body from src to dst (None = discard, a bytearray = collect) as it is framed,
    after `prefix` (the message's head, sent with the first body bytes where it can be).
    Returns body bytes moved.
    Raises ConnectionClosed when src ends early or dst goes away; TimeoutError when src stalls."""
    if body.framing is Framing.LENGTH and isinstance(dst, Conn):
        # connection to connection: net's body mode, no task wake-up or copy per chunk
        await relay_length(src, dst, body.length, timeout, prefix)
        await dst.drain(timeout)
        return body.length
    if prefix:
        await _put(dst, prefix, timeout)
    if body.framing is Framing.NONE:
        return 0
    if body.framing is Framing.LENGTH:
        return await _relay_length(src, dst, body.length, timeout)
    if body.framing is Framing.CHUNKED:
        return await _relay_chunked(src, dst, timeout)
    moved = 0
    while data := await src.read_some(timeout):
        moved += len(data)
        await _put(dst, data, timeout)
    return moved


async def _put(dst: Sink, data: bytes, timeout: float) -> None:
    if isinstance(dst, bytearray):
        dst += data
    elif dst is not None:
        dst.write(data)
        await dst.drain(timeout)


async def _relay_length(src: Conn, dst: Sink, length: int, timeout: float) -> int:
    remaining = length
    while remaining > 0:
        data = await src.read_some(timeout, min(remaining, READ_CHUNK))
        if not data:
            raise ConnectionClosed(src, "body ended early")
        remaining -= len(data)
        await _put(dst, data, timeout)
    return length


async def _relay_chunked(src: Conn, dst: Sink, timeout: float) -> int:
    scanner = http1.ChunkedScanner()
    moved = 0
    while not scanner.done:
        data = await src.read_some(timeout)
        if not data:
            raise ConnectionClosed(src, "chunked body ended early")
        n = scanner.feed(data)
        if n < len(data):
            src.unread(data[n:])
            data = data[:n]
        moved += len(data)
        await _put(dst, data, timeout)
    return moved


async def skip_body(src: Conn, body: Body, timeout: float) -> bool:
    """Read and drop a small body so the connection stays usable. False when the body is too
    large or unbounded (the caller should close the connection instead)."""
    if body.framing is Framing.UNTIL_CLOSE:
        return False
    if body.framing is Framing.LENGTH and body.length > MAX_SKIPPED_BODY:
        return False
    await relay_body(src, None, body, timeout)
    return True
