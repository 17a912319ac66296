"""The objects every client connection shares, built once from a Config (and again on reload).

Owns: wiring Config -> credentials, failover policy, pool, lockout guard, NoProxy, ACL, counters,
and the TLS client context for https:// parents (ProxyCAFile is read here, once per build).
Must not: do network I/O (it only holds an asyncio.Event). No globals: a Context is passed down.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pycntlm.acl import Acl
from pycntlm.config import Config, HostPort
from pycntlm.creds import Credentials, from_password
from pycntlm.errors import ConfigError
from pycntlm.lockout import AuthGuard
from pycntlm.noproxy import NoProxy
from pycntlm.pool import Pool
from pycntlm.upstreams import Upstreams

if TYPE_CHECKING:
    from pycntlm.pac import PacSource

MAX_PARENT_LISTS = 64  # distinct PAC answers with their own failover state
MAX_BASIC_USERS = 256  # NTLMToBasic identities remembered (least recently used dropped)

log = logging.getLogger("pycntlm")


@dataclass
class Stats:
    """Counters for logs and the status endpoint. Never holds secrets."""

    requests: int = 0
    tunnels_active: int = 0
    clients_active: int = 0
    bytes_to_clients: int = 0
    bytes_from_clients: int = 0
    handshakes: int = 0
    auth_rejections: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    by_route: dict[str, int] = field(default_factory=dict)


@dataclass
class Context:
    config: Config
    creds: Credentials | None  # None when there are no parents (all direct)
    upstreams: Upstreams
    pool: Pool
    guard: AuthGuard
    noproxy: NoProxy
    acl: Acl
    stats: Stats
    clock: Callable[[], float]
    # Set and cleared whenever a handshake attempt ends, to wake requests waiting at the gate.
    guard_changed: asyncio.Event = field(default_factory=asyncio.Event)
    # NTLMToBasic: one derived Context per client user (own credentials, guard and pool keys;
    # shared parents, pool and counters), keyed by a digest of user, domain and password.
    users: OrderedDict[bytes, Context] = field(default_factory=OrderedDict)
    # Pac: the PAC source (refreshed by the server), and one derived Context per list of
    # parents a PAC answer named (own failover state; shared pool, guard and counters).
    pac: PacSource | None = None
    by_parents: OrderedDict[tuple[HostPort, ...], Context] = field(default_factory=OrderedDict)
    # `Proxy https://...`: the TLS client context for parents that speak TLS (None: none do).
    parent_tls: ssl.SSLContext | None = None

    def with_standalone(self) -> Context:
        """The same, serving directly when every parent is down (a PAC list ending in DIRECT)."""
        key = (*self.config.proxies, HostPort("DIRECT", 0))
        found = self.by_parents.get(key)
        if found is None:
            found = dataclasses.replace(
                self, config=dataclasses.replace(self.config, standalone=True)
            )
            self.by_parents[key] = found
        return found

    def with_parents(self, parents: tuple[HostPort, ...]) -> Context:
        """The Context that uses `parents` (in order, with failover) instead of Proxy lines."""
        if parents == self.config.proxies:
            return self
        found = self.by_parents.get(parents)
        if found is not None:
            self.by_parents.move_to_end(parents)
            return found
        derived = dataclasses.replace(
            self,
            config=dataclasses.replace(self.config, proxies=parents),
            upstreams=Upstreams(parents, self.clock, self.config.failback_interval),
            by_parents=OrderedDict(),
        )
        self.by_parents[parents] = derived
        while len(self.by_parents) > MAX_PARENT_LISTS:
            self.by_parents.popitem(last=False)
        return derived

    def for_user(self, username: str, domain: str, password: str) -> Context:
        """The Context that authenticates upstream as this client user (NTLMToBasic).
        Hashing is done once per distinct credential; the plaintext is not kept."""
        key = hashlib.sha256("\0".join((username, domain, password)).encode()).digest()
        found = self.users.get(key)
        if found is not None:
            self.users.move_to_end(key)
            return found
        ws = self.creds.workstation if self.creds is not None else "PYCNTLM"
        derived = dataclasses.replace(
            self,
            creds=from_password(username, domain, ws, password),
            guard=AuthGuard(
                threshold=self.config.auth_failures_before_lockout,
                backoff=self.config.auth_backoff,
                clock=self.clock,
            ),
            guard_changed=asyncio.Event(),
            users=OrderedDict(),
        )
        self.users[key] = derived
        while len(self.users) > MAX_BASIC_USERS:
            self.users.popitem(last=False)
        return derived


def parent_tls_context(config: Config) -> ssl.SSLContext | None:
    """The TLS client context for `Proxy https://` parents (built once per config), or None
    when no parent speaks TLS. PAC answers cannot name one: pacfuncs skips `HTTPS` entries.
    Verification is on (ProxyCAFile's CAs when given, else the system's; the host name is
    checked; TLS 1.2 or newer) unless `ProxyTLSVerify no`, which is warned about loudly.
    Raises ConfigError when ProxyCAFile cannot be read or holds no PEM certificate."""
    if config.proxy_ca_file is None and not any(p.tls for p in config.proxies):
        return None
    # With a cafile, only its CAs are trusted (create_default_context skips the system's).
    tls = _with_cas(config.proxy_ca_file, config.source_path)
    tls.minimum_version = ssl.TLSVersion.TLSv1_2
    tls.set_alpn_protocols(["http/1.1"])  # what we speak to the parent, whatever else it can
    if not config.proxy_tls_verify:
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
        if any(p.tls for p in config.proxies):
            log.warning(
                "ProxyTLSVerify no: the certificates of https:// parents are NOT checked; "
                "anyone on the path can pose as the parent and see all traffic. "
                "Use ProxyCAFile instead."
            )
    return tls


def _with_cas(path: str | None, source: str | None) -> ssl.SSLContext:
    """A verifying client context trusting the CAs in `path` (checked even when no parent uses
    TLS, so a typo shows at once), or the system's when None."""
    try:
        return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=path)
    except ssl.SSLError as exc:
        reason = (exc.reason or "unreadable").lower().replace("_", " ")
        what = "no PEM certificate in it" if "no certificate" in reason else f"bad PEM: {reason}"
        raise ConfigError(f"ProxyCAFile {path}: {what}", source) from None
    except OSError as exc:
        raise ConfigError(f"ProxyCAFile {path}: cannot read: {exc.strerror}", source) from None


def build(
    config: Config, creds: Credentials | None, clock: Callable[[], float] = time.monotonic
) -> Context:
    """Raises ConfigError for what only shows when it is used (ProxyCAFile)."""
    parent_tls = parent_tls_context(config)
    pac = None
    if config.pac:
        from pycntlm.pac import PacSource  # quickjs and aiohttp load only when a PAC is used

        pac = PacSource(config.pac)
    return Context(
        pac=pac,
        config=config,
        creds=creds,
        upstreams=Upstreams(
            config.proxies, clock=clock, failback_interval=config.failback_interval
        ),
        pool=Pool(config.pool_max_idle, config.pool_idle_ttl, clock),
        guard=AuthGuard(
            threshold=config.auth_failures_before_lockout, backoff=config.auth_backoff, clock=clock
        ),
        noproxy=NoProxy(config.noproxy),
        acl=Acl(config.acl),
        stats=Stats(),
        clock=clock,
        parent_tls=parent_tls,
    )
