"""Giving memory back to the system after a crowd of connections has gone.

Owns: noticing (from the housekeeping tick) that many connections closed since the peak, and
then collecting garbage and asking glibc to return its free heap pages (malloc_trim). Must not:
run on every tick (a collection walks every object) or fail where glibc is missing.

Why: 10,000 open tunnels grow the heap to ~140 MiB; when they close, CPython and glibc keep the
freed memory for reuse, so without a trim the process stays at ~110 MiB after the crowd left.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
from collections.abc import Callable

log = logging.getLogger("pycntlm")

TRIM_AFTER = 500  # connections closed since the peak before a trim is worth its cost


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS): nothing to trim
        return None
    return trim


class Trimmer:
    """t = Trimmer(); t.observe(open_connections) on every housekeeping tick."""

    def __init__(self, trim: Callable[[int], int] | None = None, after: int = TRIM_AFTER) -> None:
        self._trim = trim if trim is not None else _malloc_trim()
        self._after = after
        self._peak = 0
        self.trims = 0

    def observe(self, active: int) -> bool:
        """Note the number of open connections; trim (and return True) once the crowd is gone:
        at least `after` fewer than the peak, and under a quarter of it."""
        self._peak = max(self._peak, active)
        if self._peak - active < self._after or active * 4 > self._peak:
            return False
        closed, self._peak = self._peak - active, active
        gc.collect()
        if self._trim is not None:
            self._trim(0)
        self.trims += 1
        log.debug("%d connections closed: memory returned to the system", closed)
        return True
