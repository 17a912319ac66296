"""config.py / cliflags.py: cntlm.conf syntax, keyword values, precedence, CLI flags, errors,
warnings, secrets kept out of messages, and property tests over random config texts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pycntlm import acl, config
from pycntlm.config import _ISA_WHY as ISA_WHY
from pycntlm.config import AclRule, Config, HostPort, ListenAddr
from pycntlm.errors import ConfigError

PATH = "t.conf"
NOWHERE = "/nonexistent/pycntlm-test/cntlm.conf"
NT = "77B9081511704EE852F94227CF48A793"
LM = "1AD35398BE6565DDB5C4EF70C0593492"
V2 = "1F6839EE15E639893286CF65C5D0A65C"


def parse(text: str) -> Config:
    return config.parse_file(text, PATH)


def load(*argv: str, default_path: str = NOWHERE) -> Config:
    return config.load(list(argv), default_path=default_path)


def write(tmp_path: Path, text: str, name: str = "cntlm.conf") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------- line syntax

SYNTAX_CASES = [
    ("Username bob", "username", "bob"),
    ("Username\t\tbob\t", "username", "bob"),
    ("  Username   bob  ", "username", "bob"),
    ("USERNAME bob", "username", "bob"),
    ("uSeRnAmE bob", "username", "bob"),
    ("Username bob smith", "username", "bob smith"),
    ("Username bob # the user", "username", "bob"),
    ("Username bob#x", "username", "bob"),
    ("Username bob\r\n", "username", "bob"),
    ("Username bob", "username", "bob"),  # no newline at the end
    ("\ufeffUsername bob\n", "username", "bob"),
    ('Password "a # b  c"', "password", "a # b  c"),
    ('Password "  spaced  "', "password", "  spaced  "),
    ('Password "x y" # comment', "password", "x y"),
    ('Password "x y"\t#comment "z"', "password", "x y"),
    ('Password "a"b"', "password", 'a"b'),
    ('Password ""', "password", ""),
    ('Password pa"ss', "password", 'pa"ss'),
    ("Password p;ss", "password", "p;ss"),
    ("# Username alice\nUsername bob", "username", "bob"),
    ("  # Username alice\nUsername bob", "username", "bob"),
    ("; Username alice\nUsername bob", "username", "bob"),
    ("\t;Username alice\nUsername bob", "username", "bob"),
    ("[global]\nUsername bob\n[other]\n", "username", "bob"),
    ("\n\n   \n\t\nUsername bob\n\n", "username", "bob"),
    ("Username a\r\nDomain CORP\r\n", "domain", "CORP"),
    ("Username a\nDomain CORP", "domain", "CORP"),
]


@pytest.mark.parametrize(("text", "field", "expected"), SYNTAX_CASES)
def test_line_syntax(text: str, field: str, expected: str) -> None:
    cfg = parse(text)
    assert getattr(cfg, field) == expected
    assert cfg.warnings == ()


# ---------------------------------------------------------------- keyword values

VALUE_CASES: list[tuple[str, str, Any]] = [
    ("Auth ntlmv2", "auth", "NTLMv2"),
    ("Auth NTLM2SR", "auth", "NTLM2SR"),
    ("auth ntlm", "auth", "NTLM"),
    ("Auth nt", "auth", "NT"),
    ("Auth Lm", "auth", "LM"),
    (f"PassNT {NT.lower()}", "pass_nt", NT),
    (f"PassLM {LM}", "pass_lm", LM),
    (f"PassNTLMv2 {V2.lower()}", "pass_ntlmv2", V2),
    ("Workstation PC01", "workstation", "PC01"),
    ("Domain corp-uk", "domain", "corp-uk"),
    ("PidFile /run/cntlm.pid", "pidfile", "/run/cntlm.pid"),
    ("Proxy proxy.corp:8080", "proxies", (HostPort("proxy.corp", 8080),)),
    ("Proxy 10.0.0.1:1", "proxies", (HostPort("10.0.0.1", 1),)),
    ("Proxy [2001:db8::1]:65535", "proxies", (HostPort("2001:db8::1", 65535),)),
    ("Listen 3128", "listen", (ListenAddr(None, 3128),)),
    ("Listen 127.0.0.1:3129", "listen", (ListenAddr("127.0.0.1", 3129),)),
    ("Listen [::]:3128", "listen", (ListenAddr("::", 3128),)),
    ("Listen [::1]:3128", "listen", (ListenAddr("::1", 3128),)),
    ("Listen docker0:3128", "listen", (ListenAddr("docker0", 3128),)),
    ("Listen 172.17.0.1:3128", "listen", (ListenAddr("172.17.0.1", 3128),)),
    (
        "NoProxy localhost, 127.0.0.*,10.*  *.corp",
        "noproxy",
        ("localhost", "127.0.0.*", "10.*", "*.corp"),
    ),
    ("Header User-Agent: Mozilla/4.0 (x; y)", "headers", (("User-Agent", "Mozilla/4.0 (x; y)"),)),
    ("Header X-Empty:", "headers", (("X-Empty", ""),)),
    ('Header "X-Hash: a#b"', "headers", (("X-Hash", "a#b"),)),
    ("Allow 127.0.0.1", "acl", (AclRule(True, "127.0.0.1"),)),
    ("Deny 0/0", "acl", (AclRule(False, "0/0"),)),
    ("Deny *", "acl", (AclRule(False, "0/0"),)),
    ("Allow 10.0.0.0/8", "acl", (AclRule(True, "10.0.0.0/8"),)),
    ("Allow ::1", "acl", (AclRule(True, "::1"),)),
    ("Allow fd00::/8", "acl", (AclRule(True, "fd00::/8"),)),
    ("Allow 10.0.0.0/255.0.0.0", "acl", (AclRule(True, "10.0.0.0/255.0.0.0"),)),
    ("ConnectTimeout 2.5", "connect_timeout", 2.5),
    ("HandshakeTimeout 7", "handshake_timeout", 7.0),
    ("IdleTimeout 1e3", "idle_timeout", 1000.0),
    ("FailbackInterval 0.5", "failback_interval", 0.5),
    ("AuthLockoutAfter 3", "auth_failures_before_lockout", 3),
    ("AuthBackoff 0", "auth_backoff", 0.0),
    ("PoolMaxIdle 0", "pool_max_idle", 0),
    ("PoolIdleTimeout 12.25", "pool_idle_ttl", 12.25),
    ("PoolSpare 0", "pool_spare", 0),
    ("PoolSpare 32", "pool_spare", 32),
]
for word, truth in [("yes", True), ("No", False), ("TRUE", True), ("false", False)]:
    VALUE_CASES.append((f"Gateway {word}", "gateway", truth))
for word, truth in [("on", True), ("off", False), ("1", True), ("0", False)]:
    VALUE_CASES.append((f"Gateway {word}", "gateway", truth))


@pytest.mark.parametrize(("text", "field", "expected"), VALUE_CASES)
def test_keyword_values(text: str, field: str, expected: Any) -> None:
    cfg = parse(text)
    assert getattr(cfg, field) == expected
    assert cfg.warnings == ()


def test_integers_stay_integers() -> None:
    cfg = parse("AuthLockoutAfter 3\nPoolMaxIdle 5\n")
    assert type(cfg.auth_failures_before_lockout) is int
    assert type(cfg.pool_max_idle) is int


def test_multi_value_keys_keep_file_order() -> None:
    cfg = parse(
        "Allow 127.0.0.1\nDeny 10.0.0.0/8\nAllow 10.1.0.0/16\nDeny 0/0\n"
        "Proxy a:1\nProxy b:2\nNoProxy x, y\nNoProxy z\n"
        "Header A: 1\nHeader B: 2\nListen 1\nListen 2\n"
    )
    assert cfg.acl == (
        AclRule(True, "127.0.0.1"),
        AclRule(False, "10.0.0.0/8"),
        AclRule(True, "10.1.0.0/16"),
        AclRule(False, "0/0"),
    )
    assert cfg.proxies == (HostPort("a", 1), HostPort("b", 2))
    assert cfg.noproxy == ("x", "y", "z")
    assert cfg.headers == (("A", "1"), ("B", "2"))
    assert cfg.listen == (ListenAddr(None, 1), ListenAddr(None, 2))
    assert cfg.listen_defaulted is False


def test_defaults_without_listen() -> None:
    cfg = parse("Username bob\n")
    assert cfg.listen == (ListenAddr("127.0.0.1", 3128),)
    assert cfg.listen_defaulted is True
    cfg = parse("Gateway yes\n")
    assert cfg.listen == (ListenAddr(None, 3128),)
    assert cfg.listen_defaulted is True
    assert cfg.source_path == PATH
    assert cfg.auth == "NTLMv2"


def test_acl_values_accepted_here_are_accepted_by_acl_module() -> None:
    for text in ["127.0.0.1", "0/0", "::1", "10.1.2.3/8", "10.0.0.0/255.0.0.0", "fd00::/8"]:
        rule = parse(f"Allow {text}").acl[0]
        acl.parse_network(rule.network)


# ---------------------------------------------------------------- errors


def msg(detail: str, line: int = 1) -> str:
    return f"{PATH}:{line}: {detail}"


PROXY_NEED = "Proxy needs host:port, [v6]:port or https://host:port (port 1-65535), got"
LISTEN_NEED = "Listen needs [addr:]port, [v6]:port or iface:port, got"
ERROR_CASES = [
    ("Proxy foo", msg(f"{PROXY_NEED} 'foo'")),
    ("Proxy foo:", msg(f"{PROXY_NEED} 'foo:'")),
    ("Proxy :3128", msg(f"{PROXY_NEED} ':3128'")),
    ("Proxy 3128", msg(f"{PROXY_NEED} '3128'")),
    ("Proxy h:0", msg(f"{PROXY_NEED} 'h:0'")),
    ("Proxy h:65536", msg(f"{PROXY_NEED} 'h:65536'")),
    ("Proxy h:80x", msg(f"{PROXY_NEED} 'h:80x'")),
    ("Proxy ::1:3128", msg(f"{PROXY_NEED} '::1:3128'")),
    ("Proxy [::1]", msg(f"{PROXY_NEED} '[::1]'")),
    ("Proxy [nothex]:80", msg(f"{PROXY_NEED} '[nothex]:80'")),
    ("Proxy ftp://h:80", msg("Proxy scheme must be http:// or https://, got 'ftp'://")),
    ("Proxy https://h", msg(f"{PROXY_NEED} 'h'")),
    ("Listen 0", msg(f"{LISTEN_NEED} '0'")),
    ("Listen 70000", msg(f"{LISTEN_NEED} '70000'")),
    ("Listen lo:", msg(f"{LISTEN_NEED} 'lo:'")),
    ("Listen [zz]:1", msg(f"{LISTEN_NEED} '[zz]:1'")),
    ("Auth Kerberos", msg("Auth must be one of NTLMv2, NTLM2SR, NTLM, NT, LM; got 'Kerberos'")),
    ("PassNT 1234", msg("PassNT must be 32 hexadecimal digits")),
    (f"PassLM {LM}0", msg("PassLM must be 32 hexadecimal digits")),
    (f"PassNTLMv2 {V2[:-1]}g", msg("PassNTLMv2 must be 32 hexadecimal digits")),
    ("Gateway maybe", msg("Gateway needs yes or no, got 'maybe'")),
    ("Allow 10.0.0.300", msg("Allow needs an IP address, a CIDR network or 0/0, got '10.0.0.300'")),
    ("Deny example.com", msg("Deny needs an IP address, a CIDR network or 0/0, got 'example.com'")),
    ("Deny 10.0.0.0/33", msg("Deny needs an IP address, a CIDR network or 0/0, got '10.0.0.0/33'")),
    (
        "Deny fe80::1%eth0",
        msg("Deny needs an IP address, a CIDR network or 0/0, got 'fe80::1%eth0'"),
    ),
    ("Header NoColonHere", msg("Header needs 'Name: value'")),
    ("Header Bad Name: x", msg("Header needs 'Name: value'")),
    ("NoProxy ,", msg("NoProxy needs at least one host pattern")),
    ("ConnectTimeout 0", msg("ConnectTimeout needs a number > 0, got '0'")),
    ("ConnectTimeout -1", msg("ConnectTimeout needs a number > 0, got '-1'")),
    ("IdleTimeout nan", msg("IdleTimeout needs a number > 0, got 'nan'")),
    ("IdleTimeout inf", msg("IdleTimeout needs a number > 0, got 'inf'")),
    ("HandshakeTimeout 1_0", msg("HandshakeTimeout needs a number > 0, got '1_0'")),
    ("FailbackInterval soon", msg("FailbackInterval needs a number > 0, got 'soon'")),
    ("AuthLockoutAfter 0", msg("AuthLockoutAfter needs an integer >= 1, got '0'")),
    ("AuthLockoutAfter 1.5", msg("AuthLockoutAfter needs an integer >= 1, got '1.5'")),
    ("AuthBackoff -0.1", msg("AuthBackoff needs a number >= 0, got '-0.1'")),
    ("PoolMaxIdle -1", msg("PoolMaxIdle needs an integer >= 0, got '-1'")),
    ("PoolIdleTimeout 0", msg("PoolIdleTimeout needs a number > 0, got '0'")),
    ("PoolSpare 33", msg("PoolSpare needs an integer >= 0 and <= 32, got '33'")),
    ("PoolSpare -1", msg("PoolSpare needs an integer >= 0 and <= 32, got '-1'")),
    (
        'Password "unterminated',
        msg("a quoted value needs a closing '\"' followed by nothing or a # comment"),
    ),
    (
        'Password "x" trailing',
        msg("a quoted value needs a closing '\"' followed by nothing or a # comment"),
    ),
    ("# c\n\nUsername a\nProxy nope", msg(f"{PROXY_NEED} 'nope'", line=4)),
    ("Username a\r\n\r\nListen x\r\n", msg(f"{LISTEN_NEED} 'x'", line=3)),
]


@pytest.mark.parametrize(("text", "expected"), ERROR_CASES)
def test_errors_name_file_and_line(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    assert str(caught.value) == expected
    assert caught.value.path == PATH


# ---------------------------------------------------------------- warnings


def test_duplicates_first_wins_with_warning() -> None:
    cfg = parse("Username first\nDomain D\nusername second\n\nUSERNAME third\nAuth NT\nAuth LM\n")
    assert cfg.username == "first"
    assert cfg.auth == "NT"
    assert cfg.warnings == (
        msg("duplicate 'Username' ignored (first value from line 1 is used)", 3),
        msg("duplicate 'Username' ignored (first value from line 1 is used)", 5),
        msg("duplicate 'Auth' ignored (first value from line 6 is used)", 7),
    )


def test_duplicate_is_not_validated_like_cntlm() -> None:
    cfg = parse("Auth NTLM\nAuth bogus\n")
    assert cfg.auth == "NTLM"
    assert cfg.warnings == (msg("duplicate 'Auth' ignored (first value from line 1 is used)", 2),)


def test_warnings_in_file_order() -> None:
    text = (
        "Foo bar\n"
        "Tunnel 11443:remote.com:443\n"
        "Auth GSS\n"
        "Domain\n"
        "SOCKS5Proxy 8010\n"
        "SOCKS5Users dave:pw\n"
        "ISAScannerSize 1024\n"
        "Flags 0x06820000\n"
        "ISAScannerAgent Wget/\n"
        "Username=bob\n"
    )
    cfg = parse(text)
    assert cfg.warnings == (
        msg("unknown keyword 'Foo' ignored", 1),
        msg("'Domain' has no value and is ignored", 4),
        msg("'ISAScannerSize' is not supported and is ignored: " + ISA_WHY, 7),
        msg("'ISAScannerAgent' is not supported and is ignored: " + ISA_WHY, 9),
        msg("unknown keyword 'Username...' ignored", 10),
    )
    assert cfg.auth == "GSS"
    assert cfg.flags == 0x06820000
    assert cfg.domain == ""
    assert cfg.tunnels == ("11443:remote.com:443",)
    assert cfg.socks5_proxies == ("8010",)
    assert cfg.socks5_users == ("dave:pw",)


def test_password_and_hashes_warns_password_wins() -> None:
    cfg = parse(f"Password pw\nPassNT {NT}\nPassLM {LM}\n")
    assert cfg.password == "pw"
    assert cfg.pass_nt == NT  # kept: creds.py decides
    assert cfg.warnings == (
        "both Password and PassNT/PassLM are given; the plaintext password is used",
    )
    assert parse(f"PassNT {NT}\n").warnings == ()


# ---------------------------------------------------------------- secrets

SECRET = "Hunter2Secret"
SECRET_TEXTS = [
    f'Password "{SECRET}',
    f'Password "{SECRET}" junk',
    f"Password={SECRET}",
    f"Password:{SECRET}",
    f"PassNT {SECRET}",
    f"PassLM {SECRET}",
    f"PassNTLMv2 {SECRET}",
    f"Proxy user:{SECRET}@proxy",
    f"Proxy user:{SECRET}@proxy:notaport",
    f"Header Authorization {SECRET}",
    f"SOCKS5User dave:{SECRET}",
    f"Password a\nPassword {SECRET}",
    f"Password {SECRET}\nPassword b\nPassNT {NT}",
    f"Password {SECRET}\nPassNT {SECRET}",
    f'Password "{SECRET} # x"\nFoo {SECRET}',
]


@pytest.mark.parametrize("text", SECRET_TEXTS)
def test_secrets_never_in_errors_warnings_or_repr(text: str) -> None:
    try:
        cfg = parse(text)
    except ConfigError as exc:
        assert SECRET not in str(exc)
        assert SECRET not in repr(exc)
        return
    assert not any(SECRET in w for w in cfg.warnings)
    assert SECRET not in repr(cfg)


def test_hashes_and_password_not_in_repr() -> None:
    cfg = parse(f"Password {SECRET}\nPassNT {NT}\nPassLM {LM}\nPassNTLMv2 {V2}\n")
    for hidden in (SECRET, NT, LM, V2):
        assert hidden not in repr(cfg)
        assert not any(hidden in w for w in cfg.warnings)


@pytest.mark.parametrize(
    "argv",
    [
        ["-p", SECRET, "-a", "bogus"],
        ["-p", SECRET],
        [f"-p{SECRET}", "-Q"],
        ["-R", f"u:{SECRET}"],
        [f"u:{SECRET}@proxy"],
        ["-r", f"Authorization {SECRET}"],
    ],
)
def test_cli_secrets_never_in_errors_warnings_or_repr(argv: list[str]) -> None:
    try:
        cfg = load(*argv)
    except ConfigError as exc:
        assert SECRET not in str(exc)
        return
    assert not any(SECRET in w for w in cfg.warnings)
    assert SECRET not in repr(cfg)


# ---------------------------------------------------------------- command line


def test_cli_last_wins_and_beats_file(tmp_path: Path) -> None:
    path = write(tmp_path, "Username filer\nDomain FILEDOM\nAuth NT\nWorkstation W1\n")
    cfg = load("-c", path, "-u", "a", "-u", "b", "-a", "lm", "-a", "ntlm2sr", "-w", "W2")
    assert (cfg.username, cfg.domain, cfg.auth, cfg.workstation) == (
        "b",
        "FILEDOM",
        "NTLM2SR",
        "W2",
    )
    assert cfg.source_path == path
    assert cfg.warnings == ()


def test_cli_lists_go_before_file_lists(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "Proxy f1:1\nProxy f2:2\nListen 3128\nNoProxy fileonly\nHeader X-File: 1\nTunnel 1:a:2\n",
    )
    cfg = load(
        "-c", path, "c1:10", "c2", "20", "-l", "4000", "-l", "[::1]:4001",
        "-N", "a,b", "-N", "c", "-r", "X-Cli: 2", "-L", "3:b:4",
    )  # fmt: skip
    assert cfg.proxies == (
        HostPort("c1", 10),
        HostPort("c2", 20),
        HostPort("f1", 1),
        HostPort("f2", 2),
    )
    assert cfg.listen == (ListenAddr(None, 4000), ListenAddr("::1", 4001), ListenAddr(None, 3128))
    assert cfg.noproxy == ("a", "b", "c", "fileonly")
    assert cfg.headers == (("X-Cli", "2"), ("X-File", "1"))
    assert cfg.tunnels == ("3:b:4", "1:a:2")


def test_file_header_lines_one_per_name_first_wins_with_warning() -> None:
    cfg = parse("Header X-A: 1\nHeader User-Agent: F/1\nHeader x-a: 2\nHeader X-A:3\n")
    assert cfg.headers == (("X-A", "1"), ("User-Agent", "F/1"))
    assert cfg.warnings == (
        msg("duplicate 'Header x-a' ignored (first value from line 1 is used)", 3),
        msg("duplicate 'Header X-A' ignored (first value from line 1 is used)", 4),
    )


def test_dash_r_one_per_name_last_wins() -> None:
    cfg = load("-r", "X-A: 1", "-r", "X-B: 2", "-r", "x-a: 3")
    assert cfg.headers == (("X-B", "2"), ("x-a", "3"))
    assert cfg.warnings == ()


def test_dash_r_replaces_the_file_header_of_its_name(tmp_path: Path) -> None:
    path = write(tmp_path, "Header User-Agent: File/1.0\nHeader X-File: 1\nHeader X-A: f\n")
    cfg = load("-c", path, "-r", "user-agent: Cli/1.0", "-r", "X-Cli: 2")
    assert cfg.headers == (
        ("user-agent", "Cli/1.0"),
        ("X-Cli", "2"),
        ("X-File", "1"),
        ("X-A", "f"),
    )
    assert cfg.warnings == ()


def test_cli_acl_replaces_all_file_acl(tmp_path: Path) -> None:
    path = write(tmp_path, "Allow 127.0.0.1\nDeny 0/0\n")
    cfg = load("-c", path, "-D", "10.0.0.0/8", "-A", "0/0")
    assert cfg.acl == (AclRule(False, "10.0.0.0/8"), AclRule(True, "0/0"))
    assert cfg.warnings == ("-A/-D replace the 2 Allow/Deny rule(s) of the config file",)
    assert load("-c", path).acl == (AclRule(True, "127.0.0.1"), AclRule(False, "0/0"))


@pytest.mark.parametrize(
    ("argv", "user", "domain"),
    [
        (["-u", "bob@CORP"], "bob", "CORP"),
        (["-u", "bob"], "bob", "FILEDOM"),
        (["-ubob@CORP"], "bob", "CORP"),
        (["-u", "bob@CORP", "-d", "OTHER"], "bob", "OTHER"),
        (["-d", "OTHER", "-u", "bob@CORP"], "bob", "CORP"),
        (["-u", "bob@corp.example@x"], "bob", "corp.example@x"),
    ],
)
def test_cli_user_at_domain(tmp_path: Path, argv: list[str], user: str, domain: str) -> None:
    cfg = load("-c", write(tmp_path, "Domain FILEDOM\n"), *argv)
    assert (cfg.username, cfg.domain) == (user, domain)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["-fv"], {"foreground": True, "verbose": True, "quiet": False}),
        (["-v"], {"foreground": True, "verbose": True}),
        (["-f"], {"foreground": True, "verbose": False}),
        (["-qf"], {"foreground": True, "quiet": True}),
        (["-gfl3129"], {"gateway": True, "foreground": True, "listen": (ListenAddr(None, 3129),)}),
        (["-fl", "3129"], {"foreground": True, "listen": (ListenAddr(None, 3129),)}),
        (["-Hu", "bob"], {"print_hashes": True, "username": "bob"}),
        (["-I"], {"prompt_password": True}),
        (["-t"], {"check_only": True}),
        (["--check-config"], {"check_only": True}),
        (["-h"], {"show_help": True}),
        (["--help"], {"show_help": True}),
        (["-V"], {"show_version": True}),
        (["--version"], {"show_version": True}),
        (["-P", "/run/p.pid", "-U", "cntlm"], {"pidfile": "/run/p.pid", "uid": "cntlm"}),
        (["-p", "pw"], {"password": "pw"}),
        (["-w", "PC1", "-d", "D"], {"workstation": "PC1", "domain": "D"}),
        (["-g"], {"gateway": True, "listen": (ListenAddr(None, 3128),), "listen_defaulted": True}),
        ([], {"listen": (ListenAddr("127.0.0.1", 3128),), "listen_defaulted": True}),
        (["--", "h:1"], {"proxies": (HostPort("h", 1),)}),
        (["-s"], {"serialize": True}),
        (["-T", "trace.log"], {"trace_file": "trace.log"}),
        (["-F", "0x1"], {"flags": 1}),
        (["-F", "0x07820000"], {"flags": 0x07820000}),
        (["-F", "010"], {"flags": 8}),
        (["-F", "42"], {"flags": 42}),
        (["https://p.example:3129"], {"proxies": (HostPort("p.example", 3129, tls=True),)}),
        (["http://[::1]:3128/"], {"proxies": (HostPort("::1", 3128),)}),
    ],
)
def test_cli_flags(argv: list[str], expected: dict[str, Any]) -> None:
    cfg = load(*argv)
    for name, value in expected.items():
        assert getattr(cfg, name) == value, name
    assert cfg.source_path is None


@pytest.mark.parametrize(
    ("argv", "warning"),
    [
        (["-G", "Wget/"], "-G: 'ISAScannerAgent' is not supported and is ignored: it only"),
        (["-S", "100"], "-S: 'ISAScannerSize' is not supported and is ignored: it only"),
        (["-A", "10.1.2.3/8"], "-A: Allow 10.1.2.3/8 has host bits set; using 10.0.0.0/8"),
    ],
)
def test_cli_compat_flags_warn(argv: list[str], warning: str) -> None:
    cfg = load(*argv)
    assert any(w.startswith(warning) for w in cfg.warnings), cfg.warnings


def test_magic_url_is_kept() -> None:
    assert load("-M", "http://example.com/").magic_url == "http://example.com/"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["-X"], "unknown option -X; see pycntlm -h"),
        (["-fX"], "unknown option -X; see pycntlm -h"),
        (["--bogus"], "unknown option --bogus; see pycntlm -h"),
        (["-l"], "option -l needs a value; see pycntlm -h"),
        (["-fc"], "option -c needs a value; see pycntlm -h"),
        (["--version=2"], "option --version takes no value; see pycntlm -h"),
        (["-l", "x"], f"-l: {LISTEN_NEED} 'x'"),
        (["-a", "magic"], "-a: Auth must be one of NTLMv2, NTLM2SR, NTLM, NT, LM; got 'magic'"),
        (
            ["-A", "nonsense"],
            "-A: Allow needs an IP address, a CIDR network or 0/0, got 'nonsense'",
        ),
        (["-N", ""], "-N: NoProxy needs at least one host pattern"),
        (["justahost"], f"proxy argument: {PROXY_NEED} 'justahost'"),
        (["h", "notaport"], f"proxy argument: {PROXY_NEED} 'h'"),
    ],
)
def test_cli_errors(argv: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(*argv)
    assert str(caught.value) == expected


def test_cli_password_beats_file_hashes(tmp_path: Path) -> None:
    path = write(tmp_path, f"PassNT {NT}\nPassNTLMv2 {V2}\n")
    cfg = load("-c", path, "-p", "pw")
    assert cfg.password == "pw"
    assert cfg.warnings == (
        "both Password and PassNT/PassNTLMv2 are given; the plaintext password is used",
    )
    assert load("-c", path, "-p", "pw", "-I").warnings == ()


def test_usage_lists_the_flags() -> None:
    text = config.usage()
    for flag in ["-c <file>", "-u <user>[@<domain>]", "-l [<addr>:]<port>", "-A <net>", "-h"]:
        assert flag in text


# ---------------------------------------------------------------- reading the file


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.conf")
    with pytest.raises(ConfigError) as caught:
        load("-c", missing)
    assert str(caught.value) == f"{missing}: cannot read: No such file or directory"


def test_unreadable_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load("-c", str(tmp_path))
    assert str(caught.value) == f"{tmp_path}: cannot read: Is a directory"


def test_default_path_used_when_present(tmp_path: Path) -> None:
    path = write(tmp_path, "Username fromdefault\nListen 4000\n")
    cfg = load("-u", "cli", default_path=path)
    assert cfg.username == "cli"
    assert cfg.listen == (ListenAddr(None, 4000),)
    assert cfg.source_path == path
    assert load(default_path=path).username == "fromdefault"


def test_default_path_missing_means_cli_only() -> None:
    cfg = load("-u", "bob", "p:1")
    assert cfg.source_path is None
    assert cfg.proxies == (HostPort("p", 1),)
    assert cfg.warnings == ()


def test_default_path_unreadable_is_a_warning(tmp_path: Path) -> None:
    cfg = load(default_path=str(tmp_path))
    assert cfg.source_path is None
    assert cfg.warnings == (f"{tmp_path}: cannot read: Is a directory; going on without it",)


def test_explicit_file_overrides_default(tmp_path: Path) -> None:
    default = write(tmp_path, "Username default\n", "default.conf")
    explicit = write(tmp_path, "Username explicit\n", "explicit.conf")
    assert load("-c", explicit, default_path=default).username == "explicit"
    assert load(f"-c{explicit}", default_path=default).source_path == explicit
    assert load("-c", os.devnull, default_path=default).username == ""


def test_help_and_version_do_not_read_the_file(tmp_path: Path) -> None:
    broken = write(tmp_path, "Proxy broken\n")
    assert load("-h", "-c", broken).show_help is True
    assert load("-V", default_path=broken).show_version is True
    with pytest.raises(ConfigError):
        load("-c", broken)


def test_file_errors_carry_the_path(tmp_path: Path) -> None:
    path = write(tmp_path, "Username a\nListen nope\n")
    with pytest.raises(ConfigError) as caught:
        load("-c", path)
    assert str(caught.value) == f"{path}:2: {LISTEN_NEED} 'nope'"
    assert (caught.value.path, caught.value.line) == (path, 2)


def test_latin1_file_is_read_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "latin1.conf"
    path.write_bytes("Username j\u00fcrgen\n".encode("latin-1"))
    cfg = load("-c", str(path))
    assert cfg.username == "j\u00fcrgen"
    assert cfg.warnings == (f"{path}: not valid UTF-8, read as Latin-1",)


def test_huge_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge.conf"
    path.write_bytes(b"#" * (2 << 20))
    with pytest.raises(ConfigError, match="larger than"):
        load("-c", str(path))


# ---------------------------------------------------------------- realistic files

REALISTIC = f"""\
#
# Cntlm Authentication Proxy Configuration
#
Username\tjdoe
Domain\t\tCORP-UK
PassLM          {LM}
PassNT          {NT}
PassNTLMv2      {V2}    # Only for user 'jdoe', domain 'CORP-UK'
Auth\t\tNTLMv2

Proxy\t\t10.0.0.41:8080
Proxy\t\tproxy2.corp.example:3128   # failover

NoProxy\t\tlocalhost, 127.0.0.*, 10.*, 192.168.*, *.corp.example
Listen\t\t127.0.0.1:3128
Listen\t\tdocker0:3128
Gateway\t\tno
Allow\t\t127.0.0.1
Allow\t\t172.17.0.0/16
Deny\t\t0/0
Header\t\tUser-Agent: Mozilla/5.0
ConnectTimeout\t3
"""


def test_realistic_config_end_to_end(tmp_path: Path) -> None:
    path = write(tmp_path, REALISTIC)
    cfg = load("-c", path)
    assert cfg == Config(
        username="jdoe",
        domain="CORP-UK",
        pass_lm=LM,
        pass_nt=NT,
        pass_ntlmv2=V2,
        auth="NTLMv2",
        proxies=(HostPort("10.0.0.41", 8080), HostPort("proxy2.corp.example", 3128)),
        noproxy=("localhost", "127.0.0.*", "10.*", "192.168.*", "*.corp.example"),
        listen=(ListenAddr("127.0.0.1", 3128), ListenAddr("docker0", 3128)),
        gateway=False,
        acl=(AclRule(True, "127.0.0.1"), AclRule(True, "172.17.0.0/16"), AclRule(False, "0/0")),
        headers=(("User-Agent", "Mozilla/5.0"),),
        connect_timeout=3.0,
        source_path=path,
    )


def test_debian_sample_config_parses_cleanly() -> None:
    sample = Path("/etc/cntlm.conf")
    assert sample.is_file(), "install Debian's cntlm package: its sample config is the fixture"
    cfg = config.parse_file(sample.read_text(encoding="utf-8"), str(sample))
    assert cfg.username == "testuser"
    assert cfg.domain == "corp-uk"
    assert cfg.proxies == (HostPort("10.0.0.41", 8080), HostPort("10.0.0.42", 8080))
    assert cfg.noproxy == ("localhost", "127.0.0.*", "10.*", "192.168.*")
    assert cfg.listen == (ListenAddr(None, 3128),)
    assert cfg.warnings == ()


# ---------------------------------------------------------------- properties

VALID_LINES = [line for text, _, _ in VALUE_CASES + SYNTAX_CASES for line in text.split("\n")]
VALID_LINES += REALISTIC.splitlines()
JUNK_ALPHABET = st.characters(codec="utf-8", exclude_characters="\n")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.sampled_from(VALID_LINES),
            st.text(alphabet=JUNK_ALPHABET, max_size=40),
            st.builds(
                lambda key, val: f"{key} {val}",
                st.sampled_from(
                    ["Proxy", "Listen", "Allow", "Auth", "PassNT", "Gateway", "Header"]
                ),
                st.text(alphabet=JUNK_ALPHABET, max_size=20),
            ),
        ),
        max_size=30,
    ),
    st.sampled_from(["\n", "\r\n"]),
)
def test_random_config_text_raises_only_config_error(lines: list[str], newline: str) -> None:
    try:
        cfg = parse(newline.join(lines))
    except ConfigError as exc:
        assert str(exc).startswith(f"{PATH}:")
        return
    assert cfg.listen
    for rule in cfg.acl:
        acl.parse_network(rule.network)  # whatever we accept, acl.py accepts


OPTION_WORDS = ["-f", "-v", "-l", "-u", "-A", "-D", "-c", "-p", "-a", "-X", "--", "--help", "h:1"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(OPTION_WORDS), st.text(max_size=12)), max_size=8))
def test_random_argv_raises_only_config_error(argv: list[str]) -> None:
    try:
        cfg = load(*argv)
    except ConfigError as exc:
        assert str(exc)
        return
    assert cfg.listen
    assert cfg.foreground or not cfg.verbose


HOSTS = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z][a-z0-9-]{0,10}){0,3}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
PORTS = st.integers(1, 65535)
# Printable text without the quote (a '"' followed by a # comment cannot round-trip).
PASSWORDS = st.text(
    alphabet=st.characters(
        codec="utf-8", categories=["L", "N", "P", "S", "Zs"], exclude_characters='"'
    ),
    min_size=1,
    max_size=30,
)
PATTERNS = st.lists(st.from_regex(r"[a-z0-9.*?-]{1,12}", fullmatch=True), min_size=1, max_size=5)
POSITIVE = st.floats(min_value=0.001, max_value=1e6, allow_nan=False, allow_infinity=False)


def _hp(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@settings(max_examples=200, deadline=None)
@given(
    user=st.from_regex(r"[A-Za-z0-9._-]{1,20}", fullmatch=True),
    password=PASSWORDS,
    parents=st.lists(st.tuples(HOSTS, PORTS), max_size=4),
    listens=st.lists(st.tuples(st.one_of(st.none(), HOSTS), PORTS), max_size=3),
    noproxy=PATTERNS,
    timeout=POSITIVE,
    max_idle=st.integers(0, 10_000),
    auth=st.sampled_from(["NTLMv2", "NTLM2SR", "NTLM", "NT", "LM"]),
    pass_nt=st.from_regex(r"[0-9a-fA-F]{32}", fullmatch=True),
)
def test_valid_lines_round_trip(
    user: str,
    password: str,
    parents: list[tuple[str, int]],
    listens: list[tuple[str | None, int]],
    noproxy: list[str],
    timeout: float,
    max_idle: int,
    auth: str,
    pass_nt: str,
) -> None:
    lines = [f"Username {user}", f'Password "{password}"  # quoted', f"Auth {auth.lower()}"]
    lines += [f"Proxy\t{_hp(h, p)}" for h, p in parents]
    lines += [f"Listen {p if h is None else _hp(h, p)}" for h, p in listens]
    lines += [f"NoProxy {', '.join(noproxy)}", f"IdleTimeout {timeout!r}"]
    lines += [f"PoolMaxIdle {max_idle}", f"PassNT {pass_nt}"]
    cfg = parse("\n".join(lines))
    assert cfg.username == user
    assert cfg.password == password
    assert cfg.auth == auth
    assert cfg.proxies == tuple(HostPort(h, p) for h, p in parents)
    if listens:
        assert cfg.listen == tuple(ListenAddr(h, p) for h, p in listens)
    assert cfg.noproxy == tuple(noproxy)
    assert cfg.idle_timeout == timeout
    assert cfg.pool_max_idle == max_idle
    assert cfg.pass_nt == pass_nt.upper()
    assert cfg.warnings == ("both Password and PassNT are given; the plaintext password is used",)


def test_ntlm_to_basic_status_listen_and_standalone_keywords() -> None:
    cfg = parse("NTLMToBasic yes\nStatusListen 127.0.0.1:9100\nStandalone on\n")
    assert cfg.ntlm_to_basic and cfg.standalone
    assert cfg.status_listen == (ListenAddr("127.0.0.1", 9100),)
    assert cfg.warnings == ()
    assert parse("Pac /etc/proxy.pac\n").pac == "/etc/proxy.pac"
    assert config.load(["-B", "-c", "/dev/null"]).ntlm_to_basic


@pytest.mark.parametrize("value", ["0x", "zz", "0", "-1", "0x100000000", "09"])
def test_bad_flags_are_refused_with_the_line(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^t\.conf:1: Flags needs an NTLM flag word"):
        parse(f"Flags {value}\n")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://proxy.corp:8443", HostPort("proxy.corp", 8443, tls=True)),
        ("HTTPS://[::1]:3129/", HostPort("::1", 3129, tls=True)),
        ("http://proxy.corp:8080", HostPort("proxy.corp", 8080)),
    ],
)
def test_proxy_urls(value: str, expected: HostPort) -> None:
    assert parse(f"Proxy {value}\n").proxies == (expected,)


def test_proxy_url_with_another_scheme_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^t\.conf:1: Proxy scheme must be http"):
        parse("Proxy socks5://p:1080\n")


def test_https_parent_is_named_with_its_scheme() -> None:
    assert str(HostPort("p", 1, tls=True)) == "https://p:1"
