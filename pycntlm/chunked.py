"""Message body framing primitives (RFC 9112 sections 6 and 7.1), sans-IO.

Owns: the Framing/Body values; reading Content-Length and Transfer-Encoding field values;
ChunkedScanner, a state machine that walks chunk-size lines, chunk data, the CRLF after each
chunk, the last chunk and the trailer section, and says how many fed bytes are body.
Must not: do I/O, change or buffer the body (a proxy relays chunks as they are), import our other
HTTP modules (pycntlm.http1 builds on this one and re-exports it).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pycntlm.errors import ProtocolError

MAX_CHUNK_LINE_SIZE = 8 * 1024  # one chunk-size line or trailer line, CRLF included
MAX_TRAILER_SIZE = 64 * 1024  # the whole trailer section, final CRLF included
MAX_CONTENT_LENGTH = 2**62  # larger Content-Length values are rejected as absurd
MAX_CHUNK_SIZE_DIGITS = 16  # hex digits in a chunk-size (leading zeros count): < 2**64

_HEXDIG = b"0123456789abcdefABCDEF"
_TCHAR = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Octets never allowed in a chunk line or trailer line (CTLs except HTAB; CR/LF handled apart).
_BAD_OCTETS = bytes(c for c in range(32) if c != 9) + b"\x7f"


class Framing(enum.Enum):
    NONE = "none"
    LENGTH = "length"
    CHUNKED = "chunked"
    UNTIL_CLOSE = "until-close"


@dataclass(frozen=True)
class Body:
    framing: Framing
    length: int = 0  # for LENGTH


def content_length(values: list[str], status: int) -> int:
    """The one Content-Length that several fields or list elements ("5, 5") agree on.
    Digits only, at most MAX_CONTENT_LENGTH; anything else is a ProtocolError(status)."""
    lengths = set()
    for element in (e.strip(" \t") for v in values for e in v.split(",")):
        # isascii() first: str.isdigit() accepts "²" and other non-ASCII digits.
        if not element.isascii() or not element.isdigit() or len(element) > 19:
            raise ProtocolError("invalid Content-Length", status)
        lengths.add(int(element))
    if len(lengths) != 1:
        raise ProtocolError("conflicting Content-Length values", status)
    length = lengths.pop()
    if length > MAX_CONTENT_LENGTH:
        raise ProtocolError("Content-Length too large", status)
    return length


def chunked_is_final(values: list[str]) -> bool:
    """Whether Transfer-Encoding field values end in "chunked", applied once (any case).
    No coding at all (an empty field) is False."""
    codings = [c.strip(" \t").lower() for v in values for c in v.split(",")]
    codings = [c for c in codings if c]
    return bool(codings) and codings[-1] == "chunked" and codings.count("chunked") == 1


class _State(enum.Enum):
    SIZE = 1  # reading a chunk-size line (with optional chunk-extensions)
    DATA = 2  # skipping chunk data
    DATA_CR = 3  # expecting the CR after chunk data
    DATA_LF = 4  # expecting the LF after chunk data
    TRAILER = 5  # reading trailer field lines up to the empty line
    DONE = 6


def _error(message: str) -> ProtocolError:
    return ProtocolError(f"bad chunked body: {message}", 400)


def _chunk_size(line: bytes) -> int:
    """The chunk-size of a chunk-size line (CRLF already removed).

    chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] ): extensions are checked only
    for forbidden octets, since we relay them unchanged and ignore them.
    """
    size, semi, _ext = line.partition(b";")
    if semi:
        size = size.rstrip(b" \t")  # BWS is allowed only before a ";"
    if not size or size.translate(None, _HEXDIG):
        raise _error("invalid chunk size")
    if len(size) > MAX_CHUNK_SIZE_DIGITS:
        raise _error("chunk size too large")
    return int(size, 16)


def _check_trailer_field(line: bytes) -> None:
    name, colon, _value = line.partition(b":")
    if not colon or not name or name.translate(None, _TCHAR):
        raise _error("invalid trailer field")


def _find_lf(data: bytes | bytearray | memoryview, start: int, stop: int) -> int:
    """Index of the first LF in data[start:stop], or -1; copies at most a small probe."""
    if not isinstance(data, memoryview):
        return data.find(b"\n", start, stop)
    probe = min(stop, start + 256)  # chunk-size lines are short: try a small copy first
    nl = bytes(data[start:probe]).find(b"\n")
    if nl < 0 and probe < stop:
        nl = bytes(data[probe:stop]).find(b"\n")
        return nl if nl < 0 else probe + nl
    return nl if nl < 0 else start + nl


class ChunkedScanner:
    """Finds where a chunked body ends without changing it.

    s = ChunkedScanner()
    n = s.feed(data)   # how many bytes of `data` belong to the body (<= len(data))
    s.done             # True once the last chunk and the trailer section are complete
    Raises ProtocolError(400) for an invalid chunk size line, or a chunk-size/trailer line
    longer than MAX_LINE_SIZE. Line ends must be CRLF (a bare LF or CR is a 400: lenient
    chunk parsing is a request smuggling vector). A caller relaying a response maps the
    status to 502. After an error the scanner must not be fed again.
    """

    def __init__(self) -> None:
        self._state = _State.SIZE
        self._remaining = 0  # chunk data bytes still to skip
        self._line = bytearray()  # the partial line being read (SIZE and TRAILER)
        self._trailer_size = 0  # bytes of trailer section seen so far

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        pos = 0
        end = len(data)
        while pos < end and self._state is not _State.DONE:
            state = self._state
            if state is _State.DATA:
                step = min(self._remaining, end - pos)
                self._remaining -= step
                pos += step
                if not self._remaining:
                    self._state = _State.DATA_CR
            elif state is _State.DATA_CR or state is _State.DATA_LF:
                pos = self._crlf(data, pos)
            else:
                pos = self._read_line(data, pos)
        return pos

    def _crlf(self, data: bytes | bytearray | memoryview, pos: int) -> int:
        if self._state is _State.DATA_CR:
            if data[pos] != 13:
                raise _error("chunk data not followed by CRLF")
            self._state = _State.DATA_LF
        else:
            if data[pos] != 10:
                raise _error("chunk data not followed by CRLF")
            self._state = _State.SIZE
        return pos + 1

    def _read_line(self, data: bytes | bytearray | memoryview, pos: int) -> int:
        """Consume up to one line end; process the line once complete. Returns the new pos."""
        room = MAX_CHUNK_LINE_SIZE - len(self._line)
        nl = _find_lf(data, pos, min(pos + room, len(data)))
        if nl < 0:
            taken = min(room, len(data) - pos)
            if taken >= room:
                raise _error("line too long")
            self._line += data[pos : pos + taken]
            self._count_trailer(taken)
            return pos + taken
        self._line += data[pos : nl + 1]
        self._count_trailer(nl + 1 - pos)
        line = bytes(self._line)
        self._line.clear()
        if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
            raise _error("line not ended by CRLF")
        line = line[:-2]
        if line.translate(None, _BAD_OCTETS) != line:
            raise _error("control character in line")
        self._process_line(line)
        return nl + 1

    def _count_trailer(self, n: int) -> None:
        if self._state is _State.TRAILER:
            self._trailer_size += n
            if self._trailer_size > MAX_TRAILER_SIZE:
                raise _error("trailer section too large")

    def _process_line(self, line: bytes) -> None:
        if self._state is _State.SIZE:
            size = _chunk_size(line)
            if size:
                self._remaining = size
                self._state = _State.DATA
            else:
                self._state = _State.TRAILER
        elif line:
            _check_trailer_field(line)
        else:
            self._state = _State.DONE
