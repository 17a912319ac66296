"""cntlm.conf and command-line flags -> one frozen, typed Config.

Owns: the Config types; the keyword table (keyword -> field, parser, single or multi-valued,
implemented or not); cntlm's precedence (file: first value wins; command line: last value wins
and beats the file, its list items go first, its -A/-D replace the file's ACL; one Header per
name, chosen by the same rules); `file:line:`
errors; warnings for unknown, duplicate and unsupported keys; the default Listen.
Text syntax (flags, lines, quoting, value formats) lives in cliflags.py.
Must not: do I/O beyond reading the config file it is given, prompt, touch the network, or put
a secret in an error, a warning or repr(Config).
"""

from __future__ import annotations

import functools
import ipaddress
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pycntlm.cliflags import (
    BadValue,
    CliArgs,
    Parser,
    Warn,
    auth_value,
    bool_value,
    config_lines,
    hash_value,
    header_value,
    host_port,
    noproxy_value,
    number_value,
    parse_argv,
    read_source,
    shown,
    shown_keyword,
    text_value,
)
from pycntlm.cliflags import usage as usage
from pycntlm.errors import ConfigError

DEFAULT_CONFIG_PATH = "/etc/cntlm.conf"
DEFAULT_LISTEN_PORT = 3128
MAX_SPARES = 32  # PoolSpare's ceiling: spares hold parent connections (and squid helpers)


@dataclass(frozen=True)
class HostPort:
    """A parent proxy address. `host` is a name or an IP literal (IPv6 without brackets)."""

    host: str
    port: int
    tls: bool = False  # `Proxy https://host:port`: TLS to the parent itself

    def __str__(self) -> str:
        return self._text

    @functools.cached_property
    def _text(self) -> str:  # pool keys and logs use it on every request
        where = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        return f"https://{where}" if self.tls else where


@dataclass(frozen=True)
class ListenAddr:
    """One listener. `host` None means: 127.0.0.1, or all interfaces when Gateway is on.
    `host` may be an IP literal (IPv6 without brackets) or an interface name such as docker0."""

    host: str | None
    port: int

    def __str__(self) -> str:
        if self.host is None:
            return str(self.port)
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class TunnelSpec:
    """One Tunnel / -L: listen on `listen`, forward every connection to host:port."""

    listen: ListenAddr
    host: str  # name or IP literal (IPv6 without brackets)
    port: int


@dataclass(frozen=True)
class AclRule:
    """One Allow/Deny line, in order. `network` is the text as written (e.g. "10.0.0.0/8", "0/0",
    "::1/128", "127.0.0.1"); it has been validated to parse in acl.py's terms."""

    allow: bool
    network: str


@dataclass(frozen=True)
class Config:
    """Everything pycntlm needs to run, already merged from file and command line."""

    # Credentials. Secrets stay out of repr. Pass* are the hex strings as written (cntlm's
    # inverted form); creds.py turns them into real hashes.
    username: str = ""
    domain: str = ""
    workstation: str = ""  # "" = use the host name
    password: str | None = field(default=None, repr=False)
    pass_nt: str | None = field(default=None, repr=False)
    pass_lm: str | None = field(default=None, repr=False)
    pass_ntlmv2: str | None = field(default=None, repr=False)
    auth: str = "NTLMv2"  # one of NTLMv2, NTLM2SR, NTLM, NT, LM (canonical spelling)

    # Routing.
    proxies: tuple[HostPort, ...] = ()
    noproxy: tuple[str, ...] = ()
    listen: tuple[ListenAddr, ...] = ()
    listen_defaulted: bool = False  # True when no Listen was given and we chose 127.0.0.1:3128
    gateway: bool = False
    acl: tuple[AclRule, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()  # Header lines (name, value), in order

    # Runtime.
    foreground: bool = False
    verbose: bool = False
    quiet: bool = False
    pidfile: str | None = None
    uid: str | None = None

    # Timeouts and limits (pycntlm keywords; cntlm has none of these).
    connect_timeout: float = 5.0  # ConnectTimeout: TCP connect to a parent or a direct target
    handshake_timeout: float = 15.0  # HandshakeTimeout: each read of a parent's answer
    idle_timeout: float = 300.0  # IdleTimeout: a tunnel/keep-alive connection with no traffic
    failback_interval: float = 60.0  # FailbackInterval: seconds before probing a preferred parent
    auth_failures_before_lockout: int = 1  # AuthLockoutAfter: Type 3 rejections before we stop
    auth_backoff: float = 300.0  # AuthBackoff: seconds we stop using a rejected credential
    pool_max_idle: int = 256  # PoolMaxIdle: idle authenticated connections kept per parent
    pool_idle_ttl: float = 60.0  # PoolIdleTimeout: seconds an idle pooled connection is kept
    pool_spare: int = 3  # PoolSpare: spares kept ready after a tunnel (3: dockerd downloads 3)
    # MaxClients: open client connections; more are answered 503. None: from the open-files
    # limit (each client may hold two descriptors: itself and its parent connection).
    max_clients: int | None = None
    max_head_size: int = 64 * 1024  # MaxHeadSize: bytes of one request head (431 beyond)
    max_headers: int = 128  # MaxHeaders: header fields in one request (431 beyond)
    ntlm_to_basic: bool = False  # NTLMToBasic / -B: clients' Basic credentials, NTLM upstream
    status_listen: tuple[ListenAddr, ...] = ()  # StatusListen: the /metrics endpoint (off)
    standalone: bool = False  # Standalone: serve directly while every parent is down
    pac: str | None = None  # Pac: a PAC file path or URL choosing the parent per request
    password_file: str | None = None  # PasswordFile: the password's first line (0600 file)
    sighup_reload: bool = True  # SighupReload no: SIGHUP stops, as under cntlm's old init script
    # ConnectPorts: ports CONNECT may reach (direct and through a parent); () = the default.
    connect_ports: tuple[tuple[int, int], ...] = ()
    proxy_ca_file: str | None = None  # ProxyCAFile: CAs for https:// parents (None: system's)
    proxy_tls_verify: bool = True  # ProxyTLSVerify no: do not check an https:// parent's cert
    auto_kerberos: bool = True  # AutoKerberos: Negotiate when offered and a ticket exists
    flags: int | None = None  # Flags / -F: NTLM negotiate flags to send instead of ours
    serialize: bool = False  # -s: one request at a time (debugging, as cntlm)
    trace_file: str | None = None  # -T: debug log appended to this file (0600, redacted)

    # Actions chosen on the command line.
    print_hashes: bool = False  # -H
    prompt_password: bool = False  # -I
    magic_url: str | None = None  # -M URL: find the working Auth dialect (magic.py)
    check_only: bool = False  # -t / --check-config
    show_help: bool = False  # -h / --help: print usage() and exit
    show_version: bool = False  # -V / --version

    # Front ends (frontends.py), as written and validated; tunnel_spec(), socks5_listen() and
    # socks5_account() give the typed values.
    tunnels: tuple[str, ...] = ()  # Tunnel / -L [saddr:]lport:rhost:rport
    socks5_proxies: tuple[str, ...] = ()  # SOCKS5Proxy / -O [saddr:]port
    socks5_users: tuple[str, ...] = field(default=(), repr=False)  # SOCKS5User(s) / -R: secrets
    socks5_open: bool = False  # SOCKS5Open: allow a non-loopback SOCKS5Proxy without accounts

    # Where it came from, and what the parser had to say.
    source_path: str | None = None
    warnings: tuple[str, ...] = ()


# ---------------------------------------------------------------- typed values


def _proxy(value: str, warn: Warn) -> tuple[HostPort, ...]:
    scheme, sep, rest = value.partition("://")
    tls = False
    if sep:
        if scheme.lower() not in ("http", "https"):
            raise BadValue(f"Proxy scheme must be http:// or https://, got {shown(scheme)}://")
        tls = scheme.lower() == "https"
        value = rest.rstrip("/")
    parsed = host_port(value)
    if parsed is None or parsed[0] is None:
        raise BadValue(
            "Proxy needs host:port, [v6]:port or https://host:port (port 1-65535), "
            f"got {shown(value)}"
        )
    return (HostPort(parsed[0], parsed[1], tls),)


def _flags(value: str, warn: Warn) -> int:
    """Flags / -F: the NTLM flag word, read like cntlm's strtoul(value, 0): 0x... hex, 0...
    octal, else decimal."""
    text = value.strip().lower()
    try:
        if text.startswith("0x"):
            number = int(text[2:], 16)
        elif text.startswith("0") and len(text) > 1:
            number = int(text[1:], 8)
        else:
            number = int(text, 10)
    except ValueError:
        number = -1
    if not 0 < number <= 0xFFFFFFFF:
        raise BadValue(f"Flags needs an NTLM flag word such as 0x07820000, got {shown(value)}")
    return number


def _listen(value: str, warn: Warn) -> tuple[ListenAddr, ...]:
    parsed = host_port(value)
    if parsed is None:
        raise BadValue(f"Listen needs [addr:]port, [v6]:port or iface:port, got {shown(value)}")
    return (ListenAddr(parsed[0], parsed[1]),)


def socks5_listen(value: str) -> ListenAddr:
    """SOCKS5Proxy [addr:]port, [v6]:port or iface:port. Raises BadValue."""
    parsed = host_port(value)
    if parsed is None:
        raise BadValue(f"SOCKS5Proxy needs [addr:]port or [v6]:port, got {shown(value)}")
    return ListenAddr(parsed[0], parsed[1])


def tunnel_spec(value: str) -> TunnelSpec:
    """Tunnel [saddr:]lport:rhost:rport (saddr and rhost may be [v6]). Raises BadValue."""
    head, _, rport = value.rpartition(":")
    if head.endswith("]") and "[" in head:
        at = head.rindex("[")
        local, colon, rhost = head[: max(at - 1, 0)], head[at - 1 : at], head[at:]
    else:
        local, colon, rhost = head.rpartition(":")
    listen, remote = host_port(local), host_port(f"{rhost}:{rport}")
    if not colon or listen is None or remote is None or remote[0] is None:
        raise BadValue(
            f"Tunnel needs [saddr:]lport:rhost:rport (IPv6 in brackets), got {shown(value)}"
        )
    return TunnelSpec(ListenAddr(*listen), remote[0], remote[1])


def socks5_account(value: str) -> tuple[str, str]:
    """SOCKS5User user:password; RFC 1929 allows 1-255 bytes of user, up to 255 of password."""
    user, colon, password = value.partition(":")
    if not colon or not 0 < len(user.encode()) <= 255 or len(password.encode()) > 255:
        # never echo the value: it holds a password
        raise BadValue("SOCKS5User needs user:password (user 1-255 bytes, password up to 255)")
    return user, password


def _kept(check: Callable[[str], object]) -> Parser:
    """A multi-valued keyword kept as written, once `check` has accepted it."""

    def parse(value: str, warn: Warn) -> tuple[str, ...]:
        check(value)
        return (value,)

    return parse


def _loopback_only(host: str | None, gateway: bool) -> bool:
    if host is None or host == "localhost":
        return host is not None or not gateway
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_socks5(values: dict[str, Any]) -> None:
    """A SOCKS5 listener other hosts can reach, without accounts, relays anyone's traffic on
    the user's account: refuse it unless SOCKS5Open says so. Interface and host names count as
    reachable; only loopback literals, localhost and a port alone without Gateway do not."""
    if values.get("socks5_users") or values.get("socks5_open"):
        return
    for text in values.get("socks5_proxies", ()):
        if not _loopback_only(socks5_listen(text).host, bool(values.get("gateway"))):
            raise ConfigError(
                f"SOCKS5Proxy {text} is reachable from other hosts and has no SOCKS5User: anyone "
                "there could use your proxy account. Add SOCKS5User user:password, listen on "
                "127.0.0.1, or set SOCKS5Open yes if this is really meant",
                values.get("source_path"),
            )


def _acl(allow: bool) -> Parser:
    name = "Allow" if allow else "Deny"

    def parse(value: str, warn: Warn) -> tuple[AclRule, ...]:
        if value in ("0/0", "*"):  # cntlm: everything, IPv4 and IPv6
            return (AclRule(allow, "0/0"),)
        try:
            if "%" in value:  # a zone index means nothing to an ACL
                raise ValueError(value)
            network = ipaddress.ip_network(value, strict=False)
        except ValueError:
            need = "an IP address, a CIDR network or 0/0"
            raise BadValue(f"{name} needs {need}, got {shown(value)}") from None
        if "/" in value and network.network_address != ipaddress.ip_interface(value).ip:
            warn(f"{name} {value} has host bits set; using {network}")
            return (AclRule(allow, str(network)),)
        return (AclRule(allow, value),)

    return parse


def _ports(value: str, warn: Warn) -> tuple[tuple[int, int], ...]:
    """ConnectPorts: ports and ranges ("443, 8443, 5000-5010"), or "*" for any port."""
    out: list[tuple[int, int]] = []
    for item in value.replace(",", " ").split():
        if item == "*":
            out.append((1, 65535))
            continue
        low, _, high = item.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise BadValue(
                f"ConnectPorts needs ports or ranges like 443 or 8000-8100, got {item!r}"
            )
        lo, hi = int(low), int(high or low)
        if not 1 <= lo <= hi <= 65535:
            raise BadValue(f"ConnectPorts: {item!r} is not a port range within 1-65535")
        out.append((lo, hi))
    return tuple(out)


# ---------------------------------------------------------------- keywords: one table


@dataclass(frozen=True)
class _Key:
    """One config keyword: canonical spelling, the Config field it fills (None: nowhere), how
    its value is parsed (multi-valued parsers return a tuple of items)."""

    name: str
    field: str | None
    parse: Parser = text_value
    multi: bool = False
    # Multi-valued items that name something (Header's field name): one item per name, the
    # names compared case-insensitively, chosen like a single value (see _add_items).
    item_name: Callable[[Any], str] | None = None
    implemented: bool = True
    why_not: str = ""  # for keywords read but not implemented: the reason, shown in the warning


def _number(
    name: str, field: str, cast: type[float], low: float, low_ok: bool, high: float = math.inf
) -> _Key:
    return _Key(name, field, number_value(name, cast, low, low_ok, high))


_ISA_WHY = (
    "it only served Microsoft ISA Server's download-scanning page, and ISA/TMG reached end of "
    "life in 2020; downloads are relayed unchanged"
)

_KEY_LIST = (
    _Key("Username", "username"),
    _Key("Domain", "domain"),
    _Key("Password", "password"),
    _Key("PassNT", "pass_nt", hash_value("PassNT")),
    _Key("PassLM", "pass_lm", hash_value("PassLM")),
    _Key("PassNTLMv2", "pass_ntlmv2", hash_value("PassNTLMv2")),
    _Key("Workstation", "workstation"),
    _Key("Auth", "auth", auth_value),
    _Key("Proxy", "proxies", _proxy, multi=True),
    _Key("NoProxy", "noproxy", noproxy_value, multi=True),
    _Key("Listen", "listen", _listen, multi=True),
    _Key("Gateway", "gateway", bool_value("Gateway")),
    _Key("Allow", "acl", _acl(True), multi=True),
    _Key("Deny", "acl", _acl(False), multi=True),
    _Key("Header", "headers", header_value, multi=True, item_name=lambda item: str(item[0])),
    _Key("PidFile", "pidfile"),
    _Key("ConnectPorts", "connect_ports", _ports, multi=True),
    _number("ConnectTimeout", "connect_timeout", float, 0, False),
    _number("HandshakeTimeout", "handshake_timeout", float, 0, False),
    _number("IdleTimeout", "idle_timeout", float, 0, False),
    _number("FailbackInterval", "failback_interval", float, 0, False),
    _number("AuthLockoutAfter", "auth_failures_before_lockout", int, 1, True),
    _number("AuthBackoff", "auth_backoff", float, 0, True),
    _number("PoolMaxIdle", "pool_max_idle", int, 0, True),
    _number("PoolIdleTimeout", "pool_idle_ttl", float, 0, False),
    _number("PoolSpare", "pool_spare", int, 0, True, MAX_SPARES),
    _number("MaxClients", "max_clients", int, 1, True),
    _number("MaxHeadSize", "max_head_size", int, 1024, True),
    _number("MaxHeaders", "max_headers", int, 8, True),
    _Key("Tunnel", "tunnels", _kept(tunnel_spec), multi=True),
    _Key("SOCKS5Proxy", "socks5_proxies", _kept(socks5_listen), multi=True),
    _Key("SOCKS5User", "socks5_users", _kept(socks5_account), multi=True),
    _Key("SOCKS5Users", "socks5_users", _kept(socks5_account), multi=True),
    _Key("SOCKS5Open", "socks5_open", bool_value("SOCKS5Open")),
    _Key("NTLMToBasic", "ntlm_to_basic", bool_value("NTLMToBasic")),
    _Key("StatusListen", "status_listen", _listen),
    _Key("Standalone", "standalone", bool_value("Standalone")),
    _Key("PasswordFile", "password_file"),
    _Key("SighupReload", "sighup_reload", bool_value("SighupReload")),
    _Key("Pac", "pac"),
    _Key("ProxyCAFile", "proxy_ca_file"),
    _Key("ProxyTLSVerify", "proxy_tls_verify", bool_value("ProxyTLSVerify")),
    _Key("AutoKerberos", "auto_kerberos", bool_value("AutoKerberos")),
    _Key("Flags", "flags", _flags),
    # cntlm keywords we read but deliberately do not implement: each use is warned about.
    _Key("ISAScannerAgent", None, implemented=False, why_not=_ISA_WHY),
    _Key("ISAScannerSize", None, implemented=False, why_not=_ISA_WHY),
)
_KEYS = {key.name.lower(): key for key in _KEY_LIST}
_MULTI_FIELDS = tuple(dict.fromkeys(k.field for k in _KEY_LIST if k.multi and k.field))
_ITEM_NAMES = {k.field: k.item_name for k in _KEY_LIST if k.item_name and k.field}
_HASH_FIELDS = (("PassNT", "pass_nt"), ("PassLM", "pass_lm"), ("PassNTLMv2", "pass_ntlmv2"))


# ---------------------------------------------------------------- applying one setting


@dataclass(frozen=True)
class _Where:
    """Where a setting came from: a file line, or a command-line option (label)."""

    path: str | None = None
    line: int | None = None
    label: str | None = None

    def error(self, message: str) -> ConfigError:
        if self.label is not None:
            return ConfigError(f"{self.label}: {message}")
        return ConfigError(message, self.path, self.line)

    def text(self, message: str) -> str:
        return str(self.error(message))


@dataclass
class _Acc:
    """What one source (the file, or the command line) said, while it is being read."""

    singles: dict[str, Any] = field(default_factory=dict)
    first_line: dict[str, int] = field(default_factory=dict)
    multis: dict[str, list[Any]] = field(default_factory=dict)
    item_lines: dict[tuple[str, str], int] = field(default_factory=dict)  # (field, name) -> line
    warnings: list[str] = field(default_factory=list)


def _apply(acc: _Acc, keyword: str, value: str | None, where: _Where, first_wins: bool) -> None:
    """Record one setting. File: the first single value wins; command line: the last."""
    key = _KEYS.get(keyword.lower())
    if key is None:
        acc.warnings.append(where.text(f"unknown keyword {shown_keyword(keyword)} ignored"))
        return
    if value is None:
        acc.warnings.append(where.text(f"'{key.name}' has no value and is ignored"))
        return
    if not key.implemented:
        acc.warnings.append(
            where.text(f"'{key.name}' is not supported and is ignored: {key.why_not}")
        )
    if key.field is None:
        return
    first = acc.first_line.get(key.field)
    if first_wins and first is not None and not key.multi:
        acc.warnings.append(
            where.text(f"duplicate '{key.name}' ignored (first value from line {first} is used)")
        )
        return
    try:
        parsed = key.parse(value, lambda message: acc.warnings.append(where.text(message)))
    except BadValue as exc:
        raise where.error(str(exc)) from None
    if key.multi:
        _add_items(acc, key, key.field, parsed, where, first_wins)
    else:
        acc.singles[key.field] = parsed
        acc.first_line.setdefault(key.field, where.line or 0)


def _add_items(
    acc: _Acc, key: _Key, target: str, items: tuple[Any, ...], where: _Where, first_wins: bool
) -> None:
    """Append a multi-valued keyword's items. Items that name something keep one per name, as
    cntlm sends one Header field per name: in the file the first wins (later ones are reported),
    on the command line the last."""
    kept = acc.multis.setdefault(target, [])
    if key.item_name is None:
        kept.extend(items)
        return
    for item in items:
        name = key.item_name(item)
        lowered = name.lower()
        first = acc.item_lines.get((target, lowered))
        if first is not None and first_wins:
            acc.warnings.append(
                where.text(
                    f"duplicate '{key.name} {name}' ignored (first value from line {first} is used)"
                )
            )
            continue
        if first is not None:
            kept[:] = [old for old in kept if key.item_name(old).lower() != lowered]
        kept.append(item)
        acc.item_lines[(target, lowered)] = where.line or 0


# ---------------------------------------------------------------- merging and the public API


def _read_file(text: str, path: str) -> _Acc:
    acc = _Acc()
    for number, keyword, value in config_lines(text, path):
        _apply(acc, keyword, value, _Where(path, number), first_wins=True)
    return acc


def _combine(cli: _Acc, file: _Acc) -> tuple[dict[str, Any], list[str]]:
    """cntlm's precedence: CLI single values beat the file's; CLI list items go first; any
    CLI Allow/Deny replaces all of the file's; a CLI item that names something (-r Header)
    replaces the file's items of that name."""
    values: dict[str, Any] = {**file.singles, **cli.singles}
    notes: list[str] = []
    for name in _MULTI_FIELDS:
        ours, theirs = cli.multis.get(name, []), file.multis.get(name, [])
        if name == "acl" and ours and theirs:
            notes.append(f"-A/-D replace the {len(theirs)} Allow/Deny rule(s) of the config file")
            theirs = []
        item_name = _ITEM_NAMES.get(name)
        if item_name is not None:
            given = {item_name(item).lower() for item in ours}
            theirs = [item for item in theirs if item_name(item).lower() not in given]
        values[name] = tuple(ours + theirs)
    return values, notes


def _finish(values: dict[str, Any], warnings: list[str]) -> Config:
    if not values.get("listen"):
        host = None if values.get("gateway") else "127.0.0.1"
        values["listen"] = (ListenAddr(host, DEFAULT_LISTEN_PORT),)
        values["listen_defaulted"] = True
    hashes = [name for name, key in _HASH_FIELDS if values.get(key) is not None]
    if values.get("password") is not None and hashes and not values.get("prompt_password"):
        given = "/".join(hashes)
        warnings.append(f"both Password and {given} are given; the plaintext password is used")
    _check_socks5(values)
    return Config(**values, warnings=tuple(warnings))


def parse_file(text: str, path: str) -> Config:
    """Parse the text of a cntlm.conf (no CLI). Raises ConfigError with path and line."""
    file = _read_file(text, path)
    values, notes = _combine(_Acc(), file)
    values["source_path"] = path
    return _finish(values, file.warnings + notes)


def _cli_fields(cli: CliArgs) -> dict[str, Any]:
    return {
        "foreground": cli.foreground or cli.verbose,  # like cntlm, -v implies -f
        "verbose": cli.verbose,
        "quiet": cli.quiet,
        "print_hashes": cli.print_hashes,
        "prompt_password": cli.prompt_password,
        "magic_url": cli.magic_url,
        "check_only": cli.check_only,
        "show_help": cli.show_help,
        "show_version": cli.show_version,
        "uid": cli.uid,
        "serialize": cli.serialize,
        "trace_file": cli.trace_file,
    }


def load(argv: list[str], default_path: str = DEFAULT_CONFIG_PATH) -> Config:
    """Parse cntlm-style command-line flags (argv without the program name) and the config file
    they name (or `default_path` when -c is absent and that file exists), apply cntlm's
    precedence, and return the merged Config. Raises ConfigError ("FILE:LINE: what is wrong").
    With -h or -V no file is read."""
    cli = parse_argv(argv)
    ours = _Acc()
    for keyword, value, option in cli.settings:
        _apply(ours, keyword, value, _Where(label=option), first_wins=False)
    path: str | None = None
    text, notes = "", list[str]()
    if not (cli.show_help or cli.show_version):
        path, text, notes = read_source(cli.config_path, default_path)
    file = _read_file(text, path) if path is not None else _Acc()
    values, merge_notes = _combine(ours, file)
    values.update(_cli_fields(cli), source_path=path)
    return _finish(values, notes + file.warnings + list(cli.notes) + ours.warnings + merge_notes)
