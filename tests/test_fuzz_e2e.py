"""Fuzz end to end: hypothesis-generated request heads (valid-ish, then mutated) sent to a
running pycntlm in front of the verifying parent and the origin, all on loopback.

Every answer must be well-formed HTTP (judged by a small parser here, independent of
pycntlm.http1) with a 4xx/5xx status, or be a proxied answer (the origin's, or a tunnel's
"200 Connection established"); no answer at all is accepted only when the request declared a
body (which the mutation may have cut short). No example may hang, pycntlm must never log an
internal error, and a good request afterwards succeeds.

The servers run in their own thread and event loop (uvloop), so hypothesis drives plain
blocking sockets and keeps one running stack for all examples.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from proxyrun import USER, conf, running_proxy

from pycntlm.demo.origin import Origin
from pycntlm.demo.parent import NtlmParent

IDLE_TIMEOUT = 3  # bounds the rare example that leaves a streamed body unfinished
EXAMPLE_LIMIT = IDLE_TIMEOUT + 7.0  # no example may take longer than this


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


@dataclass
class Stack:
    """Origin + NtlmParent + pycntlm (in-process) in a background thread's event loop."""

    tmp: Path
    port: int = 0
    origin_port: int = 0
    ctx: object = None
    origin: Origin | None = None
    errors: _Errors = field(default_factory=_Errors)
    _ready: threading.Event = field(default_factory=threading.Event)
    _loop: asyncio.AbstractEventLoop | None = None
    _stop: asyncio.Event | None = None
    _thread: threading.Thread | None = None
    _failure: BaseException | None = None

    def start(self) -> None:
        logging.getLogger("pycntlm").addHandler(self.errors)
        self._thread = threading.Thread(target=self._run, name="fuzz-stack", daemon=True)
        self._thread.start()
        if not self._ready.wait(20) or self._failure is not None:
            raise RuntimeError(f"fuzz stack did not start: {self._failure!r}")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(20)
        logging.getLogger("pycntlm").removeHandler(self.errors)

    def _run(self) -> None:
        import uvloop

        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(self._main())
        except BaseException as exc:  # reported by start()
            self._failure = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with Origin() as origin, NtlmParent([USER]) as parent:
            text = conf(parent.address, extra=f"IdleTimeout {IDLE_TIMEOUT}")
            async with running_proxy(text, self.tmp) as proxy:
                self.port, self.origin_port, self.ctx = proxy.port, origin.port, proxy.ctx
                self.origin = origin
                self._ready.set()
                await self._stop.wait()

    @property
    def origin_requests(self) -> int:
        assert self.origin is not None
        return self.origin.stats.requests

    def settled(self, limit: float = 10.0) -> bool:
        """True once no client connection is being served (bounded wait)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.ctx.stats.clients_active == 0:  # type: ignore[attr-defined]
                return True
            time.sleep(0.05)
        return False


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("fuzz"))
    s.start()
    try:
        yield s
    finally:
        s.stop()


# -- talking and judging ----------------------------------------------------------------------


def exchange(port: int, data: bytes) -> tuple[bytes, float]:
    """Send `data`, half-close, read until the server closes. Returns (answer, seconds)."""
    t0 = time.monotonic()
    out = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.settimeout(EXAMPLE_LIMIT)
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may refuse before reading everything
        try:
            while chunk := s.recv(65536):
                out += chunk
                if time.monotonic() - t0 > EXAMPLE_LIMIT:
                    break
        except ConnectionResetError:
            pass
        except TimeoutError:
            pytest.fail(f"no close within {EXAMPLE_LIMIT} s; got {bytes(out[:300])!r}")
    return bytes(out), time.monotonic() - t0


STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5]\d\d) [^\r\n\x00]*\r\n")
FIELD_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+:[ \t]*[^\r\n\x00-\x08\x0a-\x1f\x7f]*")


@dataclass
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v.strip()
        return None


def parse_answers(data: bytes, method: str) -> list[Answer]:
    """Strictly parse the responses in `data` (interim 1xx included). AssertionError if not
    well-formed HTTP/1.x with consistent framing."""
    answers: list[Answer] = []
    pos = 0
    while pos < len(data):
        m = STATUS_LINE.match(data, pos)
        assert m, f"bad status line at {pos}: {data[pos : pos + 100]!r}"
        status = int(m.group(1))
        end = data.find(b"\r\n\r\n", m.start())
        assert end >= 0, f"unterminated head: {data[pos : pos + 300]!r}"
        headers = []
        if end + 2 > m.end():
            for line in data[m.end() : end].split(b"\r\n"):
                assert FIELD_LINE.fullmatch(line), f"bad header line {line!r}"
                name, _, value = line.partition(b":")
                headers.append((name, value))
        ans = Answer(status, headers, b"")
        pos = end + 4
        closing = b"close" in (ans.header(b"connection") or b"").lower()
        no_body = (
            status < 200
            or status in (204, 304)
            or (method == "HEAD" and not closing)  # (a body before a close cannot desync)
            or (method == "CONNECT" and 200 <= status < 300)
        )
        te = (ans.header(b"transfer-encoding") or b"").lower()
        cl = ans.header(b"content-length")
        if no_body:
            pass
        elif method == "HEAD":  # and closing: a body (pycntlm's own error text) or none
            ans.body = data[pos:]
            pos = len(data)
        elif te.endswith(b"chunked"):
            while True:
                nl = data.find(b"\r\n", pos)
                assert nl >= 0, "unterminated chunk size line"
                size = int(data[pos:nl].split(b";")[0], 16)
                pos = nl + 2
                if size == 0:
                    trailer_end = data.find(b"\r\n\r\n", pos - 2)
                    assert trailer_end >= 0, "unterminated trailer"
                    pos = trailer_end + 4
                    break
                ans.body += data[pos : pos + size]
                assert data[pos + size : pos + size + 2] == b"\r\n", "bad chunk end"
                pos += size + 2
        elif cl is not None:
            assert cl.isdigit(), f"bad Content-Length {cl!r}"
            n = int(cl)
            assert len(data) - pos >= n, f"body short: {len(data) - pos} of {n}"
            ans.body = data[pos : pos + n]
            pos += n
        else:
            ans.body = data[pos:]
            pos = len(data)
        answers.append(ans)
        if method == "CONNECT" and 200 <= status < 300:
            break  # what follows is the tunnel's own traffic
        if status >= 200:
            method = "GET"  # a mutation may have split the bytes into more requests
    return answers


def sent_method(raw: bytes) -> str:
    """The method as the server sees it: the first token of the first non-empty line
    (exactly as sent: method names are case-sensitive)."""
    return raw.lstrip(b"\r\n").split(b" ", 1)[0].decode("latin-1")


def judge(raw: bytes, answer: bytes, origin_answered: bool) -> None:
    method = sent_method(raw)
    if not answer:
        declared_body = re.search(rb"(?i)content-length|transfer-encoding", raw)
        assert declared_body, f"no answer at all to {raw[:300]!r}"
        return
    for ans in parse_answers(answer, method):
        if ans.status < 200:
            continue
        tunnel = method == "CONNECT" and ans.status == 200
        assert origin_answered or tunnel or ans.status >= 400, f"{ans.status} from nowhere"
        if ans.status == 500 and not origin_answered:
            pytest.fail(f"pycntlm internal error for {raw[:300]!r}: {ans.body!r}")


# -- strategies -------------------------------------------------------------------------------

TCHAR = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
TOKEN = st.text(alphabet=TCHAR, min_size=1, max_size=12)
METHODS = (
    st.sampled_from(
        [
            "GET",
            "GET",
            "GET",
            "HEAD",
            "POST",
            "POST",
            "PUT",
            "DELETE",
            "OPTIONS",
            "CONNECT",
            "PATCH",
        ]
    )
    | TOKEN
)
LATIN1 = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=40)
PATH_CHARS = "/abc%20?=&;:@!$'()*+,~-._0123456789"
PATHS = st.sampled_from(
    ["/", "/bytes/10", "/bytes/0", "/chunked/100", "/close/50", "/status/204", "/status/304",
     "/status/302", "/status/500", "/echo", "/ntlm", "/nowhere", "/?q=1#frag"]
) | st.text(alphabet=PATH_CHARS, max_size=30).map(lambda p: "/" + p)  # fmt: skip
HEADER_NAMES = st.sampled_from(
    ["Host", "Content-Length", "Transfer-Encoding", "Connection", "Proxy-Connection", "Expect",
     "Upgrade", "TE", "Trailer", "Keep-Alive", "Proxy-Authorization", "Authorization",
     "Accept", "User-Agent", "X-Forwarded-For", "Via", "Cookie"]
) | TOKEN  # fmt: skip
HEADER_VALUES = (
    st.sampled_from(
        [
            "close",
            "keep-alive",
            "chunked",
            "gzip, chunked",
            "100-continue",
            "0",
            "5",
            "-1",
            "NTLM TlRMTVNTUAABAAAA",
            "Basic dXNlcjpwYXNz",
            "h2c",
            "trailers",
            "localhost",
            "Transfer-Encoding",
            "Content-Length",
            "99999999999999999999",
        ]
    )
    | st.integers(0, 70000).map(str)
    | LATIN1
)


@st.composite
def requests(draw: st.DrawFn, origin_port: int) -> bytes:
    """A valid-ish request, possibly mutated afterwards."""
    method = draw(METHODS)
    if method == "CONNECT":
        target = draw(
            st.sampled_from(
                [
                    f"127.0.0.1:{origin_port}",
                    f"localhost:{origin_port}",
                    "127.0.0.1:1",
                    f"[::1]:{origin_port}",
                    "127.0.0.1",
                    "example.invalid:443",
                ]
            )
        )
    else:
        host = draw(st.sampled_from([f"127.0.0.1:{origin_port}", f"localhost:{origin_port}"]))
        target = draw(
            st.sampled_from(["http://", "HTTP://", "https://", "ftp://", ""]).map(
                lambda s: s + host if s else ""
            )
        ) + draw(PATHS)
    version = draw(st.sampled_from(["HTTP/1.1"] * 6 + ["HTTP/1.0", "HTTP/2", "HTTP/1.1 "]))
    headers = draw(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=8))
    body = b""
    framing = draw(st.sampled_from(["none", "none", "length", "chunked"]))
    if framing != "none" and method not in ("CONNECT",):
        data = draw(st.binary(max_size=300))
        if framing == "length":
            headers.append(("Content-Length", str(len(data))))
            body = data
        else:
            headers.append(("Transfer-Encoding", "chunked"))
            body = (f"{len(data):x}\r\n".encode() + data + b"\r\n" if data else b"") + b"0\r\n\r\n"
    head = f"{method} {target} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    raw = head.encode("latin-1") + b"\r\n" + body
    return draw(mutated(raw))


@st.composite
def mutated(draw: st.DrawFn, raw: bytes) -> bytes:
    """Apply 0-3 byte-level mutations: delete, insert, replace, CRLF -> LF, duplicate."""
    data = bytearray(raw)
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["delete", "insert", "replace", "lf", "dup"]))
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "delete" and data:
            del data[i : i + draw(st.integers(1, 8))]
        elif kind == "insert":
            data[i:i] = draw(
                st.sampled_from([b"\r\n", b"\n", b"\r", b"\x00", b" ", b":", b"\t", b"\xff"])
                | st.binary(min_size=1, max_size=4)
            )
        elif kind == "replace" and data:
            data[i] = draw(st.integers(0, 255))
        elif kind == "lf":
            data = bytearray(bytes(data).replace(b"\r\n", b"\n", 1))
        elif kind == "dup" and data:
            data[i:i] = data[i : i + draw(st.integers(1, 40))]
    return bytes(data)


# -- the tests ---------------------------------------------------------------------------------


def _after_fuzz_good_request_works(stack: Stack) -> None:
    good = f"GET http://127.0.0.1:{stack.origin_port}/bytes/100 HTTP/1.1\r\nHost: x\r\n\r\n"
    answer, _ = exchange(stack.port, good.encode())
    (ans,) = parse_answers(answer, "GET")
    assert ans.status == 200 and len(ans.body) == 100
    assert stack.settled(), "client connections still being served after the fuzz"
    assert stack.errors.records == [], stack.errors.records[:3]


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=False,
)
@given(data=st.data())
def test_fuzzed_request_heads_get_well_formed_answers(stack: Stack, data: st.DataObject) -> None:
    raw = data.draw(requests(stack.origin_port), label="request")
    before = stack.origin_requests
    answer, took = exchange(stack.port, raw)
    assert took < EXAMPLE_LIMIT
    judge(raw, answer, stack.origin_requests > before)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.binary(min_size=1, max_size=2000).map(lambda b: b + b"\r\n\r\n"))
def test_random_bytes_get_4xx_or_close(stack: Stack, raw: bytes) -> None:
    before = stack.origin_requests
    answer, took = exchange(stack.port, raw)
    assert took < EXAMPLE_LIMIT
    judge(raw, answer, stack.origin_requests > before)


def test_server_is_healthy_after_the_fuzz(stack: Stack) -> None:
    # (runs after the two fuzz tests in file order; also fine on its own)
    _after_fuzz_good_request_works(stack)
