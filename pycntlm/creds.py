"""Credentials: the user's identity and hashes; the plaintext only as a ready Basic header.

Owns: Password / PassNT / PassLM / PassNTLMv2 -> real hashes (cntlm's inverted hex form undone),
which hashes each Auth dialect needs, the `-H` output.
Must not: log, print or repr a secret, or put one (or any part of one) in an exception message.

Hashes (MS-NLMP 3.3.1 / 3.3.2):
- LMOWFv1: DES("KGS!@#$%") under the upper-cased password, first 14 bytes, NUL-padded.
- NTOWFv1: MD4(UTF-16LE(password)).
- NTOWFv2: HMAC_MD5(NTOWFv1, UTF-16LE(upper(user) + upper(domain))). The standard upper-cases only
  the user; cntlm upper-cases the domain as well and sends the domain upper-cased in its Type 3,
  which makes the two agree. We do the same (auth.py sends upper(domain)), so PassNTLMv2 values
  printed by cntlm stay valid.
cntlm writes every hash with each byte inverted (XOR 0xFF); we print and read that form.

Basic parents (parentauth.py) need the plaintext on every request, so a plaintext password is also
kept as the `Proxy-Authorization: Basic` value (repr=False): base64 of UTF-8 "DOMAIN\\user:password"
when Domain is set (what Windows-backed proxies expect for a domain account), else "user:password".
Hash-only credentials have none: a Basic-only parent then gets a clear 502.

Non-ASCII passwords: cntlm widens each UTF-8 *byte* to one UTF-16 unit, which no Windows verifier
reproduces. We hash the real UTF-16LE string (what Windows does), so for non-ASCII passwords our
PassNT / PassNTLMv2 differ from cntlm's -H output on purpose. LMOWFv1 of non-ASCII text is not
well defined (Windows uses the OEM code page); we use UTF-8 of str.upper(), as pyspnego does.

We do not call pyspnego's lmowfv1/ntowfv1: they treat a password shaped like "LMHEX:NTHEX" as a
pair of hashes, which would silently break a user whose password has that shape.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field

from spnego._ntlm_raw.crypto import des, hmac_md5  # pinned: pyspnego==0.12.4
from spnego._ntlm_raw.md4 import md4

from pycntlm.config import Config
from pycntlm.errors import ConfigError

HASH_LEN = 16
_LM_MAGIC = b"KGS!@#$%"

# Which hashes each Auth dialect can use; the first one present wins (see auth.py).
_NEEDS: dict[str, tuple[str, ...]] = {
    "NTLMv2": ("ntlmv2_hash",),  # from_config derives it from nt_hash when only PassNT is given
    "NTLM2SR": ("nt_hash",),
    "NTLM": ("nt_hash",),
    "NT": ("nt_hash",),
    "LM": ("lm_hash",),
}


@dataclass(frozen=True)
class Credentials:
    """Hashes are the standard ones (LMOWFv1, NTOWFv1, NTOWFv2 over upper(user)+upper(domain)).
    Any may be None when not configured; at least one is set."""

    username: str
    domain: str
    workstation: str
    nt_hash: bytes | None = field(default=None, repr=False)
    lm_hash: bytes | None = field(default=None, repr=False)
    ntlmv2_hash: bytes | None = field(default=None, repr=False)
    kerberos: bool = False  # Auth GSS: the ticket cache authenticates; no hash is needed
    # "Basic <base64>" for parents that only offer Basic; None without a plaintext password
    basic: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        hashes = (self.nt_hash, self.lm_hash, self.ntlmv2_hash)
        if all(h is None for h in hashes) and not self.kerberos:
            raise ValueError("Credentials need at least one hash")
        if any(h is not None and len(h) != HASH_LEN for h in hashes):
            raise ValueError(f"every hash must be {HASH_LEN} bytes")

    @property
    def identity(self) -> str:
        """A non-secret key for pooling: connections are never shared across identities."""
        return f"{self.domain}\\{self.username}"


def lmowfv1(password: str) -> bytes:
    """LMOWFv1 (MS-NLMP 3.3.1): passwords longer than 14 bytes are truncated, as everywhere."""
    key = password.upper().encode("utf-8", errors="surrogatepass").ljust(14, b"\x00")[:14]
    return des(key[:7], _LM_MAGIC) + des(key[7:], _LM_MAGIC)


def ntowfv1(password: str) -> bytes:
    """NTOWFv1 (MS-NLMP 3.3.1): MD4 of the UTF-16LE password."""
    return md4(password.encode("utf-16-le", errors="surrogatepass"))


def ntowfv2_cntlm(nt_hash: bytes, username: str, domain: str) -> bytes:
    """NTOWFv2 keyed like cntlm: upper-cased user AND upper-cased domain (see module docstring)."""
    return hmac_md5(nt_hash, (username.upper() + domain.upper()).encode("utf-16-le"))


def basic_value(username: str, domain: str, password: str) -> str:
    """The `Proxy-Authorization` value for a Basic parent (see the module docstring)."""
    login = f"{domain}\\{username}" if domain else username
    token = base64.b64encode(f"{login}:{password}".encode("utf-8", errors="surrogatepass"))
    return f"Basic {token.decode('ascii')}"


def from_password(username: str, domain: str, workstation: str, password: str) -> Credentials:
    """All three hashes from a plaintext password, which is kept only as the Basic value."""
    nt = ntowfv1(password)
    return Credentials(
        username=username,
        domain=domain,
        workstation=workstation,
        nt_hash=nt,
        lm_hash=lmowfv1(password),
        ntlmv2_hash=ntowfv2_cntlm(nt, username, domain),
        basic=basic_value(username, domain, password),
    )


def missing_for(creds: Credentials, auth: str) -> str | None:
    """None when `creds` can answer an `auth` challenge, else what is missing (no secrets)."""
    needs = _NEEDS.get(auth)
    if needs is None:
        return f"unknown Auth {auth!r} (expected one of {', '.join(_NEEDS)})"
    if any(getattr(creds, name) is not None for name in needs):
        return None
    wanted = {"ntlmv2_hash": "PassNTLMv2 or PassNT", "nt_hash": "PassNT", "lm_hash": "PassLM"}
    return f"Auth {auth} needs Password or {wanted[needs[0]]}"


def _inverted_hex(value: str, keyword: str, path: str | None) -> bytes:
    """cntlm's Pass* form (32 hex digits, every byte XOR 0xFF) -> the real hash."""
    text = value.strip()
    if len(text) != 2 * HASH_LEN or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise ConfigError(f"{keyword} must be {2 * HASH_LEN} hexadecimal digits", path)
    return bytes(b ^ 0xFF for b in bytes.fromhex(text))


def from_config(config: Config, hostname: str) -> Credentials:
    """Build Credentials from a Config (plaintext password beats Pass*; hashes computed here).
    `hostname` is the default workstation. Raises ConfigError if credentials are missing or a
    hash is malformed, or if config.auth needs a hash that is not available.

    An empty Password counts as absent (cntlm then prompts; our CLI does that with -I).
    With only PassNT, the NTLMv2 key is derived from it (as cntlm does)."""
    path = config.source_path
    workstation = config.workstation or hostname
    if config.auth == "GSS":  # Kerberos: the ticket cache (KRB5CCNAME) is the credential
        user = config.username or os.environ.get("KRB5CCNAME", "default ticket cache")
        return Credentials(user, config.domain, workstation, kerberos=True)
    if not config.username:
        raise ConfigError("Username is not set", path)
    if config.password:
        creds = from_password(config.username, config.domain, workstation, config.password)
    else:
        nt = lm = v2 = None
        if config.pass_nt:
            nt = _inverted_hex(config.pass_nt, "PassNT", path)
        if config.pass_lm:
            lm = _inverted_hex(config.pass_lm, "PassLM", path)
        if config.pass_ntlmv2:
            v2 = _inverted_hex(config.pass_ntlmv2, "PassNTLMv2", path)
        elif nt is not None:
            v2 = ntowfv2_cntlm(nt, config.username, config.domain)
        if nt is None and lm is None and v2 is None:
            raise ConfigError("no credentials: set Password, PassNTLMv2, PassNT or PassLM", path)
        creds = Credentials(config.username, config.domain, workstation, nt, lm, v2)
    problem = missing_for(creds, config.auth)
    if problem is not None:
        raise ConfigError(problem, path)
    return creds


def _cntlm_hex(value: bytes) -> str:
    return bytes(b ^ 0xFF for b in value).hex().upper()


def hash_lines(username: str, domain: str, password: str) -> str:
    """What `pycntlm -H` prints: byte for byte what Debian's `cntlm -H` prints for ASCII input
    after its "Password: " prompt line (three lines, each ending in a newline).
    ConfigError for an empty password (cntlm then prints all-F "hashes" that match nothing)."""
    if not password:
        raise ConfigError("-H needs a non-empty password")
    nt = ntowfv1(password)
    v2 = ntowfv2_cntlm(nt, username, domain)
    return (
        f"{'PassLM':<16}{_cntlm_hex(lmowfv1(password))}\n"
        f"{'PassNT':<16}{_cntlm_hex(nt)}\n"
        f"{'PassNTLMv2':<16}{_cntlm_hex(v2)}"
        f"    # Only for user '{username}', domain '{domain}'\n"
    )
