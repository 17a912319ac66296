"""Authenticating a fresh parent connection: failover on connect, the lockout gate, and the
NTLM legs.

Handshake legs on a fresh connection (NTLM authenticates the connection, not the request):
  leg 1: the request itself without body (or HEAD of it when it has a body) + Type 1 -> 407 + Type 2
  leg 2: the real request with its body + Type 3 -> the real response
so a body is sent once, after the challenge, and never buffered whole. Only one handshake runs
at a time until the credentials are proven (lockout protection), released early when a Type 3
gets no 407 within VERDICT_GRACE (a slow target must not stall everyone).
Must not: use pooled connections or answer clients (session.py and handler.py do).
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable

from pycntlm import http1
from pycntlm.auth import NtlmHandshake
from pycntlm.config import HostPort
from pycntlm.context import Context
from pycntlm.errors import AuthRejected, HandshakeError, ProtocolError, UpstreamError
from pycntlm.exchange import (
    IDEMPOTENT,
    AllParentsDown,
    BodySource,
    Exchange,
    LockedOut,
    NoAnswer,
    Stale,
    Unanswered,
    Upstream,
    discard,
    send_and_read,
    upstream_head_of,
    why,
)
from pycntlm.forward import skip_body, upstream_head
from pycntlm.http1 import Request
from pycntlm.negotiate import KerberosHandshake, kerberos_failed
from pycntlm.net import Conn, ConnectionClosed, open_conn

log = logging.getLogger("pycntlm.session")

# errno values that mean this host ran short (file descriptors, memory), not the peer
LOCAL_SHORTAGE = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Broken(Exception):
    """The parent failed during the handshake: try the next parent."""


class Restart(Exception):
    """The parent closed after its challenge: restart the handshake on a new connection."""


async def connect_parent(ctx: Context, tried: list[str], candidates: list[HostPort]) -> Upstream:
    assert ctx.creds is not None
    for parent in candidates:
        if any(t.startswith(f"{parent} ") for t in tried):
            continue
        try:
            tls = ctx.parent_tls if parent.tls else None
            conn = await open_conn(parent.host, parent.port, ctx.config.connect_timeout, tls)
        except OSError as exc:
            if exc.errno in LOCAL_SHORTAGE:  # our own problem: the parent is not to blame
                raise UpstreamError("pycntlm", f"out of resources: {why(exc)}") from None
            ctx.upstreams.mark_failed(parent)
            tried.append(f"{parent} ({why(exc)})")
            log.warning("parent %s: %s; trying the next one", parent, why(exc))
            continue
        except TimeoutError as exc:
            ctx.upstreams.mark_failed(parent)
            tried.append(f"{parent} ({why(exc)})")
            log.warning("parent %s: %s; trying the next one", parent, why(exc))
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


async def fresh_parent(
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
        up = await connect_parent(ctx, tried, candidates)
        ex, verdict = await _handshake(ctx, up, client, req, target, body, accepted_for_now)
        assert up.parent is not None
        ctx.upstreams.mark_ok(up.parent)
        return ex
    except (Stale, ConnectionClosed, HandshakeError, OSError, Unanswered) as exc:
        if isinstance(exc, ConnectionClosed) and up is not None and exc.conn is not up.conn:
            raise  # the client went away, not the parent
        if up is not None:
            up.conn.close()
            assert up.parent is not None
            ctx.upstreams.mark_failed(up.parent)
            tried.append(f"{up.parent} ({why(exc)})")
            log.warning("parent %s failed during the handshake: %s", up.parent, why(exc))
        raise Broken() from None
    except ProtocolError as exc:
        if up is not None:
            up.conn.close()
        if exc.status < 500:
            raise  # the client's own request body was bad
        tried.append(f"{up.parent if up else 'parent'} (bad answer: {exc.message})")
        raise Broken() from None
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
    if cfg.auth == "GSS":
        return await _kerberos(ctx, up, client, req, target, body, accepted_for_now)
    hs = NtlmHandshake(ctx.creds, cfg.auth)
    leg1_real = not body.has_body
    method = req.method if leg1_real else "HEAD"
    head1 = upstream_head(
        req, target, auth=hs.start(), substitutions=cfg.headers, method=method, drop_body=True
    )
    up.conn.write(head1)
    await up.conn.drain(cfg.handshake_timeout)
    try:
        raw = await upstream_head_of(up.conn, cfg.handshake_timeout)
    except TimeoutError:
        # A parent that wants NTLM answers a Type 1 at once; silence means a dead parent, or a
        # parent without authentication waiting for a slow target. Only an idempotent request
        # may then be tried again elsewhere.
        if method in IDEMPOTENT:
            raise Unanswered() from None
        raise UpstreamError(str(up.parent), "timed out waiting for the answer") from None
    if raw is None:
        raise Stale()
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
        raise Restart()
    head2 = upstream_head(req, target, auth=hs.respond(challenges), substitutions=cfg.headers)
    ex = await _answer_of(ctx, up, head2, body, client, accepted_for_now)
    if ex.response.status == 407:
        await discard(ctx, ex, req.method)
        ctx.stats.auth_rejections += 1
        raise AuthRejected(str(up.parent), "rejected pycntlm's credentials")
    return ex, True


async def _kerberos(
    ctx: Context,
    up: Upstream,
    client: Conn | None,
    req: Request,
    target: str,
    body: BodySource,
    accepted_for_now: Callable[[], None],
) -> tuple[Exchange, bool | None]:
    """Auth GSS: one leg. The real request carries the Kerberos token (SPN HTTP@<parent host>);
    the parent answers it directly, or 407 when it refuses the ticket."""
    assert up.parent is not None
    host = up.parent.host
    hs = KerberosHandshake(host)
    # Getting a service ticket may ask the KDC: off the event loop, bounded.
    try:
        value = await asyncio.wait_for(asyncio.to_thread(hs.start), ctx.config.handshake_timeout)
    except TimeoutError:
        raise HandshakeError("the Kerberos KDC did not answer in time") from None
    head = upstream_head(req, target, auth=value, substitutions=ctx.config.headers)
    ctx.stats.handshakes += 1
    ex = await _answer_of(ctx, up, head, body, client, accepted_for_now)
    if ex.response.status == 407:
        kerberos_failed(host)
        await discard(ctx, ex, req.method)
        ctx.stats.auth_rejections += 1
        raise AuthRejected(str(up.parent), "rejected pycntlm's Kerberos ticket")
    hs.finish(http1.header_values(ex.response.headers, "Proxy-Authenticate"))
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
    except NoAnswer:
        up.conn.close()
        raise UpstreamError(str(up.parent), "timed out waiting for the answer") from None
