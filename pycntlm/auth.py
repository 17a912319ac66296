"""The per-connection proxy authentication handshake (NTLM dialects), sans-IO.

Owns: choosing the NTLM challenge among Proxy-Authenticate values, parsing the Type 2, computing
the responses for cntlm's Auth dialects and building Type 1 / Type 3 messages. With creds.py the
only module that imports pyspnego: its private `spnego._ntlm_raw` modules (pinned
pyspnego==0.12.4 in pyproject; tested against the MS-NLMP 4.2 vectors and pyspnego's acceptor),
because its public API cannot take an NTOWFv2 and picks dialects through process-wide env vars.
Must not: do I/O, log anything, or put a secret or message blob in an exception.

Dialects (as cntlm, with two deliberate fixes marked *):
  NTLMv2   LMv2 + NTLMv2 responses; the blob carries the parent's target info verbatim and its
           MsvAvTimestamp when present (else our clock). A Type 2 without target info (squid's
           ntlm_fake_auth) gets a blob with an empty AV list, as cntlm sends.
  NTLM2SR  NTLMv1 with extended session security (the "NTLM2 session response").
  NTLM     NTLMv1 NT response + LM response from the LM hash (a copy of the NT response when no
           LM hash is configured, as Windows does).
  NT       * the real NTLMv1 NT response (cntlm sends all zeroes, which verifiers reject); LM = NT.
  LM       LM response only.
The domain is always sent upper-cased: * the NTLMv2 key is made with upper(domain) (see creds.py),
so a standard verifier, which keys on the domain as sent, computes the same key. The workstation
is sent upper-cased too (a NetBIOS name), in the Type 1 and the Type 3, as cntlm 0.92.3 does.

Flags / -F (cntlm: "Modify NTLM authentication flags. For experts only"): the given word is sent
verbatim as the Type 1 flags, whatever the Auth dialect, even when it makes no sense for it (no
NTLM flag, ESS with Auth NT...); flag_problems() names such mismatches for the caller to log. When
it has the OEM domain/workstation-supplied bits, the Type 1 carries those names (as cntlm's does).
The Type 3 flags are then computed from it instead of from the dialect's defaults (see
authenticate_flags). The responses are always the Auth dialect's. Not used for Kerberos.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from spnego._ntlm_raw.crypto import desl as _spnego_desl  # pinned: pyspnego==0.12.4
from spnego._ntlm_raw.crypto import hmac_md5, md5
from spnego._ntlm_raw.messages import Authenticate, Negotiate, NegotiateFlags

try:  # OpenSSL's DES through cryptography (a pyspnego dependency): ~30x faster than pure Python
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    from cryptography.hazmat.primitives.ciphers import Cipher, modes
except ImportError:  # pragma: no cover - older cryptography: pyspnego's own DES
    TripleDES = None  # type: ignore[assignment,misc]

from pycntlm.creds import Credentials, missing_for
from pycntlm.errors import HandshakeError

DIALECTS = ("NTLMv2", "NTLM2SR", "NTLM", "NT", "LM")

Rng = Callable[[int], bytes]  # n -> n random bytes
Clock = Callable[[], float]  # seconds since the Unix epoch

_SIGNATURE = b"NTLMSSP\x00"
_TYPE2_MIN = 32  # signature, type, target name buffer, flags, server challenge
_TYPE2_FULL = 48  # ... + reserved + target info buffer
_AV_EOL, _AV_TIMESTAMP = 0, 7
_EPOCH_AS_FILETIME = 116_444_736_000_000_000  # 1970-01-01 in 100 ns units since 1601-01-01
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,19}")

_F = NegotiateFlags
_BASE_FLAGS = (
    _F.unicode | _F.oem | _F.request_target | _F.ntlm | _F.always_sign | _F.key_128 | _F.key_56
)
_ESS_DIALECTS = ("NTLMv2", "NTLM2SR")


@dataclass(frozen=True)
class Type2:
    """What we use of a CHALLENGE_MESSAGE. `target_info` is the raw AV pair list (b"" if none)."""

    flags: int
    server_challenge: bytes
    target_info: bytes = field(repr=False)
    timestamp: int | None  # MsvAvTimestamp as a FILETIME, when the parent sent one


@dataclass(frozen=True)
class Responses:
    """The LmChallengeResponse and NtChallengeResponse of a Type 3 (b"" = field left empty)."""

    lm: bytes = field(repr=False)
    nt: bytes = field(repr=False)


def negotiate_flags(dialect: str) -> int:
    """The NEGOTIATE flags we send in the Type 1 for `dialect`."""
    flags = int(_BASE_FLAGS)
    if dialect in _ESS_DIALECTS:
        flags |= _F.extended_session_security
    return flags


# cntlm 0.92.3's own Type 1 flags per dialect (ntlm_request), for reference and tests:
# NTLMv2 0xa208b205, NTLM2SR 0xa208b207, NTLM 0xb207, NT 0xb205, LM 0xb206.
CNTLM_FLAGS = {
    "NTLMv2": 0xA208B205,
    "NTLM2SR": 0xA208B207,
    "NTLM": 0xB207,
    "NT": 0xB205,
    "LM": 0xB206,
}


def flag_names(flags: int) -> str:
    """The NEGOTIATE flag word spelled out: "0xa208b205 (unicode, request_target, ...)"."""
    names = [f.name or hex(f.value) for f in reversed(_F) if flags & f.value]
    return f"0x{flags:08x} ({', '.join(names) or 'none'})"


def flag_problems(flags: int, dialect: str) -> list[str]:
    """What in a Flags word does not fit the Auth dialect (sent anyway: experts only)."""
    problems: list[str] = []
    if not flags & _F.ntlm:
        problems.append("no NTLM flag (0x200): a parent may refuse the handshake")
    if not flags & (_F.unicode | _F.oem):
        problems.append("neither Unicode (0x1) nor OEM (0x2): no text encoding offered")
    ess = bool(flags & _F.extended_session_security)
    if dialect == "NTLM2SR" and not ess:
        problems.append("no extended session security (0x80000), which Auth NTLM2SR needs")
    if dialect in ("NTLM", "NT", "LM") and ess:
        problems.append(
            f"extended session security (0x80000) with Auth {dialect}: a parent that grants it "
            "expects an NTLM2SR response"
        )
    return problems


def _split_challenges(values: list[str]) -> list[tuple[str, str]]:
    """(scheme, rest) for each challenge, also when several share one header value (commas
    inside quoted strings, with backslash escapes, do not split)."""
    out: list[tuple[str, str]] = []
    for value in values:
        piece: list[str] = []
        quoted = escaped = False
        for ch in value + ",":
            if escaped:
                escaped = False
            elif quoted and ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = not quoted
            elif ch == "," and not quoted:
                words = "".join(piece).split(None, 1)
                if words:
                    out.append((words[0], words[1].strip() if len(words) > 1 else ""))
                piece = []
                continue
            piece.append(ch)
    return out


def offers_ntlm(challenges: list[str]) -> bool:
    """True when any Proxy-Authenticate value offers NTLM (bare "NTLM", any case)."""
    return any(scheme.lower() == "ntlm" for scheme, _ in _split_challenges(challenges))


def _challenge_token(challenges: list[str]) -> bytes:
    """The decoded Type 2 of the first NTLM challenge that carries one."""
    parsed = _split_challenges(challenges)
    tokens = [rest for scheme, rest in parsed if scheme.lower() == "ntlm"]
    token = next((t for t in tokens if t), None)
    if token is None:
        if tokens:
            raise HandshakeError("the parent sent a bare NTLM challenge without a Type 2 message")
        offered = [s if _SCHEME_RE.fullmatch(s) else "?" for s, _ in parsed[:5]]
        raise HandshakeError(f"no NTLM challenge (offered: {', '.join(offered) or 'nothing'})")
    try:
        return base64.b64decode(token + "=" * (-len(token) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise HandshakeError("the NTLM challenge is not valid base64") from None


_NEGOTIATE_TARGET_INFO = 0x00800000


def _buffer(raw: bytes, at: int) -> bytes:
    """The payload a security buffer (len, maxlen, offset) at `at` points to, bounds-checked."""
    length, _, offset = struct.unpack_from("<HHI", raw, at)
    if length and offset + length > len(raw):
        raise HandshakeError("the NTLM Type 2 message is truncated")
    return raw[offset : offset + length] if length else b""


def _timestamp(target_info: bytes) -> int | None:
    """MsvAvTimestamp from an AV pair list; HandshakeError if a pair overruns the list."""
    pos, found = 0, None
    while pos + 4 <= len(target_info):
        av_id, length = struct.unpack_from("<HH", target_info, pos)
        if pos + 4 + length > len(target_info):
            raise HandshakeError("the NTLM Type 2 target info is malformed")
        if av_id == _AV_EOL:
            break
        if av_id == _AV_TIMESTAMP and length == 8:
            (found,) = struct.unpack_from("<Q", target_info, pos + 4)
        pos += 4 + length
    return found


def parse_type2(raw: bytes) -> Type2:
    """Parse a CHALLENGE_MESSAGE (MS-NLMP 2.2.1.2). Raises only HandshakeError.

    Own parser: pyspnego's Challenge does not bounds-check its security buffers (a truncated
    message silently yields short target info)."""
    if len(raw) < _TYPE2_MIN or raw[:8] != _SIGNATURE:
        raise HandshakeError("the NTLM challenge is not an NTLM message")
    if struct.unpack_from("<I", raw, 8)[0] != 2:
        raise HandshakeError("the NTLM challenge is not a Type 2 message")
    # The target name is not used, and not checked: squid's ntlm_fake_auth sends a garbage
    # offset for it, and cntlm ignores it too.
    (flags,) = struct.unpack_from("<I", raw, 20)
    target_info = b""
    if flags & _NEGOTIATE_TARGET_INFO:
        if len(raw) < _TYPE2_FULL:
            raise HandshakeError("the NTLM Type 2 message is truncated")
        target_info = _buffer(raw, 40)
    return Type2(flags, raw[24:32], target_info, _timestamp(target_info))


def _v2_responses(key: bytes, t2: Type2, client: bytes, filetime: int) -> Responses:
    stamp = t2.timestamp if t2.timestamp is not None else filetime
    av_pairs = t2.target_info or b"\x00\x00\x00\x00"  # at least MsvAvEOL
    blob = b"\x01\x01" + bytes(6) + struct.pack("<Q", stamp) + client + bytes(4) + av_pairs
    blob += bytes(4)
    proof = hmac_md5(key, t2.server_challenge + blob)
    return Responses(lm=hmac_md5(key, t2.server_challenge + client) + client, nt=proof + blob)


def _des_key(k7: bytes) -> bytes:
    """A 7-byte DES key spread over 8 bytes (7 key bits each; the parity bit is ignored)."""
    n = int.from_bytes(k7, "big")
    return bytes(((n >> (49 - 7 * i)) & 0x7F) << 1 for i in range(8))


def desl(k: bytes, d: bytes) -> bytes:
    """DESL (MS-NLMP 6): three DES encryptions of `d` under the 16-byte key `k` split in 7s.
    Uses OpenSSL when available (a handshake from an NT hash drops from ~2.3 ms to ~0.1 ms);
    equal to pyspnego's pure-Python DESL (tested)."""
    if TripleDES is None:
        return _spnego_desl(k, d)
    key = k + bytes(21 - len(k))
    out = b""
    for i in range(3):
        k8 = _des_key(key[7 * i : 7 * i + 7])
        enc = Cipher(TripleDES(k8 * 3), modes.ECB()).encryptor()  # EDE, one key: single DES
        out += enc.update(d) + enc.finalize()
    return out


def compute_responses(
    creds: Credentials, dialect: str, t2: Type2, client_challenge: bytes, filetime: int
) -> Responses:
    """The pure core: LM/NT responses for `dialect`, given the 8-byte client challenge and the
    FILETIME to use when the Type 2 carries no MsvAvTimestamp. ValueError if creds lack the hash."""
    problem = missing_for(creds, dialect)
    if problem is not None or len(client_challenge) != 8:
        raise ValueError(problem or "the client challenge must be 8 bytes")
    sc = t2.server_challenge
    if dialect == "NTLMv2":
        return _v2_responses(_have(creds.ntlmv2_hash), t2, client_challenge, filetime)
    if dialect == "LM":
        return Responses(lm=desl(_have(creds.lm_hash), sc), nt=b"")
    nt_hash = _have(creds.nt_hash)
    if dialect == "NTLM2SR":
        nt = desl(nt_hash, md5(sc + client_challenge)[:8])
        return Responses(lm=client_challenge + bytes(16), nt=nt)
    nt = desl(nt_hash, sc)
    if dialect == "NTLM" and creds.lm_hash is not None:
        return Responses(lm=desl(creds.lm_hash, sc), nt=nt)
    return Responses(lm=nt, nt=nt)  # NT, or NTLM without an LM hash


def _have(value: bytes | None) -> bytes:
    if value is None:  # missing_for() has ruled this out
        raise ValueError("a required hash is missing")
    return value


def authenticate_flags(dialect: str, challenge_flags: int, offered: int | None = None) -> int:
    """Type 3 flags: what both sides offered (`offered`: the Type 1 flags, by default the
    dialect's), one text encoding, and ESS exactly when the dialect's responses use it (a
    verifier reads the NTLMv1 flavour from these flags, so a Flags word cannot change it)."""
    flags = challenge_flags & (negotiate_flags(dialect) if offered is None else offered)
    flags &= ~(_F.unicode | _F.oem | _F.extended_session_security)
    flags |= _F.unicode if challenge_flags & _F.unicode else _F.oem
    if dialect in _ESS_DIALECTS:
        flags |= _F.extended_session_security
    return flags


def build_type3(
    creds: Credentials,
    dialect: str,
    t2: Type2,
    responses: Responses,
    offered: int | None = None,
) -> bytes:
    """An AUTHENTICATE_MESSAGE (no MIC, no session key, no version: cntlm sends none either).
    `offered`: the Type 1 flags when they were not the dialect's (Flags)."""
    try:
        message = Authenticate(
            authenticate_flags(dialect, t2.flags, offered),
            responses.lm,
            responses.nt,
            domain_name=creds.domain.upper() or None,
            username=creds.username or None,
            # upper-cased where a message is built (as in build_type1), so Credentials keep the
            # name as configured; no response depends on it (the spec vectors stay as they are)
            workstation=creds.workstation.upper() or None,
        )
        packed: bytes = message.pack()
    except UnicodeEncodeError:
        raise HandshakeError(
            "the parent does not accept Unicode and a user, domain or workstation name "
            "has characters outside windows-1252"
        ) from None
    except Exception:  # pyspnego's private builder, e.g. struct.error for a >64 KiB field
        raise HandshakeError("cannot build an NTLM Type 3 for this challenge") from None
    return packed


def build_type1(creds: Credentials, flags: int) -> bytes:
    """A NEGOTIATE_MESSAGE with exactly `flags`. The OEM domain / workstation names go in only
    when those bits are set (only a Flags word sets them) and the names fit the OEM code page."""
    domain = creds.domain.upper() if flags & _F.oem_domain_name_supplied else ""
    workstation = creds.workstation.upper() if flags & _F.oem_workstation_supplied else ""
    try:
        packed: bytes = Negotiate(flags, domain or None, workstation or None).pack()
    except UnicodeEncodeError:
        packed = Negotiate(flags).pack()
    # pyspnego sets the supplied bits itself when it adds a name; the word must stay as given
    return packed[:12] + struct.pack("<I", flags) + packed[16:]


def _now_filetime(clock: Clock) -> int:
    return _EPOCH_AS_FILETIME + int(clock() * 10_000_000)


class NtlmHandshake:
    """One handshake on one upstream connection.

    hs = NtlmHandshake(creds, "NTLMv2", flags)   # flags: Config.flags (Flags / -F), or None
    value = hs.start()                 # -> "NTLM TlRMTVNT..." for Proxy-Authorization
    value = hs.respond(challenges)     # challenges: every Proxy-Authenticate value of the 407
                                       # -> "NTLM <type3>"; raises HandshakeError if no usable
                                       # NTLM challenge (missing, bare "NTLM", bad base64,
                                       # truncated Type 2)

    `rng` and `clock` exist for tests; production uses os.urandom (the OS CSPRNG) and time.time.
    start() once, then respond() once; anything else is a RuntimeError (a bug in the caller).
    """

    def __init__(
        self,
        creds: Credentials,
        dialect: str = "NTLMv2",
        flags: int | None = None,
        *,
        rng: Rng = os.urandom,
        clock: Clock = time.time,
    ) -> None:
        if dialect not in DIALECTS:
            raise ValueError(f"unknown NTLM dialect {dialect!r}")
        problem = missing_for(creds, dialect)
        if problem is not None:
            raise ValueError(problem)
        self._creds = creds
        self._dialect = dialect
        self._flags = flags
        self._rng = rng
        self._clock = clock
        self._state = "new"

    @property
    def dialect(self) -> str:
        return self._dialect

    @property
    def type1_flags(self) -> int:
        """The NEGOTIATE flags start() sends: the Flags word when one was given."""
        return negotiate_flags(self._dialect) if self._flags is None else self._flags

    def start(self) -> str:
        if self._state != "new":
            raise RuntimeError("NtlmHandshake.start() called twice")
        self._state = "started"
        if self._flags is None:
            type1 = Negotiate(negotiate_flags(self._dialect)).pack()
        else:
            type1 = build_type1(self._creds, self._flags)
        return "NTLM " + base64.b64encode(type1).decode("ascii")

    def respond(self, challenges: list[str]) -> str:
        if self._state != "started":
            raise RuntimeError("NtlmHandshake.respond() needs start() first and runs once")
        self._state = "done"
        t2 = parse_type2(_challenge_token(challenges))
        client = self._rng(8)
        responses = compute_responses(
            self._creds, self._dialect, t2, client, _now_filetime(self._clock)
        )
        type3 = build_type3(self._creds, self._dialect, t2, responses, self._flags)
        return "NTLM " + base64.b64encode(type3).decode("ascii")
