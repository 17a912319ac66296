"""Failover policy over ordered parent proxies, sans-IO (clock injected).

Owns: which parent is current, marking failures, sticky failover, fail-back probing, health
numbers for logs and metrics.
Must not: do I/O or sleep; it only answers "in which order should a new connection try parents".
"""

from __future__ import annotations

from collections.abc import Callable

from pycntlm.config import HostPort


class Upstreams:
    """u = Upstreams(parents, clock=time.monotonic, failback_interval=60.0)

    u.candidates() -> every parent once, in the order a new connection should try them:
        1. probes: failed parents more preferred than current whose retry time has come
           (failback_interval after their last failure), in configured order;
        2. the current parent, then the others in configured order wrapping round, skipping
           parents that failed and are not due for a retry;
        3. the failed, not-yet-due parents, in configured order (so when every parent is down
           the caller still gets them all, in preferred order, and can name them in a 502).
        A probe is handed out once per interval: returning a due parent pushes its retry time
        back by failback_interval, so a burst of new connections does not all wait on the same
        dead parent. The caller reports the verdict with mark_ok / mark_failed.
    u.mark_failed(p) -> p failed; if it was current, the next healthy one (wrapping) becomes
        current and stays current (sticky) even after p works again, until a probe of a more
        preferred parent succeeds. If no other parent is healthy, current does not move.
    u.mark_ok(p) -> p works; if p is more preferred than current, or current is down, p becomes
        current (fail-back).
    u.current -> the current parent.
    Parents listed twice are kept once (first position). An empty list raises ValueError.
    """

    def __init__(
        self,
        parents: tuple[HostPort, ...],
        clock: Callable[[], float],
        failback_interval: float = 60.0,
    ) -> None:
        # No parents at all is valid: pycntlm then serves every request directly.
        self._parents: tuple[HostPort, ...] = tuple(dict.fromkeys(parents))
        if failback_interval < 0:
            raise ValueError("failback_interval must not be negative")
        self._rank = {parent: rank for rank, parent in enumerate(self._parents)}
        self._clock = clock
        self._interval = failback_interval
        self._current = 0
        self._failed_at: dict[HostPort, float] = {}
        self._retry_at: dict[HostPort, float] = {}
        self.failovers = 0
        """How often current moved away from a failed parent (or off a dead one onto a live one)."""
        self.failbacks = 0
        """How often current moved back to a more preferred parent that worked again."""

    @property
    def parents(self) -> tuple[HostPort, ...]:
        return self._parents

    @property
    def current(self) -> HostPort | None:
        """The parent new connections go to; None when there are no parents."""
        return self._parents[self._current] if self._parents else None

    def _index(self, parent: HostPort) -> int:
        try:
            return self._rank[parent]
        except KeyError:
            raise ValueError(f"unknown parent {parent}") from None

    def _is_down(self, parent: HostPort) -> bool:
        return parent in self._failed_at

    def _is_due(self, parent: HostPort, now: float) -> bool:
        return parent in self._retry_at and now >= self._retry_at[parent]

    def candidates(self) -> list[HostPort]:
        """Parents to try for a new connection, best first; each exactly once."""
        now = self._clock()
        count = len(self._parents)
        rotation = [self._parents[(self._current + i) % count] for i in range(count)]
        probes = [p for p in self._parents[: self._current] if self._is_due(p, now)]
        usable = [p for p in rotation if p not in probes and self._usable(p, now)]
        waiting = [p for p in self._parents if p not in probes and p not in usable]
        for parent in probes + usable:
            if self._is_down(parent):
                self._retry_at[parent] = now + self._interval
        return probes + usable + waiting

    def _usable(self, parent: HostPort, now: float) -> bool:
        return not self._is_down(parent) or self._is_due(parent, now)

    def mark_failed(self, parent: HostPort) -> None:
        """`parent` could not be used (connect error, timeout, parent-side failure)."""
        index = self._index(parent)
        now = self._clock()
        self._failed_at[parent] = now
        self._retry_at[parent] = now + self._interval
        if index != self._current:
            return
        count = len(self._parents)
        for step in range(1, count):
            candidate = (index + step) % count
            if not self._is_down(self._parents[candidate]):
                self._current = candidate
                self.failovers += 1
                return

    def mark_ok(self, parent: HostPort) -> None:
        """`parent` worked for a connection; it may become current again (fail-back)."""
        index = self._index(parent)
        self._failed_at.pop(parent, None)
        self._retry_at.pop(parent, None)
        if index < self._current:
            self.failbacks += 1
            self._current = index
        elif index != self._current and self._is_down(self._parents[self._current]):
            self.failovers += 1
            self._current = index

    def health(self) -> list[tuple[HostPort, bool, float | None]]:
        """(parent, up, seconds since its last failure or None), in configured order."""
        now = self._clock()
        result: list[tuple[HostPort, bool, float | None]] = []
        for parent in self._parents:
            failed_at = self._failed_at.get(parent)
            since = None if failed_at is None else now - failed_at
            result.append((parent, failed_at is None, since))
        return result
