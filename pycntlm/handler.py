"""One client connection's request loop.

Owns: ACL check -> read head -> route (direct / tunnel / forward) -> upstream exchange -> relay
-> one access-log line per request; turning errors into short answers for the client.
Must not: authenticate (session.py), parse HTTP itself (http1.py), or put secrets in any answer.

-s (serialize, cntlm: "for debugging purposes only"): with the server's lock, one request at a
time across all clients, held from its head being read until its response is relayed. A CONNECT
tunnel (and a 101 protocol switch) gives the lock up once established: held for the tunnel's
life, one open tunnel would block every other client until it closed (cntlm -s serializes whole
connections and does exactly that). Keep-alive clients do not hold it between requests.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from dataclasses import dataclass

from pycntlm import http1
from pycntlm.context import Context
from pycntlm.errors import AuthRejected, ProtocolError, PycntlmError, UpstreamError
from pycntlm.forward import client_head, relay_body
from pycntlm.http1 import Framing, Request
from pycntlm.net import Conn, ConnectionClosed, open_conn, relay
from pycntlm.session import (
    AllParentsDown,
    BodySource,
    Exchange,
    LockedOut,
    via_direct,
    via_parent,
)

log = logging.getLogger("pycntlm")
access = logging.getLogger("pycntlm.access")

HEAD_TIMEOUT = 30.0  # a whole request head must arrive within this, once it has begun
PREFETCH_LIMIT = 64 * 1024
# CONNECT may reach these ports unless ConnectPorts says otherwise: HTTPS, its alternate port,
# NNTPS, and SSH (git over ssh through a proxy). Any other port is refused with 403.
DEFAULT_CONNECT_PORTS = (
    (443, 443),
    (8443, 8443),
    (563, 563),
    (22, 22),
)  # request bodies up to this are read first, so they can be replayed

REJECTED_TEXT = (
    "pycntlm: the parent proxy rejected pycntlm's credentials. Check Username, Domain and the "
    "password or hashes in pycntlm's configuration, then reload it (SIGHUP)."
)


@dataclass
class Turn:
    """-s: one request's hold on the server-wide lock (None: not serializing). release() is
    idempotent, so a tunnel can give it up early and the request's end releases it again."""

    lock: asyncio.Lock | None
    held: bool = False

    async def take(self) -> None:
        if self.lock is not None:
            await self.lock.acquire()
            self.held = True

    def release(self) -> None:
        if self.held and self.lock is not None:
            self.held = False
            self.lock.release()


@dataclass
class Outcome:
    status: int = 0
    route: str = "-"
    parent: str = "-"
    sent: int = 0  # body bytes sent to the client
    keep: bool = True


async def serve_client(ctx: Context, client: Conn, serial: asyncio.Lock | None = None) -> None:
    """Serve one client connection until it closes; never raises. `serial`: -s's lock."""
    ip = client.peername[0]
    ctx.stats.clients_active += 1
    try:
        if not ctx.acl.allows(ip):
            log.warning("client %s denied by the Allow/Deny rules", ip)
            _answer(client, 403, "Forbidden", "pycntlm: your address is not allowed", False)
            return
        while await _one_request(ctx, client, serial) and not client.stop_after_response:
            client.idle = True
    except (ConnectionClosed, ConnectionError, TimeoutError):
        pass
    except Exception:  # the server must survive any bug in one connection
        log.exception("internal error while serving %s", ip)
        _answer(client, 500, "Internal Server Error", "pycntlm: internal error", False)
    finally:
        ctx.stats.clients_active -= 1
        client.close()


async def _one_request(ctx: Context, client: Conn, serial: asyncio.Lock | None) -> bool:
    """Serve one request; True when the client connection stays open for another."""
    client.last_method = ""  # no request yet: an error about this head carries its text
    try:
        raw = await client.read_head(
            ctx.config.idle_timeout, HEAD_TIMEOUT, ctx.config.max_head_size
        )
    except ProtocolError as exc:
        _answer(client, exc.status, _reason(exc.status), f"pycntlm: {exc.message}", False)
        _log_access(client, "-", "-", Outcome(exc.status, keep=False), 0.0)
        return False
    client.idle = False
    if raw is None:
        return False
    started = time.monotonic()
    ctx.stats.requests += 1
    method, target_text = "-", "-"
    out = Outcome()
    turn = Turn(serial)
    try:
        await turn.take()
        req = http1.parse_request(
            raw, max_size=ctx.config.max_head_size, max_headers=ctx.config.max_headers
        )
        method, target_text = req.method, http1.log_target(req.target)
        client.last_method = method
        out = await _route(ctx, client, req, turn)
    except ProtocolError as exc:
        out = Outcome(exc.status, keep=False)
        _answer(client, exc.status, _reason(exc.status), f"pycntlm: {exc.message}", False)
    finally:
        turn.release()
        ctx.stats.by_status[out.status] = ctx.stats.by_status.get(out.status, 0) + 1
        ctx.stats.by_route[out.route] = ctx.stats.by_route.get(out.route, 0) + 1
        ctx.stats.bytes_to_clients += out.sent
        _log_access(client, method, target_text, out, time.monotonic() - started)
    return out.keep


async def _route(ctx: Context, client: Conn, req: Request, turn: Turn) -> Outcome:
    target = http1.request_target(req)
    direct = ctx.noproxy.matches(target.host)
    if ctx.pac is not None and not direct:
        ctx, direct = await _pac_route(ctx, req, target)
    direct = direct or not ctx.config.proxies
    route = "direct" if direct else "parent"
    keep = http1.client_wants_keep_alive(req)
    is_connect = req.method == "CONNECT"
    if ctx.config.ntlm_to_basic and not direct:
        user = basic_credentials(req, ctx.config.domain)
        if user is None:
            # An unread request body would be taken for the next request: close instead.
            keep = keep and http1.request_body(req).framing is Framing.NONE
            text = "pycntlm: log in with your domain user name and password (NTLMToBasic)"
            extra = (("Proxy-Authenticate", 'Basic realm="pycntlm"'),)
            client.write(
                http1.simple_response(407, _reason(407), text, keep_alive=keep, extra=extra)
            )
            return Outcome(407, route, keep=keep)
        ctx = ctx.for_user(*user)
    if is_connect:
        allowed = ctx.config.connect_ports or DEFAULT_CONNECT_PORTS
        if not any(lo <= target.port <= hi for lo, hi in allowed):
            text = f"pycntlm: CONNECT to port {target.port} is not allowed (see ConnectPorts)"
            _answer(client, 403, "Forbidden", text, keep)
            return Outcome(403, route, keep=keep)
        return await _tunnel(ctx, client, req, target, direct, turn)
    body = await _prefetch(ctx, client, req, _body_source(ctx, client, req))
    try:
        if direct:
            ex = await via_direct(ctx, client, req, target, body)
        else:
            ex = await via_parent(ctx, client, req, http1.absolute_uri(target), body)
    except AllParentsDown as exc:
        if not (ctx.config.standalone and body.replayable):
            return _upstream_failure(ctx, client, exc, route, keep and not _unread_body(body))
        log.warning("every parent is down: serving %s directly (Standalone)", target.host)
        route = "standalone"
        try:
            ex = await via_direct(ctx, client, req, target, body)
        except UpstreamError as exc2:
            return _upstream_failure(ctx, client, exc2, route, keep and not _unread_body(body))
    except UpstreamError as exc:
        return _upstream_failure(ctx, client, exc, route, keep and not _unread_body(body))
    return await _deliver(ctx, client, req, ex, route, keep, turn)


async def _pac_route(ctx: Context, req: Request, target: http1.Target) -> tuple[Context, bool]:
    """Ask the PAC file: (the Context whose parents are the PAC's proxies, go direct?).
    DIRECT first means direct; proxies are tried in the PAC's order (with failover), and a
    DIRECT after them is the Standalone fallback. No usable answer: the Proxy lines."""
    from pycntlm.config import HostPort

    assert ctx.pac is not None
    engine = ctx.pac.engine
    if engine is None:
        return ctx, False
    url = req.target if req.method != "CONNECT" else f"https://{req.target}/"
    try:
        routes = await engine.afind(url, target.host)
    except PycntlmError as exc:
        if not getattr(exc, "cached", False):  # a remembered failure was logged when fresh
            log.warning("PAC failed for %s (%s): using the Proxy lines", target.host, exc)
        return ctx, False
    if not routes:
        return ctx, False
    if routes[0].kind == "DIRECT":
        return ctx, True
    parents = tuple(HostPort(r.host, r.port) for r in routes if r.kind == "PROXY")
    derived = ctx.with_parents(parents)
    if any(r.kind == "DIRECT" for r in routes) and not derived.config.standalone:
        derived = derived.with_standalone()
    return derived, False


def _body_source(ctx: Context, client: Conn, req: Request) -> BodySource:
    framing = http1.request_body(req)
    if framing.framing is Framing.NONE:
        return BodySource(False, None, None)

    async def stream(dst: Conn) -> int:
        n = await relay_body(client, dst, framing, ctx.config.idle_timeout)
        ctx.stats.bytes_from_clients += n
        return n

    return BodySource(True, None, stream)


async def _prefetch(ctx: Context, client: Conn, req: Request, body: BodySource) -> BodySource:
    """Read a small Content-Length body first so the request can be replayed on another
    connection; large, chunked and 100-continue bodies are streamed once instead."""
    framing = http1.request_body(req)
    expects = "100-continue" in ",".join(http1.header_values(req.headers, "expect")).lower()
    if framing.framing is Framing.LENGTH and framing.length <= PREFETCH_LIMIT and not expects:
        buf = bytearray()
        await relay_body(client, buf, framing, ctx.config.idle_timeout)
        ctx.stats.bytes_from_clients += len(buf)
        body.prefetched = bytes(buf)
    return body


def basic_credentials(req: Request, default_domain: str) -> tuple[str, str, str] | None:
    """(user, domain, password) from a client's `Proxy-Authorization: Basic` (NTLMToBasic).
    The user may be written DOMAIN\\user or user@domain; otherwise the configured Domain."""
    for value in http1.header_values(req.headers, "proxy-authorization"):
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "basic":
            continue
        try:
            text = base64.b64decode(token.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        login, sep, password = text.partition(":")
        if not sep or not login:
            return None
        domain, sep, user = login.partition("\\")
        if not sep:
            user, sep, domain = login.rpartition("@") if "@" in login else (login, "", "")
            domain = domain if sep else default_domain
        return (user, domain, password) if user else None
    return None


def _unread_body(body: BodySource) -> bool:
    return body.has_body and body.prefetched is None and not body.sent


async def _tunnel(
    ctx: Context, client: Conn, req: Request, target: http1.Target, direct: bool, turn: Turn
) -> Outcome:
    route = "direct" if direct else "parent"
    if direct:
        try:
            up = await open_conn(target.host, target.port, ctx.config.connect_timeout)
        except (OSError, TimeoutError) as exc:
            err = UpstreamError(f"{target.host}:{target.port}", str(exc) or "timed out")
            return _upstream_failure(ctx, client, err, route, True)
        parent = "-"
    else:
        try:
            ex = await via_parent(ctx, client, req, req.target, BodySource(False, None, None))
        except AllParentsDown as exc:
            if not ctx.config.standalone:
                return _upstream_failure(ctx, client, exc, route, True)
            log.warning("every parent is down: tunnel to %s directly (Standalone)", target.host)
            return await _tunnel(ctx, client, req, target, True, turn)
        except UpstreamError as exc:
            return _upstream_failure(ctx, client, exc, route, True)
        parent = str(ex.up.parent)
        if not 200 <= ex.response.status < 300:
            return await _deliver(ctx, client, req, ex, route, True, turn)
        up = ex.up.conn
    turn.release()  # -s: established; the tunnel must not block everyone for its whole life
    client.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
    ctx.stats.tunnels_active += 1
    try:
        to_up, to_client = await relay(client, up, ctx.config.idle_timeout)
    finally:
        ctx.stats.tunnels_active -= 1
    ctx.stats.bytes_from_clients += to_up
    return Outcome(200, route, parent, to_client, keep=False)


async def _deliver(
    ctx: Context, client: Conn, req: Request, ex: Exchange, route: str, keep: bool, turn: Turn
) -> Outcome:
    resp = ex.response
    method = req.method
    try:
        body = http1.response_body(resp, method)
    except ProtocolError as exc:  # e.g. an invalid Content-Length from upstream
        ex.up.conn.close()
        if ex.pump is not None:
            ex.pump.cancel()
        where = str(ex.up.parent) if ex.up.parent is not None else "the target"
        _answer(
            client, 502, _reason(502), f"pycntlm: bad answer from {where}: {exc.message}", False
        )
        return Outcome(502, route, keep=False)
    up_keep = http1.response_keeps_alive(resp, method)
    if body.framing is Framing.UNTIL_CLOSE:
        keep = False
    parent = str(ex.up.parent) if ex.up.parent is not None else "-"
    if resp.status == 101:  # protocol switch (e.g. WebSocket over plain HTTP): relay bytes
        turn.release()  # -s: like a tunnel, established
        client.write(client_head(resp, True))
        _, to_client = await relay(client, ex.up.conn, ctx.config.idle_timeout)
        return Outcome(101, route, parent, to_client, keep=False)
    head = client_head(resp, keep)
    sent = 0
    try:
        sent = await relay_body(ex.up.conn, client, body, ctx.config.idle_timeout, head)
        if ex.pump is not None:
            async with asyncio.timeout(ctx.config.idle_timeout):
                await ex.pump
    except ProtocolError as exc:
        # A broken body from upstream (bad chunking): the head is already out, so the client
        # can only be told by closing its connection before the body is complete.
        ex.up.conn.close()
        if ex.pump is not None and not ex.pump.done():
            ex.pump.cancel()
        log.warning("%s: broken response body (%s); closing the client", parent, exc.message)
        return Outcome(resp.status, route, parent, sent, keep=False)
    except BaseException:
        ex.up.conn.close()
        if ex.pump is not None and not ex.pump.done():
            ex.pump.cancel()
        raise
    await client.drain(ctx.config.idle_timeout)
    if up_keep:
        ctx.pool.put(ex.up.key, ex.up.conn)
    else:
        ex.up.conn.close()
    return Outcome(resp.status, route, parent, sent, keep)


def _upstream_failure(
    ctx: Context, client: Conn, exc: UpstreamError, route: str, keep: bool
) -> Outcome:
    if isinstance(exc, LockedOut):
        text = (
            f"{REJECTED_TEXT} pycntlm stopped using them for {exc.remaining:.0f} more seconds "
            "to protect the account from lockout."
        )
        _answer(client, 407, "Proxy Authentication Required", text, keep)
        return Outcome(407, route, "-", 0, keep)
    if isinstance(exc, AuthRejected):
        _answer(client, 407, "Proxy Authentication Required", REJECTED_TEXT, keep)
        return Outcome(407, route, exc.parent, 0, keep)
    if isinstance(exc, AllParentsDown):
        text = f"pycntlm: no parent proxy could be used (tried: {exc.parent})"
    else:
        text = f"pycntlm: {exc.parent}: {exc.reason}"
    status = 504 if "timed out" in text else 503 if exc.parent == "pycntlm" else 502
    _answer(client, status, _reason(status), text, keep)
    return Outcome(status, route, exc.parent, 0, keep)


def _answer(client: Conn, status: int, reason: str, text: str, keep: bool) -> None:
    """One of pycntlm's own short answers (an answer to HEAD gets the head only)."""
    data = http1.simple_response(status, reason, text, keep_alive=keep)
    if client.last_method == "HEAD":
        data = data[: data.index(b"\r\n\r\n") + 4]
    with contextlib.suppress(ConnectionClosed):
        client.write(data)


_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    501: "Not Implemented",
    502: "Bad Gateway",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}


def _reason(status: int) -> str:
    return _REASONS.get(status, "Error")


def _log_access(client: Conn, method: str, target: str, out: Outcome, seconds: float) -> None:
    access.info(
        "%s %s %s %s %s %d %d %.1fms",
        client.peername[0],
        method,
        target,
        out.route,
        out.parent,
        out.status,
        out.sent,
        seconds * 1000,
    )
