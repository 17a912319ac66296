"""Listening sockets: where a Listen line binds, and binding it.

Owns: resolving Listen values (IP literals, host names, interface names such as docker0 via
SIOCGIFADDR), binding before the event loop starts (so a daemon reports errors before it forks),
IP_FREEBIND for addresses not on the host yet, the open-files limit, systemd notification.
Must not: serve connections (server.py does).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import logging
import os
import resource
import socket
import struct
from typing import Any

from pycntlm.config import Config, ListenAddr
from pycntlm.errors import ConfigError

log = logging.getLogger("pycntlm")

BACKLOG = 4096
SIOCGIFADDR = 0x8915


def interface_ipv4(name: str) -> str | None:
    """The IPv4 address of a network interface, or None if it has none / does not exist."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


class InterfaceNotReady(Exception):
    """A Listen names an interface that does not exist or has no IPv4 address yet."""


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        return True
    except (socket.gaierror, UnicodeError):
        return False


def resolve_listen(addr: ListenAddr, gateway: bool) -> list[str | None]:
    """Hosts to bind for one Listen: None means every interface. An interface name (docker0)
    binds the interface's IPv4 address. Raises InterfaceNotReady for an interface without an
    address yet, or a name that is neither an interface nor a resolvable host (yet)."""
    if addr.host is None:
        return [None] if gateway else ["127.0.0.1"]
    if _is_ip(addr.host):
        return [addr.host]
    if addr.host in {name for _, name in socket.if_nameindex()}:
        ip = interface_ipv4(addr.host)
        if ip is None:
            raise InterfaceNotReady(addr.host)
        return [ip]
    if _resolves(addr.host):
        return [addr.host]  # a host name such as localhost
    raise InterfaceNotReady(addr.host)


FD_RESERVE = 64  # descriptors kept for listeners, logs, PAC fetches, the status endpoint


def clients_for_fd_limit() -> int:
    """The default MaxClients: what the open-files limit holds at two descriptors a client."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(16, (soft - FD_RESERVE) // 2)


def raise_nofile_limit() -> int:
    """Raise the soft open-files limit to the hard one (many tunnels = many sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return hard
    return soft


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about our state; no-op outside systemd."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(message.encode(), path)
    except OSError as exc:
        log.debug("sd_notify failed: %s", exc)


def pending_listeners(config: Config) -> list[ListenAddr]:
    """Listens on interfaces that are not up yet (e.g. docker0 before Docker starts)."""
    pending = []
    for addr in config.listen:
        try:
            resolve_listen(addr, config.gateway)
        except InterfaceNotReady:
            pending.append(addr)
    return pending


def bind_listeners(config: Config) -> list[socket.socket]:
    """Bind and listen on every Listen that can be bound now, before the event loop starts (so
    a daemon can report bind errors before it forks). Interfaces that are not up yet are left to
    Server (see pending_listeners). Raises ConfigError with a one-line reason."""
    bound: list[socket.socket] = []
    try:
        for addr in config.listen:
            try:
                hosts = resolve_listen(addr, config.gateway)
            except InterfaceNotReady:
                continue
            for host in hosts:
                bound.extend(bind_socket(host, addr.port))
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    return bound


def bind_socket(host: str | None, port: int) -> list[socket.socket]:
    """Bind and listen on host:port (every address it resolves to). ConfigError on failure."""
    where = f"{host or '*'}:{port}"
    try:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_ADDRCONFIG
        )
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {where}: {exc.strerror}") from None
    socks: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    for family, _, proto, _, sockaddr in infos:
        if (family, sockaddr) in seen:
            continue
        seen.add((family, sockaddr))
        sock = socket.socket(family, socket.SOCK_STREAM, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            _bind_freely(sock, family, sockaddr)
            sock.listen(BACKLOG)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            for s in socks:
                s.close()
            raise ConfigError(f"cannot listen on {where}: {exc.strerror or exc}") from None
        socks.append(sock)
    return socks


IP_FREEBIND = 15  # Linux; Python 3.11's socket module has no constant for it
IPV6_FREEBIND = 78


def _bind_freely(sock: socket.socket, family: int, sockaddr: Any) -> None:
    """Bind; an address that is not on this host yet (docker0 before Docker has started) is
    bound anyway with IP_FREEBIND, and starts to receive connections once it exists."""
    try:
        sock.bind(sockaddr)
        return
    except OSError as exc:
        if exc.errno != errno.EADDRNOTAVAIL:
            raise
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
    sock.bind(sockaddr)
    log.warning("%s is not on this host yet: bound it anyway (IP_FREEBIND)", sockaddr[0])
