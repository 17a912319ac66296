"""One exception hierarchy for pycntlm.

Owns: the error types every module raises. Must not: import anything of ours, hold secrets.
"""

from __future__ import annotations


class PycntlmError(Exception):
    """Root of every error pycntlm raises on purpose."""


class ConfigError(PycntlmError):
    """A user error in the configuration or the command line: printed as one line, exit 2."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None) -> None:
        self.message = message
        self.path = path
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.path is not None and self.line is not None:
            return f"{self.path}:{self.line}: {self.message}"
        if self.path is not None:
            return f"{self.path}: {self.message}"
        return self.message


class ProtocolError(PycntlmError):
    """Malformed or unacceptable HTTP from a peer; `status` is what to answer a client with."""

    def __init__(self, message: str, status: int = 400) -> None:
        self.message = message
        self.status = status
        super().__init__(message)


class HandshakeError(PycntlmError):
    """The parent's authentication challenge could not be used (missing, malformed, truncated)."""


class UpstreamError(PycntlmError):
    """A parent proxy could not be used. `parent` is its "host:port", `reason` a short text."""

    def __init__(self, parent: str, reason: str) -> None:
        self.parent = parent
        self.reason = reason
        super().__init__(f"{parent}: {reason}")


class AuthRejected(UpstreamError):
    """The parent rejected our credentials (a 407 after our Type 3 / final token)."""
