"""Front ends other than the HTTP proxy: Tunnel (-L) and SOCKS5 (-O) listeners.

Owns: binding those listeners, the Allow/Deny check on their clients, the SOCKS5 conversation
(messages parsed by socks5.py), opening the upstream stream with session.open_tunnel, mapping
its errors to SOCKS5 reply codes, relaying, one access-log line per connection.
Must not: authenticate upstream itself (session.py does), resolve a client's domain name (the
parent does), or log a SOCKS5 password.

Listen addresses follow cntlm: a port alone binds 127.0.0.1, or every interface with Gateway.
ConnectPorts (the HTTP CONNECT allow-list) does not apply here: a Tunnel's target is fixed by
the administrator, and for SOCKS5 the parent decides what it allows, as in cntlm(1).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from pycntlm import socks5
from pycntlm.config import Config, ListenAddr, socks5_account, socks5_listen, tunnel_spec
from pycntlm.context import Context
from pycntlm.errors import AuthRejected, ConfigError, UpstreamError
from pycntlm.listeners import InterfaceNotReady, bind_socket, resolve_listen
from pycntlm.net import Conn, ConnectionClosed, relay
from pycntlm.session import AllParentsDown, TunnelRefused, open_tunnel

log = logging.getLogger("pycntlm")
access = logging.getLogger("pycntlm.access")

Spawn = Callable[[Coroutine[Any, Any, None]], None]
Serve = Callable[[Context, Conn], Coroutine[Any, Any, None]]

T = TypeVar("T")

NEGOTIATION_TIMEOUT = 15.0  # the whole SOCKS5 greeting / login / request exchange


@dataclass(frozen=True)
class Listener:
    """One Tunnel or SOCKS5Proxy line: what it is (for logs), where, and how to serve."""

    what: str
    addr: ListenAddr
    serve: Serve


def listeners(config: Config) -> list[Listener]:
    out = []
    for text in config.tunnels:
        spec = tunnel_spec(text)
        serve = _tunnel(spec.host, spec.port)
        out.append(Listener(f"tunnel to {spec.host}:{spec.port}", spec.listen, serve))
    out += [Listener("SOCKS5 proxy", socks5_listen(t), _socks) for t in config.socks5_proxies]
    return out


def bind_frontends(config: Config) -> list[tuple[Listener, socket.socket]]:
    """Bind every Tunnel and SOCKS5Proxy listener now: call it where server.bind_listeners is
    called (before the daemon forks and -U drops privileges), and pass the result to
    start_frontends. Interfaces that are not up are skipped with an error in the log.
    Raises ConfigError naming the listener (nothing stays bound then)."""
    bound: list[tuple[Listener, socket.socket]] = []
    try:
        for lis in listeners(config):
            try:
                hosts = resolve_listen(lis.addr, config.gateway)
            except InterfaceNotReady:
                log.error("%s: interface %s is not up: not listening", lis.what, lis.addr.host)
                continue
            for host in hosts:
                try:
                    bound += [(lis, sock) for sock in bind_socket(host, lis.addr.port)]
                except ConfigError as exc:
                    raise ConfigError(f"{lis.what}: {exc}") from None
    except BaseException:
        for _, sock in bound:
            sock.close()
        raise
    return bound


async def start_frontends(
    ctx: Context,
    spawn: Spawn,
    current: Callable[[], Context] | None = None,
    bound: list[tuple[Listener, socket.socket]] | None = None,
) -> list[asyncio.Server]:
    """Serve every Tunnel and SOCKS5Proxy listener of ctx.config (pre-bound by bind_frontends,
    or bound now); connections are served by coroutines handed to `spawn` (tracked for graceful
    shutdown). `current` returns the Context in force after a reload (default: `ctx` for good).
    Raises ConfigError when a listener cannot be bound (nothing stays bound then)."""
    get = current if current is not None else (lambda: ctx)
    if bound is None:
        bound = bind_frontends(ctx.config)
    loop = asyncio.get_running_loop()
    servers: list[asyncio.Server] = []
    try:
        for lis, sock in bound:
            factory = _factory(get, lis.serve, spawn)
            servers.append(await loop.create_server(factory, sock=sock))
            name = sock.getsockname()
            log.info("%s listening on %s:%d", lis.what, name[0], name[1])
    except BaseException:
        for srv in servers:
            srv.close()
        for _, sock in bound[len(servers) :]:
            sock.close()
        raise
    return servers


def _factory(get: Callable[[], Context], serve: Serve, spawn: Spawn) -> Callable[[], Conn]:
    def make() -> Conn:
        conn = Conn()
        conn.on_made = asyncio.get_running_loop().create_future()
        conn.on_made.add_done_callback(lambda _f: spawn(_guarded(get(), conn, serve)))
        return conn

    return make


async def _guarded(ctx: Context, client: Conn, serve: Serve) -> None:
    """The Allow/Deny check, then `serve`; never raises, always closes the client."""
    ip = client.peername[0]
    ctx.stats.clients_active += 1
    try:
        if not ctx.acl.allows(ip):
            log.warning("client %s denied by the Allow/Deny rules", ip)
            return
        await serve(ctx, client)
    except (ConnectionClosed, ConnectionError, TimeoutError):
        pass
    except Exception:  # the server must survive any bug in one connection
        log.exception("internal error while serving %s", ip)
    finally:
        ctx.stats.clients_active -= 1
        client.close()


# ---------------------------------------------------------------- Tunnel


def _tunnel(host: str, port: int) -> Serve:
    async def serve(ctx: Context, client: Conn) -> None:
        started = time.monotonic()
        try:
            up, parent = await open_tunnel(ctx, host, port)
        except (UpstreamError, ConnectionClosed, TimeoutError, OSError) as exc:
            log.warning("tunnel to %s:%d: %s", host, port, exc or type(exc).__name__)
            _access(client, "TUNNEL", host, port, None, _status(exc), 0, started)
            return
        await _relay(ctx, client, up, "TUNNEL", host, port, parent, started)

    return serve


async def _relay(
    ctx: Context,
    client: Conn,
    up: Conn,
    method: str,
    host: str,
    port: int,
    parent: object,
    started: float,
) -> None:
    ctx.stats.tunnels_active += 1
    try:
        to_up, to_client = await relay(client, up, ctx.config.idle_timeout)
    finally:
        ctx.stats.tunnels_active -= 1
    ctx.stats.bytes_from_clients += to_up
    ctx.stats.bytes_to_clients += to_client
    _access(client, method, host, port, parent, 200, to_client, started)


def _access(
    client: Conn,
    method: str,
    host: str,
    port: int,
    parent: object,
    status: int,
    sent: int,
    started: float,
) -> None:
    """One line like handler.py's: client method target route parent status bytes time."""
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    route = "-" if status != 200 else ("parent" if parent is not None else "direct")
    access.info(
        "%s %s %s %s %s %d %d %.1fms",
        client.peername[0],
        method,
        target,
        route,
        parent if parent is not None else "-",
        status,
        sent,
        (time.monotonic() - started) * 1000,
    )


def _status(exc: Exception) -> int:
    """The HTTP status handler.py would answer for this error (for the access log)."""
    if not isinstance(exc, UpstreamError):
        return 502
    if isinstance(exc, AuthRejected):
        return 407
    if isinstance(exc, TunnelRefused):
        return exc.status
    return 504 if "timed out" in exc.reason else 502


# ---------------------------------------------------------------- SOCKS5


async def _socks(ctx: Context, client: Conn) -> None:
    """One SOCKS5 client: negotiate, open the stream (parent or direct), reply, relay."""
    started = time.monotonic()
    buf = bytearray()
    accounts = tuple(
        (user.encode(), password.encode())
        for user, password in map(socks5_account, ctx.config.socks5_users)
    )
    try:
        async with asyncio.timeout(NEGOTIATION_TIMEOUT):
            req = await _negotiate(client, buf, accounts)
    except socks5.SocksError as exc:
        log.debug("SOCKS5 client %s: %s", client.peername[0], exc.message)
        if exc.reply is not None:
            client.write(socks5.reply(exc.reply))
        return
    if req is None:
        return
    if req.command != socks5.CMD_CONNECT:
        client.write(socks5.reply(socks5.COMMAND_NOT_SUPPORTED))
        _access(client, "SOCKS5", req.host, req.port, None, 501, 0, started)
        return
    try:
        up, parent = await open_tunnel(ctx, req.host, req.port)
    except (UpstreamError, ConnectionClosed, TimeoutError, OSError) as exc:
        log.warning("SOCKS5 CONNECT %s:%d: %s", req.host, req.port, exc or type(exc).__name__)
        client.write(socks5.reply(reply_code(exc)))
        _access(client, "SOCKS5", req.host, req.port, None, _status(exc), 0, started)
        return
    client.write(socks5.reply(socks5.SUCCEEDED))
    client.unread(bytes(buf))  # early data the client sent after its request
    await _relay(ctx, client, up, "SOCKS5", req.host, req.port, parent, started)


async def _negotiate(
    client: Conn, buf: bytearray, accounts: tuple[tuple[bytes, bytes], ...]
) -> socks5.Request | None:
    """Greeting, login when accounts exist, request. None when the client was turned away."""
    greeting = await _read(client, buf, socks5.parse_greeting)
    method = socks5.choose_method(greeting, bool(accounts))
    client.write(socks5.method_reply(method))
    if method == socks5.NO_ACCEPTABLE:
        log.warning(
            "SOCKS5 client %s offers no acceptable authentication method%s",
            client.peername[0],
            " (SOCKS5User accounts require username/password)" if accounts else "",
        )
        return None
    if method == socks5.USER_PASS:
        login = await _read(client, buf, socks5.parse_login)
        ok = socks5.check_login(accounts, login)
        client.write(socks5.login_reply(ok))
        if not ok:
            user = login.username.decode("utf-8", "replace")[:64]
            log.warning(
                "SOCKS5 client %s: wrong user name or password for %r", client.peername[0], user
            )
            return None
    return await _read(client, buf, socks5.parse_request)


async def _read(
    client: Conn, buf: bytearray, parse: Callable[[bytearray], tuple[T, int] | None]
) -> T:
    """The next message: parse what is buffered, read more while it is incomplete."""
    while True:
        parsed = parse(buf)
        if parsed is not None:
            message, used = parsed
            del buf[:used]
            return message
        if len(buf) >= socks5.MAX_MESSAGE:  # cannot happen with socks5's parsers
            raise socks5.SocksError("message too long")
        data = await client.read_some(NEGOTIATION_TIMEOUT)
        if not data:
            raise ConnectionClosed(client, "closed during the SOCKS5 negotiation")
        buf += data


def reply_code(exc: Exception) -> int:
    """The SOCKS5 reply for a failure to open the stream (RFC 1928 section 6)."""
    if not isinstance(exc, UpstreamError):
        return socks5.GENERAL_FAILURE
    if isinstance(exc, TunnelRefused):
        if exc.status in (403, 405):
            return socks5.NOT_ALLOWED
        if exc.status in (404, 502, 503, 504):
            return socks5.HOST_UNREACHABLE
        return socks5.GENERAL_FAILURE
    if isinstance(exc, AllParentsDown):
        return socks5.NETWORK_UNREACHABLE
    if isinstance(exc, AuthRejected):  # our credentials, not the client's: LockedOut too
        return socks5.GENERAL_FAILURE
    # direct (NoProxy) connections: session.py's reason text
    if exc.reason == "connection refused":
        return socks5.CONNECTION_REFUSED
    return socks5.HOST_UNREACHABLE
