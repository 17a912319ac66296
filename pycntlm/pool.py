"""Idle authenticated upstream connections, ready for reuse.

Owns: bookkeeping of idle connections per key (parent + identity, or a direct target):
reuse most-recent first, expiry, a cap per key, and the state of the spare-making tasks
(spares.py makes the spares; this only tracks them, so clear() can stop them).
Must not: connect, authenticate or log secrets.
A key never mixes identities: an authenticated NTLM connection is bound to one user.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from pycntlm.net import Conn

PoolKey = tuple[str, str]  # ("parent host:port" or "direct host:port", identity)


@dataclass
class _Idle:
    conn: Conn
    since: float


class Pool:
    def __init__(self, max_idle: int, idle_ttl: float, clock: Callable[[], float]) -> None:
        self.max_idle = max_idle
        self.idle_ttl = idle_ttl
        self._clock = clock
        self._idle: dict[PoolKey, deque[_Idle]] = {}
        self.reused = 0
        self.expired = 0
        # Spares (spares.py): keys being topped up, their tasks, parents not to try until a
        # time (clock()), and counters.
        self.filling: set[PoolKey] = set()
        self.spare_tasks: set[asyncio.Task[None]] = set()
        self.spares_resting: dict[str, float] = {}
        self.spares_made = 0
        self.spares_used = 0

    def get(self, key: PoolKey) -> Conn | None:
        """The most recently returned usable connection for `key`, or None."""
        entries = self._idle.get(key)
        now = self._clock()
        while entries:
            item = entries.pop()
            if now - item.since <= self.idle_ttl and item.conn.is_reusable():
                self.reused += 1
                if item.conn.spare:
                    item.conn.spare = False
                    self.spares_used += 1
                return item.conn
            self.expired += 1
            item.conn.close()
        return None

    def put(self, key: PoolKey, conn: Conn) -> None:
        """Return a connection after a complete exchange; closed or over-cap ones are dropped."""
        if not conn.is_reusable() or self.max_idle <= 0:
            conn.close()
            return
        entries = self._idle.setdefault(key, deque())
        entries.append(_Idle(conn, self._clock()))
        while len(entries) > self.max_idle:
            entries.popleft().conn.close()

    def prune(self) -> None:
        """Close expired or dead idle connections (called periodically)."""
        now = self._clock()
        for key in list(self._idle):
            entries = self._idle[key]
            keep = deque(
                e for e in entries if now - e.since <= self.idle_ttl and e.conn.is_reusable()
            )
            for e in entries:
                if e not in keep:
                    self.expired += 1
                    e.conn.close()
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]

    def idle_count(self, key: PoolKey | None = None) -> int:
        if key is not None:
            return len(self._idle.get(key, ()))
        return sum(len(v) for v in self._idle.values())

    def idle_count_for(self, where: str) -> int:
        """Idle connections to one parent ("host:port"), whatever their identity."""
        return sum(len(v) for k, v in self._idle.items() if k[0] == where)

    def clear(self) -> None:
        """Close every idle connection and stop making spares (reload, shutdown)."""
        for task in self.spare_tasks:
            task.cancel()
        for entries in self._idle.values():
            for e in entries:
                e.conn.close()
        self._idle.clear()
