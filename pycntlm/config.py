"""cntlm.conf and command-line flags -> one frozen, typed Config.

Owns: reading cntlm.conf like cntlm does (and louder), cntlm's precedence rules, CLI flags,
`file:line:` errors, warnings for unknown/duplicate/unsupported keys.
Must not: do I/O beyond reading the config file it is given, prompt, or touch the network.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_CONFIG_PATH = "/etc/cntlm.conf"
DEFAULT_LISTEN_PORT = 3128


@dataclass(frozen=True)
class HostPort:
    """A parent proxy address. `host` is a name or an IP literal (IPv6 without brackets)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


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
    pool_max_idle: int = 32  # PoolMaxIdle: idle authenticated connections kept per parent
    pool_idle_ttl: float = 60.0  # PoolIdleTimeout: seconds an idle pooled connection is kept

    # Actions chosen on the command line.
    print_hashes: bool = False  # -H
    prompt_password: bool = False  # -I
    magic_url: str | None = None  # -M (not yet implemented: warns)
    check_only: bool = False  # -t / --check-config

    # Where it came from, and what the parser had to say.
    source_path: str | None = None
    warnings: tuple[str, ...] = ()


def load(argv: list[str]) -> Config:
    """Parse cntlm-style command-line flags (argv without the program name) and the config file
    they name (or DEFAULT_CONFIG_PATH when -c is absent and that file exists), apply cntlm's
    precedence, and return the merged Config. Raises ConfigError ("FILE:LINE: what is wrong")."""
    raise NotImplementedError


def parse_file(text: str, path: str) -> Config:
    """Parse the text of a cntlm.conf (no CLI). Raises ConfigError with path and line."""
    raise NotImplementedError
