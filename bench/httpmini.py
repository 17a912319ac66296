"""Just enough HTTP/1.1 for a load client: request bytes, a response parser, NTLM messages.

Owns: building absolute-form / CONNECT / origin-form requests, an incremental response parser
(Content-Length, chunked, close-delimited; counts body bytes without keeping them) and the
client side of an NTLMv1 handshake (squid's ntlm_fake_auth sends no target info, so NTLMv2 is
impossible). Must not: do I/O.

Why not pyspnego's client for every handshake: its DES is pure Python (~3-5 ms CPU per Type 3
here), which made the load client the bottleneck when it opens thousands of NTLM connections.
We take the NT hash from pyspnego once and do DES with `cryptography` (C); `self_check()`
compares our response with pyspnego's for a fixed challenge.
"""

from __future__ import annotations

import base64
import struct

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from spnego._ntlm_raw.crypto import desl as spnego_desl  # reference only (self_check)
from spnego._ntlm_raw.crypto import ntowfv1

USER, DOMAIN, PASSWORD = "benchuser", "CORP", "benchpass"
_NT_HASH = ntowfv1(PASSWORD)
_SIG = b"NTLMSSP\x00"
# UNICODE | OEM | REQUEST_TARGET | NTLM | ALWAYS_SIGN: plain NTLMv1, no session security.
_FLAGS = 0x00000001 | 0x00000002 | 0x00000004 | 0x00000200 | 0x00008000
_TYPE1 = _SIG + struct.pack("<II", 1, _FLAGS) + bytes(16)


def get_absolute(origin_port: int, path: str, extra: bytes = b"") -> bytes:
    return (
        f"GET http://127.0.0.1:{origin_port}{path} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{origin_port}\r\nUser-Agent: pycntlm-bench\r\n".encode()
        + extra
        + b"\r\n"
    )


def get_origin(origin_port: int, path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{origin_port}\r\n"
        "User-Agent: pycntlm-bench\r\n\r\n".encode()
    )


def connect(origin_port: int, extra: bytes = b"") -> bytes:
    return (
        f"CONNECT 127.0.0.1:{origin_port} HTTP/1.1\r\nHost: 127.0.0.1:{origin_port}\r\n".encode()
        + extra
        + b"\r\n"
    )


def _des(key7: bytes, block: bytes) -> bytes:
    k = int.from_bytes(key7, "big")
    key = bytes(((k >> (49 - 7 * i)) & 0x7F) << 1 for i in range(8))
    enc = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()  # K,K,K = single DES
    return enc.update(block) + enc.finalize()


def desl(key16: bytes, challenge: bytes) -> bytes:
    """DESL (MS-NLMP 6): three DES encryptions of the challenge under the padded hash."""
    k = key16 + bytes(5)
    return _des(k[0:7], challenge) + _des(k[7:14], challenge) + _des(k[14:21], challenge)


def self_check() -> None:
    challenge = bytes(range(1, 9))
    if desl(_NT_HASH, challenge) != spnego_desl(_NT_HASH, challenge):
        raise RuntimeError("bench NTLMv1 response differs from pyspnego's")


def _type3(challenge: bytes) -> bytes:
    nt = desl(_NT_HASH, challenge)
    fields = [nt, nt, DOMAIN.encode("utf-16-le"), USER.encode("utf-16-le"), b"", b""]
    head, payload, offset = [], b"", 64
    for f in fields:
        head.append(struct.pack("<HHI", len(f), len(f), offset + len(payload)))
        payload += f
    return _SIG + struct.pack("<I", 3) + b"".join(head) + struct.pack("<I", _FLAGS) + payload


def _header(token: bytes) -> bytes:
    return b"Proxy-Authorization: NTLM " + base64.b64encode(token) + b"\r\n"


class NtlmClient:
    """One connection's NTLM handshake: type1() then type3(challenge header values)."""

    def type1(self) -> bytes:
        return _header(_TYPE1)

    def type3(self, challenges: list[bytes]) -> bytes:
        for value in challenges:
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"ntlm" and token:
                raw = base64.b64decode(token.strip())
                if len(raw) < 32 or raw[:8] != _SIG:
                    raise ConnectionError("squid's NTLM challenge is not a Type 2")
                return _header(_type3(raw[24:32]))
        raise ConnectionError("squid sent no NTLM challenge")


class Response:
    """One parsed response head."""

    __slots__ = ("close", "headers", "length", "status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], no_body: bool) -> None:
        self.status = status
        self.headers = headers
        self.close = False
        self.length: int | None = None  # None: chunked or until close; -1 set by parser
        for name, value in headers:
            if name == b"content-length":
                self.length = int(value)
            elif name == b"connection" and b"close" in value.lower():
                self.close = True
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                self.length = -1
        if no_body or status in (204, 304) or 100 <= status < 200:
            self.length = 0

    def values(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n == name]


def parse_head(head: bytes, no_body: bool = False) -> Response:
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ConnectionError(f"bad status line {lines[0][:80]!r}")
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(b":")
            headers.append((name.strip().lower(), value.strip()))
    resp = Response(int(parts[1]), headers, no_body)
    if parts[0] == b"HTTP/1.0" and resp.length is None:
        resp.close = True
    return resp


class Parser:
    """Incremental response parser. feed() returns the responses completed by `data`
    (each with `.body` = body byte count); `head_only` treats every response as bodiless
    (a CONNECT's 200)."""

    def __init__(self) -> None:
        self._buf = b""
        self._resp: Response | None = None
        self._left = 0  # body bytes still expected (Content-Length mode)
        self._chunk_left = -1  # chunked mode: -1 = expecting a size line
        self.body = 0
        self.head_only = False
        self._last: Response | None = None

    def feed(self, data: bytes) -> list[Response]:
        done: list[Response] = []
        while data or self._buf:
            if self._resp is None:
                buf = self._buf + data if self._buf else data
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    self._buf = buf
                    return done
                self._resp = parse_head(buf[:end], self.head_only)
                self.body = 0
                data, self._buf = buf[end + 4 :], b""
                self._left = self._resp.length or 0
                self._chunk_left = -1
                if self._resp.length == 0:
                    done.append(self._finish())
                    continue
            resp = self._resp
            if resp.length is None:  # until close
                self.body += len(data)
                return done
            if resp.length > 0:
                take = min(self._left, len(data))
                self.body += take
                self._left -= take
                data = data[take:]
                if self._left == 0:
                    done.append(self._finish())
                    continue
                return done
            data = self._chunked(data)
            if self._resp is None:
                assert self._last is not None
                done.append(self._last)
                continue
            if not data:
                return done
        return done

    def _finish(self) -> Response:
        resp = self._resp
        assert resp is not None
        self._resp = None
        self._last = resp
        return resp

    def _chunked(self, data: bytes) -> bytes:
        """Consume chunked body bytes; returns leftover data after the final chunk, if any."""
        buf = self._buf + data
        self._buf = b""
        while buf:
            if self._chunk_left > 0:
                take = min(self._chunk_left, len(buf))
                self.body += take
                self._chunk_left -= take
                buf = buf[take:]
                if self._chunk_left == 0:
                    self._chunk_left = -2  # expecting CRLF after data
                continue
            end = buf.find(b"\r\n")
            if end < 0:
                self._buf = buf
                return b""
            line, buf = buf[:end], buf[end + 2 :]
            if self._chunk_left == -2:
                self._chunk_left = -1
                continue
            if self._chunk_left == -3:  # trailers until an empty line
                if not line:
                    self._finish()
                    return buf
                continue
            size = int(line.split(b";", 1)[0], 16)
            if size == 0:
                self._chunk_left = -3
            else:
                self._chunk_left = size
        return b""

    def eof(self) -> Response | None:
        """At EOF: the close-delimited response it completes, if any."""
        if self._resp is not None and self._resp.length is None:
            return self._finish()
        return None
