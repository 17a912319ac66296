"""Logging set-up and redaction.

Owns: handlers and formats (stderr in the foreground), the filter that scrubs secrets from every
record, the -T trace file. Must not: print to stdout.
Redaction is a second line of defence: code must not log secrets in the first place.

-T FILE (cntlm: "save the debug output into a trace file ... never truncated (appended)"): every
record down to DEBUG is appended to FILE, with or without -v, through the same redaction as the
console; the console keeps its own level (-v, -q). cntlm instead moves stderr into the file and
needs -v for debug lines; a trace without them would be useless. The file is opened once, before
-U drops privileges: created 0600, appended, never through a symlink, and refused unless it is a
regular file with one link owned by us (a looser mode on an existing file is tightened to 0600).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import sys
import threading
from collections.abc import Callable

from pycntlm.errors import ConfigError

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ACCESS_DELAY = 0.05  # access lines reach stderr at most this late, many in one write
ACCESS_BATCH = 256  # ... or as soon as this many wait

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


Later = Callable[[float, Callable[[], None]], object]  # an event loop's call_later


class ConsoleHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr, one line per record. Once batch() gave it the event loop's call_later, access
    lines (one per request: the hot path) are gathered and written together at most
    ACCESS_DELAY later (one write syscall for many); any other record is written at once,
    after the gathered lines, so the order is kept. flush() (also at exit) writes what waits."""

    def __init__(self, stream: object) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._guard = threading.Lock()  # _pending (records may come from other threads)
        self._later: Later | None = None
        self._thread = 0

    def batch(self, later: Later | None) -> None:
        """Gather access lines on the calling thread's event loop (None: stop, flush)."""
        self.flush()
        self._later, self._thread = later, threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        gather = (
            self._later is not None
            and record.name == "pycntlm.access"
            and threading.get_ident() == self._thread
        )
        with self._guard:
            self._pending.append(line)
            waiting = len(self._pending)
        if not gather or waiting >= ACCESS_BATCH:
            self.flush()
        elif waiting == 1 and self._later is not None:
            self._later(ACCESS_DELAY, self.flush)

    def flush(self) -> None:
        with self._guard:
            if not self._pending:
                return
            text, self._pending = "".join(self._pending), []
            try:
                self.stream.write(text)
                self.stream.flush()
            except Exception:  # a closed or broken stderr must not break serving
                pass


def batch_access_lines(later: Later | None) -> None:
    """Start (an event loop's call_later) or stop (None) gathering access lines on stderr."""
    for handler in logging.getLogger("pycntlm").handlers:
        if isinstance(handler, ConsoleHandler):
            handler.batch(later)


class TraceHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The -T trace file: every record, redacted; kept when the console gives way to syslog."""


def _quiet_access(record: logging.LogRecord) -> bool:
    """-q with a trace file: the console drops access lines the trace still gets."""
    return record.name != "pycntlm.access" or record.levelno >= logging.WARNING


def open_trace(path: str) -> int:
    """Open the -T file for appending (see the module docstring). ConfigError if it cannot be
    used; the message is one line and names the file."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        why = "it is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        raise ConfigError(f"-T {path}: cannot open the trace file: {why}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            why = "it is not a regular file"
        elif st.st_uid != os.geteuid():
            why = f"it is owned by another user (uid {st.st_uid})"
        elif st.st_nlink != 1:
            why = "it has other hard links"
        else:
            if stat.S_IMODE(st.st_mode) != 0o600:
                os.fchmod(fd, 0o600)
            os.set_blocking(fd, True)
            return fd
    except OSError as exc:
        why = exc.strerror or str(exc)
    os.close(fd)
    raise ConfigError(f"-T {path}: refusing the trace file: {why}")


def setup(
    verbose: bool = False, quiet: bool = False, stream: object = None, trace_fd: int | None = None
) -> Redactor:
    """Configure the root 'pycntlm' logger: stderr, one line per record, redacted; with
    `trace_fd` (open_trace) also every DEBUG record appended to the trace file."""
    root = logging.getLogger("pycntlm")
    root.handlers.clear()
    handler = ConsoleHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(REDACTOR)
    root.addHandler(handler)
    root.propagate = False
    level = logging.DEBUG if verbose else logging.INFO
    access = logging.getLogger("pycntlm.access")
    if trace_fd is None:
        root.setLevel(level)
        access.setLevel(logging.WARNING if quiet else level)
        return REDACTOR
    handler.setLevel(level)
    if quiet:
        handler.addFilter(_quiet_access)
    # the handler owns the file for the life of the process
    out = open(trace_fd, "a", encoding="utf-8", errors="backslashreplace", buffering=1)  # noqa: SIM115
    trace = TraceHandler(out)
    trace.setFormatter(logging.Formatter(FORMAT))
    trace.addFilter(REDACTOR)
    root.addHandler(trace)
    root.setLevel(logging.DEBUG)
    access.setLevel(logging.DEBUG)
    return REDACTOR
