"""Credentials: the user's identity and hashes, never the plaintext after start-up.

Owns: Password / PassNT / PassLM / PassNTLMv2 -> real hashes (cntlm's inverted hex form undone),
the `-H` output. Must not: log, print or repr a secret.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pycntlm.config import Config


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

    @property
    def identity(self) -> str:
        """A non-secret key for pooling: connections are never shared across identities."""
        return f"{self.domain}\\{self.username}"


def from_config(config: Config, hostname: str) -> Credentials:
    """Build Credentials from a Config (plaintext password beats Pass*; hashes computed here).
    `hostname` is the default workstation. Raises ConfigError if credentials are missing or a
    hash is malformed, or if config.auth needs a hash that is not available."""
    raise NotImplementedError


def from_password(username: str, domain: str, workstation: str, password: str) -> Credentials:
    raise NotImplementedError


def hash_lines(username: str, domain: str, password: str) -> str:
    """What `pycntlm -H` prints: byte for byte what Debian's `cntlm -H` prints for ASCII input."""
    raise NotImplementedError
