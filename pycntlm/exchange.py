"""Sending one request upstream and reading its answer: the pieces every route shares.

Owns: the Upstream / BodySource / Exchange values, send_and_read (request head, body pump,
interim 1xx, answer head with timeouts), the error types of an exchange, and short reasons.
Must not: choose parents, authenticate, or answer clients.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pycntlm import http1
from pycntlm.config import HostPort
from pycntlm.context import Context
from pycntlm.errors import AuthRejected, HandshakeError, ProtocolError, UpstreamError
from pycntlm.http1 import Response
from pycntlm.net import Conn, ConnectionClosed
from pycntlm.pool import PoolKey


class AllParentsDown(UpstreamError):
    def __init__(self, tried: list[str]) -> None:
        self.tried = tried
        super().__init__(", ".join(tried) or "none", "no parent proxy could be used")


class LockedOut(AuthRejected):
    def __init__(self, remaining: float) -> None:
        self.remaining = remaining
        super().__init__("parent", f"credentials locked out for {remaining:.0f} more seconds")


class Stale(Exception):
    """The upstream closed before answering: safe to retry when the request can be replayed."""


@dataclass
class Upstream:
    conn: Conn
    parent: HostPort | None  # None when direct
    key: PoolKey
    reused: bool


@dataclass
class BodySource:
    """The client's request body: `prefetched` holds a small whole body (replayable);
    otherwise `send` streams it from the client once."""

    has_body: bool
    prefetched: bytes | None
    stream: Callable[[Conn], Awaitable[int]] | None
    sent: bool = False

    @property
    def replayable(self) -> bool:
        return not self.has_body or self.prefetched is not None or not self.sent

    async def send(self, dst: Conn, timeout: float) -> int:
        self.sent = True
        if self.prefetched is not None:
            await dst.send(self.prefetched, timeout)
            return len(self.prefetched)
        assert self.stream is not None
        return await self.stream(dst)


@dataclass
class Exchange:
    up: Upstream
    response: Response
    pump: asyncio.Task[int] | None  # still streaming the request body, if any


class Unanswered(Exception):
    """No answer to a handshake leg that is safe to send again elsewhere (parent failure)."""


class NoAnswer(Exception):
    """The request was sent but no answer came within the timeout."""


IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE", "CONNECT"})
VERDICT_GRACE = 1.0  # no 407 this long after a Type 3: take the credentials as accepted


async def send_and_read(
    ctx: Context,
    up: Upstream,
    head: bytes,
    body: BodySource,
    client: Conn | None,
    timeout: float,
    on_slow: Callable[[], None] | None = None,
) -> Exchange:
    """Send a request and return its final response head; interim 1xx go to the client.
    Raises Stale (closed before answering), NoAnswer (timeout), ProtocolError (a bad answer,
    or the client's own bad body), ConnectionClosed (the client went away mid-upload).
    `on_slow` is called once if the answer takes longer than VERDICT_GRACE."""
    up.conn.write(head)
    pump: asyncio.Task[int] | None = None
    if body.has_body:
        pump = asyncio.ensure_future(body.send(up.conn, ctx.config.idle_timeout))
        # If the upload fails (bad chunking, the client went away), stop waiting for the answer.
        pump.add_done_callback(lambda t: abort_on_failure(t, up.conn))
    else:
        await up.conn.drain(timeout)
    try:
        while True:
            raw = await read_answer(up.conn, timeout, on_slow)
            on_slow = None
            if raw is None:
                if pump is not None and pump.done() and not pump.cancelled():
                    failure = pump.exception()
                    if failure is not None:
                        raise failure
                raise Stale()
            resp = http1.parse_response(raw)
            if 100 <= resp.status < 200 and resp.status != 101:
                if client is not None:
                    client.write(raw)
                continue
            return Exchange(up, resp, pump)
    except BaseException:
        if pump is not None and not pump.done():
            pump.cancel()
        raise


async def upstream_head_of(conn: Conn, timeout: float, total: float | None = None) -> bytes | None:
    """A response head from upstream; a malformed or oversized one is the upstream's fault (502;
    callers say "bad answer: ..." themselves, as for http1.parse_response's errors)."""
    try:
        return await conn.read_head(timeout, total)
    except ProtocolError as exc:
        raise ProtocolError(exc.message, 502) from None


async def read_answer(
    conn: Conn, timeout: float, on_slow: Callable[[], None] | None
) -> bytes | None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        if on_slow is not None and timeout > VERDICT_GRACE:
            try:
                return await upstream_head_of(conn, VERDICT_GRACE, timeout)
            except TimeoutError:
                on_slow()
        return await upstream_head_of(conn, max(0.0, deadline - loop.time()), timeout)
    except TimeoutError:
        raise NoAnswer() from None


def abort_on_failure(task: asyncio.Task[int], conn: Conn) -> None:
    if not task.cancelled() and task.exception() is not None:
        conn.abort()


async def discard(ctx: Context, ex: Exchange, method: str) -> None:
    """Drop an answer we do not pass on, and the connection with it."""
    if ex.pump is not None:
        ex.pump.cancel()
    ex.up.conn.close()


# "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: ... (_ssl.c:1006)" -> the middle
_SSL_NOISE = re.compile(r"^\[[^\]]*\]\s*|\s*\(_ssl\.c:\d+\)$")


def tls_reason(exc: ssl.SSLError) -> str:
    """A TLS failure in words, e.g. "TLS: certificate verify failed: self-signed certificate"."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"TLS: certificate verify failed: {exc.verify_message.rstrip('.')}"
    text = _SSL_NOISE.sub("", str(exc.args[1] if len(exc.args) > 1 else exc)).strip()
    if not text and exc.reason:
        text = exc.reason.lower().replace("_", " ")
    if exc.reason == "WRONG_VERSION_NUMBER":  # what a plain HTTP port answers to a ClientHello
        text += " (does the parent speak TLS on this port? if not, drop https://)"
    return f"TLS: {text or type(exc).__name__}"


def why(exc: BaseException) -> str:
    """A short reason for logs and 502 pages (never a secret: exceptions here carry none)."""
    if isinstance(exc, ssl.SSLError):
        return tls_reason(exc)
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, Stale | ConnectionClosed):
        return "closed the connection"
    if isinstance(exc, Unanswered):
        return "timed out"
    if isinstance(exc, HandshakeError):
        return str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return type(exc).__name__
