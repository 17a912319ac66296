"""PAC support: result parsing, query normalisation, caches, every helper function, limits, and
PAC files fetched from a loopback aiohttp server (fetched, cached, refreshed, kept when down).

Names resolved here are IP literals, "localhost" (/etc/hosts) or answered by an injected
resolver: no test sends a DNS query anywhere.
"""

from __future__ import annotations

import asyncio
import calendar
import gc
import json
import logging
import re
import time
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from pycntlm.errors import PycntlmError
from pycntlm.pac import PacEngine, PacError, PacOptions, PacSource, local_ipv4
from pycntlm.pacfuncs import (
    DIRECT,
    DecisionKeys,
    Route,
    TtlLru,
    connect_url,
    pac_query,
    parse_result,
    uses_first_argument,
)

MY_IP = "10.20.30.40"
FAST = PacOptions(time_limit=0.05)
# Wednesday 2024-01-17 12:34:56 UTC
WED = calendar.timegm((2024, 1, 17, 12, 34, 56, 0, 0, 0))


def no_dns(name: str) -> str | None:
    raise AssertionError(f"unexpected blocking look-up of {name!r}")


def fake_dns(
    table: Mapping[str, str | None], calls: list[str] | None = None
) -> Callable[[str], str | None]:
    def resolve(name: str) -> str | None:
        if calls is not None:
            calls.append(name)
        return table.get(name)

    return resolve


def engine(source: str, **kwargs: object) -> PacEngine:
    kwargs.setdefault("my_ip", MY_IP)
    kwargs.setdefault("resolver", fake_dns({}))
    return PacEngine(source, **kwargs)  # type: ignore[arg-type]


def js(expr: str, **kwargs: object) -> str:
    """The value of a JS expression inside FindProxyForURL, as a string (through a route)."""
    source = f"function FindProxyForURL(url, host) {{ return 'PROXY ' + String({expr}) + ':1'; }}"
    return engine(source, **kwargs).find("http://example.test/")[0].host


def proxy(host: str, port: int) -> Route:
    return Route("PROXY", host, port)


# --- parse_result ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "routes"),
    [
        ("PROXY a:8080; PROXY b:3128; DIRECT", [proxy("a", 8080), proxy("b", 3128), DIRECT]),
        ("DIRECT", [DIRECT]),
        ("proxy A.Example:81", [proxy("a.example", 81)]),
        ("HTTP a:1;PROXY b", [proxy("a", 1), proxy("b", 80)]),
        ("PROXY [::1]:3128", [proxy("::1", 3128)]),
        ("  PROXY   a:1  ;; ; DIRECT ;", [proxy("a", 1), DIRECT]),
        ("", [DIRECT]),
        ("   ", [DIRECT]),
        ("garbage", [DIRECT]),
        ("PROXY a:99999; PROXY :1; PROXY", [DIRECT]),
        ("SOCKS5 s:1080", []),
        ("HTTPS h:443; SOCKS s:1080", []),
        ("SOCKS s:1080; PROXY p:3128", [proxy("p", 3128)]),
        ("HTTPS h:443; DIRECT", [DIRECT]),
    ],
)
def test_parse_result(text: str, routes: list[Route]) -> None:
    assert parse_result(text) == routes


def test_route_str() -> None:
    assert [str(r) for r in parse_result("PROXY a:1; PROXY [::1]:2; DIRECT")] == [
        "PROXY a:1",
        "PROXY [::1]:2",
        "DIRECT",
    ]


@given(st.text())
def test_parse_result_never_raises(text: str) -> None:
    for route in parse_result(text):
        assert route.kind == "DIRECT" or (route.host and 0 < route.port < 65536)


# --- pac_query ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "host", "expected"),
    [
        ("http://u:p@Example.COM/a/b?q=1#frag", "", ("http://example.com/a/b?q=1", "example.com")),
        ("http://example.com", "", ("http://example.com/", "example.com")),
        ("http://example.com:80/x", "", ("http://example.com/x", "example.com")),
        ("http://example.com:8080/x", "", ("http://example.com:8080/x", "example.com")),
        ("https://example.com/secret/path?token=1", "", ("https://example.com/", "example.com")),
        ("https://example.com:8443/p", "", ("https://example.com:8443/", "example.com")),
        ("wss://example.com/chat", "", ("wss://example.com/", "example.com")),
        ("example.com:443", "", ("https://example.com/", "example.com")),
        ("example.com:22", "", ("https://example.com:22/", "example.com")),
        ("[::1]:443", "", ("https://[::1]/", "::1")),
        ("http://[::1]:8080/", "[::1]", ("http://[::1]:8080/", "::1")),
        ("http://example.com/", "Other.Example", ("http://example.com/", "other.example")),
    ],
)
def test_pac_query(url: str, host: str, expected: tuple[str, str]) -> None:
    query = pac_query(url, host)
    assert (query.url, query.host) == expected


def test_pac_query_key_fields() -> None:
    assert pac_query("example.com:22").port == 22
    assert pac_query("https://example.com/").port == 443
    assert pac_query("http://example.com/").scheme == "http"


@pytest.mark.parametrize("url", ["http://example.com:99999/", "http:///nohost", "http://:80/"])
def test_pac_query_rejects(url: str) -> None:
    with pytest.raises(PacError):
        pac_query(url)


def test_connect_url() -> None:
    assert connect_url("example.com", 443) == "https://example.com/"
    assert connect_url("example.com", 22) == "https://example.com:22/"
    assert connect_url("[::1]", 8443) == "https://[::1]:8443/"


NAMES = ["a.example", "A.Example", "[::1]", "[v1.x]", "[1.2.3.4]", "[zz]", "", "ex ample"]
NAMES += ["ex\tample", "exa%mple", "\u00e9.example", "\u2100.example", "[::1", "::1]", "a?b"]
URLS = st.builds(
    "{}://{}{}{}{}".format,
    st.sampled_from(["http", "HTTP", "https", "wss", "ftp", "gopher", "h\ttp", "1x", "a:b", ""]),
    st.sampled_from(["", "u@", "u:p@", "a@b@", "[x]@", "u:p:q@", "u/x@", "\t@"]),
    st.sampled_from(NAMES),
    st.sampled_from(["", ":", ":80", ":8080", ":0", ":65535", ":65536", ":x", ":\uff18", ":1:2"]),
    st.sampled_from(["", "/", "/p?q#f", "?q", "#f", "/a\tb", "/x://y", "\r\n/", "/[::1]"]),
)
HOSTS = st.sampled_from(["", "a.example", " A.Example ", "[::1]", "::1", "x.example"])


def assert_keys_agree(keys: DecisionKeys, url: str, host: str) -> None:
    """keys.key gives pac_query's (scheme, host, port), and raises when pac_query raises (a key
    there would let a cached decision answer a URL pac_query refuses)."""
    try:
        query = pac_query(url, host)
    except PacError:
        with pytest.raises(PacError):
            keys.key(url, host)
        return
    assert keys.key(url, host) == (query.scheme, query.host, str(query.port))


@given(st.lists(st.tuples(URLS, HOSTS), max_size=30))
def test_decision_keys_agree_with_pac_query(requests: list[tuple[str, str]]) -> None:
    keys = DecisionKeys()  # one for all: a key remembered for one URL is reused for others
    for url, host in requests + requests[::-1]:
        assert_keys_agree(keys, url, host)


@given(st.lists(st.tuples(st.text("ab:/?#@[]%\t\n .1", max_size=12), HOSTS), max_size=20))
def test_decision_keys_agree_with_pac_query_on_any_text(parts: list[tuple[str, str]]) -> None:
    keys = DecisionKeys(maxsize=8)
    for text, host in parts:
        for url in (f"{text}://{text}", f"http://{text}", f"http://a.example{text}", text):
            assert_keys_agree(keys, url, host)
    assert len(keys) <= 8


@pytest.mark.parametrize(
    ("url", "host", "key"),
    [
        ("http://u:p@a.example:8080/x?y#z", "a.example", ("http", "a.example", "8080")),
        ("HTTP://A.example/x", "A.Example", ("http", "a.example", "80")),
        ("http://[::1]:81/", "[::1]", ("http", "::1", "81")),
        ("https://[::1]/", "::1", ("https", "::1", "443")),
        ("http://a.example:0/", "a.example", ("http", "a.example", "80")),
        ("gopher://a.example/", "a.example", ("gopher", "a.example", "0")),
        ("a.example:22", "a.example", ("https", "a.example", "22")),
    ],
)
def test_decision_keys(url: str, host: str, key: tuple[str, str, str]) -> None:
    assert DecisionKeys().key(url, host) == key


@pytest.mark.parametrize("url", ["http://a.example:99999/", "http://[zz]/", "http:///x"])
def test_decision_keys_refuse_what_pac_query_refuses(url: str) -> None:
    keys = DecisionKeys()
    for _ in range(2):
        with pytest.raises(PacError):
            keys.key(url, "a.example")
    assert len(keys) == 0


# --- TtlLru ---------------------------------------------------------------------------------


def test_ttl_lru_expiry_and_eviction() -> None:
    cache: TtlLru[str, int] = TtlLru(maxsize=2, ttl=10.0)
    assert cache.put("a", 1, now=0.0) == []
    cache.put("b", 2, now=0.0)
    assert cache.get("a", now=5.0) == 1  # a is now the most recent
    assert cache.put("c", 3, now=5.0) == ["b"]
    assert "b" not in cache and len(cache) == 2
    assert cache.get("a", now=10.0) is None  # expired at 0 + 10
    cache.put("d", 4, now=6.0, ttl=1.0)
    assert cache.expire(now=8.0) == ["d"]
    assert cache.get("c", now=14.9) == 3
    assert (cache.hits, cache.misses) == (2, 1)  # a, c; a expired


# --- routing --------------------------------------------------------------------------------

ROUTING_PAC = """
function FindProxyForURL(url, host) {
    if (isPlainHostName(host) || dnsDomainIs(host, ".corp.example")) return "DIRECT";
    if (shExpMatch(host, "*.eu.example")) return "PROXY eu-proxy:3128";
    if (isInNet(host, "192.168.0.0", "255.255.0.0")) return "PROXY lan-proxy:8080";
    if (isInNet(host, "10.0.0.0", "255.0.0.0")) return "PROXY ten-a:8080; PROXY ten-b:8081; DIRECT";
    return "PROXY default:80";
}
"""


@pytest.mark.parametrize(
    ("url", "routes"),
    [
        ("http://intranet/", [DIRECT]),
        ("http://wiki.corp.example/page", [DIRECT]),
        ("https://www.eu.example/login", [proxy("eu-proxy", 3128)]),
        ("http://192.168.7.9:8000/", [proxy("lan-proxy", 8080)]),
        ("10.1.2.3:443", [proxy("ten-a", 8080), proxy("ten-b", 8081), DIRECT]),
        ("http://172.16.0.1/", [proxy("default", 80)]),
    ],
)
def test_routes_by_host(url: str, routes: list[Route]) -> None:
    assert engine(ROUTING_PAC, resolver=no_dns).find(url) == routes


def test_isinnet_with_a_name_resolves_it() -> None:
    pac = engine(ROUTING_PAC, resolver=fake_dns({"printer.lan": "192.168.1.20"}))
    assert pac.find("http://printer.lan/") == [proxy("lan-proxy", 8080)]
    assert pac.find("http://unknown.lan/") == [proxy("default", 80)]


async def test_afind_resolves_through_the_loop() -> None:
    pac = engine(ROUTING_PAC, resolver=no_dns)
    assert await pac.afind("http://sub.eu.example/") == [proxy("eu-proxy", 3128)]
    source = "function FindProxyForURL(u, h) { return 'PROXY ' + dnsResolve(h) + ':1'; }"
    assert await engine(source, resolver=no_dns).afind("http://localhost/") == [
        proxy("127.0.0.1", 1)
    ]


# --- helper functions (reference answers: Netscape's examples, Mozilla/Chromium library) ----


@pytest.mark.parametrize(
    ("expr", "value"),
    [
        ("isPlainHostName('www')", "true"),
        ("isPlainHostName('www.example.com')", "false"),
        ("isPlainHostName('::1')", "false"),
        ("dnsDomainIs('www.netscape.com', '.netscape.com')", "true"),
        ("dnsDomainIs('www', '.netscape.com')", "false"),
        ("dnsDomainIs('www.mcom.com', '.netscape.com')", "false"),
        ("localHostOrDomainIs('www.netscape.com', 'www.netscape.com')", "true"),
        ("localHostOrDomainIs('www', 'www.netscape.com')", "true"),
        ("localHostOrDomainIs('www.mcom.com', 'www.netscape.com')", "false"),
        ("localHostOrDomainIs('home.netscape.com', 'www.netscape.com')", "false"),
        ("dnsDomainLevels('www')", "0"),
        ("dnsDomainLevels('www.netscape.com')", "2"),
        ("convert_addr('104.16.41.2')", "1745889538"),
        ("convert_addr('255.255.255.255')", "-1"),  # signed, as in the reference
        ("isInNet('198.95.249.79', '198.95.249.79', '255.255.255.255')", "true"),
        ("isInNet('198.95.6.8', '198.95.0.0', '255.255.0.0')", "true"),
        ("isInNet('10.0.0.1', '198.95.0.0', '255.255.0.0')", "false"),
        ("isInNet('10.0.0.1', '10.0.0.0', 'not-a-mask')", "false"),
        ("isInNet('10.0.0.1', '10.0.0.256', '255.0.0.0')", "false"),
        ("isInNet('localhost', '127.0.0.0', '255.0.0.0')", "true"),
        ("dnsResolve('localhost')", "127.0.0.1"),
        ("dnsResolve('10.1.2.3')", "10.1.2.3"),
        ("dnsResolve('nowhere.test')", "null"),
        ("isResolvable('localhost')", "true"),
        ("isResolvable('nowhere.test')", "false"),
        ("myIpAddress()", MY_IP),
        ("isInNet(myIpAddress(), '10.20.0.0', '255.255.0.0')", "true"),
        ("shExpMatch('http://home.netscape.com/people/ari/index.html', '*/ari/*')", "true"),
        ("shExpMatch('http://home.netscape.com/people/montulli/index.html', '*/ari/*')", "false"),
        ("shExpMatch('a1.example', 'a?.example')", "true"),
        ("shExpMatch('axexample', 'a.example')", "false"),
        ("shExpMatch('bb', '[ab]b')", "true"),  # reference keeps other regex syntax
        ("shExpMatch('x.example', '*.example') && shExpMatch('y.example', '*.example')", "true"),
    ],
)
def test_helper(expr: str, value: str) -> None:
    assert js(expr, resolver=fake_dns({"localhost": "127.0.0.1"})) == value


@pytest.mark.parametrize(
    ("expr", "value"),
    [
        ("weekdayRange('WED', 'GMT')", True),
        ("weekdayRange('MON', 'FRI', 'GMT')", True),
        ("weekdayRange('SAT', 'SUN', 'GMT')", False),
        ("weekdayRange('FRI', 'MON', 'GMT')", False),
        ("weekdayRange('TUE', 'MON', 'GMT')", True),
        ("weekdayRange('XYZ', 'GMT')", False),
        ("dateRange(17, 'GMT')", True),
        ("dateRange(1, 15, 'GMT')", False),
        ("dateRange(15, 20, 'GMT')", True),
        ("dateRange(25, 18, 'GMT')", True),
        ("dateRange('JAN', 'GMT')", True),
        ("dateRange('FEB', 'GMT')", False),
        ("dateRange('DEC', 'FEB', 'GMT')", True),
        ("dateRange(2024, 'GMT')", True),
        ("dateRange(2023, 2025, 'GMT')", True),
        ("dateRange(2025, 2026, 'GMT')", False),
        ("dateRange(1, 'JAN', 31, 'JAN', 'GMT')", True),
        ("dateRange(18, 'JAN', 31, 'DEC', 'GMT')", False),
        ("dateRange('JAN', 2024, 'MAR', 2024, 'GMT')", True),
        ("dateRange(1, 'JAN', 2024, 16, 'JAN', 2024, 'GMT')", False),
        ("dateRange(1, 'JAN', 2024, 17, 'JAN', 2024, 'GMT')", True),
        ("dateRange(1, 2, 3, 'GMT')", False),
        ("dateRange(1, 'JAN', 'GMT')", False),
        ("timeRange(12, 'GMT')", True),
        ("timeRange(11, 12, 'GMT')", True),
        ("timeRange(13, 14, 'GMT')", False),
        ("timeRange(12, 30, 12, 40, 'GMT')", True),
        ("timeRange(12, 35, 13, 0, 'GMT')", False),
        ("timeRange(8, 0, 12, 34, 'GMT')", True),  # the end minute is inclusive
        ("timeRange(12, 34, 56, 12, 34, 56, 'GMT')", True),
        ("timeRange(22, 0, 13, 0, 'GMT')", True),  # wraps past midnight
        ("timeRange(0, 0, 0, 0, 0, 30, 'GMT')", False),
    ],
)
def test_time_helpers_gmt(expr: str, value: bool) -> None:
    assert js(expr, wall_clock=lambda: WED) == str(value).lower()


def test_time_helpers_local_time() -> None:
    local = time.localtime(WED)
    day = ["MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"][local.tm_wday]
    month = time.strftime("%b", local).upper()
    clock = {"wall_clock": lambda: WED}
    assert js(f"weekdayRange('{day}')", **clock) == "true"
    assert js(f"dateRange({local.tm_mday}) && dateRange('{month}')", **clock) == "true"
    assert js(f"timeRange({local.tm_hour})", **clock) == "true"
    assert js(f"timeRange({local.tm_hour}, {local.tm_min}, {local.tm_hour}, 59)", **clock) == "true"


def test_daterange_month_range_ends_with_its_last_month() -> None:
    """The reference builds "APR 31" = May 1 for dateRange("JAN", "APR"); we compare fields."""
    may_first = calendar.timegm((2024, 5, 1, 12, 0, 0, 0, 0, 0))
    assert js("dateRange('JAN', 'APR', 'GMT')", wall_clock=lambda: may_first) == "false"
    assert js("dateRange('JAN', 'MAY', 'GMT')", wall_clock=lambda: may_first) == "true"


def test_time_helpers_use_the_real_clock_by_default() -> None:
    assert js("timeRange(0, 23) && dateRange(1, 31) && weekdayRange('SUN', 'SAT')") == "true"


def test_alert_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    source = "function FindProxyForURL(u, h) { alert('checking ' + h); return 'DIRECT'; }"
    with caplog.at_level(logging.INFO, logger="pycntlm.pac"):
        assert engine(source).find("http://a.example/") == [DIRECT]
    assert "PAC alert: checking a.example" in caplog.text


# --- errors and limits ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("function FindProxyForURL(url, host) {\n  return 'DIRECT'\n", "SyntaxError"),
        ("function FindProxyForURL(url, host) {\n  return )\n}", "(line 2)"),
        ("var x = 1;", "no FindProxyForURL"),
        ("throw new Error('top-level boom');", "top-level boom"),
        ("while (true) {}", "CPU time limit"),
    ],
)
def test_bad_pac_files_fail_at_load(source: str, message: str) -> None:
    with pytest.raises(PacError, match="PAC file") as caught:
        engine(source, options=FAST)
    assert message in str(caught.value)
    assert isinstance(caught.value, PycntlmError)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("throw new Error('no route for ' + host);", "Error: no route for a.example"),
        ("return undefinedThing;", "ReferenceError"),
        ("return 42;", "returned number"),
        ("return null;", "returned null"),
        ("for (;;) {}", "CPU time limit of 0.05 s"),
        ("function r(n) { return r(n + 1) + 1; } return r(0);", "stack overflow"),
        ("var a = []; for (;;) a.push(new Array(1000).fill(a.length));", "memory"),
        ("alert('x'); throw 'thrown string';", "thrown string"),
        ("alert('x'); return 7;", "returned number"),
    ],
)
def test_failures_in_find_are_pac_errors(body: str, message: str) -> None:
    source = f"function FindProxyForURL(url, host) {{ {body} }}"
    pac = engine(source, options=PacOptions(time_limit=0.05, memory_limit=16 << 20))
    with pytest.raises(PacError, match="FindProxyForURL") as caught:
        pac.find("http://a.example/")
    assert message in str(caught.value)


class FakeRequest:
    """What a request handler holds while it asks the PAC file (a weakref-able stand-in)."""


async def test_a_cached_failure_is_raised_afresh_and_keeps_no_request_alive() -> None:
    """A regression: the cached PacError itself was raised again on every hit, its
    __traceback__ growing by the frames of each request (3001 frames after 1000 failures),
    which kept every request alive until the cache entry expired."""
    pac = await PacEngine.create('function FindProxyForURL(u, h) { throw "x"; }', my_ip=MY_IP)
    requests: list[weakref.ref[FakeRequest]] = []
    seen: list[tuple[object, str, int]] = []

    async def handle() -> None:
        request = FakeRequest()
        requests.append(weakref.ref(request))
        try:
            await pac.afind("http://a.example/", "a.example")
        except PacError as exc:
            frames, tb = 0, exc.__traceback__
            while tb is not None:
                frames, tb = frames + 1, tb.tb_next
            seen.append((getattr(exc, "cached", None), str(exc), frames))

    for _ in range(1000):
        await handle()
    gc.collect()
    assert sum(ref() is not None for ref in requests) == 0
    assert max(frames for _, _, frames in seen) <= 4
    assert {message for _, message, _ in seen} == {"FindProxyForURL failed: x"}
    assert [cached for cached, _, _ in seen] == [False] + [True] * 999


def test_an_endless_loop_costs_its_limit_once_and_the_engine_goes_on() -> None:
    source = """
    var runs = 0;
    function FindProxyForURL(url, host) {
        runs++;
        if (host == "loop.example") for (;;) {}
        return "PROXY p" + runs + ":1";
    }"""
    pac = engine(source, options=FAST)
    with pytest.raises(PacError, match="CPU time limit"):
        pac.find("http://loop.example/")
    started = time.process_time()
    with pytest.raises(PacError, match="CPU time limit"):
        pac.find("http://loop.example/other")  # the cached error, not another 50 ms of CPU
    assert time.process_time() - started < 0.04
    assert pac.find("http://fine.example/") == [proxy("p2", 1)]


# --- caching --------------------------------------------------------------------------------

COUNTING = """
var runs = 0;
function FindProxyForURL(url, host) { runs++; return "PROXY run" + runs + ":1"; }
"""
COUNTING_URL = """
var runs = 0;
function FindProxyForURL(url, host) {
    runs++;
    return shExpMatch(url, "*/private/*") ? "DIRECT" : "PROXY run" + runs + ":1";
}
"""


def test_cache_key_is_scheme_host_port_when_the_pac_ignores_the_url() -> None:
    pac = engine(COUNTING)
    assert not pac.uses_url
    assert pac.find("http://a.example/one") == [proxy("run1", 1)]
    assert pac.find("http://a.example/two?x") == [proxy("run1", 1)]
    assert pac.find("http://a.example:8080/") == [proxy("run2", 1)]
    assert pac.find("https://a.example/") == [proxy("run3", 1)]
    assert pac.find("http://b.example/") == [proxy("run4", 1)]


def test_cache_key_includes_the_url_when_the_pac_reads_it() -> None:
    pac = engine(COUNTING_URL)
    assert pac.uses_url
    assert pac.find("http://a.example/one") == [proxy("run1", 1)]
    assert pac.find("http://a.example/private/x") == [DIRECT]
    assert pac.find("http://a.example/one") == [proxy("run1", 1)]
    # https paths never reach the PAC: every https URL of a host is one decision
    assert pac.find("https://a.example/private/x") == [proxy("run3", 1)]
    assert pac.find("https://a.example/other") == [proxy("run3", 1)]


@pytest.mark.parametrize(
    ("source", "uses"),
    [
        ("function FindProxyForURL(url, host) { return 'DIRECT'; }", False),
        ("function FindProxyForURL(url, host) { var urls = 1; return 'DIRECT'; }", False),
        ("function FindProxyForURL(u, h) { return u ? 'DIRECT' : 'DIRECT'; }", True),
        ("function FindProxyForURL() { return arguments[0] && 'DIRECT'; }", True),
        ("function FindProxyForURL($u, h) { return $u && 'DIRECT'; }", True),
        (
            "var FindProxyForURL = function (url, host) { return f(url); };"
            " function f(x) { return 'DIRECT'; }",
            True,
        ),
        ("function g(url, host) { return 'DIRECT'; } var FindProxyForURL = g.bind(null);", True),
        # comments, literals and property names are not uses of the parameter
        ("function FindProxyForURL(url, host) { // no url rules here\n return 'DIRECT'; }", False),
        ("function FindProxyForURL(url, host) { /* url */ return 'DIRECT'; }", False),
        ("function FindProxyForURL(url, host) { return 'url' && \"url\" && 'DIRECT'; }", False),
        ("function FindProxyForURL(url, host) { return `url` && 'DIRECT'; }", False),
        ("function FindProxyForURL(url, host) { return /url/.test(host) ? 'DIRECT' : ''; }", False),
        ("function FindProxyForURL(url, host) { return {url: 1}.url ? 'DIRECT' : ''; }", True),
        ("function FindProxyForURL(url, host) { var x = {}; x.url = 1; return 'DIRECT'; }", False),
        ("function FindProxyForURL(url, host) { // eval(arguments)\n return 'DIRECT'; }", False),
        ("function FindProxyForURL(url, host) {\n<!-- url\n--> url\n return 'DIRECT'; }", False),
        ("function FindProxyForURL(u, h) { return 'a' + /['\\/]/.source + u; }", True),
        ("function FindProxyForURL(u, h) { if (h) /'/.test(h) && f(u); return 'DIRECT'; }", True),
        ("function FindProxyForURL(u, h) { var a = 4 / 2 / u; return 'DIRECT'; }", True),
        ("function FindProxyForURL(url, host) { return `${url}` && 'DIRECT'; }", True),
        ("function FindProxyForURL(url, host) { return `${`${{a: url}.a}`}` && 'DIRECT'; }", True),
        ("function FindProxyForURL(url, host) { return \\u0075rl && 'DIRECT'; }", True),
        ("function FindProxyForURL(url, host) { return host ? 'DIRECT' : url; }", True),
        ("function FindProxyForURL({length}, host) { return 'DIRECT'; }", True),
        ("function FindProxyForURL(...a) { return 'DIRECT'; }", True),
        ("var FindProxyForURL = (url, host) => 'DIRECT' /* url */;", False),
        ("var FindProxyForURL = url => url && 'DIRECT';", True),
        ("var FindProxyForURL = url => 'DIRECT';", False),
    ],
)
def test_uses_url_is_conservative(source: str, uses: bool) -> None:
    assert engine(source).uses_url is uses


@pytest.mark.parametrize(
    "text",
    [
        "function f(u) { return u; }",
        "function f(u) { if (a) {} /u/.test(h); }",  # "/" after "}": a parser's call
        "function f(u) { return '",  # left open
        "function f(u) { return /x",
        "function f(u) { return `x",
        "function f(u) { /* x",
        "function f(u) { return 1; ",
        "function f(u) { return 1; }}",
        "function bound f() {\n    [native code]\n}",
        "function bound f() {\n    [ native /* */ code ]\n}",
        "u",
        "",
    ],
)
def test_uses_first_argument_says_yes_when_unsure(text: str) -> None:
    assert uses_first_argument(text)


@given(st.text())
def test_comments_and_strings_never_count_as_a_use(text: str) -> None:
    line = re.sub("[\n\r\u2028\u2029]", " ", text)
    source = (
        f"function FindProxyForURL(url, host) {{ /*{text.replace('*/', '')}*/ // {line}\n"
        f" var s = {json.dumps(text)} + {json.dumps(text, ensure_ascii=False)};"
        f" return s + 'DIRECT'; }}"
    )
    assert not uses_first_argument(source)


def test_a_comment_naming_the_url_keeps_the_cache_per_host() -> None:
    source = """var runs = 0;
    function FindProxyForURL(url, host) {
        // no url rules here: "url" is just a word
        runs++;
        return "PROXY run" + runs + ":1";
    }"""
    pac = engine(source)
    for i in range(100):
        assert pac.find(f"http://a.example/page/{i}") == [proxy("run1", 1)]
    assert pac.cache_info()["decisions"] == 1


def test_a_pac_that_replaces_its_function_is_keyed_on_the_url_from_then_on() -> None:
    source = """function FindProxyForURL(url, host) {
        FindProxyForURL = function (u, h) { return u.indexOf("/in/") > 0 ? "DIRECT" : "PROXY p"; };
        return "PROXY first:1";
    }"""
    pac = engine(source)
    assert not pac.uses_url
    assert pac.find("http://a.example/") == [proxy("first", 1)]
    assert pac.uses_url
    assert pac.find("http://b.example/in/x") == [DIRECT]
    assert pac.find("http://b.example/out") == [proxy("p", 80)]
    assert pac.find("http://b.example/in/y") == [DIRECT]


def test_a_pac_that_replaces_its_function_with_nonsense_fails_as_a_pac_error() -> None:
    pac = engine("function FindProxyForURL(u, h) { FindProxyForURL = 1; return 'DIRECT'; }")
    assert pac.find("http://a.example/") == [DIRECT]
    with pytest.raises(PacError, match="not a function"):
        pac.find("http://b.example/")


async def test_a_hit_for_another_path_does_not_parse_the_url() -> None:
    pac = engine(COUNTING)
    pac_query.cache_clear()
    for i in range(100):
        url = f"http://parse-once.example/page/{i}?q={i}"
        assert await pac.afind(url, "parse-once.example") == [proxy("run1", 1)]
    parsed = pac_query.cache_info()
    assert (parsed.misses, parsed.hits) == (1, 1)  # one parse, for the one miss
    info = pac.cache_info()
    assert (info["decision_hits"], info["decision_misses"], info["decisions"]) == (99, 1, 1)


def test_a_hit_on_a_pac_reading_the_url_is_per_url() -> None:
    pac = engine(COUNTING_URL)
    for _ in range(3):
        for path in ("/a", "/b"):
            pac.find(f"http://a.example{path}")
    info = pac.cache_info()
    assert (info["decision_hits"], info["decision_misses"], info["decisions"]) == (4, 2, 2)


def test_decisions_expire_and_the_cache_is_bounded() -> None:
    now = [0.0]
    pac = engine(COUNTING, options=PacOptions(cache_ttl=10.0, cache_size=2), clock=lambda: now[0])
    assert pac.find("http://a.example/") == [proxy("run1", 1)]
    now[0] = 9.9
    assert pac.find("http://a.example/") == [proxy("run1", 1)]
    now[0] = 10.0
    assert pac.find("http://a.example/") == [proxy("run2", 1)]
    pac.find("http://b.example/")
    pac.find("http://c.example/")  # drops a.example, the least recently used
    assert pac.cache_info()["decisions"] == 2
    assert pac.find("http://a.example/") == [proxy("run5", 1)]


# --- DNS: names are resolved outside JavaScript, then the evaluation is run again ----------


def test_each_name_is_resolved_once_and_remembered() -> None:
    calls: list[str] = []
    source = """function FindProxyForURL(url, host) {
        try { return isInNet(dnsResolve(host), "192.0.2.0", "255.255.255.0") ? "DIRECT"
                                                                          : "PROXY p:1"; }
        catch (e) { return "PROXY swallowed:1"; }  // the discarded first run ends up here
    }"""
    pac = engine(source, resolver=fake_dns({"a.example": "192.0.2.7"}, calls))
    assert pac.find("http://a.example/") == [DIRECT]
    assert pac.find("http://a.example:81/") == [DIRECT]
    assert pac.find("http://b.example/") == [proxy("p", 1)]
    assert pac.find("http://b.example:81/") == [proxy("p", 1)]
    assert calls == ["a.example", "b.example"]
    assert pac.cache_info()["names"] == 2


def test_names_are_forgotten_after_their_ttl() -> None:
    now = [0.0]
    calls: list[str] = []
    options = PacOptions(dns_ttl=100.0, dns_negative_ttl=5.0, cache_ttl=1.0)
    source = "function FindProxyForURL(u, h) { return isResolvable(h) ? 'DIRECT' : 'PROXY p:1'; }"
    table = {"up.example": "192.0.2.1"}
    pac = engine(source, options=options, clock=lambda: now[0], resolver=fake_dns(table, calls))
    pac.find("http://up.example/")
    pac.find("http://down.example/")
    now[0] = 6.0  # decisions expired; the negative answer too, the positive one not
    pac.find("http://up.example/")
    pac.find("http://down.example/")
    assert calls == ["up.example", "down.example", "down.example"]


def test_a_pac_resolving_endless_names_is_stopped() -> None:
    source = """var n = 0;
    function FindProxyForURL(u, h) { dnsResolve("n" + n++ + ".test"); return "DIRECT"; }"""
    with pytest.raises(PacError, match="too many names"):
        engine(source).find("http://a.example/")


def test_names_resolved_while_loading() -> None:
    source = """var proxyIp = dnsResolve("proxy.example");
    function FindProxyForURL(url, host) { return "PROXY " + proxyIp + ":3128"; }"""
    pac = engine(source, resolver=fake_dns({"proxy.example": "192.0.2.9"}))
    assert pac.find("http://a.example/") == [proxy("192.0.2.9", 3128)]


async def test_create_resolves_load_time_names_without_blocking() -> None:
    source = """var lo = dnsResolve("localhost");
    function FindProxyForURL(url, host) { return "PROXY " + lo + ":3128"; }"""
    pac = await PacEngine.create(source, resolver=no_dns, my_ip=MY_IP)
    assert pac.find("http://a.example/") == [proxy("127.0.0.1", 3128)]


def test_local_ipv4_is_an_address() -> None:
    parts = local_ipv4().split(".")
    assert len(parts) == 4 and all(0 <= int(p) <= 255 for p in parts)


# --- PacSource: a PAC file served by a loopback aiohttp server, or read from a file ----------


def pac_returning(answer: str) -> str:
    return f'function FindProxyForURL(url, host) {{ return "{answer}"; }}'


class PacServer:
    """A loopback web server for one PAC file that honours If-None-Match."""

    def __init__(self) -> None:
        self.body: bytes = pac_returning("PROXY first:3128").encode()
        self.status = 200
        self.delay = 0.0
        self.requests = 0
        self.not_modified = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        await asyncio.sleep(self.delay)
        etag = f'"{hash(self.body) & 0xFFFFFFFF:x}"'
        if request.headers.get("If-None-Match") == etag:
            self.not_modified += 1
            return web.Response(status=304, headers={"ETag": etag})
        if self.status != 200:
            return web.Response(status=self.status, text="nope")
        return web.Response(
            body=self.body,
            headers={"ETag": etag, "Content-Type": "application/x-ns-proxy-autoconfig"},
        )

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_get("/proxy.pac", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        bound = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{bound}/proxy.pac"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture
async def pac_server() -> AsyncIterator[PacServer]:
    server = PacServer()
    await server.start()
    yield server
    await server.stop()


def first_route(source: PacSource, url: str = "http://a.example/") -> Route:
    assert source.engine is not None
    return source.engine.find(url)[0]


async def test_url_source_fetched_cached_and_refreshed(pac_server: PacServer) -> None:
    source = PacSource(pac_server.url, my_ip=MY_IP)
    assert source.engine is None
    assert await source.refresh()
    assert first_route(source) == proxy("first", 3128)
    loaded = source.engine

    assert await source.refresh()  # unchanged: a 304, and the same engine (and its cache)
    assert pac_server.not_modified == 1
    assert source.engine is loaded

    pac_server.body = pac_returning("PROXY second:8080; DIRECT").encode()
    assert await source.refresh()
    assert source.engine is not loaded
    assert source.engine is not None
    assert source.engine.find("http://a.example/") == [proxy("second", 8080), DIRECT]
    assert pac_server.requests == 3 and source.last_error is None


async def test_server_down_keeps_the_last_good_copy(pac_server: PacServer) -> None:
    source = PacSource(pac_server.url, my_ip=MY_IP, fetch_timeout=2.0)
    assert await source.refresh()
    good = source.engine
    await pac_server.stop()
    assert not await source.refresh()
    assert source.engine is good and source.last_error
    assert first_route(source) == proxy("first", 3128)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"status": 500}, "HTTP 500"),
        ({"body": b"function FindProxyForURL( {"}, "does not load"),
        ({"body": b"x" * 2048}, "larger than 1024 bytes"),
        ({"delay": 1.0}, "no answer within 0.3 s"),
    ],
)
async def test_bad_refresh_keeps_the_last_good_copy(
    pac_server: PacServer, change: dict[str, object], error: str
) -> None:
    source = PacSource(pac_server.url, my_ip=MY_IP, max_bytes=1024, fetch_timeout=0.3)
    assert await source.refresh()
    good = source.engine
    pac_server.body = b"// changed\n" + pac_server.body  # so the server has news (no 304)
    for name, value in change.items():
        setattr(pac_server, name, value)
    assert not await source.refresh()
    assert source.engine is good
    assert source.last_error is not None and error in source.last_error
    assert first_route(source) == proxy("first", 3128)


async def test_first_fetch_failing_leaves_no_engine(pac_server: PacServer) -> None:
    await pac_server.stop()  # a loopback port nobody listens on
    source = PacSource(pac_server.url, my_ip=MY_IP, fetch_timeout=2.0)
    assert not await source.refresh()
    assert source.engine is None and source.last_error


async def test_fetch_ignores_proxy_settings_in_the_environment(
    pac_server: PacServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    source = PacSource(pac_server.url, my_ip=MY_IP, fetch_timeout=2.0)
    assert await source.refresh()


async def test_run_refreshes_in_the_background(pac_server: PacServer) -> None:
    source = PacSource(pac_server.url, my_ip=MY_IP)
    assert await source.refresh()
    task = asyncio.create_task(source.run(0.02))
    try:
        pac_server.body = pac_returning("PROXY later:1").encode()
        async with asyncio.timeout(5):
            while first_route(source) != proxy("later", 1):
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_inherit_starts_from_the_last_good_copy(pac_server: PacServer) -> None:
    old = PacSource(pac_server.url, my_ip=MY_IP)
    assert await old.refresh()
    new = PacSource(pac_server.url, my_ip=MY_IP)  # what a reload builds
    new.inherit(old)
    assert new.engine is old.engine
    assert await new.refresh()  # the validators came along: a 304, the same engine
    assert pac_server.not_modified == 1 and new.engine is old.engine
    await pac_server.stop()
    newer = PacSource(pac_server.url, my_ip=MY_IP, fetch_timeout=2.0)
    newer.inherit(new)
    assert not await newer.refresh()  # the server is down: the inherited copy stays
    assert newer.engine is old.engine and newer.last_error


async def test_inherit_from_another_location_takes_the_engine_only(
    pac_server: PacServer, tmp_path: Path
) -> None:
    old = PacSource(pac_server.url, my_ip=MY_IP)
    assert await old.refresh()
    path = tmp_path / "proxy.pac"
    path.write_text(pac_returning("PROXY from-file:3128"))
    new = PacSource(str(path), my_ip=MY_IP)
    new.inherit(old)
    assert first_route(new) == proxy("first", 3128)
    assert await new.refresh()  # no validators of another location: the file is read
    assert first_route(new) == proxy("from-file", 3128)
    loaded = new.engine
    new.inherit(old)  # a source with an engine of its own keeps it
    assert new.engine is loaded
    empty = PacSource(pac_server.url, my_ip=MY_IP)
    empty.inherit(PacSource(pac_server.url, my_ip=MY_IP))  # nothing to inherit
    assert empty.engine is None


async def test_load_gives_up_after_its_bound(pac_server: PacServer) -> None:
    pac_server.delay = 1.0
    source = PacSource(pac_server.url, my_ip=MY_IP)
    assert not await source.load(0.2)
    assert source.engine is None and source.last_error == "not loaded within 0.2 s"
    pac_server.delay = 0.0
    assert await source.load(5.0)
    assert first_route(source) == proxy("first", 3128)


async def test_file_source(tmp_path: Path) -> None:
    path = tmp_path / "proxy.pac"
    path.write_text(pac_returning("PROXY from-file:3128"))
    source = PacSource(str(path), my_ip=MY_IP)
    assert await source.refresh()
    assert first_route(source) == proxy("from-file", 3128)
    loaded = source.engine
    assert await source.refresh()
    assert source.engine is loaded  # same text: not recompiled
    path.write_text("\ufeff" + pac_returning("DIRECT"))  # a BOM is fine
    assert await PacSource(f"file://{path}", my_ip=MY_IP).refresh()
    assert await source.refresh()
    assert first_route(source) == DIRECT
    path.unlink()
    assert not await source.refresh()
    assert first_route(source) == DIRECT and source.last_error


async def test_a_new_address_recompiles_an_unchanged_file(tmp_path: Path) -> None:
    path = tmp_path / "proxy.pac"
    path.write_text("function FindProxyForURL(u, h) { return 'PROXY ' + myIpAddress() + ':1'; }")
    source = PacSource(str(path), my_ip=MY_IP)
    assert await source.refresh()
    assert first_route(source) == proxy(MY_IP, 1)
    source.my_ip = "10.99.0.1"  # as if the laptop moved networks
    assert await source.refresh()
    assert first_route(source) == proxy("10.99.0.1", 1)


@given(st.text(max_size=80))
def test_pac_query_raises_only_pac_errors(text: str) -> None:
    try:
        query = pac_query(text)
    except PacError:
        return
    assert query.url.startswith(f"{query.scheme}://") and query.host


def test_answers_that_look_like_our_framing_or_are_huge() -> None:
    assert engine(pac_returning("\\u0001{}")).find("http://a.example/") == [DIRECT]
    with pytest.raises(PacError, match="answered 20000 characters"):
        engine("function FindProxyForURL(u, h) { return 'x'.repeat(20000); }").find(
            "http://a.example/"
        )


def test_one_run_asks_for_at_most_eight_names() -> None:
    calls: list[str] = []
    source = """function FindProxyForURL(u, h) {
        for (var i = 0; i < 100; i++) dnsResolve("n" + i + ".test");
        return "DIRECT";
    }"""
    with pytest.raises(PacError, match="too many names"):
        engine(source, resolver=fake_dns({}, calls)).find("http://a.example/")
    assert len(calls) == 8 * 5  # 8 a run, first run and 4 restarts


def reference_shexpmatch(text: str, pattern: str) -> bool:
    """The reference shExpMatch (Mozilla/Chromium) for patterns of ".", "*", "?" and letters."""
    regex = pattern.replace(".", r"\.").replace("*", ".*").replace("?", ".")
    return re.fullmatch(regex, text) is not None


@given(st.lists(st.tuples(st.text("ab.", max_size=6), st.text("ab.*?", max_size=5)), max_size=20))
def test_shexpmatch_agrees_with_the_reference(pairs: list[tuple[str, str]]) -> None:
    cases = json.dumps(pairs)
    source = f"""function FindProxyForURL(u, h) {{
        var bits = {cases}.map(function (c) {{ return shExpMatch(c[0], c[1]) ? "1" : "0"; }});
        return "PROXY b" + bits.join("") + ":1";
    }}"""
    expected = "".join("1" if reference_shexpmatch(t, p) else "0" for t, p in pairs)
    assert route_host(source) == f"b{expected}"


def route_host(source: str) -> str:
    return engine(source).find("http://a.example/")[0].host
