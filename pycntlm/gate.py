"""The lockout gate around sending the password to a parent (the shell side of lockout.py).

Owns: waiting for the AuthGuard's permission, reporting each attempt's verdict once, and the one
error log line when the guard trips. Must not: connect, send or read anything.
"""

from __future__ import annotations

import logging

from pycntlm.config import HostPort
from pycntlm.context import Context
from pycntlm.errors import UpstreamError
from pycntlm.exchange import LockedOut

log = logging.getLogger("pycntlm.session")


async def wait_gate(ctx: Context) -> None:
    """Wait until the lockout guard lets us try a handshake (one at a time until proven)."""
    deadline = ctx.clock() + ctx.config.handshake_timeout * 2
    while not ctx.guard.begin_attempt():
        if ctx.guard.wait_hint() == "locked":
            raise LockedOut(ctx.guard.remaining())
        if ctx.clock() > deadline:
            raise UpstreamError("parent", "timed out waiting for another handshake to finish")
        await ctx.guard_changed.wait()


def _end_attempt(ctx: Context, ok: bool | None, parent: HostPort | None) -> None:
    tripped = ctx.guard.end_attempt(ok)
    ctx.guard_changed.set()
    ctx.guard_changed.clear()
    if tripped:
        _log_lockout(ctx, parent)


def _log_lockout(ctx: Context, parent: HostPort | None) -> None:
    assert ctx.creds is not None
    log.error(
        "parent %s rejected the credentials of %s; not using them again for %.0f s "
        "(this protects the account from lockout). Fix the configuration and send SIGHUP.",
        parent,
        ctx.creds.identity,
        ctx.guard.remaining(),
    )


def _late_rejection(ctx: Context, parent: HostPort | None) -> None:
    """A rejection that came after the gate had already been released (slow answer)."""
    ctx.guard_changed.set()
    ctx.guard_changed.clear()
    if ctx.guard.record_rejection():
        _log_lockout(ctx, parent)


class Attempt:
    """One use of the lockout gate: taken before the first leg that carries the password (NTLM,
    Basic, Auth GSS's ticket), ended once with the verdict. AutoKerberos legs run outside it:
    they risk no password, and their success proves nothing about it."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.parent: HostPort | None = None
        self.held = False
        self.early = False  # ended as accepted before the answer came (see VERDICT_GRACE)

    async def enter(self) -> None:
        if not self.held:
            await wait_gate(self.ctx)
            self.held, self.early = True, False

    def end(self, ok: bool | None) -> None:
        if self.held:
            self.held = False
            _end_attempt(self.ctx, ok, self.parent)
        elif self.early and ok is False:
            self.early = False
            _late_rejection(self.ctx, self.parent)

    def accepted_for_now(self) -> None:
        if self.held:
            self.end(True)
            self.early = True
