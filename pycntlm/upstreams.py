"""Failover policy over ordered parent proxies, sans-IO (clock injected).

Owns: which parent is current, marking failures, sticky failover, fail-back probing.
Must not: do I/O or sleep.
"""

from __future__ import annotations

from collections.abc import Callable

from pycntlm.config import HostPort


class Upstreams:
    """u = Upstreams(parents, clock=time.monotonic, failback_interval=60.0)
    u.candidates() -> parents to try for a new connection, in order: the current one first,
        then the rest in configured order (wrapping), except that once failback_interval has
        passed since a more-preferred parent failed, that parent is tried first again (probe).
    u.mark_failed(p) -> p failed; if it was current, the next one becomes current (sticky).
    u.mark_ok(p) -> p works; if p is more preferred than current, it becomes current (fail-back).
    u.current -> the current parent.
    """

    def __init__(
        self,
        parents: tuple[HostPort, ...],
        clock: Callable[[], float],
        failback_interval: float = 60.0,
    ) -> None:
        raise NotImplementedError
