"""The running server: listeners, the client tasks, signals, reload and graceful shutdown.

Owns: serving the sockets listeners.py binds (and interfaces that come up later), one task per
client connection (tracked, never stray), SIGTERM/SIGINT (stop accepting, let transfers finish
for a grace period, then close), SIGHUP (reload: config, listeners, PAC), the status endpoint.
Must not: know HTTP or NTLM.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import socket
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from pycntlm import handler, http1
from pycntlm.config import Config, ListenAddr
from pycntlm.context import Context
from pycntlm.errors import ConfigError
from pycntlm.listeners import (
    BACKLOG,
    InterfaceNotReady,
    bind_listeners,
    bind_socket,
    clients_for_fd_limit,
    pending_listeners,
    raise_nofile_limit,
    resolve_listen,
    sd_notify,
)
from pycntlm.memory import Trimmer
from pycntlm.net import Conn

if TYPE_CHECKING:
    from pycntlm.pac import PacSource

__all__ = ["Server", "bind_listeners", "describe", "preload", "run"]

log = logging.getLogger("pycntlm")

PAC_REFRESH = 900.0  # seconds between PAC file refreshes
PAC_RELOAD_WAIT = 15.0  # seconds a reload waits for a new Pac location before switching anyway
WATCH_SECONDS = 5.0  # how often the pool is pruned and the config file's mtime is checked
GRACE_SECONDS = 10.0
FULL_TEXT = "pycntlm: too many clients right now (MaxClients); try again shortly"


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _mtime(path: str | None) -> float | None:
    if path is None:
        return None
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


class Server:
    """Runs until stop() is called. `reload` builds a new Context from the config source."""

    def __init__(self, ctx: Context, reload: Callable[[], Context] | None = None) -> None:
        self.ctx = ctx
        self._reload = reload
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._watchers: set[asyncio.Task[None]] = set()
        self._status: list[Any] = []
        self._clients: set[Conn] = set()  # client connections of the HTTP proxy listeners
        self._pac_task: asyncio.Task[None] | None = None
        self._reloads = 0  # a reload waiting for its PAC file switches only if still the last
        self._full = False  # MaxClients reached (logged once per episode)
        self._fd_clients = clients_for_fd_limit()  # MaxClients when the config has none
        # -s: one request at a time across all clients (see handler.py); None: concurrent
        self._serial = asyncio.Lock() if ctx.config.serialize else None
        self.addresses: list[tuple[str, int]] = []

    async def start(
        self, sockets: list[socket.socket] | None = None, frontend_bound: list[Any] | None = None
    ) -> None:
        """Serve on pre-bound sockets (see bind_listeners and frontends.bind_frontends), or
        bind the config's listeners now."""
        loop = asyncio.get_running_loop()
        if sockets is None:
            sockets = bind_listeners(self.ctx.config)
        for sock in sockets:
            srv = await loop.create_server(self._make_protocol, sock=sock, backlog=BACKLOG)
            self._servers.append(srv)
            name = sock.getsockname()
            self.addresses.append((str(name[0]), int(name[1])))
        for host, port in self.addresses:
            log.info("listening on %s:%d", host, port)
        open_to = [f"{h}:{p}" for h, p in self.addresses if not _loopback(h)]
        if open_to and self.ctx.acl.is_empty:
            log.warning(
                "listening on %s with no Allow/Deny rules: anyone who can reach it uses the "
                "configured account (an open relay). Add e.g. 'Allow 172.16.0.0/12' and "
                "'Deny 0/0'.",
                ", ".join(open_to),
            )
        from pycntlm import frontends  # (imports server: no cycle at module level)

        for srv in await frontends.start_frontends(
            self.ctx, self._spawn_other, lambda: self.ctx, frontend_bound
        ):
            self._servers.append(srv)
        await self._start_status()
        await self._start_pac(self.ctx)
        for addr in pending_listeners(self.ctx.config):
            log.warning("interface %s is not up yet: will listen on it once it is", addr.host)
            self._watchers.add(loop.create_task(self._listen_when_up(addr)))
        if self._serial is not None:
            log.warning("-s: serving one request at a time (for debugging only)")
        if self.ctx.config.listen_defaulted:
            log.warning("no Listen in the configuration: listening on 127.0.0.1:3128")

    async def _start_pac(self, ctx: Context) -> None:
        """Load the PAC file before serving, then refresh it every PAC_REFRESH seconds (the
        last good copy stays in use when a refresh fails)."""
        if ctx.pac is None:
            return
        _log_pac(ctx.pac, await ctx.pac.refresh())
        self._keep_fresh(ctx.pac)

    def _keep_fresh(self, pac: PacSource | None, now: bool = False) -> None:
        """Refresh `pac` in the background (at once when `now`, then every PAC_REFRESH
        seconds), instead of the PAC source refreshed so far."""
        if self._pac_task is not None:
            self._pac_task.cancel()
            self._pac_task = None
        if pac is not None:
            self._pac_task = asyncio.get_running_loop().create_task(self._refreshing(pac, now))

    @staticmethod
    async def _refreshing(pac: PacSource, now: bool) -> None:
        if now:
            _log_pac(pac, await pac.refresh())
        await pac.run(PAC_REFRESH)

    async def _start_status(self) -> None:
        if not self.ctx.config.status_listen:
            return
        from pycntlm import metrics  # aiohttp is loaded only when the endpoint is wanted

        for addr in self.ctx.config.status_listen:
            host = addr.host or "127.0.0.1"
            try:
                runner = await metrics.start(lambda: self.ctx, host, addr.port)
            except OSError as exc:
                raise ConfigError(
                    f"cannot listen on {addr} (StatusListen): {exc.strerror or exc}"
                ) from None
            self._status.append(runner)
            log.info("status endpoint on http://%s:%d/metrics", host, addr.port)

    async def _listen_when_up(self, addr: ListenAddr, interval: float = 2.0) -> None:
        """Wait (bounded only by shutdown) for an interface to get its IPv4 address, then serve."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                hosts = resolve_listen(addr, self.ctx.config.gateway)
            except InterfaceNotReady:
                await asyncio.sleep(interval)
                continue
            try:
                socks = [s for h in hosts for s in bind_socket(h, addr.port)]
            except ConfigError as exc:
                log.error("%s", exc)
                return
            for sock in socks:
                srv = await loop.create_server(self._make_protocol, sock=sock, backlog=BACKLOG)
                self._servers.append(srv)
                name = sock.getsockname()
                self.addresses.append((str(name[0]), int(name[1])))
                log.info("interface %s is up: listening on %s:%d", addr.host, name[0], name[1])
            return

    def _make_protocol(self) -> Conn:
        conn = Conn()
        self._clients.add(conn)
        loop = asyncio.get_running_loop()
        conn.on_made = loop.create_future()
        conn.on_made.add_done_callback(lambda _f: self._spawn(conn))
        return conn

    def _spawn(self, conn: Conn) -> None:
        if self._stopping.is_set():
            conn.close()
            return
        limit = self.ctx.config.max_clients or self._fd_clients
        if len(self._clients) > limit:  # a fast, clear failure
            self._clients.discard(conn)
            if not self._full:
                log.warning("MaxClients (%d) reached: new clients get 503", len(self._clients))
            self._full = True
            conn.write(
                http1.simple_response(503, "Service Unavailable", FULL_TEXT, keep_alive=False)
            )
            conn.close()
            return
        self._full = False
        task = self.spawn(handler.serve_client(self.ctx, conn, self._serial))
        task.add_done_callback(lambda _t: self._clients.discard(conn))

    def _spawn_other(self, coro: Coroutine[Any, Any, None]) -> None:
        """For the front ends (Tunnel, SOCKS5): a tracked task, like client connections."""
        self.spawn(coro)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run one connection's coroutine as a tracked task (waited for at shutdown)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def reload(self) -> None:
        """Build a new Context from the config source and switch to it. With the same Pac
        location the new one starts from the PAC file's last good copy and refreshes it in the
        background; a new Pac location is loaded first (at most PAC_RELOAD_WAIT seconds, the
        running configuration serving meanwhile), so no request misses the PAC."""
        if self._reload is None:
            return
        try:
            new = self._reload()
        except ConfigError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            return
        self._reloads += 1
        running = self.ctx.pac
        if new.pac is None:
            self._switch(new)
            self._keep_fresh(None)
        elif running is not None and running.location == new.pac.location:
            new.pac.inherit(running)
            self._switch(new)
            self._keep_fresh(new.pac, now=True)
        else:
            self._watch(self._switch_once_loaded(new, new.pac, self._reloads))

    async def _switch_once_loaded(self, new: Context, pac: PacSource, reload: int) -> None:
        """Load a new Pac location, then switch to `new` unless a later reload came first."""
        log.info("reload: loading PAC file %s before switching", pac.location)
        loaded = await pac.load(PAC_RELOAD_WAIT)
        if reload != self._reloads:
            log.info("reload: PAC file %s: superseded by a later reload", pac.location)
            return
        previous = self.ctx.pac
        if not loaded and previous is not None and previous.engine is not None:
            pac.inherit(previous)  # its engine, until a refresh of the new location succeeds
            log.error(
                "PAC file %s: %s; keeping the previous PAC file %s until it loads",
                pac.location,
                pac.last_error,
                previous.location,
            )
        else:
            _log_pac(pac, loaded)
        self._switch(new)
        self._keep_fresh(pac)

    def _switch(self, new: Context) -> None:
        old = self.ctx
        self.ctx = new
        old.pool.clear()
        log.info("configuration reloaded; credentials re-armed")
        if (
            set(old.config.listen) != set(new.config.listen)
            or old.config.gateway != new.config.gateway
        ):
            self._watch(self._relisten(old.config, new.config))

    def _watch(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a reload's background work as a tracked task (cancelled at shutdown)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _relisten(self, old: Config, new: Config) -> None:
        """Apply changed Listen lines: stop listening where a line went away (open connections
        and tunnels stay), start where a line was added."""
        for addr in set(old.listen) - set(new.listen):
            for srv in self._servers_for(addr, old.gateway):
                srv.close()
                self._servers.remove(srv)
                log.info("no longer listening on %s", addr)
        loop = asyncio.get_running_loop()
        for addr in [a for a in new.listen if a not in old.listen or old.gateway != new.gateway]:
            try:
                hosts = resolve_listen(addr, new.gateway)
                socks = [s for h in hosts for s in bind_socket(h, addr.port)]
            except InterfaceNotReady:
                self._watchers.add(loop.create_task(self._listen_when_up(addr)))
                continue
            except ConfigError as exc:
                log.error("reload: %s", exc)
                continue
            for sock in socks:
                srv = await loop.create_server(self._make_protocol, sock=sock, backlog=BACKLOG)
                self._servers.append(srv)
                log.info("listening on %s:%d", *sock.getsockname()[:2])

    def _servers_for(self, addr: ListenAddr, gateway: bool) -> list[asyncio.Server]:
        try:
            hosts = set(resolve_listen(addr, gateway))
        except InterfaceNotReady:
            return []
        wildcard = {"0.0.0.0", "::"}
        found = []
        for srv in self._servers:
            for sock in srv.sockets:
                host, port = sock.getsockname()[:2]
                if port == addr.port and (host in hosts or (None in hosts and host in wildcard)):
                    found.append(srv)
                    break
        return found

    def stop(self) -> None:
        self._stopping.set()

    async def _housekeeping(self, interval: float) -> None:
        """Prune idle pooled connections, and reload when the config file changes (which also
        re-arms credentials that were locked out after a rejection)."""
        path = self.ctx.config.source_path
        mtime = _mtime(path)
        trimmer = Trimmer()
        while True:
            await asyncio.sleep(interval)
            self.ctx.pool.prune()
            trimmer.observe(len(self._tasks))
            now = _mtime(path)
            if now != mtime:
                mtime = now
                log.info("%s changed: reloading", path)
                self.reload()

    async def serve_until_stopped(self, grace: float = GRACE_SECONDS) -> None:
        loop = asyncio.get_running_loop()
        house = loop.create_task(self._housekeeping(WATCH_SECONDS))
        sd_notify("READY=1\nSTATUS=serving")
        try:
            await self._stopping.wait()
        finally:
            sd_notify("STOPPING=1")
            house.cancel()
            await self._shutdown(grace)

    async def _shutdown(self, grace: float) -> None:
        for watcher in self._watchers:
            watcher.cancel()
        if self._pac_task is not None:
            self._pac_task.cancel()
        for srv in self._servers:
            srv.close()
        # Keep-alive clients waiting for their next request are closed now; the others finish
        # the request in flight (or their tunnel) and are closed after it.
        for conn in list(self._clients):
            conn.stop_after_response = True
            if conn.idle and not conn.buffered:
                conn.close()
        await asyncio.sleep(0)
        if self._tasks:
            log.info("waiting up to %.0f s for %d open connections", grace, len(self._tasks))
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=2.0)
        for runner in self._status:
            await runner.cleanup()
        self.ctx.pool.clear()


def _log_pac(pac: PacSource, loaded: bool) -> None:
    if loaded:
        log.info("PAC file %s loaded", pac.location)
    else:
        kept = "using its last good copy" if pac.engine is not None else "using the Proxy lines"
        log.error("PAC file %s: %s; %s", pac.location, pac.last_error, kept)


def preload(config: Config) -> None:
    """Import what this configuration will need later, while the files are still readable
    (before -U drops privileges)."""
    import encodings.idna  # noqa: F401  (host names are IDNA-encoded when resolved)

    from pycntlm import frontends  # noqa: F401

    if config.status_listen:
        from pycntlm import metrics  # noqa: F401


def install_signals(server: Server) -> None:
    """SIGTERM/SIGINT stop; SIGHUP reloads (systemd's meaning), or stops with SighupReload no
    (the meaning cntlm's old SysV init script relies on)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.stop)
    hup = server.reload if server.ctx.config.sighup_reload else server.stop
    loop.add_signal_handler(signal.SIGHUP, hup)


async def run(
    ctx: Context,
    reload: Callable[[], Context] | None = None,
    sockets: list[socket.socket] | None = None,
    frontend_bound: list[Any] | None = None,
) -> None:
    """Serve (on pre-bound sockets, or bind now) until SIGTERM/SIGINT; shut down gracefully."""
    limit = raise_nofile_limit()
    log.debug("open files limit: %d", limit)
    server = Server(ctx, reload)
    install_signals(server)  # before start: the pre-bound sockets already accept connections
    await server.start(sockets, frontend_bound)
    await server.serve_until_stopped()


def describe(config: Config) -> str:
    parents = ", ".join(str(p) for p in config.proxies) or "none (direct only)"
    return f"parents: {parents}; auth: {config.auth}"
