"""One request's exchange with an upstream: a parent (authenticated) or the target (direct).

Owns: the route-level loop: a pooled authenticated connection or a fresh one (handshake.py),
retrying a request whose bytes were not yet consumed, direct connections for NoProxy, and
byte streams for the non-HTTP front ends. Must not: parse client heads or write access logs.
"""

from __future__ import annotations

import logging

from pycntlm import http1
from pycntlm.config import HostPort
from pycntlm.context import Context
from pycntlm.errors import AuthRejected, ProtocolError, UpstreamError
from pycntlm.exchange import (
    AllParentsDown,
    BodySource,
    Exchange,
    LockedOut,
    NoAnswer,
    Stale,
    Upstream,
    discard,
    send_and_read,
    why,
)
from pycntlm.forward import upstream_head
from pycntlm.handshake import Broken, Restart, basic_on_pooled, fresh_parent, wants_basic
from pycntlm.http1 import Request
from pycntlm.net import Conn, open_conn
from pycntlm.pool import PoolKey
from pycntlm.spares import top_up

__all__ = [
    "AllParentsDown",
    "BodySource",
    "Exchange",
    "LockedOut",
    "TunnelRefused",
    "is_direct",
    "open_tunnel",
    "via_direct",
    "via_parent",
]

log = logging.getLogger("pycntlm.session")

MAX_RESTARTS = 2  # new connections when a parent closes right after its challenge
MAX_ATTEMPTS = 6  # all tries for one request (stale pooled connections, parents)


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
                raise UpstreamError(where, why(exc)) from None
        up = Upstream(conn, None, key, reused)
        try:
            return await send_and_read(ctx, up, head, body, client, ctx.config.idle_timeout)
        except Stale:
            conn.close()
            if not (reused and body.replayable):
                raise UpstreamError(where, "closed without answering") from None
        except NoAnswer:
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
    ex = await _via_parent(ctx, client, req, target, body)
    if req.method == "CONNECT":  # a tunnel keeps its connection: have spares for the next ones
        top_up(ctx, ex.up.parent)
    return ex


async def _via_parent(
    ctx: Context, client: Conn | None, req: Request, target: str, body: BodySource
) -> Exchange:
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
            return await fresh_parent(ctx, client, req, target, body, tried, candidates)
        except Restart:
            restarts += 1
            if restarts > MAX_RESTARTS:
                raise UpstreamError(
                    tried[-1] if tried else "parent", "closes the connection after its challenge"
                ) from None
        except Broken:
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
        if wants_basic(ctx, up.parent):  # Basic authenticates each request, not the connection
            return await basic_on_pooled(ctx, up, client, req, target, body)
        head = upstream_head(req, target, substitutions=ctx.config.headers)
        ex = await send_and_read(ctx, up, head, body, client, ctx.config.idle_timeout)
    except Stale:
        up.conn.close()
        return None
    except NoAnswer:
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
    await discard(ctx, ex, req.method)
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
            raise UpstreamError(f"{host}:{port}", why(exc)) from None
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
