"""Account-lockout guard for one credential, sans-IO (clock injected).

Owns: deciding whether a new upstream handshake may send our credentials now, counting the
parent's rejections of them, and backing off so a stale password cannot lock the domain account.
Must not: do I/O, sleep, log, or know anything about NTLM; the shell asks and reports.

Why: a stale password makes cntlm fail one logon per new connection, and a busy client (a
Docker daemon pulling layers) opens dozens of connections a second, so the domain locks the
account within seconds. Here at most `threshold` rejections reach the domain controller per
back-off window, and none before the credential has been proven once.

States and transitions (the shell calls everything from one thread, the event loop):
- unproven (start, after rearm(), after any rejection): begin_attempt() lets ONE attempt run at
  a time; other callers get False and wait_hint() == "busy" - they should wait for the attempt
  in flight to end and ask again. This serialises the first handshake per credential, so a
  wrong password is rejected once, not once per concurrent connection.
- proven (a success since start/rearm and no rejection since): attempts run in parallel. If the
  password changes while several handshakes are in flight, each of those may still be rejected:
  the count is bounded by the number of handshakes in flight at that moment.
- locked (`threshold` consecutive rejections): begin_attempt() is False, wait_hint() "locked",
  remaining() says for how long. After `backoff` seconds the guard is half-open: unproven, so
  exactly one trial attempt at a time; if the trial is rejected the guard re-locks at once for
  another `backoff`; if it succeeds everything resets.
A success always clears the rejection count and any lock. rearm() (SIGHUP, new password)
clears count and lock but leaves the guard unproven. Attempts begun before rearm() and ended
after it are still counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

Hint = Literal["ok", "busy", "locked"]


class AuthGuard:
    """g = AuthGuard(threshold=1, backoff=300.0, clock=time.monotonic)

    if g.begin_attempt(): ... handshake ...; tripped = g.end_attempt(ok)   # ok None: no verdict
    else: g.wait_hint() -> "busy" (wait, then ask again) or "locked" (fail; g.remaining() s left)
    """

    def __init__(
        self,
        threshold: int = 1,
        backoff: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        if backoff < 0:
            raise ValueError("backoff must not be negative")
        self._threshold = threshold
        self._backoff = backoff
        self._clock = clock
        self._rejections = 0
        self._locked_until: float | None = None
        self._proven = False
        self._in_flight = 0
        self.rejections_total = 0
        """Every rejection ever recorded (never reset), for logs and metrics."""

    @property
    def state(self) -> Literal["ok", "locked"]:
        return "locked" if self.remaining() > 0 else "ok"

    @property
    def proven(self) -> bool:
        """True when a success was recorded since start/rearm and no rejection since."""
        return self._proven

    @property
    def in_flight(self) -> int:
        """Attempts begun and not ended yet."""
        return self._in_flight

    @property
    def rejections(self) -> int:
        """Consecutive rejections since the last success or rearm()."""
        return self._rejections

    def remaining(self) -> float:
        """Seconds of back-off left; 0.0 when not locked."""
        if self._locked_until is None:
            return 0.0
        return max(0.0, self._locked_until - self._clock())

    def wait_hint(self) -> Hint:
        """ "locked": refuse for now; "busy": an unproven attempt is in flight, wait; "ok": go."""
        if self.remaining() > 0:
            return "locked"
        if not self._proven and self._in_flight > 0:
            return "busy"
        return "ok"

    def allowed(self) -> bool:
        """Whether begin_attempt() would return True now (does not take the slot)."""
        return self.wait_hint() == "ok"

    def begin_attempt(self) -> bool:
        """True if the caller may send the credentials now; it must then call end_attempt()."""
        if not self.allowed():
            return False
        self._in_flight += 1
        return True

    def end_attempt(self, ok: bool | None) -> bool:
        """Report the verdict of an attempt begun with begin_attempt().

        ok True: accepted; False: rejected; None: aborted without a verdict (network error,
        client gone) - only releases the slot. Returns True when this rejection just tripped
        the lockout (log one error then).
        """
        if self._in_flight == 0:
            raise RuntimeError("end_attempt() without a matching begin_attempt()")
        self._in_flight -= 1
        if ok is None:
            return False
        if ok:
            self.record_success()
            return False
        return self.record_rejection()

    def record_rejection(self) -> bool:
        """Count one rejection of our credentials; True when this call just tripped the lock."""
        self._rejections += 1
        self.rejections_total += 1
        self._proven = False
        if self._rejections < self._threshold or self.remaining() > 0:
            return False
        self._locked_until = self._clock() + self._backoff
        return True

    def record_success(self) -> None:
        """The credentials were accepted: clear the count and any lock; the guard is proven."""
        self._rejections = 0
        self._locked_until = None
        self._proven = True

    def rearm(self) -> None:
        """Manual reset (SIGHUP, configuration change): unlock, clear the count, unproven."""
        self._rejections = 0
        self._locked_until = None
        self._proven = False
