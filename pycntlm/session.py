"""One request's exchange with an upstream: a parent (authenticated) or the target (direct).

Owns: taking a pooled connection or opening one (with failover across parents), the NTLM
handshake legs on a fresh parent connection, the lockout gate, retrying a request whose bytes
were not yet consumed. Must not: parse client heads or write access logs (handler.py does).

Handshake legs on a fresh connection (NTLM authenticates the connection, not the request):
  leg 1: the request itself without body (or HEAD of it when it has a body) + Type 1 -> 407 + Type 2
  leg 2: the real request with its body + Type 3 -> the real response
so a body is sent once, after the challenge, and never buffered whole.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pycntlm import http1
from pycntlm.auth import NtlmHandshake
from pycntlm.config import HostPort
from pycntlm.context import Context
from pycntlm.errors import AuthRejected, HandshakeError, ProtocolError, UpstreamError
from pycntlm.forward import skip_body, upstream_head
from pycntlm.http1 import Request, Response
from pycntlm.net import Conn, ConnectionClosed, open_conn
from pycntlm.pool import PoolKey

log = logging.getLogger("pycntlm.session")

MAX_RESTARTS = 2  # new connections when a parent closes right after its challenge
MAX_ATTEMPTS = 6
# errno values that mean this host ran short (file descriptors, memory), not the peer
LOCAL_SHORTAGE = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
)  # all tries for one request (stale pooled connections, parents)


class AllParentsDown(UpstreamError):
    def __init__(self, tried: list[str]) -> None:
        self.tried = tried
        super().__init__(", ".join(tried) or "none", "no parent proxy could be used")


class LockedOut(AuthRejected):
    def __init__(self, remaining: float) -> None:
        self.remaining = remaining
        super().__init__("parent", f"credentials locked out for {remaining:.0f} more seconds")


class _Stale(Exception):
    """The upstream closed before answering: safe to retry when the request can be replayed."""


class _Broken(Exception):
    """The parent failed during the handshake: try the next parent."""


class _Restart(Exception):
    """The parent closed after its challenge: restart the handshake on a new connection."""


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


class _NoAnswer(Exception):
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
    Raises _Stale (closed before answering), _NoAnswer (timeout), ProtocolError (a bad answer,
    or the client's own bad body), ConnectionClosed (the client went away mid-upload).
    `on_slow` is called once if the answer takes longer than VERDICT_GRACE."""
    up.conn.write(head)
    pump: asyncio.Task[int] | None = None
    if body.has_body:
        pump = asyncio.ensure_future(body.send(up.conn, ctx.config.idle_timeout))
        # If the upload fails (bad chunking, the client went away), stop waiting for the answer.
        pump.add_done_callback(lambda t: _abort_on_failure(t, up.conn))
    else:
        await up.conn.drain(timeout)
    try:
        while True:
            raw = await _read_answer(up.conn, timeout, on_slow)
            on_slow = None
            if raw is None:
                if pump is not None and pump.done() and not pump.cancelled():
                    failure = pump.exception()
                    if failure is not None:
                        raise failure
                raise _Stale()
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


async def _upstream_head(conn: Conn, timeout: float, total: float | None = None) -> bytes | None:
    """A response head from upstream; a malformed or oversized one is the upstream's fault."""
    try:
        return await conn.read_head(timeout, total)
    except ProtocolError as exc:
        raise ProtocolError(f"bad answer: {exc.message}", 502) from None


async def _read_answer(
    conn: Conn, timeout: float, on_slow: Callable[[], None] | None
) -> bytes | None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        if on_slow is not None and timeout > VERDICT_GRACE:
            try:
                return await _upstream_head(conn, VERDICT_GRACE, timeout)
            except TimeoutError:
                on_slow()
        return await _upstream_head(conn, max(0.0, deadline - loop.time()), timeout)
    except TimeoutError:
        raise _NoAnswer() from None


def _abort_on_failure(task: asyncio.Task[int], conn: Conn) -> None:
    if not task.cancelled() and task.exception() is not None:
        conn.abort()


async def via_direct(
    ctx: Context, client: Conn, req: Request, target: http1.Target, body: BodySource
) -> Exchange:
    """Send a request straight to its target (NoProxy): origin-form, no credentials ever."""
    where = f"{target.host}:{target.port}"
    key: PoolKey = (f"direct {where}", "")
    head = upstream_head(req, target.path, substitutions=ctx.config.headers)
    for _ in range(MAX_ATTEMPTS):
        conn = ctx.pool.get(key)
        reused = conn is not None
        if conn is None:
            try:
                conn = await open_conn(target.host, target.port, ctx.config.connect_timeout)
            except (OSError, TimeoutError) as exc:
                raise UpstreamError(where, _why(exc)) from None
        up = Upstream(conn, None, key, reused)
        try:
            return await send_and_read(ctx, up, head, body, client, ctx.config.idle_timeout)
        except _Stale:
            conn.close()
            if not (reused and body.replayable):
                raise UpstreamError(where, "closed without answering") from None
        except _NoAnswer:
            conn.close()
            raise UpstreamError(where, "timed out waiting for the answer") from None
        except ProtocolError as exc:
            conn.close()
            if exc.status >= 500:  # the target's answer was bad, not the client's request
                raise UpstreamError(where, f"bad answer: {exc.message}") from None
            raise
    raise UpstreamError(where, "closed without answering")


async def via_parent(
    ctx: Context, client: Conn | None, req: Request, target: str, body: BodySource
) -> Exchange:
    """Send a request through a parent. Raises AllParentsDown, AuthRejected, UpstreamError."""
    tried: list[str] = []
    restarts = 0
    for _ in range(MAX_ATTEMPTS):
        candidates = ctx.upstreams.candidates()  # once: handing out a probe is a decision
        pooled = _pooled(ctx, candidates)
        if pooled is not None:
            ex = await _on_pooled(ctx, pooled, client, req, target, body)
            if ex is not None:
                return ex
            if not body.replayable:
                raise UpstreamError(str(pooled.parent), "closed a reused connection")
            continue
        try:
            return await _fresh_parent(ctx, client, req, target, body, tried, candidates)
        except _Restart:
            restarts += 1
            if restarts > MAX_RESTARTS:
                raise UpstreamError(
                    tried[-1] if tried else "parent", "closes the connection after its challenge"
                ) from None
        except _Broken:
            if not body.replayable:
                raise UpstreamError(tried[-1], "failed while the request was being sent") from None
            if len(tried) >= len(ctx.config.proxies):
                raise AllParentsDown(tried) from None
    raise AllParentsDown(tried)


async def _on_pooled(
    ctx: Context, up: Upstream, client: Conn | None, req: Request, target: str, body: BodySource
) -> Exchange | None:
    """The request on an authenticated pooled connection; None when that connection turned out
    stale or wants a new handshake (the caller retries on a fresh one if it can)."""
    where = str(up.parent)
    try:
        head = upstream_head(req, target, substitutions=ctx.config.headers)
        ex = await send_and_read(ctx, up, head, body, client, ctx.config.idle_timeout)
    except _Stale:
        up.conn.close()
        return None
    except _NoAnswer:
        up.conn.close()
        raise UpstreamError(where, "timed out waiting for the answer") from None
    except ProtocolError as exc:
        up.conn.close()
        if exc.status >= 500:
            raise UpstreamError(where, f"bad answer: {exc.message}") from None
        raise
    if ex.response.status != 407:
        return ex
    # The parent wants the connection authenticated again: do it on a fresh one.
    await _discard(ctx, ex, req.method)
    if not body.replayable:
        raise AuthRejected(where, "asked to authenticate again mid-request")
    return None


class TunnelRefused(UpstreamError):
    """The parent answered a CONNECT with something other than 2xx."""

    def __init__(self, parent: str, status: int, reason: str) -> None:
        self.status = status
        super().__init__(parent, f"refused the tunnel: {status} {reason}")


def is_direct(ctx: Context, host: str) -> bool:
    return not ctx.config.proxies or ctx.noproxy.matches(host)


async def open_tunnel(ctx: Context, host: str, port: int) -> tuple[Conn, HostPort | None]:
    """A byte stream to host:port for the non-HTTP front ends (Tunnel, SOCKS5): a direct
    connection for NoProxy hosts (or when there are no parents), otherwise an authenticated
    CONNECT through a parent. Returns the connection and the parent used (None when direct).
    Raises UpstreamError: AllParentsDown, AuthRejected / LockedOut, TunnelRefused."""
    if is_direct(ctx, host):
        try:
            return await open_conn(host, port, ctx.config.connect_timeout), None
        except (OSError, TimeoutError) as exc:
            raise UpstreamError(f"{host}:{port}", _why(exc)) from None
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    req = Request("CONNECT", authority, "HTTP/1.1", (("Host", authority),))
    ex = await via_parent(ctx, None, req, authority, BodySource(False, None, None))
    if not 200 <= ex.response.status < 300:
        ex.up.conn.close()
        raise TunnelRefused(str(ex.up.parent), ex.response.status, ex.response.reason)
    return ex.up.conn, ex.up.parent


def _pooled(ctx: Context, candidates: list[HostPort]) -> Upstream | None:
    assert ctx.creds is not None
    for parent in candidates[:1]:
        key: PoolKey = (str(parent), ctx.creds.identity)
        conn = ctx.pool.get(key)
        if conn is not None:
            return Upstream(conn, parent, key, True)
    return None


async def _connect_parent(ctx: Context, tried: list[str], candidates: list[HostPort]) -> Upstream:
    assert ctx.creds is not None
    for parent in candidates:
        if any(t.startswith(f"{parent} ") for t in tried):
            continue
        try:
            conn = await open_conn(parent.host, parent.port, ctx.config.connect_timeout)
        except OSError as exc:
            if exc.errno in LOCAL_SHORTAGE:  # our own problem: the parent is not to blame
                raise UpstreamError("pycntlm", f"out of resources: {_why(exc)}") from None
            ctx.upstreams.mark_failed(parent)
            tried.append(f"{parent} ({_why(exc)})")
            log.warning("parent %s: %s; trying the next one", parent, _why(exc))
            continue
        except TimeoutError as exc:
            ctx.upstreams.mark_failed(parent)
            tried.append(f"{parent} ({_why(exc)})")
            log.warning("parent %s: %s; trying the next one", parent, _why(exc))
            continue
        return Upstream(conn, parent, (str(parent), ctx.creds.identity), False)
    raise AllParentsDown(tried)


async def _gate(ctx: Context) -> None:
    """Wait until the lockout guard lets us try a handshake (one at a time until proven)."""
    deadline = ctx.clock() + ctx.config.handshake_timeout * 2
    while not ctx.guard.begin_attempt():
        if ctx.guard.wait_hint() == "locked":
            raise LockedOut(ctx.guard.remaining())
        if ctx.clock() > deadline:
            raise UpstreamError("parent", "timed out waiting for another handshake to finish")
        await ctx.guard_changed.wait()


def _end_attempt(ctx: Context, ok: bool | None, parent: HostPort | None) -> None:
    tripped = ctx.guard.end_attempt(ok)
    ctx.guard_changed.set()
    ctx.guard_changed.clear()
    if tripped:
        _log_lockout(ctx, parent)


def _log_lockout(ctx: Context, parent: HostPort | None) -> None:
    assert ctx.creds is not None
    log.error(
        "parent %s rejected the credentials of %s; not using them again for %.0f s "
        "(this protects the account from lockout). Fix the configuration and send SIGHUP.",
        parent,
        ctx.creds.identity,
        ctx.guard.remaining(),
    )


async def _fresh_parent(
    ctx: Context,
    client: Conn | None,
    req: Request,
    target: str,
    body: BodySource,
    tried: list[str],
    candidates: list[HostPort],
) -> Exchange:
    await _gate(ctx)
    verdict: bool | None = None
    up: Upstream | None = None
    early = False  # the gate was released before the answer (see VERDICT_GRACE)

    def accepted_for_now() -> None:
        nonlocal early
        early = True
        _end_attempt(ctx, True, up.parent if up is not None else None)

    try:
        up = await _connect_parent(ctx, tried, candidates)
        ex, verdict = await _handshake(ctx, up, client, req, target, body, accepted_for_now)
        assert up.parent is not None
        ctx.upstreams.mark_ok(up.parent)
        return ex
    except (_Stale, ConnectionClosed, HandshakeError, OSError, _Unanswered) as exc:
        if isinstance(exc, ConnectionClosed) and up is not None and exc.conn is not up.conn:
            raise  # the client went away, not the parent
        if up is not None:
            up.conn.close()
            assert up.parent is not None
            ctx.upstreams.mark_failed(up.parent)
            tried.append(f"{up.parent} ({_why(exc)})")
            log.warning("parent %s failed during the handshake: %s", up.parent, _why(exc))
        raise _Broken() from None
    except ProtocolError as exc:
        if up is not None:
            up.conn.close()
        if exc.status < 500:
            raise  # the client's own request body was bad
        tried.append(f"{up.parent if up else 'parent'} (bad answer: {exc.message})")
        raise _Broken() from None
    except AuthRejected:
        verdict = False
        raise
    except BaseException:
        if up is not None:
            up.conn.close()
        raise
    finally:
        if not early:
            _end_attempt(ctx, verdict, up.parent if up is not None else None)
        elif verdict is False:
            _late_rejection(ctx, up.parent if up is not None else None)


class _Unanswered(Exception):
    """No answer to a handshake leg that is safe to send again elsewhere (parent failure)."""


def _late_rejection(ctx: Context, parent: HostPort | None) -> None:
    """A rejection that came after the gate had already been released (slow answer)."""
    ctx.guard_changed.set()
    ctx.guard_changed.clear()
    if ctx.guard.record_rejection():
        _log_lockout(ctx, parent)


async def _handshake(
    ctx: Context,
    up: Upstream,
    client: Conn | None,
    req: Request,
    target: str,
    body: BodySource,
    accepted_for_now: Callable[[], None],
) -> tuple[Exchange, bool | None]:
    assert ctx.creds is not None
    cfg = ctx.config
    hs = NtlmHandshake(ctx.creds, cfg.auth)
    leg1_real = not body.has_body
    method = req.method if leg1_real else "HEAD"
    head1 = upstream_head(
        req, target, auth=hs.start(), substitutions=cfg.headers, method=method, drop_body=True
    )
    up.conn.write(head1)
    await up.conn.drain(cfg.handshake_timeout)
    try:
        raw = await _upstream_head(up.conn, cfg.handshake_timeout)
    except TimeoutError:
        # A parent that wants NTLM answers a Type 1 at once; silence means a dead parent, or a
        # parent without authentication waiting for a slow target. Only an idempotent request
        # may then be tried again elsewhere.
        if method in IDEMPOTENT:
            raise _Unanswered() from None
        raise UpstreamError(str(up.parent), "timed out waiting for the answer") from None
    if raw is None:
        raise _Stale()
    resp = http1.parse_response(raw)
    ctx.stats.handshakes += 1
    if resp.status != 407:  # this parent lets us through without authentication
        if leg1_real:
            return Exchange(up, resp, None), True
        await skip_body(up.conn, http1.response_body(resp, method), cfg.handshake_timeout)
        head = upstream_head(req, target, substitutions=cfg.headers)
        return await _answer_of(ctx, up, head, body, client, None), True
    challenges = http1.header_values(resp.headers, "Proxy-Authenticate")
    reusable = http1.response_keeps_alive(resp, method) and await skip_body(
        up.conn, http1.response_body(resp, method), cfg.handshake_timeout
    )
    if not reusable or up.conn.at_eof:
        up.conn.close()
        raise _Restart()
    head2 = upstream_head(req, target, auth=hs.respond(challenges), substitutions=cfg.headers)
    ex = await _answer_of(ctx, up, head2, body, client, accepted_for_now)
    if ex.response.status == 407:
        await _discard(ctx, ex, req.method)
        ctx.stats.auth_rejections += 1
        raise AuthRejected(str(up.parent), "rejected pycntlm's credentials")
    return ex, True


async def _answer_of(
    ctx: Context,
    up: Upstream,
    head: bytes,
    body: BodySource,
    client: Conn | None,
    on_slow: Callable[[], None] | None,
) -> Exchange:
    """The real request on a parent that has answered us: a timeout now is the target's
    slowness (504), never a reason to fail the parent over or send the request again."""
    try:
        return await send_and_read(ctx, up, head, body, client, ctx.config.idle_timeout, on_slow)
    except _NoAnswer:
        up.conn.close()
        raise UpstreamError(str(up.parent), "timed out waiting for the answer") from None


async def _discard(ctx: Context, ex: Exchange, method: str) -> None:
    """Drop an answer we do not pass on, and the connection with it."""
    if ex.pump is not None:
        ex.pump.cancel()
    ex.up.conn.close()


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, _Stale | ConnectionClosed):
        return "closed the connection"
    if isinstance(exc, _Unanswered):
        return "timed out"
    if isinstance(exc, HandshakeError):
        return str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return type(exc).__name__
