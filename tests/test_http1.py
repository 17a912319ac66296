"""Tests for pycntlm.http1 (heads, targets, header rules, framing) and pycntlm.chunked.

Parsers are fed whole, byte by byte and with trailing data, in the manner of h11's test_io.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pycntlm import chunked, http1
from pycntlm.errors import ProtocolError
from pycntlm.http1 import (
    Body,
    ChunkedScanner,
    Framing,
    Request,
    Response,
    Target,
)

FUZZ = settings(max_examples=300, deadline=None)

REQ_HEAD = (
    b"GET http://example.com/a?b=c HTTP/1.1\r\n"
    b"Host: example.com\r\n"
    b"User-Agent: curl/8.1.2\r\n"
    b"Accept: */*\r\n"
    b"Proxy-Connection: keep-alive\r\n"
    b"\r\n"
)
RESP_HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\n"


def req(method: str = "GET", *headers: tuple[str, str], version: str = "HTTP/1.1") -> Request:
    return Request(method, "http://h/", version, tuple(headers))


def resp(status: int = 200, *headers: tuple[str, str], version: str = "HTTP/1.1") -> Response:
    return Response(version, status, "R", tuple(headers))


def status_of(fn: Callable[..., object], *args: object) -> int:
    with pytest.raises(ProtocolError) as info:
        fn(*args)
    return info.value.status


def short(value: object) -> str:
    """A test id that stays readable for long byte strings."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:50]}...({len(text)})"


# --- find_head_end ---------------------------------------------------------------------------


@pytest.mark.parametrize("head", [REQ_HEAD, RESP_HEAD, b"HTTP/1.0 200 OK\n\n"])
def test_find_head_end_whole_and_with_trailing_data(head: bytes) -> None:
    assert http1.find_head_end(head) == len(head)
    assert http1.find_head_end(head + b"GET / HTTP/1.1\r\n\r\n") == len(head)
    assert http1.find_head_end(bytearray(head + b"\r\n\r\nbody")) == len(head)
    assert http1.find_head_end(head[:-1]) == -1


@pytest.mark.parametrize("head", [REQ_HEAD, RESP_HEAD, b"HTTP/1.0 200 OK\nA: b\n\n"])
@pytest.mark.parametrize("backup", [0, 3])
def test_find_head_end_byte_by_byte_finds_the_end_once(head: bytes, backup: int) -> None:
    buf = bytearray()
    found = []
    scan_from = 0
    for i, byte in enumerate(head + b"trailing\r\n\r\n"):
        buf.append(byte)
        end = http1.find_head_end(buf, scan_from)
        if end >= 0:
            found.append((i, end))
            break
        scan_from = max(0, len(buf) - backup)
    assert found == [(len(head) - 1, len(head))]


def test_find_head_end_finds_bare_lf_end_so_a_request_gets_its_400() -> None:
    head = b"GET http://h/ HTTP/1.1\nHost: h\n\n"
    assert http1.find_head_end(head) == len(head)
    assert status_of(http1.parse_request, head) == 400
    # mixed endings: the earliest blank line wins
    assert http1.find_head_end(b"A\r\n\nB\r\n\r\n") == 4
    assert http1.find_head_end(b"A\n\r\nB\n\n") == 4


def test_find_head_end_limit() -> None:
    line = b"X: " + b"a" * 1000 + b"\r\n"
    big = b"GET http://h/ HTTP/1.1\r\n" + line * 70
    assert len(big) > http1.MAX_HEAD_SIZE
    assert status_of(http1.find_head_end, big) == 431
    assert status_of(http1.find_head_end, big + b"\r\n") == 431
    exact = b"A" * (http1.MAX_HEAD_SIZE - 4) + b"\r\n\r\n"
    assert http1.find_head_end(exact) == http1.MAX_HEAD_SIZE
    assert status_of(http1.find_head_end, b"A" + exact) == 431
    assert http1.find_head_end(b"A" * (http1.MAX_HEAD_SIZE - 1)) == -1


@given(st.binary(max_size=300), st.integers(0, 300))
@FUZZ
def test_find_head_end_resumed_equals_whole(data: bytes, cut: int) -> None:
    whole = http1.find_head_end(data)
    first = http1.find_head_end(data[:cut])
    if first >= 0:
        assert first == whole
    else:
        assert http1.find_head_end(data, min(cut, len(data))) == whole


# --- parse_request ---------------------------------------------------------------------------


def test_parse_request_basic() -> None:
    r = http1.parse_request(REQ_HEAD)
    assert r == Request(
        "GET",
        "http://example.com/a?b=c",
        "HTTP/1.1",
        (
            ("Host", "example.com"),
            ("User-Agent", "curl/8.1.2"),
            ("Accept", "*/*"),
            ("Proxy-Connection", "keep-alive"),
        ),
    )
    assert http1.serialize_request(r) == REQ_HEAD


def test_parse_request_values() -> None:
    head = (
        b"\r\nPOST http://h/ HTTP/1.0\r\n"  # one leading empty line is ignored
        b"A:  \t spaced \t \r\n"
        b"B:\r\n"
        b"C: in\tner\r\n"
        b"D: caf\xe9 \xff\r\n"
        b"a: 1\r\nA: 2\r\n"
        b"\r\n"
    )
    r = http1.parse_request(head)
    assert r.method == "POST" and r.version == "HTTP/1.0"
    assert r.headers == (
        ("A", "spaced"),
        ("B", ""),
        ("C", "in\tner"),
        ("D", "caf\xe9 \xff"),
        ("a", "1"),
        ("A", "2"),
    )
    assert http1.header_values(r.headers, "A") == ["spaced", "1", "2"]
    assert http1.parse_request(b"M-SEARCH * HTTP/1.1\r\n\r\n").method == "M-SEARCH"


BAD_REQUESTS = [
    (b"GET http://h/ HTTP/1.1\r\n", 400),  # no blank line
    (b"\r\n\r\n", 400),  # empty
    (b"GET  http://h/ HTTP/1.1\r\n\r\n", 400),  # two spaces
    (b"GET http://h/  HTTP/1.1\r\n\r\n", 400),
    (b"GET http://h/ HTTP/1.1 \r\n\r\n", 400),
    (b"GET\thttp://h/ HTTP/1.1\r\n\r\n", 400),
    (b"GET http://h/\tx HTTP/1.1\r\n\r\n", 400),
    (b"GET http://h/a b HTTP/1.1\r\n\r\n", 400),
    (b"GET http://h/\r\n\r\n", 400),  # HTTP/0.9 style
    (b"G@T http://h/ HTTP/1.1\r\n\r\n", 400),
    (b"G\xc9T http://h/ HTTP/1.1\r\n\r\n", 400),
    (b" GET http://h/ HTTP/1.1\r\n\r\n", 400),
    (b"GET http://h/ HTTP/1.1\r\n\r\n\r\n", 400),  # more than one head
    (b"GET http://h/ http/1.1\r\n\r\n", 400),
    (b"GET http://h/ HTTP/1.1x\r\n\r\n", 400),
    (b"GET http://h/ HTTP/11\r\n\r\n", 400),
    (b"GET http://h/ HTTP/\xb9.1\r\n\r\n", 400),
    (b"GET http://h/ HTTP/2.0\r\n\r\n", 505),
    (b"GET http://h/ HTTP/2\r\n\r\n", 505),
    (b"GET http://h/ HTTP/3.0\r\n\r\n", 505),
    (b"GET http://h/ HTTP/0.9\r\n\r\n", 505),
    (b"GET http://h/ HTTP/1.2\r\n\r\n", 505),
    (b"PRI * HTTP/2.0\r\n\r\n", 505),  # the HTTP/2 preface
    (b"GET http://h/ HTTP/1.1\r\nHost h\r\n\r\n", 400),  # no colon
    (b"GET http://h/ HTTP/1.1\r\n: v\r\n\r\n", 400),  # empty name
    (b"GET http://h/ HTTP/1.1\r\nHost : h\r\n\r\n", 400),  # space before colon
    (b"GET http://h/ HTTP/1.1\r\nHost\t: h\r\n\r\n", 400),
    (b"GET http://h/ HTTP/1.1\r\nA: b\r\n c\r\n\r\n", 400),  # obs-fold
    (b"GET http://h/ HTTP/1.1\r\nA: b\r\n\tc: d\r\n\r\n", 400),
    (b"GET http://h/ HTTP/1.1\r\nA\xe9: b\r\n\r\n", 400),  # non-ASCII name
    (b"GET http://h/ HTTP/1.1\r\nA(: b\r\n\r\n", 400),
    (b"GET http://h/ HTTP/1.1\r\nA: b\x00c\r\n\r\n", 400),  # NUL
    (b"GET http://h/ HTTP/1.1\r\nA: b\x01\r\n\r\n", 400),
    (b"GET http://h/ HTTP/1.1\r\nA: b\x7f\r\n\r\n", 400),
    (b"GET http://h/ HTTP/1.1\r\nA: b\rc\r\n\r\n", 400),  # bare CR
    (b"GET http://h/ HTTP/1.1\r\nA: b\nc: d\r\n\r\n", 400),  # bare LF
    (b"GET http://h/ HTTP/1.1\nA: b\n\n", 400),
    (b"GET http://h/ HTTP/1.1\r\nA: b\n\r\n", 400),
    (b"GET http://h/ HTTP/1.1\r\nA: " + b"x" * http1.MAX_LINE_SIZE + b"\r\n\r\n", 431),
    (b"GET http://h/" + b"x" * http1.MAX_LINE_SIZE + b" HTTP/1.1\r\n\r\n", 431),
    (b"GET http://h/ HTTP/1.1\r\n" + b"A: b\r\n" * (http1.MAX_HEADERS + 1) + b"\r\n", 431),
    (b"GET http://h/ HTTP/1.1\r\n" + (b"A: " + b"b" * 8000 + b"\r\n") * 9 + b"\r\n", 431),  # > 64K
]


@pytest.mark.parametrize(("head", "status"), BAD_REQUESTS, ids=short)
def test_malformed_requests(head: bytes, status: int) -> None:
    assert status_of(http1.parse_request, head) == status


def test_request_limits_allow_exactly_the_maximum() -> None:
    many = b"GET http://h/ HTTP/1.1\r\n" + b"A: b\r\n" * http1.MAX_HEADERS + b"\r\n"
    assert len(http1.parse_request(many).headers) == http1.MAX_HEADERS
    line = b"A: " + b"x" * (http1.MAX_LINE_SIZE - 3)
    long_line = b"GET http://h/ HTTP/1.1\r\n" + line + b"\r\n\r\n"
    assert http1.parse_request(long_line).headers[0][1] == "x" * (http1.MAX_LINE_SIZE - 3)


# --- parse_response --------------------------------------------------------------------------


def test_parse_response() -> None:
    r = http1.parse_response(RESP_HEAD)
    assert r == Response("HTTP/1.1", 200, "OK", (("Content-Length", "5"), ("X-A", "b")))
    assert http1.serialize_response(r) == RESP_HEAD
    lf = http1.parse_response(b"HTTP/1.0 407 Proxy Auth Required\nA: b\r\nC:d\n\n")
    assert lf == Response("HTTP/1.0", 407, "Proxy Auth Required", (("A", "b"), ("C", "d")))
    assert http1.parse_response(b"HTTP/1.1 204\r\n\r\n").reason == ""
    assert http1.parse_response(b"HTTP/1.1 599 \r\n\r\n").status == 599
    assert http1.parse_response(b"HTTP/1.1 200 caf\xe9\r\n\r\n").reason == "caf\xe9"


BAD_RESPONSES = [
    b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.1 200 OK\r\n\r\n\r\n",
    b"HTTP/2 200 OK\r\n\r\n",
    b"HTTP/1.1 20 OK\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/1.1 099 OK\r\n\r\n",
    b"HTTP/1.1 2x0 OK\r\n\r\n",
    b"HTTP/1.1 \xb200 OK\r\n\r\n",
    b"HTTP/1.1  200 OK\r\n\r\n",
    b"ICY 200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nA b\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nA : b\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nA: b\rc\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nA: b\x00\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n" + b"A: b\r\n" * (http1.MAX_HEADERS + 1) + b"\r\n",
    b"HTTP/1.1 200 OK\r\nA: " + b"b" * http1.MAX_LINE_SIZE + b"\r\n\r\n",
]


@pytest.mark.parametrize("head", BAD_RESPONSES, ids=short)
def test_malformed_responses_are_502(head: bytes) -> None:
    assert status_of(http1.parse_response, head) == 502


# --- serialising -----------------------------------------------------------------------------

_token = st.text("!#$%&'*+-.^_`|~0123456789azAZ", min_size=1, max_size=8)
_value = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=20).map(
    lambda v: v.strip(" \t").replace("\x7f", "")
)
_fields = st.lists(st.tuples(_token, _value), max_size=6).map(tuple)


@given(
    _token, st.text("abc/:?=&%", min_size=1, max_size=10), st.sampled_from(["1.0", "1.1"]), _fields
)
@FUZZ
def test_request_round_trip(method: str, target: str, minor: str, fields: http1.Headers) -> None:
    r = Request(method, target, "HTTP/" + minor, fields)
    data = http1.serialize_request(r)
    assert http1.find_head_end(data + b"junk") == len(data)
    assert http1.parse_request(data) == r


@given(st.integers(100, 999), _value, _fields)
@FUZZ
def test_response_round_trip(status: int, reason: str, fields: http1.Headers) -> None:
    r = Response("HTTP/1.1", status, reason, fields)
    assert http1.parse_response(http1.serialize_response(r)) == r


def test_serialize_refuses_header_injection() -> None:
    with pytest.raises(ValueError):
        http1.serialize_request(req("GET", ("A", "b\r\nX-Injected: 1")))
    with pytest.raises(ValueError):
        http1.serialize_response(Response("HTTP/1.1", 200, "OK\n", ()))


def test_simple_response() -> None:
    data = http1.simple_response(407, "Proxy Authentication Required", "héllo", keep_alive=False)
    end = http1.find_head_end(data)
    r = http1.parse_response(data[:end])
    assert (r.version, r.status, r.reason) == ("HTTP/1.1", 407, "Proxy Authentication Required")
    assert data[end:] == "héllo\n".encode()
    assert http1.header_values(r.headers, "content-length") == [str(len("héllo\n".encode()))]
    assert http1.header_values(r.headers, "content-type") == ["text/plain; charset=utf-8"]
    assert http1.connection_tokens(r.headers) == {"close"}
    assert http1.header_values(r.headers, "proxy-connection") == ["close"]
    ka = http1.simple_response(502, "Bad Gateway", "x", extra=(("Via", "pycntlm"),))
    r2 = http1.parse_response(ka[: http1.find_head_end(ka)])
    assert http1.header_values(r2.headers, "connection") == ["keep-alive"]
    assert r2.headers[-1] == ("Via", "pycntlm")
    assert http1.response_keeps_alive(r2, "GET")


# --- request targets -------------------------------------------------------------------------

TARGETS = [
    ("CONNECT", "example.com:443", Target("", "example.com", 443, "")),
    ("CONNECT", "EXAMPLE.com:8443", Target("", "example.com", 8443, "")),
    ("CONNECT", "10.0.0.1:65535", Target("", "10.0.0.1", 65535, "")),
    ("CONNECT", "[::1]:443", Target("", "::1", 443, "")),
    ("CONNECT", "[2001:DB8::1]:22", Target("", "2001:db8::1", 22, "")),
    ("GET", "http://Example.COM/Path?Q=1", Target("http", "example.com", 80, "/Path?Q=1")),
    ("GET", "HTTPS://h", Target("https", "h", 443, "/")),
    ("GET", "http://h?q", Target("http", "h", 80, "/?q")),
    ("GET", "http://h#frag", Target("http", "h", 80, "/")),
    ("GET", "http://h/p?q#frag?x", Target("http", "h", 80, "/p?q")),
    ("GET", "http://h:8080/", Target("http", "h", 8080, "/")),
    ("GET", "http://h:/", Target("http", "h", 80, "/")),
    ("GET", "http://user:pa%40ss@h:81/x", Target("http", "h", 81, "/x")),
    ("GET", "http://@h/", Target("http", "h", 80, "/")),
    ("GET", "http://[fe80::1]:8080/x", Target("http", "fe80::1", 8080, "/x")),
    ("GET", "http://[::ffff:1.2.3.4]/", Target("http", "::ffff:1.2.3.4", 80, "/")),
    ("POST", "http://a.b-c_d~e/", Target("http", "a.b-c_d~e", 80, "/")),
]


@pytest.mark.parametrize(("method", "target", "expected"), TARGETS)
def test_request_target(method: str, target: str, expected: Target) -> None:
    assert http1.request_target(Request(method, target, "HTTP/1.1", ())) == expected


BAD_TARGETS = [
    ("CONNECT", "example.com"),  # port required
    ("CONNECT", "example.com:"),
    ("CONNECT", "example.com:0"),
    ("CONNECT", "example.com:65536"),
    ("CONNECT", "example.com:+443"),
    ("CONNECT", "example.com:44\u00b3"),
    ("CONNECT", "example.com:443/path"),
    ("CONNECT", "user@example.com:443"),
    ("CONNECT", ":443"),
    ("CONNECT", "::1:443"),
    ("CONNECT", "[::1:443"),
    ("CONNECT", "[::1]x:443"),
    ("CONNECT", "[nothex]:443"),
    ("CONNECT", "[fe80::1%25eth0]:443"),
    ("CONNECT", "http://h:443"),
    ("GET", "/origin-form"),
    ("OPTIONS", "*"),
    ("GET", "ftp://h/"),
    ("GET", "http:/h/"),
    ("GET", "h:80"),
    ("GET", "http:///x"),
    ("GET", "http://h:99999/"),
    ("GET", "http://h:8o/"),
    ("GET", "http://h%2e/"),
    ("GET", "http://evil.com\\@good.com/"),
    ("GET", "http://a b/"),
    ("GET", "http://h\xe9/"),
    ("GET", "http://" + "a" * 256 + "/"),
]


@pytest.mark.parametrize(("method", "target"), BAD_TARGETS)
def test_bad_request_targets(method: str, target: str) -> None:
    assert status_of(http1.request_target, Request(method, target, "HTTP/1.1", ())) == 400


def test_origin_form_message() -> None:
    with pytest.raises(ProtocolError, match="proxy request needs an absolute URI"):
        http1.request_target(Request("GET", "/", "HTTP/1.1", ()))


@pytest.mark.parametrize(
    ("target", "uri"),
    [
        ("http://u:p@Example.com:80/a?b#c", "http://example.com/a?b"),
        ("https://h:443", "https://h/"),
        ("http://h:8080", "http://h:8080/"),
        ("http://[::1]:81/x", "http://[::1]:81/x"),
    ],
)
def test_absolute_uri_rebuilds_without_userinfo(target: str, uri: str) -> None:
    t = http1.request_target(Request("GET", target, "HTTP/1.1", ()))
    assert http1.absolute_uri(t) == uri
    assert http1.request_target(Request("GET", uri, "HTTP/1.1", ())) == t


# --- header rules ----------------------------------------------------------------------------


def test_connection_tokens() -> None:
    headers = (
        ("Connection", "Keep-Alive, X-Foo"),
        ("connection", " ,  close ,"),
        ("Proxy-Connection", "UPGRADE"),
        ("X-Connection", "nope"),
    )
    assert http1.connection_tokens(headers) == {"keep-alive", "x-foo", "close", "upgrade"}
    assert http1.connection_tokens((("Host", "h"),)) == set()


HOP_BY_HOP = [
    ((("Host", "h"), ("Connection", "close"), ("Keep-Alive", "5")), (), (("Host", "h"),)),
    (
        (
            ("A", "1"),
            ("Proxy-Connection", "keep-alive"),
            ("Proxy-Authorization", "NTLM x"),
            ("Proxy-Authenticate", "NTLM"),
            ("TE", "trailers"),
            ("Trailer", "X"),
            ("Upgrade", "websocket"),
            ("B", "2"),
        ),
        (),
        (("A", "1"), ("B", "2")),
    ),
    (  # Connection names fields to drop, across several headers, any case
        (
            ("X-A", "1"),
            ("connection", "x-a"),
            ("X-B", "2"),
            ("CONNECTION", "X-B, x-c"),
            ("x-c", ""),
        ),
        (),
        (),
    ),
    (  # Connection can never take away the framing
        (
            ("Connection", "Transfer-Encoding, content-length"),
            ("Transfer-Encoding", "chunked"),
            ("Content-Length", "3"),
        ),
        (),
        (("Transfer-Encoding", "chunked"), ("Content-Length", "3")),
    ),
    (
        (("Host", "h"), ("Via", "x"), ("VIA", "y"), ("Z", "z")),
        ("via",),
        (("Host", "h"), ("Z", "z")),
    ),
]


@pytest.mark.parametrize(("headers", "drop", "expected"), HOP_BY_HOP)
def test_forward_headers(
    headers: http1.Headers, drop: tuple[str, ...], expected: http1.Headers
) -> None:
    assert http1.forward_headers(headers, drop=drop) == expected


# --- body framing ----------------------------------------------------------------------------

REQUEST_BODIES = [
    ((), "HTTP/1.1", Body(Framing.NONE)),
    ((("Content-Length", "5"),), "HTTP/1.1", Body(Framing.LENGTH, 5)),
    ((("Content-Length", "0"),), "HTTP/1.0", Body(Framing.LENGTH, 0)),
    ((("Content-Length", "007"),), "HTTP/1.1", Body(Framing.LENGTH, 7)),
    ((("Content-Length", "5, 5"),), "HTTP/1.1", Body(Framing.LENGTH, 5)),
    ((("Content-Length", "5"), ("content-length", "5")), "HTTP/1.1", Body(Framing.LENGTH, 5)),
    ((("Content-Length", str(2**62)),), "HTTP/1.1", Body(Framing.LENGTH, 2**62)),
    ((("Transfer-Encoding", "chunked"),), "HTTP/1.1", Body(Framing.CHUNKED)),
    ((("Transfer-Encoding", "Chunked"),), "HTTP/1.1", Body(Framing.CHUNKED)),
    ((("Transfer-Encoding", "gzip, chunked"),), "HTTP/1.1", Body(Framing.CHUNKED)),
    (
        (("Transfer-Encoding", "gzip"), ("Transfer-Encoding", "chunked")),
        "HTTP/1.1",
        Body(Framing.CHUNKED),
    ),
]


@pytest.mark.parametrize(("headers", "version", "expected"), REQUEST_BODIES)
def test_request_body(headers: http1.Headers, version: str, expected: Body) -> None:
    assert http1.request_body(Request("POST", "http://h/", version, headers)) == expected


SMUGGLING = [
    (("Content-Length", "5"), ("Transfer-Encoding", "chunked")),
    (("Transfer-Encoding", "chunked"), ("Content-Length", "0")),
    (("Transfer-Encoding", "chunked, identity"),),
    (("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "identity")),
    (("Transfer-Encoding", "xchunked"),),
    (("Transfer-Encoding", "chunked;q=1"),),
    (("Transfer-Encoding", "chunked, chunked"),),
    (("Transfer-Encoding", ""),),
    (("Transfer-Encoding", "identity"),),
    (("Content-Length", "5"), ("Content-Length", "6")),
    (("Content-Length", "5, 6"),),
    (("Content-Length", "5,"),),
    (("Content-Length", ""),),
    (("Content-Length", "-1"),),
    (("Content-Length", "+5"),),
    (("Content-Length", "0x10"),),
    (("Content-Length", "1 0"),),
    (("Content-Length", "1_0"),),
    (("Content-Length", "\u00b2"),),
    (("Content-Length", str(2**62 + 1)),),
    (("Content-Length", "9" * 5000),),
]


@pytest.mark.parametrize("headers", SMUGGLING)
def test_request_smuggling_framings_are_400(headers: http1.Headers) -> None:
    assert status_of(http1.request_body, Request("POST", "http://h/", "HTTP/1.1", headers)) == 400


def test_request_smuggling_via_the_head_is_400() -> None:
    for head in (
        b"POST http://h/ HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n",
        b"POST http://h/ HTTP/1.1\r\nX: y\r\n Transfer-Encoding: chunked\r\n\r\n",
        b"POST http://h/ HTTP/1.1\r\nTransfer-Encoding: chunked\x00\r\n\r\n",
        b"POST http://h/ HTTP/1.1\r\nX: y\rTransfer-Encoding: chunked\r\n\r\n",
        b"POST http://h/ HTTP/1.1\r\nX: y\nTransfer-Encoding: chunked\r\n\r\n",
    ):
        assert status_of(http1.parse_request, head) == 400
    te10 = Request("POST", "http://h/", "HTTP/1.0", (("Transfer-Encoding", "chunked"),))
    assert status_of(http1.request_body, te10) == 400


RESPONSE_BODIES = [
    ("HEAD", resp(200, ("Content-Length", "5")), Body(Framing.NONE)),
    # methods are case-sensitive (RFC 9110 9.1): "head" is not HEAD, its answer has a body
    ("head", resp(200, ("Transfer-Encoding", "chunked")), Body(Framing.CHUNKED)),
    ("GET", resp(100), Body(Framing.NONE)),
    ("GET", resp(101), Body(Framing.NONE)),
    ("GET", resp(204, ("Content-Length", "5")), Body(Framing.NONE)),
    ("GET", resp(304, ("Content-Length", "5")), Body(Framing.NONE)),
    ("CONNECT", resp(200), Body(Framing.NONE)),
    ("CONNECT", resp(299, ("Content-Length", "5")), Body(Framing.NONE)),
    ("CONNECT", resp(407, ("Content-Length", "5")), Body(Framing.LENGTH, 5)),
    ("GET", resp(200, ("Transfer-Encoding", "chunked")), Body(Framing.CHUNKED)),
    ("GET", resp(200, ("Transfer-Encoding", "gzip,chunked")), Body(Framing.CHUNKED)),
    (
        "GET",
        resp(200, ("Transfer-Encoding", "chunked"), ("Content-Length", "5")),
        Body(Framing.CHUNKED),
    ),
    ("GET", resp(200, ("Transfer-Encoding", "gzip")), Body(Framing.UNTIL_CLOSE)),
    ("GET", resp(200, ("Transfer-Encoding", "chunked, gzip")), Body(Framing.UNTIL_CLOSE)),
    (
        "GET",
        resp(200, ("Transfer-Encoding", "chunked"), version="HTTP/1.0"),
        Body(Framing.UNTIL_CLOSE),
    ),
    ("GET", resp(200, ("Content-Length", "5")), Body(Framing.LENGTH, 5)),
    ("POST", resp(404, ("Content-Length", "0")), Body(Framing.LENGTH, 0)),
    ("GET", resp(200, ("Content-Length", "5,5")), Body(Framing.LENGTH, 5)),
    ("GET", resp(200), Body(Framing.UNTIL_CLOSE)),
    ("GET", resp(200, version="HTTP/1.0"), Body(Framing.UNTIL_CLOSE)),
]


@pytest.mark.parametrize(("method", "response", "expected"), RESPONSE_BODIES)
def test_response_body(method: str, response: Response, expected: Body) -> None:
    assert http1.response_body(response, method) == expected


@pytest.mark.parametrize("value", ["5, 6", "x", "-1", "", str(2**63)])
def test_response_bad_content_length_is_502(value: str) -> None:
    assert status_of(http1.response_body, resp(200, ("Content-Length", value)), "GET") == 502


KEEP_ALIVE_REQUESTS = [
    (req("GET"), True),
    (req("GET", ("Connection", "close")), False),
    (req("GET", ("Proxy-Connection", "Close")), False),
    (req("GET", ("Connection", "keep-alive, close")), False),
    (req("GET", version="HTTP/1.0"), False),
    (req("GET", ("Proxy-Connection", "Keep-Alive"), version="HTTP/1.0"), True),
    (req("GET", ("Connection", "keep-alive"), ("Connection", "close"), version="HTTP/1.0"), False),
]


@pytest.mark.parametrize(("request_", "expected"), KEEP_ALIVE_REQUESTS)
def test_client_wants_keep_alive(request_: Request, expected: bool) -> None:
    assert http1.client_wants_keep_alive(request_) is expected


KEEP_ALIVE_RESPONSES = [
    ("GET", resp(200, ("Content-Length", "5")), True),
    ("GET", resp(200, ("Transfer-Encoding", "chunked")), True),
    ("GET", resp(204), True),
    ("HEAD", resp(200), True),
    ("GET", resp(304), True),
    ("CONNECT", resp(407, ("Content-Length", "0")), True),
    ("GET", resp(200), False),  # until close
    ("GET", resp(200, ("Content-Length", "5"), ("Connection", "close")), False),
    ("GET", resp(200, ("Content-Length", "5"), ("Proxy-Connection", "CLOSE")), False),
    ("GET", resp(200, ("Content-Length", "5"), version="HTTP/1.0"), False),
    (
        "GET",
        resp(200, ("Content-Length", "5"), ("Connection", "keep-alive"), version="HTTP/1.0"),
        True,
    ),
    ("GET", resp(200, ("Transfer-Encoding", "chunked"), ("Content-Length", "5")), False),
    ("GET", resp(200, ("Transfer-Encoding", "gzip")), False),
    ("GET", resp(200, ("Content-Length", "x")), False),
    ("GET", resp(101, ("Connection", "upgrade")), False),
    ("CONNECT", resp(200), False),  # became a tunnel
]


@pytest.mark.parametrize(("method", "response", "expected"), KEEP_ALIVE_RESPONSES)
def test_response_keeps_alive(method: str, response: Response, expected: bool) -> None:
    assert http1.response_keeps_alive(response, method) is expected


# --- ChunkedScanner --------------------------------------------------------------------------


def scan_whole(body: bytes) -> tuple[int, bool]:
    s = ChunkedScanner()
    return s.feed(body), s.done


def scan_pieces(data: bytes, cuts: list[int]) -> tuple[int, bool]:
    """Feed data cut at the given offsets; returns bytes claimed (stopping once done)."""
    s = ChunkedScanner()
    total = 0
    bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(data))), len(data)]
    for a, b in itertools.pairwise(bounds):
        n = s.feed(data[a:b])
        assert 0 <= n <= b - a
        total += n
        if s.done:
            assert s.feed(data[a + n : b]) == 0
            break
        assert n == b - a  # not done: every byte belongs to the body
    return total, s.done


CHUNKED_BODIES = [
    b"0\r\n\r\n",
    b"5\r\nhello\r\n0\r\n\r\n",
    b"5;name=val\r\nhello\r\n0\r\n\r\n",
    b'5 ; name = "quoted;\\"x" ;b\r\nhello\r\n0;last\r\n\r\n',
    b"A\r\n0123456789\r\na\r\n0123456789\r\n000\r\n\r\n",
    b"0000000000000001\r\n\n\r\n0\r\n\r\n",
    b"3\r\n\r\n\r\r\n0\r\nExpires: never\r\nX-Sum:  abc \r\n\r\n",
]


@pytest.mark.parametrize("body", CHUNKED_BODIES)
def test_chunked_whole_byte_by_byte_and_with_trailing_data(body: bytes) -> None:
    assert scan_whole(body) == (len(body), True)
    assert scan_whole(body + b"HTTP/1.1 200 OK\r\n\r\n") == (len(body), True)
    assert scan_pieces(body + b"junk", list(range(len(body) + 4))) == (len(body), True)
    s = ChunkedScanner()
    assert s.feed(memoryview(b"x" + body + b"y")[1:]) == len(body)  # an offset memoryview
    assert s.done
    assert scan_whole(body[:-1]) == (len(body) - 1, False)


BAD_CHUNKED = [
    b"\r\n",
    b"x\r\n",
    b"-1\r\n",
    b"+1\r\n",
    b"0x5\r\n",
    b" 5\r\n",
    b"5 \r\n",  # whitespace only allowed before a ";"
    b"5\t\r\n",
    b"5\n",  # bare LF
    b"5\rx\r\n",
    b"1_0\r\n",
    b"F" * 17 + b"\r\n",
    b"1" * 100 + b"\r\n",
    b"5\r\nhelloXX",  # data not followed by CRLF
    b"5\r\nhello\rX",
    b"5\r\nhello\n",
    b"5;a=\x00\r\n",
    b"0\r\nbad trailer\r\n",
    b"0\r\n: v\r\n",
    b"0\r\nA : v\r\n",
    b"0\r\n folded\r\n",
    b"0\r\nA: v\n",
    b"0\r\nA: \x01\r\n",
    b"5;" + b"e" * chunked.MAX_CHUNK_LINE_SIZE + b"\r\n",
    b"0\r\nA: " + b"v" * chunked.MAX_CHUNK_LINE_SIZE + b"\r\n",
    b"0\r\n" + (b"A: " + b"v" * 8000 + b"\r\n") * 10,  # trailer section too large
]


@pytest.mark.parametrize("data", BAD_CHUNKED, ids=short)
def test_chunked_errors_whole_and_byte_by_byte(data: bytes) -> None:
    assert status_of(ChunkedScanner().feed, data) == 400
    s = ChunkedScanner()
    with pytest.raises(ProtocolError):
        for i in range(len(data)):
            s.feed(data[i : i + 1])


def test_chunked_line_limit_is_exact() -> None:
    line = b"5;" + b"e" * (chunked.MAX_CHUNK_LINE_SIZE - 4) + b"\r\n"
    assert len(line) == chunked.MAX_CHUNK_LINE_SIZE
    body = line + b"hello\r\n0\r\n\r\n"
    assert scan_whole(body) == (len(body), True)
    assert scan_pieces(body, [1, 100, 5000, 8191, 8192]) == (len(body), True)


def test_chunked_large_chunk_skips_without_looking() -> None:
    s = ChunkedScanner()
    assert s.feed(b"4000000000000000\r\n") == 18  # 2**62 bytes announced
    block = memoryview(bytearray(1 << 20))
    for _ in range(64):
        assert s.feed(block) == len(block)
    assert not s.done


_chunk_ext = st.sampled_from([b"", b";a", b";a=b", b' ; a = "x;y"', b";a;b=c"])
_trailer = st.sampled_from([b"", b"X: y\r\n", b"Expires: 0\r\nX-Sum: abc\r\n"])


@st.composite
def chunked_bodies(draw: st.DrawFn) -> bytes:
    out = []
    for data in draw(st.lists(st.binary(min_size=1, max_size=40), max_size=6)):
        size = draw(st.sampled_from(["{:x}", "{:X}", "{:04x}"])).format(len(data)).encode()
        out.append(size + draw(_chunk_ext) + b"\r\n" + data + b"\r\n")
    out.append(b"0" + draw(_chunk_ext) + b"\r\n" + draw(_trailer) + b"\r\n")
    return b"".join(out)


@given(chunked_bodies(), st.binary(max_size=20), st.lists(st.integers(0, 400), max_size=12))
@FUZZ
def test_chunked_random_splits(body: bytes, junk: bytes, cuts: list[int]) -> None:
    assert scan_pieces(body + junk, cuts) == (len(body), True)


# --- fuzzing: arbitrary input raises ProtocolError only --------------------------------------


@given(st.binary(max_size=300))
@FUZZ
def test_fuzz_heads(data: bytes) -> None:
    for fn in (http1.parse_request, http1.parse_response, http1.find_head_end):
        with contextlib.suppress(ProtocolError):
            fn(data)


_near_valid = st.builds(
    lambda head, i, b: head[:i] + bytes([b]) + head[i + 1 :],
    st.sampled_from([REQ_HEAD, RESP_HEAD, b"CONNECT h:443 HTTP/1.0\r\nA: b\r\n\r\n"]),
    st.integers(0, 120),
    st.integers(0, 255),
)


@given(_near_valid)
@FUZZ
def test_fuzz_near_valid_heads(data: bytes) -> None:
    for parse in (http1.parse_request, http1.parse_response):
        try:
            message = parse(data)
        except ProtocolError:
            continue
        try:
            if isinstance(message, Request):
                http1.request_target(message)
                http1.request_body(message)
                http1.client_wants_keep_alive(message)
            else:
                http1.response_body(message, "GET")
                http1.response_keeps_alive(message, "GET")
        except ProtocolError:
            pass


@given(st.binary(max_size=200), st.lists(st.integers(0, 200), max_size=8))
@FUZZ
def test_fuzz_chunked(data: bytes, cuts: list[int]) -> None:
    try:
        scan_pieces(b"5\r\n" + data, cuts)
        scan_pieces(data, cuts)
    except ProtocolError:
        pass


@given(st.text(max_size=40), st.sampled_from(["GET", "CONNECT"]))
@FUZZ
def test_fuzz_request_target(target: str, method: str) -> None:
    try:
        t = http1.request_target(Request(method, target, "HTTP/1.1", ()))
    except ProtocolError:
        return
    assert t.host and t.host == t.host.lower() and 0 < t.port < 65536
    assert "@" not in t.host and "/" not in t.host


def test_lower_case_connect_is_not_connect() -> None:
    # "connect" is an unknown method whose target is not a URI: a 400, not a tunnel
    with pytest.raises(ProtocolError) as info:
        http1.request_target(Request("connect", "h:1", "HTTP/1.1", ()))
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("target", "logged"),
    [
        ("http://alice:pw@h/p", "http://***@h/p"),
        ("https://u@h:443/x?q=1", "https://***@h:443/x?q=1"),
        ("http://a@b@h/", "http://***@h/"),
        ("u:p@h:443", "***@h:443"),  # a CONNECT authority
        ("http://h/p?mail=a@b", "http://h/p?mail=a@b"),  # an @ after the authority stays
        ("http://h/p#x@y", "http://h/p#x@y"),
        ("h:443", "h:443"),
        ("/p@x", "/p@x"),
        ("*", "*"),
    ],
)
def test_log_target_hides_userinfo(target: str, logged: str) -> None:
    assert http1.log_target(target) == logged


@given(st.text(max_size=20), st.text(max_size=20), st.sampled_from(["http://", "https://", ""]))
def test_log_target_never_shows_the_password(user: str, password: str, scheme: str) -> None:
    secret = f"{user}:{password}-S3CRET"
    assume(not any(c in secret for c in "/?#@"))
    logged = http1.log_target(f"{scheme}{secret}@host.example:8080/path")
    assert "S3CRET" not in logged and logged.endswith("@host.example:8080/path")
