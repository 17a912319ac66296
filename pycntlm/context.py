"""The objects every client connection shares, built once from a Config (and again on reload).

Owns: wiring Config -> credentials, failover policy, pool, lockout guard, NoProxy, ACL, counters.
Must not: do I/O (it only holds an asyncio.Event). No globals: a Context is passed down.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pycntlm.acl import Acl
from pycntlm.config import Config
from pycntlm.creds import Credentials
from pycntlm.lockout import AuthGuard
from pycntlm.noproxy import NoProxy
from pycntlm.pool import Pool
from pycntlm.upstreams import Upstreams


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


def build(
    config: Config, creds: Credentials | None, clock: Callable[[], float] = time.monotonic
) -> Context:
    return Context(
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
    )
