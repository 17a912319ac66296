"""The per-connection proxy authentication handshake (NTLM dialects), sans-IO.

Owns: choosing the scheme among Proxy-Authenticate headers, building Type 1 / Type 3 messages
for cntlm's Auth dialects. The only module that imports pyspnego.
Must not: do I/O, log secrets or message blobs.
"""

from __future__ import annotations

from pycntlm.creds import Credentials

DIALECTS = ("NTLMv2", "NTLM2SR", "NTLM", "NT", "LM")


class NtlmHandshake:
    """One handshake on one upstream connection.

    hs = NtlmHandshake(creds, "NTLMv2")
    value = hs.start()                 # -> "NTLM TlRMTVNT..." for Proxy-Authorization
    value = hs.respond(challenges)     # challenges: every Proxy-Authenticate value of the 407
                                       # -> "NTLM <type3>"; raises HandshakeError if no usable
                                       # NTLM challenge (missing, bare "NTLM", bad base64,
                                       # truncated Type 2)
    """

    def __init__(self, creds: Credentials, dialect: str = "NTLMv2") -> None:
        raise NotImplementedError

    def start(self) -> str:
        raise NotImplementedError

    def respond(self, challenges: list[str]) -> str:
        raise NotImplementedError


def offers_ntlm(challenges: list[str]) -> bool:
    """True when any Proxy-Authenticate value offers NTLM (bare "NTLM", any case)."""
    raise NotImplementedError
