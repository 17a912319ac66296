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
# Octets never allowed inside a chunk line or trailer line (CTLs except HTAB, so CR and LF too).
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


def _find_lf(data: memoryview, start: int, stop: int) -> int:
    """Index of the first LF in data[start:stop], or -1, copying little in the usual case."""
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
                if self._remaining > end - pos:  # O(1): chunk data is never looked at
                    self._remaining -= end - pos
                    return end
                pos += self._remaining
                self._remaining = 0
                self._state = _State.DATA_CR
            elif state is _State.DATA_CR:
                if data[pos : pos + 2] == b"\r\n":  # the usual case: both bytes at hand
                    self._state = _State.SIZE
                    pos += 2
                    continue
                if data[pos] != 13:
                    raise _error("chunk data not followed by CRLF")
                self._state = _State.DATA_LF
                pos += 1
            elif state is _State.DATA_LF:
                if data[pos] != 10:
                    raise _error("chunk data not followed by CRLF")
                self._state = _State.SIZE
                pos += 1
            else:
                pos = self._read_line(data, pos)
        return pos

    def _read_line(self, data: bytes | bytearray | memoryview, pos: int) -> int:
        """Consume up to one line end; process the line once complete. Returns the new pos."""
        room = MAX_CHUNK_LINE_SIZE - len(self._line)
        stop = pos + room if pos + room < len(data) else len(data)
        if isinstance(data, memoryview):
            nl = _find_lf(data, pos, stop)
        else:
            nl = data.find(b"\n", pos, stop)
        in_trailer = self._state is _State.TRAILER
        if in_trailer:
            self._count_trailer((stop if nl < 0 else nl + 1) - pos)
        if nl < 0:
            if stop - pos >= room:
                raise _error("line too long")
            self._line += data[pos:stop]
            return stop
        if self._line:
            self._line += data[pos : nl + 1]
            line = bytes(self._line)
            self._line.clear()
        else:
            line = bytes(data[pos : nl + 1])
        # The LF found is the line's last byte: the CR must come just before it, and no other
        # CR or CTL (but HTAB) may come anywhere else.
        body = line[:-2]
        if line[-2:] != b"\r\n" or body.translate(None, _BAD_OCTETS) != body:
            raise _error("bad line end or control character in line")
        if not in_trailer:
            self._remaining = _chunk_size(body)
            self._state = _State.DATA if self._remaining else _State.TRAILER
        elif body:
            _check_trailer_field(body)
        else:
            self._state = _State.DONE
        return nl + 1

    def _count_trailer(self, n: int) -> None:
        self._trailer_size += n
        if self._trailer_size > MAX_TRAILER_SIZE:
            raise _error("trailer section too large")
