"""Kerberos for parent proxies (cntlm's `Auth GSS`): the one-leg Negotiate handshake and the cheap
"can Kerberos be used for this parent now" check.

Owns: the client token for SPN HTTP@<parent host> from the user's ticket cache (pyspnego forced to
protocol "kerberos", a raw Kerberos GSS token as cntlm sends, never an NTLM fallback), checking the
parent's mutual-authentication token, and a short memo of ticket availability and per-parent
failures. Must not: import asyncio or socket, read or write krb5 configuration, or log or put a
token, key or password in an exception. gssapi may ask the KDC for a service ticket inside
`start()` (blocking, bounded by the krb5 configuration): async callers run it in a thread.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
import re
import time
from collections.abc import Callable

import spnego

from pycntlm.errors import HandshakeError

NOT_INSTALLED = (
    "Kerberos support is not installed "
    "(pip install 'pyspnego[kerberos]', which needs Debian's libkrb5-dev and gcc)"
)
SERVICE = "HTTP"
READY_TTL = 10.0  # seconds a kerberos_ready() answer is reused
FAILURE_TTL = 60.0  # seconds a parent is not offered Kerberos after a failure there
_MEMO_MAX = 64  # entries per memo table before it is cleared
# A GSS initial-context token (0x60, DER length) for the Kerberos 5 mech, OID 1.2.840.113554.1.2.2.
_KRB5_OID = bytes.fromhex("06092a864886f712010202")
_MINOR_RE = re.compile(r"Minor \(\d+\): (.*?)(?:, Context: |$)")
_MAJOR_RE = re.compile(r"Major \(\d+\): (.*?)(?:, Minor \(|, Context: |$)")
_HOST_RE = re.compile(r"[A-Za-z0-9._:-]{1,253}")

Clock = Callable[[], float]


@functools.cache
def kerberos_installed() -> bool:
    """True when pyspnego's kerberos extra (gssapi and krb5) imports."""
    try:
        import gssapi  # noqa: F401
        import krb5  # noqa: F401
    except ImportError:
        return False
    return True


def is_kerberos_token(token: bytes) -> bool:
    """True for a GSS initial-context token of the Kerberos 5 mech (never NTLMSSP or SPNEGO)."""
    if len(token) < 2 or token[0] != 0x60:
        return False
    start = 2 if token[1] < 0x80 else 2 + (token[1] & 0x7F)
    return token[start : start + len(_KRB5_OID)] == _KRB5_OID


def _reason(exc: BaseException) -> str:
    """A short, secret-free reason from a pyspnego/gssapi error (GSS messages carry no tokens)."""
    text = str(exc)
    minor = _MINOR_RE.search(text)
    if minor and minor.group(1).strip() not in ("", "Success", "Unknown error"):
        return minor.group(1).strip()[:160]
    major = _MAJOR_RE.search(text)
    return major.group(1).strip()[:160] if major else type(exc).__name__


def _ticket_lifetime(ccache: str | None) -> int:
    """Seconds left on the initiator credential in `ccache` (or the default cache); 0 if none."""
    import gssapi
    from gssapi.raw.misc import GSSError

    store: dict[bytes | str, bytes | str] | None = {b"ccache": ccache.encode()} if ccache else None
    try:
        creds = gssapi.Credentials(usage="initiate", mechs=[gssapi.MechType.kerberos], store=store)
        lifetime = creds.lifetime
    except (GSSError, NotImplementedError, ValueError):
        return 0
    return int(lifetime or 0)


class KerberosMemo:
    """Brief memory of "is there a usable ticket" (per cache) and "Kerberos failed at this parent"
    (per host), so a per-connection decision costs a dict look-up. `clock` exists for tests."""

    def __init__(
        self,
        clock: Clock = time.monotonic,
        ttl: float = READY_TTL,
        failure_ttl: float = FAILURE_TTL,
        lifetime: Callable[[str | None], int] = _ticket_lifetime,
    ) -> None:
        self._clock = clock
        self._ttl = ttl
        self._failure_ttl = failure_ttl
        self._lifetime = lifetime
        self._tickets: dict[tuple[str, str], tuple[float, bool]] = {}
        self._failed: dict[str, float] = {}

    def ready(self, parent_host: str, ccache: str | None = None) -> bool:
        now = self._clock()
        if self._failed.get(parent_host.lower(), now) > now:
            return False
        key = (ccache or os.environ.get("KRB5CCNAME", ""), os.environ.get("KRB5_CONFIG", ""))
        cached = self._tickets.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        left = self._lifetime(ccache)
        if len(self._tickets) >= _MEMO_MAX:
            self._tickets.clear()
        ok = left > 0  # a good answer lasts no longer than the ticket
        self._tickets[key] = (now + (min(self._ttl, left) if ok else self._ttl), ok)
        return ok

    def failed(self, parent_host: str) -> None:
        """Kerberos did not work at this parent (no token, or a 407 to ours): skip it a while."""
        if len(self._failed) >= _MEMO_MAX:
            self._failed.clear()
        self._failed[parent_host.lower()] = self._clock() + self._failure_ttl

    def forget(self) -> None:
        """Drop everything (after a reload, or a new kinit the caller knows of)."""
        self._tickets.clear()
        self._failed.clear()


MEMO = KerberosMemo()


def kerberos_ready(parent_host: str, *, ccache: str | None = None) -> bool:
    """True when Kerberos can be tried at this parent: the extra is installed, the cache (given,
    else KRB5CCNAME, else the default) holds an unexpired ticket, and Kerberos has not failed at
    this parent in the last FAILURE_TTL seconds. Reads the cache at most every READY_TTL s."""
    return kerberos_installed() and MEMO.ready(parent_host, ccache)


def kerberos_failed(parent_host: str) -> None:
    """Tell the memo that the parent refused our Kerberos token (a 407): NTLM for a while."""
    MEMO.failed(parent_host)


class KerberosHandshake:
    """One Kerberos logon on one upstream connection; one leg, no challenge round trip.

    hs = KerberosHandshake("proxy.corp.example")   # SPN HTTP@proxy.corp.example
    value = hs.start()       # "Negotiate <token>" for Proxy-Authorization of the first request
    hs.finish(challenges)    # every Proxy-Authenticate value of the parent's non-407 answer:
                             # verifies its mutual-authentication token if it sent one
    Errors are HandshakeError with a short reason; start() once, finish() once after it.
    """

    def __init__(self, parent_host: str, *, ccache: str | None = None) -> None:
        if not _HOST_RE.fullmatch(parent_host):
            raise ValueError("parent_host must be a bare host name or address")
        self.parent_host = parent_host
        self.ccache = ccache
        self.mutual_verified = False
        self._ctx: spnego.ContextProxy | None = None
        self._state = "new"

    @property
    def spn(self) -> str:
        return f"{SERVICE}@{self.parent_host}"

    def start(self) -> str:
        if self._state != "new":
            raise RuntimeError("KerberosHandshake.start() called twice")
        self._state = "started"
        if not kerberos_installed():
            raise HandshakeError(NOT_INSTALLED)
        creds = spnego.KerberosCCache(ccache=self.ccache) if self.ccache else None
        try:
            ctx = spnego.client(
                creds,
                hostname=self.parent_host,
                service=SERVICE,
                protocol="kerberos",  # never "negotiate": it would fall back to NTLM silently
                context_req=spnego.ContextReq.mutual_auth,
            )
            token = ctx.step()
        except Exception as exc:  # pyspnego/gssapi/krb5 errors have no common base
            MEMO.failed(self.parent_host)
            raise HandshakeError(f"no Kerberos ticket for {self.spn}: {_reason(exc)}") from None
        if not token or not is_kerberos_token(token):
            MEMO.failed(self.parent_host)
            raise HandshakeError(f"pyspnego did not produce a Kerberos token for {self.spn}")
        self._ctx = ctx
        return f"Negotiate {base64.b64encode(token).decode()}"

    def finish(self, challenges: list[str]) -> None:
        if self._state != "started" or self._ctx is None:
            raise RuntimeError("KerberosHandshake.finish() without a successful start()")
        self._state = "finished"
        token = _negotiate_token(challenges)
        if token is None:  # many parents send no mutual-authentication token: tolerated
            return
        try:
            self._ctx.step(token)
        except Exception as exc:  # a bad mutual token is no reason to prefer NTLM next time
            raise HandshakeError(
                f"the parent's Kerberos reply did not verify: {_reason(exc)}"
            ) from None
        if not self._ctx.complete:
            raise HandshakeError("the parent's Kerberos reply did not complete the logon")
        self.mutual_verified = True


def _negotiate_token(challenges: list[str]) -> bytes | None:
    """The token of the first `Negotiate <base64>` value, or None when there is none."""
    for value in challenges:
        scheme, _, data = value.strip().partition(" ")
        if scheme.lower() != "negotiate" or not data.strip():
            continue
        try:
            return base64.b64decode(data.strip(), validate=True)
        except binascii.Error:
            raise HandshakeError("the parent's Negotiate token is not valid base64") from None
    return None
