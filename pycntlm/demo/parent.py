"""A real parent proxy that demands and verifies NTLM and Kerberos (pyspnego acceptors), for the
demo and tests.

Owns: being a strict corporate proxy on loopback: connection-oriented NTLM and Negotiate (raw
NTLMSSP, SPNEGO-wrapped NTLM, and, given a keytab, raw or SPNEGO-wrapped Kerberos) verified against
a users file or the keytab, per-request Basic, forwarding of absolute-form requests and CONNECT
tunnels to loopback targets only, and counters for tests (with the recent request heads and the
workstation name of each NTLM Type 3, so tests can see what a client sent).
Must not: listen anywhere but where it is told, connect anywhere but loopback, log or keep secrets,
NTLM blobs or Kerberos tokens, or leave process-wide environment variables (pyspnego's, krb5's)
changed.

pyspnego facts this relies on (spnego/_ntlm.py, 0.12.4): the acceptor reads `LM_COMPAT_LEVEL` and
checks that `NTLM_USER_FILE` exists when it is created (a Negotiate acceptor creates its NTLM
context lazily, on its first step), and reads the file again at every Type 3, matching user and
domain case-insensitively (`.upper()`) and hashing `DOMAIN:USER:PASSWORD` lines itself; a Type 3
with an empty domain only matches lines with an empty domain. Accepting levels 0-3 take LM, NTLM,
NTLM2SR and NTLMv2; 4 refuses LM-only; 5 refuses everything but NTLMv2. Because those are
environment variables, this class sets them (its own temp users file, its `lm_compat_level`) only
for the duration of each synchronous pyspnego call and restores the previous values at once, so
several parents and pyspnego clients can share one process (not one thread-pool: not thread-safe).

Kerberos (pyspnego's kerberos extra; krb5 reads these at each call): `KRB5_KTNAME` is the keytab
given to the constructor (else a path that does not exist, so a Kerberos token is refused rather
than checked against the system keytab) and `KRB5RCACHEDIR` the parent's temp dir, so a replayed
token is refused and no replay cache lands outside it; both are set like the NTLM variables. A
Kerberos logon is one leg: `Negotiate <AP-REQ>` on a request is accepted at once, the request is
forwarded, and the answer carries `Proxy-Authenticate: Negotiate <AP-REP>` when the client asked
for mutual authentication; the connection stays authenticated, as with NTLM. The KDC's
configuration (`KRB5_CONFIG`) is the process's.

Not imitated: https:// absolute-form, retries of a stale upstream connection, pipelining
beyond what sequential reading gives, obs-fold headers, bare-LF line endings.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import hmac
import ipaddress
import logging
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import spnego

from pycntlm.demo.origin import (
    READ_SIZE,
    STREAM_LIMIT,
    Body,
    Head,
    body_pieces,
    discard_body,
    read_head,
    reason,
    render_head,
    request_body,
    response_body,
    send,
    wants_close,
)
from pycntlm.errors import ProtocolError

log = logging.getLogger(__name__)

DEFAULT_OFFER = ("Negotiate", "NTLM", 'Basic realm="corp"')
_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authorization", "upgrade"})
_ESS = 0x00080000  # NTLMSSP_NEGOTIATE_EXTENDED_SESSIONSECURITY
_MAX_INTERIM = 10  # 1xx responses relayed before the final one
_SCHEME_ONLY = frozenset({"authorization", "proxy-authorization"})  # recorded heads keep the scheme
_TYPE3 = b"NTLMSSP\x00\x03\x00\x00\x00"
_UNICODE = 0x00000001  # NTLMSSP_NEGOTIATE_UNICODE
RECENT_HEADS = 64  # request heads kept in ParentStats.heads


@dataclass
class _ConnCounter:
    requests: int = 0
    live: bool = True


@dataclass
class ParentStats:
    """Counters for tests. auth_headers_seen holds scheme names only; dialects one per logon;
    workstations the workstation field of each raw NTLM Type 3 received (accepted or not; not
    read from SPNEGO-wrapped tokens); heads the last RECENT_HEADS request heads read (both legs
    of a handshake included), Authorization and Proxy-Authorization values cut to their scheme,
    Cookie values replaced by "(redacted)"."""

    connections: int = 0
    requests: int = 0  # forwarded requests plus established tunnels
    logons_ok: int = 0
    logons_failed: int = 0
    type1_seen: int = 0  # handshakes started (NTLM Type 1, or a Negotiate initial token)
    upstream_connections: int = 0
    auth_headers_seen: list[str] = field(default_factory=list)
    # NTLMv2 / NTLM2SR / NTLM / LM / SPNEGO (NTLM inside SPNEGO) / Kerberos / Basic
    dialects: list[str] = field(default_factory=list)
    workstations: list[str] = field(default_factory=list)
    heads: collections.deque[Head] = field(
        default_factory=lambda: collections.deque(maxlen=RECENT_HEADS), repr=False
    )
    _counters: list[_ConnCounter] = field(default_factory=list, repr=False)

    @property
    def requests_per_connection(self) -> list[int]:
        """Requests forwarded on each client connection, in accept order (0 for none)."""
        return [c.requests for c in self._counters]

    def reset(self) -> None:
        """Zero everything; connections still open stay listed, at 0 requests."""
        self.connections = self.requests = self.upstream_connections = 0
        self.logons_ok = self.logons_failed = self.type1_seen = 0
        self.auth_headers_seen.clear()
        self.dialects.clear()
        self.workstations.clear()
        self.heads.clear()
        self._counters = [c for c in self._counters if c.live]
        for counter in self._counters:
            counter.requests = 0


@dataclass(eq=False)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    counter: _ConnCounter
    authed: bool = False
    pending: tuple[str, spnego.ContextProxy] | None = None
    upstream: tuple[str, int, asyncio.StreamReader, asyncio.StreamWriter] | None = None


@dataclass(frozen=True)
class _Verdict:
    """OK (maybe with a final Negotiate token), a challenge to send, or a refusal."""

    ok: bool
    challenge: str | None = None
    final: str | None = None


_REFUSE = _Verdict(False)


def _dialect(type3: bytes) -> str:
    """Which response an NTLM Type 3 carries, from its field lengths and flags."""
    lm_len, nt_len = struct.unpack_from("<H", type3, 12)[0], struct.unpack_from("<H", type3, 20)[0]
    flags = struct.unpack_from("<I", type3, 60)[0] if len(type3) >= 64 else 0
    if nt_len > 24:
        return "NTLMv2"
    if nt_len == 24:
        return "NTLM2SR" if flags & _ESS else "NTLM"
    return "LM" if lm_len else "anonymous"


def _workstation(type3: bytes) -> str:
    """The workstation field of an NTLM Type 3 (UTF-16LE or OEM, by its flags); "" if absent."""
    if len(type3) < 64:
        return ""
    length, _, offset = struct.unpack_from("<HHI", type3, 44)
    flags = struct.unpack_from("<I", type3, 60)[0]
    raw = type3[offset : offset + length]
    return raw.decode("utf-16-le" if flags & _UNICODE else "cp1252", errors="replace")


def _redacted(head: Head) -> Head:
    """The head as ParentStats.heads keeps it: no credential, token or cookie in it."""
    headers = []
    for name, value in head.headers:
        if name.lower() in _SCHEME_ONLY:
            value = value.strip().split(" ", 1)[0]
        elif name.lower() == "cookie":
            value = "(redacted)"
        headers.append((name, value))
    return Head(head.start, tuple(headers))


def _logon_dialect(ctx: spnego.ContextProxy, token: bytes) -> str:
    """The dialects entry for a completed NTLM or Negotiate logon."""
    if token.startswith(b"NTLMSSP"):
        return _dialect(token)
    return "Kerberos" if ctx.negotiated_protocol == "kerberos" else "SPNEGO"


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _authority(text: str) -> tuple[str, int]:
    """host and port of a CONNECT target (`host:port`, `[v6]:port`)."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ProtocolError("bad CONNECT target")
    return host, int(port)


class NtlmParent:
    """A strict NTLM-verifying parent proxy on loopback; see the module docstring."""

    def __init__(
        self,
        users: list[tuple[str, str, str]],
        *,
        offer: tuple[str, ...] = DEFAULT_OFFER,
        close_after_challenge: bool = False,
        close_after_type1: bool = False,
        lm_compat_level: int = 3,
        keytab: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
    ) -> None:
        if not 0 <= lm_compat_level <= 5:
            raise ValueError("lm_compat_level must be 0..5")
        self.offer = offer
        self.close_after_challenge = close_after_challenge
        self.close_after_type1 = close_after_type1
        self.lm_compat_level = lm_compat_level
        self.keytab = keytab  # service keys (e.g. HTTP/localhost@REALM) for Kerberos logons
        self.host = host
        self.port = port
        self.stats = ParentStats()
        self._schemes = {entry.split(" ", 1)[0].lower() for entry in offer}
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._users: list[tuple[str, str, str]] = []
        self._dir: str | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._conns: set[_Conn] = set()
        self.set_users(users)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def set_users(self, users: list[tuple[str, str, str]]) -> None:
        """Replace the accepted (domain, user, password) triples; used from the next Type 3 on."""
        for entry in users:
            if any(":" in part or "\n" in part or "\r" in part for part in entry):
                raise ValueError("user entries must not contain ':' or line breaks")
        self._users = list(users)
        if self._dir is not None:
            self._write_users()

    def _write_users(self) -> None:
        assert self._dir is not None
        path = os.path.join(self._dir, "users")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.writelines(f"{d}:{u}:{p}\n" for d, u, p in self._users)

    async def start(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="pycntlm-parent-")
        self._write_users()
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=STREAM_LIMIT
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for conn in list(self._conns):  # handlers then end on EOF/reset, never cancelled
            conn.writer.transport.abort()
            if conn.upstream is not None:
                conn.upstream[3].transport.abort()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    async def __aenter__(self) -> NtlmParent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- pyspnego ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _spnego_env(self) -> Iterator[None]:
        assert self._dir is not None
        keytab = self.keytab or os.path.join(self._dir, "no-keytab")
        wanted = {
            "NTLM_USER_FILE": os.path.join(self._dir, "users"),
            "LM_COMPAT_LEVEL": str(self.lm_compat_level),
            "KRB5_KTNAME": f"FILE:{os.path.abspath(keytab)}",
            "KRB5RCACHEDIR": self._dir,
        }
        saved = {name: os.environ.get(name) for name in wanted}
        os.environ.update(wanted)
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def _step(self, conn: _Conn, scheme: str, token: bytes) -> _Verdict:
        """One NTLM/Negotiate token on this connection: challenge, accept or refuse."""
        initial = token.startswith(b"NTLMSSP\x00\x01\x00\x00\x00") or (
            scheme == "negotiate" and token[:1] == b"\x60"
        )
        if initial:
            self.stats.type1_seen += 1
            conn.authed, conn.pending = False, None
        elif token.startswith(_TYPE3):
            self.stats.workstations.append(_workstation(token))
        if not initial and (conn.pending is None or conn.pending[0] != scheme):
            return self._failed(conn, "a token that continues no handshake on this connection")
        try:
            with self._spnego_env():
                ctx = conn.pending[1] if conn.pending else spnego.server(protocol=scheme)
                out = ctx.step(token)
        except Exception as exc:  # untrusted bytes into a library: any error is a refusal
            return self._failed(conn, type(exc).__name__)
        name = "NTLM" if scheme == "ntlm" else "Negotiate"
        if not ctx.complete:
            conn.pending = (scheme, ctx)
            if out is None:
                return self._failed(conn, "no challenge produced")
            return _Verdict(False, challenge=f"{name} {base64.b64encode(out).decode()}")
        conn.pending, conn.authed = None, True
        self.stats.logons_ok += 1
        self.stats.dialects.append(_logon_dialect(ctx, token))
        log.debug("parent: %s logon accepted", name)
        final = f"Negotiate {base64.b64encode(out).decode()}" if out else None
        return _Verdict(True, final=final)

    def _failed(self, conn: _Conn, why: str) -> _Verdict:
        conn.pending, conn.authed = None, False
        self.stats.logons_failed += 1
        log.debug("parent: logon refused (%s)", why)
        return _REFUSE

    def _basic(self, token: str) -> bool:
        try:
            text = base64.b64decode(token, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        login, _, password = text.partition(":")
        domain, sep, user = login.rpartition("\\")
        for u_domain, u_user, u_password in self._users:
            if user.lower() != u_user.lower() or (sep and domain.lower() != u_domain.lower()):
                continue
            if hmac.compare_digest(password.encode(), u_password.encode()):
                return True
        return False

    def _authenticate(self, conn: _Conn, head: Head) -> _Verdict:
        values = head.get_all("proxy-authorization")
        for value in values:
            self.stats.auth_headers_seen.append(value.strip().split(" ", 1)[0])
        scheme, _, token = values[0].strip().partition(" ") if values else ("", "", "")
        scheme = scheme.lower()
        if scheme not in self._schemes or (scheme == "basic" and conn.authed):
            return _Verdict(True) if conn.authed else _REFUSE
        if scheme == "basic":
            if self._basic(token.strip()):
                self.stats.logons_ok += 1
                self.stats.dialects.append("Basic")
                return _Verdict(True)
            return self._failed(conn, "Basic credentials")
        try:
            raw = base64.b64decode(token.strip(), validate=True)
        except binascii.Error:
            return self._failed(conn, "token is not base64")
        return self._step(conn, scheme, raw)

    # -- the connection loop -------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.stats.connections += 1
        conn = _Conn(reader, writer, _ConnCounter())
        self._conns.add(conn)
        self.stats._counters.append(conn.counter)
        try:
            while True:
                head = await read_head(reader, self._timeout)
                if head is None:
                    break
                self.stats.heads.append(_redacted(head))
                if not await self._handle(conn, head):
                    break
        except ProtocolError as exc:
            with contextlib.suppress(OSError, TimeoutError):
                await self._reply(conn, exc.status, [], close=True)
            log.debug("parent: refused a request: %s", exc.message)
        except (OSError, TimeoutError) as exc:
            log.debug("parent connection ended: %s", type(exc).__name__)
        finally:
            conn.counter.live = False
            self._conns.discard(conn)
            self._tasks.discard(task)
            self._drop_upstream(conn)
            writer.close()

    async def _reply(
        self,
        conn: _Conn,
        status: int,
        headers: list[tuple[str, str]],
        close: bool,
        method: str = "GET",
    ) -> bool:
        """Our own short text/plain response; False when the connection must end."""
        body = f"{status} {reason(status)}\n".encode()
        headers = [*headers, ("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        if close:
            headers.append(("Connection", "close"))
        start = f"HTTP/1.1 {status} {reason(status)}"
        payload = b"" if method == "HEAD" else body
        await send(conn.writer, render_head(start, headers) + payload, self._timeout)
        return not close

    async def _refuse(
        self,
        conn: _Conn,
        head: Head,
        body: Body,
        status: int,
        headers: list[tuple[str, str]],
        close: bool = False,
    ) -> bool:
        """Answer without forwarding, leaving the connection at the next request if kept."""
        expect = "100-continue" in head.tokens("expect")
        if not expect:
            await discard_body(conn.reader, body, self._timeout)
        keep = await self._reply(conn, status, headers, close or wants_close(head), head.start[0])
        if keep and expect:  # the client may send the announced body anyway: skip it
            await discard_body(conn.reader, body, self._timeout)
        return keep

    async def _handle(self, conn: _Conn, head: Head) -> bool:
        """One request on a client connection; False when the connection must end."""
        body = request_body(head)
        verdict = self._authenticate(conn, head)
        if verdict.challenge is not None:
            headers = [("Proxy-Authenticate", verdict.challenge)]
            return await self._refuse(conn, head, body, 407, headers, self.close_after_type1)
        if not verdict.ok:
            headers = [("Proxy-Authenticate", entry) for entry in self.offer]
            return await self._refuse(conn, head, body, 407, headers, self.close_after_challenge)
        extra = [("Proxy-Authenticate", verdict.final)] if verdict.final else []
        if head.start[0] == "CONNECT":
            return await self._tunnel(conn, head, body, extra)
        return await self._forward(conn, head, body, extra)

    # -- reaching targets ----------------------------------------------------------------------

    async def _open(
        self, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        addresses = ["127.0.0.1", "::1"] if host.lower() == "localhost" else [host]
        error: OSError = OSError("no address")
        for address in addresses:
            try:
                async with asyncio.timeout(self._connect_timeout):
                    opened = await asyncio.open_connection(address, port, limit=STREAM_LIMIT)
            except (OSError, TimeoutError) as exc:
                error = exc if isinstance(exc, OSError) else OSError("connect timed out")
                continue
            self.stats.upstream_connections += 1
            return opened
        raise error

    def _drop_upstream(self, conn: _Conn) -> None:
        if conn.upstream is not None:
            conn.upstream[3].close()
            conn.upstream = None

    async def _upstream(
        self, conn: _Conn, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The kept-alive connection to host:port of this client connection, or a new one."""
        up = conn.upstream
        if up is not None and up[:2] == (host, port) and not up[2].at_eof():
            return up[2], up[3]
        self._drop_upstream(conn)
        reader, writer = await self._open(host, port)
        conn.upstream = (host, port, reader, writer)
        return reader, writer

    async def _tunnel(
        self, conn: _Conn, head: Head, body: Body, extra: list[tuple[str, str]]
    ) -> bool:
        host, port = _authority(head.start[1])
        if not _is_loopback(host):
            return await self._refuse(conn, head, body, 403, [])
        self._drop_upstream(conn)
        try:
            up_reader, up_writer = await self._open(host, port)
        except OSError:
            return await self._refuse(conn, head, body, 502, [])
        conn.upstream = (host, port, up_reader, up_writer)
        await discard_body(conn.reader, body, self._timeout)
        self.stats.requests += 1
        conn.counter.requests += 1
        established = render_head("HTTP/1.1 200 Connection established", extra)
        await send(conn.writer, established, self._timeout)
        await _relay(conn.reader, conn.writer, up_reader, up_writer, self._timeout)
        return False

    def _request_head(self, head: Head, path: str, netloc: str) -> bytes:
        listed = set(head.tokens("connection"))
        headers = [(k, v) for k, v in head.headers if k.lower() not in _HOP | listed]
        if head.get("host") is None:
            headers.insert(0, ("Host", netloc))
        headers.append(("Via", "1.1 pycntlm-demo-parent"))
        return render_head(f"{head.start[0]} {path} HTTP/1.1", headers)

    async def _forward(
        self, conn: _Conn, head: Head, body: Body, extra: list[tuple[str, str]]
    ) -> bool:
        url = urlsplit(head.start[1])
        try:
            host, port = url.hostname, url.port or 80
        except ValueError:
            host, port = None, 0
        if url.scheme.lower() != "http" or not host:
            return await self._refuse(conn, head, body, 400, [])
        if not _is_loopback(host):
            return await self._refuse(conn, head, body, 403, [])
        try:
            up_reader, up_writer = await self._upstream(conn, host, port)
        except OSError:
            return await self._refuse(conn, head, body, 502, [])
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        try:
            await send(up_writer, self._request_head(head, path, url.netloc), self._timeout)
            response, sent = await self._send_body(conn, head, body, up_reader, up_writer)
        except (OSError, TimeoutError):  # a client's bad body raises ProtocolError: 400
            self._drop_upstream(conn)
            return await self._reply(conn, 502, [], True, head.start[0])
        self.stats.requests += 1
        conn.counter.requests += 1
        return await self._relay_response(conn, head, response, sent, body, extra)

    async def _send_body(
        self,
        conn: _Conn,
        head: Head,
        body: Body,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> tuple[Head, bool]:
        """Send the request body upstream and return the final response head, and whether the
        body went. With Expect: 100-continue the body waits for the origin's 100 (1 s at most, as
        curl does); an origin that answers at once gets no body. Interim 1xx are relayed."""
        if body.kind != "none" and "100-continue" in head.tokens("expect"):
            try:
                first = await self._upstream_head(up_reader, 1.0)
            except TimeoutError:
                first = None
            if first is not None and not first.start[1].startswith("1"):
                return first, False
            if first is not None:
                await self._interim(conn, first)
        async for data, _ in body_pieces(conn.reader, body, self._timeout):
            await send(up_writer, data, self._timeout)
        for _ in range(_MAX_INTERIM):
            final = await self._upstream_head(up_reader, self._timeout)
            if not final.start[1].startswith("1") or final.start[1] == "101":
                return final, True
            await self._interim(conn, final)
        raise ProtocolError("too many interim responses", 502)

    async def _upstream_head(self, up_reader: asyncio.StreamReader, timeout: float) -> Head:
        head = await read_head(up_reader, timeout)
        if head is None:
            raise ConnectionError("upstream closed before responding")
        status = head.start[1]
        if not (status.isdigit() and len(status) == 3 and head.start[0].startswith("HTTP/")):
            raise ProtocolError("bad upstream status line", 502)
        return head

    async def _interim(self, conn: _Conn, head: Head) -> None:
        start = f"HTTP/1.1 {head.start[1]} {head.start[2]}"
        await send(conn.writer, render_head(start, list(head.headers)), self._timeout)

    async def _relay_response(
        self,
        conn: _Conn,
        request: Head,
        response: Head,
        sent: bool,
        body: Body,
        extra: list[tuple[str, str]],
    ) -> bool:
        """Relay the final response by its framing; False when the client connection ends."""
        status = int(response.start[1])
        framing = response_body(request.start[0], status, response)
        if status == 101:  # no protocol switching through this proxy
            framing = Body("close")
        close = wants_close(request) or framing.kind == "close"
        listed = set(response.tokens("connection"))
        headers = [(k, v) for k, v in response.headers if k.lower() not in _HOP | listed]
        headers += extra + ([("Connection", "close")] if close else [])
        start = f"HTTP/1.1 {status} {response.start[2]}"
        up_reader = conn.upstream[2] if conn.upstream else None
        await send(conn.writer, render_head(start, headers), self._timeout)
        try:
            if up_reader is not None:
                async for data, _ in body_pieces(up_reader, framing, self._timeout):
                    await send(conn.writer, data, self._timeout)
        except ProtocolError as exc:  # the head is gone already: all we can do is close
            raise ConnectionError(f"upstream body: {exc.message}") from None
        if not sent or wants_close(response) or framing.kind == "close":
            self._drop_upstream(conn)
        if not close and not sent:
            await discard_body(conn.reader, body, self._timeout)
        return not close


async def _pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    timeout: float,
    activity: list[float],
) -> None:
    """Copy one direction until EOF, then half-close; idle means neither side moved `timeout` s.
    On any failure it aborts the destination, which ends the other direction too."""
    loop = asyncio.get_running_loop()
    try:
        while True:
            try:
                async with asyncio.timeout(timeout):
                    data = await reader.read(READ_SIZE)
            except TimeoutError:
                if loop.time() - activity[0] < timeout:
                    continue
                raise
            if not data:
                break
            activity[0] = loop.time()
            await send(writer, data, timeout)
        if writer.can_write_eof() and not writer.transport.is_closing():
            writer.write_eof()
    except (OSError, TimeoutError, RuntimeError) as exc:  # uvloop: RuntimeError on a closed handle
        log.debug("parent: tunnel direction ended: %s", type(exc).__name__)
        writer.transport.abort()


async def _relay(
    a_reader: asyncio.StreamReader,
    a_writer: asyncio.StreamWriter,
    b_reader: asyncio.StreamReader,
    b_writer: asyncio.StreamWriter,
    timeout: float,
) -> None:
    """Relay both directions until both have ended (half-close aware) or one fails."""
    activity = [asyncio.get_running_loop().time()]
    async with asyncio.TaskGroup() as group:
        group.create_task(_pump(a_reader, b_writer, timeout, activity))
        group.create_task(_pump(b_reader, a_writer, timeout, activity))
