"""Authenticating a fresh parent connection: failover on connect, and the legs of the scheme
parentauth.py chooses (NTLM, AutoKerberos, Auth GSS, Basic).

Handshake legs on a fresh connection (NTLM authenticates the connection, not the request):
  leg 1: the request itself without body (or HEAD of it when it has a body) + Type 1 -> 407 + Type 2
  leg 2: the real request with its body + Type 3 -> the real response
so a body is sent once, after the challenge, and never buffered whole. Only one handshake runs
at a time until the credentials are proven (lockout protection, gate.py), released early when a
Type 3 gets no 407 within VERDICT_GRACE (a slow target must not stall everyone).
AutoKerberos (parentauth.py says when, and how the parent's offer is learned): one leg carrying
the ticket (HEAD first when the request has a body, so a refusal can fall back to NTLM with the
body unsent). Basic: no leg of its own; the request carries the header (a 407 is a rejection).
Must not: use pooled connections or answer clients (session.py and handler.py do), except
basic_on_pooled, which session.py calls for the per-request Basic header.
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
from pycntlm.gate import Attempt
from pycntlm.http1 import Request, Response
from pycntlm.negotiate import MEMO, KerberosHandshake, kerberos_failed, kerberos_ready
from pycntlm.net import Conn, ConnectionClosed, open_conn
from pycntlm.parentauth import ParentAuth, Plan, choose, has_ntlm_challenge, parent_auth

log = logging.getLogger("pycntlm.session")

# errno values that mean this host ran short (file descriptors, memory), not the peer
LOCAL_SHORTAGE = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
BASIC_NEEDS_PASSWORD = (
    "offers only Basic authentication, which needs a plaintext password "
    "(Password, PasswordFile, -I or -p); PassNT/PassLM/PassNTLMv2 hashes cannot answer it"
)


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


def _known(ctx: Context, parent: HostPort) -> ParentAuth:
    # A new configuration generation also forgets Kerberos failures (a reload after a kinit).
    return parent_auth(ctx.pool, parent, MEMO.forget)


def plan(ctx: Context, parent: HostPort) -> Plan:
    """How a fresh connection to `parent` authenticates now (parentauth.choose)."""
    return choose(ctx.config, _known(ctx, parent), lambda: kerberos_ready(parent.host))


def wants_basic(ctx: Context, parent: HostPort | None) -> bool:
    """True when this parent is known to take only Basic (every request carries it)."""
    return parent is not None and ctx.config.auth != "GSS" and _known(ctx, parent).basic_only


async def fresh_parent(
    ctx: Context,
    client: Conn | None,
    req: Request,
    target: str,
    body: BodySource,
    tried: list[str],
    candidates: list[HostPort],
) -> Exchange:
    attempt = Attempt(ctx)
    if not candidates or plan(ctx, candidates[0]) != "kerberos":
        await attempt.enter()
    verdict: bool | None = None
    up: Upstream | None = None
    try:
        up = await connect_parent(ctx, tried, candidates)
        attempt.parent = up.parent
        ex, verdict = await _handshake(ctx, up, client, req, target, body, attempt)
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
        if up is not None:  # a LockedOut met mid-handshake leaves the connection open
            up.conn.close()
        raise
    except BaseException:
        if up is not None:
            up.conn.close()
        raise
    finally:
        attempt.end(verdict)


async def _handshake(
    ctx: Context,
    up: Upstream,
    client: Conn | None,
    req: Request,
    target: str,
    body: BodySource,
    attempt: Attempt,
) -> tuple[Exchange, bool | None]:
    assert up.parent is not None
    how = plan(ctx, up.parent)
    if how == "gss":
        await attempt.enter()
        return await _kerberos(ctx, up, client, req, target, body, attempt.accepted_for_now)
    if how == "probe":
        await attempt.enter()
        resp, method = await _first_leg(ctx, up, req, target, body, None)
        if resp.status != 407:  # this parent lets us through without authentication
            return await _through(ctx, up, client, req, target, body, resp, method), True
        _known(ctx, up.parent).learn(http1.header_values(resp.headers, "Proxy-Authenticate"))
        await _reuse_or_restart(ctx, up, resp, method)
        how = plan(ctx, up.parent)
    if how == "basic":
        await attempt.enter()
        return await basic_leg(ctx, up, client, req, target, body, attempt.accepted_for_now), True
    if how == "kerberos":
        return await _auto_kerberos(ctx, up, client, req, target, body, attempt)
    return await _ntlm(ctx, up, client, req, target, body, attempt)


async def _first_leg(
    ctx: Context, up: Upstream, req: Request, target: str, body: BodySource, auth: str | None
) -> tuple[Response, str]:
    """The request without its body (HEAD when it has one), with `auth`: the parent's answer
    and the method sent."""
    cfg = ctx.config
    leg1_real = not body.has_body
    method = req.method if leg1_real else "HEAD"
    head1 = upstream_head(
        req, target, auth=auth, substitutions=cfg.headers, method=method, drop_body=True
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
    return http1.parse_response(raw), method


async def _through(
    ctx: Context,
    up: Upstream,
    client: Conn | None,
    req: Request,
    target: str,
    body: BodySource,
    resp: Response,
    method: str,
) -> Exchange:
    """The first leg got through: it was the request itself, or a HEAD; then send the real one."""
    if not body.has_body:
        return Exchange(up, resp, None)
    await skip_body(up.conn, http1.response_body(resp, method), ctx.config.handshake_timeout)
    head = upstream_head(req, target, substitutions=ctx.config.headers)
    return await _answer_of(ctx, up, head, body, client, None)


async def _reuse_or_restart(ctx: Context, up: Upstream, resp: Response, method: str) -> None:
    """After a 407 the next leg must go on this connection: skip the 407's body, or give up on
    a connection the parent closes (Restart: a new connection)."""
    reusable = http1.response_keeps_alive(resp, method) and await skip_body(
        up.conn, http1.response_body(resp, method), ctx.config.handshake_timeout
    )
    if not reusable or up.conn.at_eof:
        up.conn.close()
        raise Restart()


async def _ntlm(
    ctx: Context,
    up: Upstream,
    client: Conn | None,
    req: Request,
    target: str,
    body: BodySource,
    attempt: Attempt,
) -> tuple[Exchange, bool | None]:
    assert ctx.creds is not None and up.parent is not None
    await attempt.enter()
    hs = NtlmHandshake(ctx.creds, ctx.config.auth, ctx.config.flags)
    resp, method = await _first_leg(ctx, up, req, target, body, hs.start())
    ctx.stats.handshakes += 1
    if resp.status != 407:  # this parent lets us through without authentication
        return await _through(ctx, up, client, req, target, body, resp, method), True
    challenges = http1.header_values(resp.headers, "Proxy-Authenticate")
    if not has_ntlm_challenge(challenges):  # a refusal listing the offer: maybe Basic only
        known = _known(ctx, up.parent)
        known.learn(challenges)
        if known.basic_only:
            log.info("parent %s offers only Basic authentication: using it", up.parent)
            await _reuse_or_restart(ctx, up, resp, method)
            ex = await basic_leg(ctx, up, client, req, target, body, attempt.accepted_for_now)
            return ex, True
    await _reuse_or_restart(ctx, up, resp, method)
    auth = hs.respond(challenges)
    head2 = upstream_head(req, target, auth=auth, substitutions=ctx.config.headers)
    ex = await _answer_of(ctx, up, head2, body, client, attempt.accepted_for_now)
    if ex.response.status == 407:
        await discard(ctx, ex, req.method)
        ctx.stats.auth_rejections += 1
        raise AuthRejected(str(up.parent), "rejected pycntlm's credentials")
    return ex, True


async def basic_leg(
    ctx: Context,
    up: Upstream,
    client: Conn | None,
    req: Request,
    target: str,
    body: BodySource,
    on_slow: Callable[[], None] | None,
) -> Exchange:
    """The request itself with `Proxy-Authorization: Basic` (the caller holds the gate).
    A 407 is a rejection of the password: AuthRejected. Hash-only credentials: UpstreamError."""
    assert ctx.creds is not None
    if ctx.creds.basic is None:
        raise UpstreamError(str(up.parent), BASIC_NEEDS_PASSWORD)
    head = upstream_head(req, target, auth=ctx.creds.basic, substitutions=ctx.config.headers)
    ex = await _answer_of(ctx, up, head, body, client, on_slow)
    if ex.response.status == 407:
        await discard(ctx, ex, req.method)
        ctx.stats.auth_rejections += 1
        raise AuthRejected(str(up.parent), "rejected pycntlm's credentials (Basic)")
    return ex


async def basic_on_pooled(
    ctx: Context, up: Upstream, client: Conn | None, req: Request, target: str, body: BodySource
) -> Exchange:
    """A request to a Basic parent on a pooled connection: Basic authenticates each request, so
    each one passes the lockout gate (at once, in parallel, once the password is proven)."""
    attempt = Attempt(ctx)
    attempt.parent = up.parent
    try:
        await attempt.enter()
    except BaseException:  # locked out, or waited too long: this connection is not used
        up.conn.close()
        raise
    verdict: bool | None = None
    try:
        ex = await basic_leg(ctx, up, client, req, target, body, attempt.accepted_for_now)
        verdict = True
        return ex
    except AuthRejected:
        verdict = False
        raise
    finally:
        attempt.end(verdict)


async def _auto_kerberos(
    ctx: Context,
    up: Upstream,
    client: Conn | None,
    req: Request,
    target: str,
    body: BodySource,
    attempt: Attempt,
) -> tuple[Exchange, bool | None]:
    """AutoKerberos: the parent offered Negotiate and a ticket is usable. No ticket for it after
    all: NTLM on this connection (nothing was sent yet). A 407 to our ticket: NTLM on a new
    connection, since squid ties a connection to the first connection-oriented scheme used on
    it; never counted as a password rejection. The verdict is None: it proves no password."""
    assert up.parent is not None
    host = up.parent.host
    hs = KerberosHandshake(host)
    try:
        value = await asyncio.wait_for(asyncio.to_thread(hs.start), ctx.config.handshake_timeout)
    except (HandshakeError, TimeoutError) as exc:
        kerberos_failed(host)
        log.info("parent %s: Kerberos not possible (%s); using NTLM", up.parent, why(exc))
        return await _ntlm(ctx, up, client, req, target, body, attempt)
    attempt.end(None)
    method = req.method if not body.has_body else "HEAD"
    head = upstream_head(
        req, target, auth=value, substitutions=ctx.config.headers, method=method, drop_body=True
    )
    ctx.stats.handshakes += 1
    ex = await _answer_of(ctx, up, head, BodySource(False, None, None), client, None)
    challenges = http1.header_values(ex.response.headers, "Proxy-Authenticate")
    if ex.response.status == 407:
        kerberos_failed(host)
        _known(ctx, up.parent).learn(challenges)
        await discard(ctx, ex, req.method)
        log.info("parent %s refused the Kerberos ticket; using NTLM with it for now", up.parent)
        raise Restart()
    hs.finish(challenges)
    return await _through(ctx, up, client, req, target, body, ex.response, method), None


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
