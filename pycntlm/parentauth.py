"""Which scheme to authenticate a parent with: NTLM, automatic Kerberos, or per-request Basic.

Owns: what pycntlm has learned about each parent's 407 offer (kept per Context generation, so a
reload forgets it), and the sans-IO choice of a plan for a fresh connection. Must not: do I/O,
log, or hold a secret (the Basic value lives in Credentials, repr=False).

The plans (handshake.py carries them out):
- "gss": `Auth GSS`: Kerberos only, as configured (unchanged meaning).
- "ntlm": the configured NTLM dialect, Type 1 on the first leg, exactly as without this module.
- "basic": the parent's 407 offered only Basic: `Proxy-Authorization: Basic` on every request,
  fresh or pooled, with no handshake leg (Basic authenticates requests, not connections).
- "probe": AutoKerberos may apply (a usable ticket) but the parent's offer is still unknown: the
  first leg goes without credentials so the 407 lists every scheme the parent accepts.
- "kerberos": the parent offered Negotiate and a ticket is usable: one Kerberos leg.

First contact with a Negotiate parent: learn the offer from a credential-less first leg, not
from the 407 to an NTLM Type 1. A parent in the middle of an NTLM handshake (squid, the
demo parent, ISA/TMG) answers a Type 1 with only its `NTLM <Type 2>` challenge, so that 407 says
nothing about Negotiate; a request without Proxy-Authorization gets the full list from every
proxy we know. The probe is sent only when a ticket is usable and only until the offer is known
(once per parent per configuration generation), on the same connection as the leg that
follows it, so it costs one round trip once. A Kerberos refusal marks the parent in negotiate's
memo (NTLM for FAILURE_TTL seconds) and the request restarts with NTLM; it is never counted as a
password rejection. Auto-Kerberos is off with NTLMToBasic: each client must log on as itself,
never with the ticket of the user pycntlm runs as.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pycntlm.config import Config, HostPort

if TYPE_CHECKING:
    from pycntlm.pool import Pool

Plan = Literal["gss", "ntlm", "basic", "probe", "kerberos"]

_MAX_PARENTS = 256  # remembered parents per generation (PAC files can name many)


@dataclass
class ParentAuth:
    """What one parent's 407s told us. `offer`: lower-case scheme names, None until seen."""

    offer: frozenset[str] | None = None

    @property
    def basic_only(self) -> bool:
        return self.offer is not None and "basic" in self.offer and not self.offer & _CONNECTION

    def learn(self, challenges: list[str]) -> None:
        """Remember the schemes of a 407 that lists the parent's offer (not a mid-handshake one)."""
        self.offer = schemes(challenges)


_CONNECTION = frozenset({"ntlm", "negotiate"})  # connection-oriented schemes we can answer


def schemes(challenges: list[str]) -> frozenset[str]:
    """Scheme names in Proxy-Authenticate values, which may hold several comma-separated
    challenges; auth-params (realm="a, b") are skipped, not mistaken for schemes."""
    found: set[str] = set()
    for value in challenges:
        for piece in value.split(","):
            words = piece.split()
            if not words or "=" in words[0] or '"' in words[0]:
                continue
            found.add(words[0].lower())
    return frozenset(found)


def has_ntlm_challenge(challenges: list[str]) -> bool:
    """True when a 407 carries an NTLM challenge token (the handshake goes on)."""
    for value in challenges:
        words = value.split()
        if len(words) >= 2 and words[0].lower() in _CONNECTION:
            return True
    return False


# One table per Context generation: derived Contexts (PAC lists, NTLMToBasic users) share the
# pool and so the table; a reload builds a new pool, so the table is forgotten with it.
_TABLES: weakref.WeakKeyDictionary[Pool, dict[str, ParentAuth]] = weakref.WeakKeyDictionary()


def parent_auth(pool: Pool, parent: HostPort, on_new_generation: Callable[[], None]) -> ParentAuth:
    """The ParentAuth of `parent` in the generation that owns `pool`. `on_new_generation` runs
    when a generation is first seen (start-up, reload), to forget other process-wide memos."""
    table = _TABLES.get(pool)
    if table is None:
        on_new_generation()
        table = _TABLES[pool] = {}
    key = str(parent)
    found = table.get(key)
    if found is None:
        if len(table) >= _MAX_PARENTS:
            table.clear()
        found = table[key] = ParentAuth()
    return found


def auto_kerberos(config: Config) -> bool:
    """Whether AutoKerberos may replace NTLM for this configuration (see the module docstring)."""
    return config.auth != "GSS" and config.auto_kerberos and not config.ntlm_to_basic


def choose(config: Config, known: ParentAuth, kerberos_ready: Callable[[], bool]) -> Plan:
    """The plan for a fresh connection to a parent; `kerberos_ready` is asked only if needed."""
    if config.auth == "GSS":
        return "gss"
    if known.basic_only:
        return "basic"
    negotiable = known.offer is None or "negotiate" in known.offer
    if auto_kerberos(config) and negotiable and kerberos_ready():
        return "probe" if known.offer is None else "kerberos"
    return "ntlm"
