"""PAC values and helpers, sans-IO: results, query normalisation, caches, the JS helper library.

Owns: `Route` and `parse_result` (what a FindProxyForURL answer means to pycntlm), `pac_query`
(the url/host handed to FindProxyForURL and the decision-cache key) and `DecisionKeys` (that key
without parsing each URL), `TtlLru`, and `PAC_JS_LIBRARY`, the standard PAC helper functions
in JavaScript (jsscan.py says whether FindProxyForURL may read its url).
Must not: run JavaScript, resolve names, read files or touch the network (pac.py does that).

Helper semantics follow the library Mozilla ships and Chromium copied (2018 revision); pacparser
has the older copy. Where pycntlm differs, on purpose:
- dateRange compares (year, month, day) fields instead of building Date objects, so a range
  ending in a 30-day month no longer spills into the next month ("JAN", "APR" was true on
  May 1 there) and mixed or odd argument lists are false instead of arbitrary.
- timeRange with 4 or 6 arguments compares seconds of the day: (8, 30, 17, 0) is 08:30:00
  through 17:00:59, wrapping past midnight when the start is later than the end, as there.
  With 2 arguments it is hour1 <= hour <= hour2, inclusive and not wrapping, as there.
- dnsResolve, isResolvable, isInNet (with a name) read a table that pac.py fills from the local
  resolver; a name not in it yet is recorded, the evaluation is thrown away, the name resolved
  and FindProxyForURL run again (Chromium does the same to keep DNS off its PAC thread).
  dnsResolve and myIpAddress give IPv4 only, as in both browsers.
- alert() messages are collected and logged by pac.py; shExpMatch keeps the reference's
  regular-expression accident (only ".", "*" and "?" are translated), memoises patterns and
  tests "*suffix" patterns with endsWith (same answers, half the time).
"""

from __future__ import annotations

import functools
import re
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar
from urllib.parse import urlsplit

from pycntlm.errors import PycntlmError
from pycntlm.jsscan import uses_first_argument as uses_first_argument

DEFAULT_PROXY_PORT = 80
"""Port of a "PROXY host" entry that names none (Chromium and Firefox use 80 too)."""

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443, "ftp": 21}
_PATH_STRIPPED = frozenset({"https", "wss"})
_UNSUPPORTED = frozenset({"HTTPS", "SOCKS", "SOCKS4", "SOCKS5", "QUIC"})
_HOSTPORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[^\s:\[\]]+))(?::(?P<port>\d+))?$")


class PacError(PycntlmError):
    """A PAC file that cannot be used: it does not compile, throws, loops or answers nonsense.

    The message is short and names no URL; the caller logs it and falls back to its parents.
    `cached` is True when PacEngine re-raises a failure remembered from an earlier request (for
    cache_ttl): that one was raised, and could be logged, when it was fresh.
    """

    def __init__(self, message: str, *, cached: bool = False) -> None:
        super().__init__(message)
        self.cached = cached


@dataclass(frozen=True)
class PacOptions:
    """Limits and cache sizes of one PacEngine (seconds, bytes, entries)."""

    time_limit: float = 0.25
    """CPU seconds one FindProxyForURL call (or loading the file) may use; QuickJS interrupts it."""
    memory_limit: int = 64 * 1024 * 1024
    cache_size: int = 4096
    cache_ttl: float = 60.0
    """How long a decision (or a PAC error) is reused for the same (scheme, host, port[, url])."""
    dns_cache_size: int = 1024
    dns_ttl: float = 300.0
    dns_negative_ttl: float = 30.0
    dns_timeout: float = 2.0
    max_dns_rounds: int = 4
    """Times one decision may restart FindProxyForURL after resolving the names it asked for
    (at most 8 a run): so at most 32 look-ups per decision, or a PacError."""
    max_answer: int = 16384
    """Longest FindProxyForURL answer accepted, in characters."""


@dataclass(frozen=True, slots=True)
class Route:
    """One entry of a PAC answer: go DIRECT, or through the HTTP proxy host:port."""

    kind: Literal["DIRECT", "PROXY"]
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.kind == "DIRECT":
            return "DIRECT"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"PROXY {host}:{self.port}"


DIRECT = Route("DIRECT")


def _proxy_entry(arg: str) -> Route | None:
    match = _HOSTPORT.match(arg)
    if match is None:
        return None
    port = int(match["port"]) if match["port"] else DEFAULT_PROXY_PORT
    if not 0 < port < 65536:
        return None
    return Route("PROXY", (match["v6"] or match["name"]).lower(), port)


def parse_result_notes(text: str) -> tuple[list[Route], list[str]]:
    """parse_result, plus one short note for every entry that was skipped (for the log)."""
    routes: list[Route] = []
    notes: list[str] = []
    unsupported = False
    for raw in text.split(";"):
        entry = raw.strip()
        if not entry:
            continue
        keyword, _, arg = entry.partition(" ")
        keyword, arg = keyword.upper(), arg.strip()
        if keyword == "DIRECT":
            routes.append(DIRECT)
        elif keyword in ("PROXY", "HTTP"):
            route = _proxy_entry(arg)
            if route is None:
                notes.append(f"skipped {entry[:80]!r}: not host:port")
            else:
                routes.append(route)
        elif keyword in _UNSUPPORTED:
            unsupported = True
            notes.append(f"skipped {entry[:80]!r}: {keyword} proxies are not supported")
        else:
            notes.append(f"skipped {entry[:80]!r}: unknown kind")
    if not routes and not unsupported:
        routes.append(DIRECT)
    return routes, notes


@functools.lru_cache(maxsize=512)
def parse_result_cached(text: str) -> tuple[tuple[Route, ...], tuple[str, ...]]:
    """parse_result_notes, memoised (a PAC gives few distinct answers), as tuples."""
    routes, notes = parse_result_notes(text)
    return tuple(routes), tuple(notes)


def parse_result(text: str) -> list[Route]:
    """A FindProxyForURL answer as routes, in the PAC's order.

    "PROXY a:8080; HTTP b:3128; DIRECT" gives three routes ("HTTP" is Firefox's alias for
    "PROXY"; a missing port is 80). HTTPS, SOCKS* and QUIC entries are skipped, as are
    malformed ones. An empty or wholly malformed answer means DIRECT, as in browsers. An answer
    naming only proxies pycntlm cannot use gives [] (the caller uses its configured parents).
    """
    return parse_result_notes(text)[0]


@dataclass(frozen=True, slots=True)
class PacQuery:
    """The arguments handed to FindProxyForURL, and what the decision cache keys on."""

    url: str
    host: str
    scheme: str
    port: int


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@functools.lru_cache(maxsize=4096)
def pac_query(url: str, host: str = "") -> PacQuery:
    """Normalise a request for FindProxyForURL, as browsers do (memoised: a pure function).

    `url` is an absolute URL, or a CONNECT target "host:port" (taken as https). User info and
    fragment are dropped; for https and wss only "scheme://host[:port]/" is passed, so a PAC
    never sees their paths. `host` (default: the URL's) is lower-cased, brackets removed.
    Raises PacError for a URL without a host or with a bad port.
    """
    if "://" not in url:
        url = f"https://{url}"
    try:
        parts = urlsplit(url)
        explicit = parts.port
    except ValueError as exc:
        raise PacError(f"not a URL PAC can be asked about: {exc}") from None
    scheme = parts.scheme.lower()
    default = _DEFAULT_PORTS.get(scheme, 0)
    url_host = (parts.hostname or "").lower()
    if not url_host:
        raise PacError("not a URL PAC can be asked about: no host")
    host = host.strip().lower() or url_host
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    netloc = _host_for_url(url_host)
    if explicit is not None and explicit != default:
        netloc = f"{netloc}:{explicit}"
    if scheme in _PATH_STRIPPED:
        rest = "/"
    else:
        rest = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return PacQuery(f"{scheme}://{netloc}{rest}", host, scheme, explicit or default)


_THROUGH_AUTHORITY = re.compile(r"[^:/?#]*://[^/?#]*")


class DecisionKeys:
    """pac_query(url, host)'s (scheme, host, str(port)), the decision-cache key of a PAC that
    ignores its url, remembered per "scheme://authority" text and host, so that a new path of a
    known host costs a look-up instead of a parse. urlsplit takes the scheme, the authority and
    its errors from that text alone ("/?#" end it; the tabs and newlines it drops are none of
    those): every URL that starts with it has the same key. Bounded: emptied when full.
    """

    def __init__(self, maxsize: int = 4096) -> None:
        self.maxsize = max(1, maxsize)
        self._keys: dict[tuple[str, str], tuple[str, str, str]] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def key(self, url: str, host: str) -> tuple[str, str, str]:
        """The key; raises PacError as pac_query does (an error is not remembered)."""
        through = _THROUGH_AUTHORITY.match(url)
        if through is None:  # "host:port" (a CONNECT target), or odd: pac_query memoises these
            query = pac_query(url, host)
            return query.scheme, query.host, str(query.port)
        memo = (through[0], host)
        key = self._keys.get(memo)
        if key is None:
            query = pac_query(url, host)
            if len(self._keys) >= self.maxsize:
                self._keys.clear()
            key = self._keys[memo] = (query.scheme, query.host, str(query.port))
        return key


def pac_text(data: bytes) -> str:
    """A PAC file's bytes as text: UTF-8 (a BOM dropped), else Latin-1."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def connect_url(host: str, port: int) -> str:
    """The URL a browser would hand to FindProxyForURL for a CONNECT host:port tunnel."""
    netloc = _host_for_url(host.strip("[]"))
    return f"https://{netloc}/" if port == 443 else f"https://{netloc}:{port}/"


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlLru(Generic[K, V]):
    """A bounded mapping whose entries expire: least recently used dropped first. `now` is a
    monotonic clock reading passed in by the caller (no clock of its own, for tests)."""

    def __init__(self, maxsize: int, ttl: float) -> None:
        self.maxsize = max(1, maxsize)
        self.ttl = ttl
        self.hits = 0
        self.misses = 0
        """get() calls that found a live entry, and the others (absent or expired)."""
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def get(self, key: K, now: float) -> V | None:
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        if item[0] <= now:
            del self._items[key]
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return item[1]

    def put(self, key: K, value: V, now: float, ttl: float | None = None) -> list[K]:
        """Store; returns the keys dropped to stay within maxsize (oldest first)."""
        self._items[key] = (now + (self.ttl if ttl is None else ttl), value)
        self._items.move_to_end(key)
        dropped: list[K] = []
        while len(self._items) > self.maxsize:
            dropped.append(self._items.popitem(last=False)[0])
        return dropped

    def expire(self, now: float) -> list[K]:
        """Drop every expired entry; returns their keys."""
        gone = [key for key, (expires, _) in self._items.items() if expires <= now]
        for key in gone:
            del self._items[key]
        return gone

    def clear(self) -> None:
        self._items.clear()


FOUND_PREFIX = "\x01"
"""__pycntlm_find answers with this prefix and a JSON object when names were missing or
alert() was called; otherwise it returns FindProxyForURL's string as is (the fast path)."""

PAC_JS_LIBRARY = r"""
var __pycntlm = {dns: new Map(), missing: [], alerts: [], now: -1, myip: "127.0.0.1",
                 res: new Map(), fn: null};
function __pycntlm_date() { return __pycntlm.now < 0 ? new Date() : new Date(__pycntlm.now); }
function __pycntlm_dns_set(name, ip) { __pycntlm.dns.set(name, ip); }
function __pycntlm_dns_del(name) { __pycntlm.dns.delete(name); }
function __pycntlm_set_myip(ip) { __pycntlm.myip = ip; }
function __pycntlm_missing() { return __pycntlm.missing.join("\n"); }
function __pycntlm_find(url, host, now) {
    var st = __pycntlm, r, err = null, failed = false;
    st.missing = []; st.alerts = []; st.now = now;
    try { r = FindProxyForURL(url, host); } catch (e) { err = e; failed = true; }
    var replaced = FindProxyForURL !== st.fn;
    if (st.missing.length == 0 && st.alerts.length == 0 && !replaced) {
        if (failed) throw err;
        if (typeof r != "string")
            throw new TypeError("FindProxyForURL returned " + (r === null ? "null" : typeof r));
        if (r.charCodeAt(0) != 1) return r;
    }
    return "\u0001" + JSON.stringify({m: st.missing, a: st.alerts,
        r: typeof r == "string" ? r : null, t: r === null ? "null" : typeof r,
        e: failed ? String(err).slice(0, 200) : null, f: replaced});
}
var __pycntlm_to_string = Function.prototype.call.bind(Function.prototype.toString);
function __pycntlm_watch() { __pycntlm.fn = FindProxyForURL; }  // __pycntlm_find tells: "f"
function __pycntlm_source() {  // the text uses_first_argument reads
    __pycntlm_watch();
    return __pycntlm_to_string(FindProxyForURL);
}
function dnsDomainIs(host, domain) {
    return host.length >= domain.length &&
        host.substring(host.length - domain.length) == domain;
}
function dnsDomainLevels(host) { return host.split(".").length - 1; }
function isPlainHostName(host) { return host.search(/[.:]/) == -1; }
function isValidIpAddress(ipchars) {
    var m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(ipchars);
    return m != null && m[1] <= 255 && m[2] <= 255 && m[3] <= 255 && m[4] <= 255;
}
function convert_addr(ipchars) {
    var b = ipchars.split(".");
    return ((b[0] & 0xff) << 24) | ((b[1] & 0xff) << 16) | ((b[2] & 0xff) << 8) | (b[3] & 0xff);
}
function dnsResolve(host) {
    if (typeof host != "string" || host == "") return null;
    if (isValidIpAddress(host)) return host;
    var ip = __pycntlm.dns.get(host);
    if (ip === undefined) {
        var missing = __pycntlm.missing;
        if (missing.length < 8 && missing.indexOf(host) < 0) missing.push(host);
        return null;
    }
    return ip === "" ? null : ip;
}
function isResolvable(host) { return dnsResolve(host) != null; }
function myIpAddress() { return __pycntlm.myip; }
function isInNet(ipaddr, pattern, maskstr) {
    if (!isValidIpAddress(pattern) || !isValidIpAddress(maskstr)) return false;
    if (!isValidIpAddress(ipaddr)) {
        ipaddr = dnsResolve(ipaddr);
        if (ipaddr == null) return false;
    }
    var mask = convert_addr(maskstr);
    return (convert_addr(ipaddr) & mask) == (convert_addr(pattern) & mask);
}
function localHostOrDomainIs(host, hostdom) {
    return host == hostdom || hostdom.lastIndexOf(host + ".", 0) == 0;
}
function shExpMatch(str, pattern) {
    var test = __pycntlm.res.get(pattern);
    if (test === undefined) {
        var p = String(pattern);
        if (/^\*[^*?\\^$+()[\]{}|]*$/.test(p)) {  // "*.example.com": a suffix test, 2x faster
            var suffix = p.substring(1);
            test = function (s) { return String(s).endsWith(suffix); };
        } else {
            var re = new RegExp("^" + p.replace(/\./g, "\\.").replace(/\*/g, ".*")
                .replace(/\?/g, ".") + "$");
            test = function (s) { return re.test(s); };
        }
        if (__pycntlm.res.size >= 512) __pycntlm.res.clear();
        __pycntlm.res.set(pattern, test);
    }
    return test(str);
}
function alert(message) {
    if (__pycntlm.alerts.length < 16) __pycntlm.alerts.push(String(message).slice(0, 300));
}
var __pycntlm_wdays = {SUN: 0, MON: 1, TUE: 2, WED: 3, THU: 4, FRI: 5, SAT: 6};
var __pycntlm_months = {JAN: 0, FEB: 1, MAR: 2, APR: 3, MAY: 4, JUN: 5, JUL: 6, AUG: 7,
                        SEP: 8, OCT: 9, NOV: 10, DEC: 11};
function __pycntlm_args(args) {
    var a = Array.prototype.slice.call(args), gmt = a.length > 0 && a[a.length - 1] == "GMT";
    if (gmt) a.pop();
    return {a: a, gmt: gmt, d: __pycntlm_date()};
}
function weekdayRange() {
    var x = __pycntlm_args(arguments), a = x.a, w = __pycntlm_wdays;
    if (a.length < 1 || a.length > 2) return false;
    var day = x.gmt ? x.d.getUTCDay() : x.d.getDay();
    var w1 = w.hasOwnProperty(a[0]) ? w[a[0]] : -1;
    var w2 = a.length == 2 ? (w.hasOwnProperty(a[1]) ? w[a[1]] : -1) : w1;
    if (w1 < 0 || w2 < 0) return false;
    return w1 <= w2 ? (w1 <= day && day <= w2) : (day >= w1 || day <= w2);
}
function __pycntlm_datefield(v) {
    var n = parseInt(v, 10);
    if (isNaN(n)) return __pycntlm_months.hasOwnProperty(v) ? ["m", __pycntlm_months[v]] : null;
    return n < 32 ? ["d", n] : ["y", n];
}
function __pycntlm_cmp(p, q) {
    for (var i = 0; i < p.length; i++) if (p[i] != q[i]) return p[i] < q[i] ? -1 : 1;
    return 0;
}
function dateRange() {
    var x = __pycntlm_args(arguments), a = x.a, n = a.length, d = x.d, g = x.gmt;
    var cur = {y: g ? d.getUTCFullYear() : d.getFullYear(), m: g ? d.getUTCMonth() : d.getMonth(),
               d: g ? d.getUTCDate() : d.getDate()};
    if (n < 1 || n > 6 || (n > 1 && n % 2)) return false;
    if (n == 1) { var f = __pycntlm_datefield(a[0]); return f != null && cur[f[0]] == f[1]; }
    var lo = {}, hi = {}, half = n / 2;
    for (var i = 0; i < n; i++) {
        var fld = __pycntlm_datefield(a[i]), side = i < half ? lo : hi;
        if (fld == null || side.hasOwnProperty(fld[0])) return false;
        side[fld[0]] = fld[1];
    }
    var p = [], q = [], c = [], keys = ["y", "m", "d"];
    for (var k = 0; k < 3; k++) {
        var key = keys[k];
        if (lo.hasOwnProperty(key) != hi.hasOwnProperty(key)) return false;
        if (lo.hasOwnProperty(key)) { p.push(lo[key]); q.push(hi[key]); c.push(cur[key]); }
    }
    if (__pycntlm_cmp(p, q) <= 0) return __pycntlm_cmp(p, c) <= 0 && __pycntlm_cmp(c, q) <= 0;
    return __pycntlm_cmp(c, q) <= 0 || __pycntlm_cmp(p, c) <= 0;
}
function timeRange() {
    var x = __pycntlm_args(arguments), a = x.a.map(Number), n = a.length, d = x.d, g = x.gmt;
    var h = g ? d.getUTCHours() : d.getHours();
    if (n == 1) return h == a[0];
    if (n == 2) return a[0] <= h && h <= a[1];
    if (n != 4 && n != 6) throw "timeRange: bad number of arguments";
    var now = h * 3600 + (g ? d.getUTCMinutes() : d.getMinutes()) * 60 +
        (g ? d.getUTCSeconds() : d.getSeconds());
    var lo = n == 4 ? a[0] * 3600 + a[1] * 60 : a[0] * 3600 + a[1] * 60 + a[2];
    var hi = n == 4 ? a[2] * 3600 + a[3] * 60 + 59 : a[3] * 3600 + a[4] * 60 + a[5];
    return lo <= hi ? (lo <= now && now <= hi) : (now >= lo || now <= hi);
}
"""
