"""Logging set-up and redaction.

Owns: handlers and formats (stderr in the foreground), the filter that scrubs secrets from every
record. Must not: print to stdout.
Redaction is a second line of defence: code must not log secrets in the first place.
"""

from __future__ import annotations

import logging
import re
import sys

_AUTH_BLOB = re.compile(
    r"((?:Proxy-)?Authori[sz]ation:?\s*\w+\s+)\S+|\b(NTLM|Negotiate|Basic)\s+[A-Za-z0-9+/=]{8,}",
    re.I,
)


class Redactor(logging.Filter):
    """Replaces registered secret strings and any authentication token with ***."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: list[str] = []

    def add(self, *secrets: str | None) -> None:
        for s in secrets:
            if s and len(s) >= 3 and s not in self._secrets:
                self._secrets.append(s)
                if s.upper() != s:
                    self._secrets.append(s.upper())

    def scrub(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "***")
        return _AUTH_BLOB.sub(lambda m: (m.group(1) or (m.group(2) + " ")) + "***", text)

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if record.name == "pycntlm.access":
            # Our own fixed format (client, method, target without userinfo, numbers): only
            # the registered secrets are checked, not the token regex (it is the hot path).
            for secret in self._secrets:
                if secret in msg:
                    msg = msg.replace(secret, "***")
            record.msg, record.args = msg, None
            return True
        clean = self.scrub(msg)
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self.scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        if clean != msg or record.args:
            record.msg, record.args = clean, None
        return True


REDACTOR = Redactor()


def setup(verbose: bool = False, quiet: bool = False, stream: object = None) -> Redactor:
    """Configure the root 'pycntlm' logger: stderr, one line per record, redacted."""
    root = logging.getLogger("pycntlm")
    root.handlers.clear()
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(REDACTOR)
    root.addHandler(handler)
    root.propagate = False
    level = logging.DEBUG if verbose else logging.INFO
    root.setLevel(level)
    logging.getLogger("pycntlm.access").setLevel(logging.WARNING if quiet else level)
    return REDACTOR
