"""The two raw inputs as text -> plain values: cntlm-style flags, and cntlm.conf lines.

Owns: option letters, clustering (-fv), attached or separate values (-c/etc/x, -c /etc/x),
positional parents (host:port or "host port"), the `-h` text; reading the config file (bounded)
and splitting it into (line, keyword, value) with cntlm's comment and quoting rules; the value
syntax shared by file and flags (ports, booleans, hashes, numbers, Auth names, NoProxy lists).
Must not: know the Config type or the precedence rules (config.py does), touch the network, or
echo a secret (Password, Pass*, -p, SOCKS5 users) in an error, warning or note.
"""

from __future__ import annotations

import getopt
import ipaddress
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pycntlm.errors import ConfigError

# Options whose value is a config-file keyword's value: option letter -> keyword.
KEYWORD_OPTIONS: dict[str, str] = {
    "a": "Auth",
    "A": "Allow",
    "d": "Domain",
    "D": "Deny",
    "F": "Flags",
    "G": "ISAScannerAgent",
    "l": "Listen",
    "L": "Tunnel",
    "N": "NoProxy",
    "O": "SOCKS5Proxy",
    "p": "Password",
    "P": "PidFile",
    "r": "Header",
    "R": "SOCKS5User",
    "S": "ISAScannerSize",
    "w": "Workstation",
}
# Switches that set a config-file keyword to "yes".
SWITCH_KEYWORDS: dict[str, str] = {"g": "Gateway", "B": "NTLMToBasic"}

_SHORT = "A:a:Bc:D:d:F:fG:gHhIL:l:M:N:O:P:p:qR:r:S:sT:tU:u:vVw:"
_LONG = ["help", "version", "check-config"]


@dataclass(frozen=True)
class CliArgs:
    """The command line, parsed but not validated. `settings` are (keyword, value, option)
    triples in argv order, to be applied like config-file lines (last one wins)."""

    config_path: str | None = None
    settings: tuple[tuple[str, str, str], ...] = ()
    foreground: bool = False
    verbose: bool = False
    quiet: bool = False
    print_hashes: bool = False
    prompt_password: bool = False
    check_only: bool = False
    show_help: bool = False
    show_version: bool = False
    magic_url: str | None = None
    uid: str | None = None
    serialize: bool = False
    trace_file: str | None = None
    notes: tuple[str, ...] = ()


_SWITCH_FIELDS: dict[str, str] = {
    "-f": "foreground",
    "-v": "verbose",
    "-q": "quiet",
    "-H": "print_hashes",
    "-I": "prompt_password",
    "-t": "check_only",
    "--check-config": "check_only",
    "-h": "show_help",
    "--help": "show_help",
    "-V": "show_version",
    "--version": "show_version",
    "-s": "serialize",
}
_VALUE_FIELDS: dict[str, str] = {
    "-c": "config_path",
    "-M": "magic_url",
    "-U": "uid",
    "-T": "trace_file",
}


def parse_argv(argv: list[str]) -> CliArgs:
    """Parse argv (without the program name). Raises ConfigError for an unknown option or a
    missing value; never echoes a value."""
    try:
        opts, positional = getopt.gnu_getopt(argv, _SHORT, _LONG)
    except getopt.GetoptError as exc:
        raise _getopt_error(exc) from None
    fields: dict[str, Any] = {}
    settings: list[tuple[str, str, str]] = []
    notes: list[str] = []
    for opt, value in opts:
        letter = opt[1:]
        if opt in _SWITCH_FIELDS:
            fields[_SWITCH_FIELDS[opt]] = True
        elif opt in _VALUE_FIELDS:
            fields[_VALUE_FIELDS[opt]] = value
        elif letter in KEYWORD_OPTIONS:
            settings.append((KEYWORD_OPTIONS[letter], value, opt))
        elif letter in SWITCH_KEYWORDS:
            settings.append((SWITCH_KEYWORDS[letter], "yes", opt))
        elif opt == "-u":
            settings.extend(_user_settings(value))
    settings.extend(("Proxy", parent, "proxy argument") for parent in _parents(positional))
    return CliArgs(settings=tuple(settings), notes=tuple(notes), **fields)


def _getopt_error(exc: getopt.GetoptError) -> ConfigError:
    dashes = "--" if exc.msg.startswith("option --") else "-"
    if "requires argument" in exc.msg:
        return ConfigError(f"option {dashes}{exc.opt} needs a value; see pycntlm -h")
    if "must not have an argument" in exc.msg:
        return ConfigError(f"option {dashes}{exc.opt} takes no value; see pycntlm -h")
    return ConfigError(f"unknown option {dashes}{exc.opt}; see pycntlm -h")


def _user_settings(value: str) -> list[tuple[str, str, str]]:
    """-u user[@domain]: like cntlm, the first '@' splits the user from the domain."""
    user, at, domain = value.partition("@")
    if not at:
        return [("Username", value, "-u")]
    return [("Username", user, "-u"), ("Domain", domain, "-u")]


def _parents(positional: list[str]) -> list[str]:
    """cntlm takes parents as "host:port" or as two arguments "host port"."""
    parents: list[str] = []
    i = 0
    while i < len(positional):
        arg = positional[i]
        nxt = positional[i + 1] if i + 1 < len(positional) else None
        if ":" not in arg and nxt is not None and nxt.isascii() and nxt.isdigit():
            parents.append(f"{arg}:{nxt}")
            i += 2
        else:
            parents.append(arg)
            i += 1
    return parents


def usage() -> str:
    """The text `pycntlm -h` prints."""
    return _USAGE.rstrip("\n")


_USAGE = """\
Usage: pycntlm [-AaBcDdFfgHhILlMNOPpqRrSsTtUuVvw] [<proxy_host>:<proxy_port> ...]
An authenticating local forward proxy (NTLM), a drop-in replacement for cntlm.
Options mirror cntlm; command-line values override the config file.

  -c <file>            Config file (default /etc/cntlm.conf if it exists).
  -u <user>[@<domain>] Account user name (and domain).
  -d <domain>          Account domain / workgroup.
  -p <password>        Account password (prefer PassNT/PassLM/PassNTLMv2 or -I).
  -I                   Prompt for the password.
  -H                   Print password hashes for the config file and exit.
  -a <auth>            NTLMv2 (default), NTLM2SR, NTLM, NT, LM, or GSS (Kerberos).
  -w <workstation>     NetBIOS workstation name to send (default: host name).
  -l [<addr>:]<port>   Listen address (repeatable; also [v6]:port or iface:port).
  -g                   Gateway mode: listen on all interfaces for port-only Listen.
  -A <net>, -D <net>   Allow / deny clients (repeatable, first match wins; replace the
                       file's Allow/Deny lines). <net> is an address, a CIDR, or 0/0.
  -N <patterns>        Hosts to reach directly, bypassing the parents (comma list).
  -r "Name: value"     Add or replace a request header (repeatable).
  -P <pidfile>         Write a PID file.
  -U <uid>             Run as this user.
  -f                   Stay in the foreground.
  -v                   Verbose (implies -f).
  -q                   Quiet: warnings and errors only.
  -t, --check-config   Check the configuration and exit.
  -h, --help           Show this help and exit.
  -V, --version        Show the version and exit.
  -B                   NTLMToBasic: clients log in with Basic, NTLM upstream as them.
  -L [saddr:]lport:rhost:rport   Tunnel: forward a local port through the parent.
  -O [saddr:]port      SOCKS5 proxy listener.   -R user:pass   a SOCKS5 account.
  -M <url>             Detect the strongest NTLM dialect that works and print its config.
  -F <flags>           NTLM flags to send in the Type 1 instead of ours (experts only).
  -s                   Serialize: one request at a time (debugging; tunnels once open don't
                       hold the others up).
  -T <file>            Append every debug record (redacted) to this trace file (0600).
  Accepted for cntlm compatibility, not supported (a warning says why):
  -G <pattern>, -S <size> (ISA Server's download scanner; ISA/TMG reached end of life in 2020)
"""


# ---------------------------------------------------------------- the config file, as lines

MAX_CONFIG_BYTES = 1 << 20


def read_source(explicit: str | None, default_path: str) -> tuple[str | None, str, list[str]]:
    """(path read or None, text, notes). -c FILE must be readable; the default path may be
    missing (CLI only), and an unreadable default file is a warning, like cntlm's "if possible"."""
    path = explicit if explicit is not None else default_path
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        if explicit is None and isinstance(exc, FileNotFoundError):
            return None, "", []
        message = f"cannot read: {exc.strerror or exc.__class__.__name__}"
        if explicit is not None:
            raise ConfigError(message, path) from None
        return None, "", [f"{path}: {message}; going on without it"]
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"larger than {MAX_CONFIG_BYTES} bytes; is it a config file?", path)
    try:
        return path, data.decode("utf-8"), []
    except UnicodeDecodeError:
        return path, data.decode("latin-1"), [f"{path}: not valid UTF-8, read as Latin-1"]


def config_lines(text: str, path: str) -> Iterator[tuple[int, str, str | None]]:
    """(line number, keyword, value or None) for each line that is not blank, a comment or a
    [section]. Raises ConfigError for a quoted value without its closing quote."""
    for number, raw in enumerate(text.removeprefix("\ufeff").split("\n"), start=1):
        line = raw.removesuffix("\r").strip(" \t")
        if not line or line[0] in "#;[":
            continue
        keyword, _, rest = line.replace("\t", " ", 1).partition(" ")
        try:
            yield number, keyword, _value(rest.lstrip(" \t"))
        except BadValue as exc:
            raise ConfigError(str(exc), path, number) from None


def _value(rest: str) -> str | None:
    """The value of a line: quoted ("a # b" keeps # and spaces) or up to a # comment."""
    if not rest.startswith('"'):
        return rest.partition("#")[0].rstrip(" \t") or None
    end = rest.find('"', 1)
    while end != -1:
        tail = rest[end + 1 :].lstrip(" \t")
        if not tail or tail.startswith("#"):
            return rest[1:end]
        end = rest.find('"', end + 1)
    raise BadValue("a quoted value needs a closing '\"' followed by nothing or a # comment")


# ---------------------------------------------------------------- value syntax -> plain values

Warn = Callable[[str], None]
Parser = Callable[[str, Warn], Any]


class BadValue(ValueError):
    """A bad value. The message is shown to the user, so it never holds a secret."""


def shown(value: str) -> str:
    """A value as it may be echoed in a message: any user:password@ part hidden, length bounded."""
    if "@" in value:
        value = "***@" + value.rpartition("@")[2]
    return repr(value if len(value) <= 80 else value[:77] + "...")


def shown_keyword(keyword: str) -> str:
    """A keyword as it may be echoed: cut at the first odd character ("Password=secret")."""
    match = re.match(r"[A-Za-z0-9_-]{0,40}", keyword)
    cut = match[0] if match else ""
    return repr(cut if cut == keyword else cut + "...")


_PORT_RE = re.compile(r"[0-9]{1,5}")
_HOST_RE = re.compile(r"[^\s/@\[\]:#\"']+")


def host_port(text: str) -> tuple[str | None, int] | None:
    """Split "[v6]:port", "host:port" or "port" (host None); None when malformed. A port is
    1-65535; a host is an IPv6 literal in brackets, or a name/IPv4/interface without ':'."""
    host: str | None = None
    port = text
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep or not _is_ipv6(host):
            return None
    elif ":" in text:
        host, _, port = text.rpartition(":")
        if not _HOST_RE.fullmatch(host):
            return None
    if not _PORT_RE.fullmatch(port) or not 1 <= int(port) <= 65535:
        return None
    return host, int(port)


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


_HEADER_RE = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+)[ \t]*:[ \t]*(.*)")


def header_value(value: str, warn: Warn) -> tuple[tuple[str, str], ...]:
    match = _HEADER_RE.fullmatch(value)
    if match is None:  # the value is not echoed: it may be an Authorization header
        raise BadValue("Header needs 'Name: value'")
    return ((match[1], match[2].strip(" \t")),)


def noproxy_value(value: str, warn: Warn) -> tuple[str, ...]:
    patterns = tuple(p for p in re.split(r"[,\s]+", value) if p)
    if not patterns:
        raise BadValue("NoProxy needs at least one host pattern")
    return patterns


_BOOLS = {"yes": True, "true": True, "on": True, "1": True}
_BOOLS |= {"no": False, "false": False, "off": False, "0": False}


def bool_value(name: str) -> Parser:
    def parse(value: str, warn: Warn) -> bool:
        if value.lower() not in _BOOLS:
            raise BadValue(f"{name} needs yes or no, got {shown(value)}")
        return _BOOLS[value.lower()]

    return parse


def hash_value(name: str) -> Parser:
    def parse(value: str, warn: Warn) -> str:
        if not re.fullmatch(r"[0-9A-Fa-f]{32}", value):  # never echo it
            raise BadValue(f"{name} must be 32 hexadecimal digits")
        return value.upper()

    return parse


def number_value(
    name: str, cast: Callable[[str], float], low: float, low_ok: bool, high: float = math.inf
) -> Parser:
    """A finite int or float (per `cast`) that is >= low (low_ok) or > low, and <= high."""
    need = f"{'an integer' if cast is int else 'a number'} {'>=' if low_ok else '>'} {low:g}"
    if high < math.inf:
        need += f" and <= {high:g}"

    def parse(value: str, warn: Warn) -> float:
        try:
            number = cast(value) if "_" not in value else math.nan
        except ValueError:
            number = math.nan
        in_range = number >= low if low_ok else number > low
        if not (math.isfinite(number) and in_range and number <= high):
            raise BadValue(f"{name} needs {need}, got {shown(value)}")
        return number

    return parse


AUTH_NAMES = ("NTLMv2", "NTLM2SR", "NTLM", "NT", "LM")
_AUTHS = {name.lower(): name for name in AUTH_NAMES}


def auth_value(value: str, warn: Warn) -> str:
    if value.lower() in _AUTHS:
        return _AUTHS[value.lower()]
    if value.lower() == "gss":
        return "GSS"  # Kerberos with the user's ticket cache (pycntlm/negotiate.py)
    raise BadValue(f"Auth must be one of {', '.join(AUTH_NAMES)}; got {shown(value)}")


def text_value(value: str, warn: Warn) -> str:
    return value


def raw_item(value: str, warn: Warn) -> tuple[str, ...]:
    return (value,)
