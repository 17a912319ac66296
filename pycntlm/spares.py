"""Pre-authenticated spare connections, so a burst of tunnels pays no NTLM round trips.

Owns: topping the pool up to PoolSpare idle NTLM-authenticated connections per parent and
identity, one handshake at a time, after a tunnel took a connection out of the pool for good
(a `docker pull` opens one CONNECT per layer at once). Must not: send the password before it is
proven, run while the lockout guard is not open, try again soon after a failure, or answer
clients.

How a connection is authenticated without a client request: both NTLM legs carry
`TRACE http://<parent>/` with `Max-Forwards: 0`, which the parent answers itself (RFC 9110
section 7.6.2; squid does so after authenticating the connection), so nothing leaves the parent.
A parent that does not ask for NTLM on it, or does not answer it with 2xx after the Type 3, is
not primed again for SPARE_REST seconds (FailbackInterval at least). A 407 to the Type 3 is not
counted as a password rejection: a parent that forwarded the TRACE to itself would answer the
same, and a false lockout would stop every client; real requests still meet the lockout gate.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from pycntlm import http1
from pycntlm.auth import NtlmHandshake
from pycntlm.config import HostPort
from pycntlm.context import Context
from pycntlm.exchange import upstream_head_of, why
from pycntlm.forward import skip_body, upstream_head
from pycntlm.gate import Attempt
from pycntlm.handshake import plan
from pycntlm.http1 import Request, Response
from pycntlm.net import Conn, open_conn
from pycntlm.parentauth import has_ntlm_challenge
from pycntlm.pool import PoolKey

log = logging.getLogger("pycntlm.session")

MAX_FORWARDS_0 = ("Max-Forwards", "0")
SPARE_REST = 300.0  # seconds before a parent that could not be primed is tried again


class NotPrimed(Exception):
    """This parent cannot be primed this way (or not now): rest it."""


def top_up(ctx: Context, parent: HostPort | None) -> None:
    """Start making spares for `parent` if it has fewer than PoolSpare idle connections for our
    identity; returns at once (the work is a background task tracked by the pool)."""
    want = min(ctx.config.pool_spare, ctx.config.pool_max_idle)
    if parent is None or want <= 0 or ctx.creds is None or not _ready(ctx, parent):
        return
    key: PoolKey = (str(parent), ctx.creds.identity)
    pool = ctx.pool
    if key in pool.filling or pool.idle_count(key) >= want:
        return
    pool.filling.add(key)
    task = asyncio.get_running_loop().create_task(_fill(ctx, parent, key, want))
    pool.spare_tasks.add(task)
    task.add_done_callback(pool.spare_tasks.discard)


def _ready(ctx: Context, parent: HostPort) -> bool:
    """Only with NTLM, proven credentials, an open guard and a parent not resting."""
    until = ctx.pool.spares_resting.get(str(parent))
    if until is not None and ctx.clock() < until:
        return False
    guard = ctx.guard
    return guard.proven and guard.wait_hint() == "ok" and plan(ctx, parent) == "ntlm"


async def _fill(ctx: Context, parent: HostPort, key: PoolKey, want: int) -> None:
    try:
        while ctx.pool.idle_count(key) < want and _ready(ctx, parent):
            conn = await _prime(ctx, parent)
            conn.spare = True
            ctx.pool.put(key, conn)
            ctx.pool.spares_made += 1
    except NotPrimed as exc:
        rest = max(SPARE_REST, ctx.config.failback_interval)
        ctx.pool.spares_resting[str(parent)] = ctx.clock() + rest
        log.info("parent %s: no spare connections for %.0f s (%s)", parent, rest, exc)
    except Exception:  # a background task must never die silently
        log.exception("making a spare connection to %s failed", parent)
    finally:
        ctx.pool.filling.discard(key)


async def _prime(ctx: Context, parent: HostPort) -> Conn:
    """One new connection to `parent`, NTLM-authenticated with the TRACE legs."""
    assert ctx.creds is not None
    cfg = ctx.config
    tls = ctx.parent_tls if parent.tls else None
    try:
        conn = await open_conn(parent.host, parent.port, cfg.connect_timeout, tls)
    except (OSError, TimeoutError) as exc:
        raise NotPrimed(f"connect: {why(exc)}") from None
    attempt = Attempt(ctx)
    attempt.parent = parent
    verdict: bool | None = None
    try:
        await attempt.enter()
        hs = NtlmHandshake(ctx.creds, cfg.auth, cfg.flags)
        ctx.stats.handshakes += 1
        first = await _leg(ctx, conn, parent, hs.start())
        challenges = http1.header_values(first.headers, "Proxy-Authenticate")
        if first.status != 407 or not has_ntlm_challenge(challenges):
            raise NotPrimed(f"the parent answered {first.status} to the Type 1")
        await _skip(ctx, conn, first)
        second = await _leg(ctx, conn, parent, hs.respond(challenges))
        if not 200 <= second.status < 300:
            raise NotPrimed(f"the parent answered {second.status} to the Type 3")
        verdict = True
        await _skip(ctx, conn, second)
        return conn
    except BaseException as exc:
        conn.close()
        if isinstance(exc, NotPrimed | asyncio.CancelledError):
            raise
        raise NotPrimed(why(exc)) from None
    finally:
        attempt.end(verdict)


def _trace(parent: HostPort, auth: str, substitutions: tuple[tuple[str, str], ...]) -> bytes:
    """The priming request: answered by the parent itself, never forwarded."""
    where = str(dataclasses.replace(parent, tls=False))
    req = Request("TRACE", f"http://{where}/", "HTTP/1.1", (("Host", where), MAX_FORWARDS_0))
    return upstream_head(req, req.target, auth=auth, substitutions=substitutions)


async def _leg(ctx: Context, conn: Conn, parent: HostPort, auth: str) -> Response:
    head = _trace(parent, auth, ctx.config.headers)
    timeout = ctx.config.handshake_timeout
    await conn.send(head, timeout)
    raw = await upstream_head_of(conn, timeout)
    if raw is None:
        raise NotPrimed("the parent closed the connection")
    return http1.parse_response(raw)


async def _skip(ctx: Context, conn: Conn, resp: Response) -> None:
    """Drop an answer's body; the connection must stay usable."""
    kept = http1.response_keeps_alive(resp, "TRACE") and await skip_body(
        conn, http1.response_body(resp, "TRACE"), ctx.config.handshake_timeout
    )
    if not kept or conn.at_eof:
        raise NotPrimed("the parent closes the connection after answering")
