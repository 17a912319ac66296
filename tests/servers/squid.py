"""Debian's squid as a loopback parent proxy for tests (no auth, fake NTLM, Basic, or Kerberos
Negotiate with fake NTLM as the second offer).

Owns squid's generated configuration, its lifetime (by PID) and reading its access log. Only
loopback clients and loopback targets are allowed; squid never resolves names through real DNS.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from .procs import (
    LOOPBACK,
    START_TIMEOUT,
    ServerStartError,
    free_port,
    log_tail,
    start_process,
    stop_process,
    temp_dir,
    wait_for_text,
)

SquidMode = Literal["none", "ntlm", "basic", "negotiate"]
SQUID_BIN = "squid"
HELPER_DIR = Path("/usr/lib/squid")
NTLM_HELPER = HELPER_DIR / "ntlm_fake_auth"
BASIC_HELPER = HELPER_DIR / "basic_ncsa_auth"
NEGOTIATE_HELPER = HELPER_DIR / "negotiate_kerberos_auth"
BASIC_USERS: Mapping[str, str] = {"testuser": "password"}
# Names squid resolves itself (its own hosts_file); everything else fails fast.
SQUID_HOSTS = ("git.test", "registry.test")
_START_ATTEMPTS = 3
_SQUID_USER = "proxy"


@dataclass(frozen=True)
class AccessEntry:
    """One line of squid's native access log."""

    client: str
    result: str  # e.g. "TCP_MISS/200", "TCP_TUNNEL/200", "TCP_DENIED/407"
    code: int
    method: str
    url: str
    user: str  # "-" when unauthenticated


@dataclass(frozen=True)
class SquidInfo:
    """A running squid: where it listens, its mode and logs."""

    host: str
    port: int
    mode: SquidMode
    pid: int
    access_log: Path
    cache_log: Path
    users: Mapping[str, str] = field(default_factory=dict)
    log_offset: int = 0  # entries() reads the access log from this byte on

    def fresh_view(self) -> SquidInfo:
        """The same squid, counting only access-log lines written from now on."""
        try:
            size = self.access_log.stat().st_size
        except FileNotFoundError:
            size = 0
        return dataclasses.replace(self, log_offset=size)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def entries(self) -> list[AccessEntry]:
        """Parsed access-log lines written so far (squid logs a tunnel when it closes)."""
        try:
            with self.access_log.open("rb") as log:
                log.seek(self.log_offset)
                lines = log.read().decode(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        return [entry for entry in map(_parse_access_line, lines) if entry is not None]

    def count_requests(self, method: str | None = None, code: int | None = None) -> int:
        """How many logged requests match `method` (e.g. "CONNECT") and HTTP `code`."""
        return sum(
            1
            for entry in self.entries()
            if (method is None or entry.method == method) and (code is None or entry.code == code)
        )

    def failed_logins(self) -> int:
        """Requests squid refused although they carried a user name: each one is a login
        attempt with a wrong password (a 407 to a request without credentials logs "-")."""
        return sum(1 for entry in self.entries() if entry.code == 407 and entry.user != "-")


def _parse_access_line(line: str) -> AccessEntry | None:
    fields = line.split()
    if len(fields) < 8 or "/" not in fields[3]:
        return None
    code_text = fields[3].rsplit("/", 1)[1]
    code = int(code_text) if code_text.isdigit() else 0
    return AccessEntry(fields[2], fields[3], code, fields[5], fields[6], fields[7])


def _auth_lines(mode: SquidMode, directory: Path) -> list[str]:
    ntlm = [
        f"auth_param ntlm program {NTLM_HELPER}",
        "auth_param ntlm children 32 startup=4 idle=2",
        "auth_param ntlm keep_alive on",
    ]
    if mode == "ntlm":
        return ntlm
    if mode == "negotiate":  # Negotiate first: squid offers the schemes in this order
        helper = f"{NEGOTIATE_HELPER} -s GSS_C_NO_NAME -k {directory / 'http.keytab'}"
        return [
            f"auth_param negotiate program {helper} -c {directory}",
            "auth_param negotiate children 4 startup=1 idle=1",
            "auth_param negotiate keep_alive on",
            *ntlm,
        ]
    if mode == "basic":
        return [
            f"auth_param basic program {BASIC_HELPER} {directory / 'htpasswd'}",
            "auth_param basic children 8 startup=1 idle=1",
            "auth_param basic realm pycntlm-test",
        ]
    return []


def squid_config(mode: SquidMode, port: int, directory: Path) -> str:
    """The squid.conf text for one test instance living in `directory`."""
    lines = [
        f"http_port {LOOPBACK}:{port}",
        f"pid_filename {directory / 'squid.pid'}",
        f"cache_log {directory / 'cache.log'}",
        f"access_log stdio:{directory / 'access.log'}",
        "buffered_logs off",
        "cache_store_log none",
        "logfile_rotate 0",
        f"coredump_dir {directory}",
        "cache deny all",
        "cache_mem 8 MB",
        "dns_nameservers 127.0.0.1",
        f"hosts_file {directory / 'hosts'}",
        "pinger_enable off",
        "netdb_filename none",
        "visible_hostname pycntlm-test-squid",
        "shutdown_lifetime 0 seconds",
        "connect_timeout 5 seconds",
        *_auth_lines(mode, directory),
        "acl loopback_src src 127.0.0.0/8 ::1",
        "acl loopback_dst dst 127.0.0.0/8 ::1",
        "http_access deny !loopback_src",
        "http_access deny !loopback_dst",
    ]
    if mode == "none":
        lines.append("http_access allow all")
    else:
        lines += ["acl authed proxy_auth REQUIRED", "http_access allow authed"]
    lines.append("http_access deny all")
    if os.geteuid() == 0:
        lines.append(f"cache_effective_user {_SQUID_USER}")
    return "\n".join(lines) + "\n"


def _htpasswd(users: Mapping[str, str]) -> str:
    # basic_ncsa_auth accepts a plain hex MD5 digest of the password (no crypt module needed).
    return "".join(f"{user}:{hashlib.md5(pw.encode()).hexdigest()}\n" for user, pw in users.items())


def _hosts_file() -> str:
    return "127.0.0.1 localhost " + " ".join(SQUID_HOSTS) + "\n::1 localhost\n"


def _give_to_squid_user(directory: Path) -> None:
    """As root, squid drops to the `proxy` user, which must own its files."""
    if os.geteuid() != 0:
        return
    entry = pwd.getpwnam(_SQUID_USER)
    for path in [directory, *directory.iterdir()]:
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _require_tools(mode: SquidMode) -> None:
    needed = {"ntlm": NTLM_HELPER, "basic": BASIC_HELPER, "negotiate": NEGOTIATE_HELPER}.get(mode)
    if shutil.which(SQUID_BIN) is None:
        raise ServerStartError("squid is not installed (apt-get install squid)")
    if needed is not None and not needed.exists():
        raise ServerStartError(f"squid helper {needed} is missing")


_Started = tuple[SquidInfo, subprocess.Popen[bytes]]


@dataclass(frozen=True)
class SquidKerberos:
    """What mode "negotiate" needs: the service keytab and the realm's krb5.conf (both copied
    into squid's directory, which its helpers can read after squid drops privileges)."""

    keytab: Path
    krb5_config: Path


def _start_once(
    mode: SquidMode, directory: Path, users: Mapping[str, str], kerberos: SquidKerberos | None
) -> _Started:
    port = free_port()
    conf = directory / "squid.conf"
    conf.write_text(squid_config(mode, port, directory))
    (directory / "htpasswd").write_text(_htpasswd(users))
    (directory / "hosts").write_text(_hosts_file())
    env = None
    if kerberos is not None:
        shutil.copyfile(kerberos.keytab, directory / "http.keytab")
        shutil.copyfile(kerberos.krb5_config, directory / "krb5.conf")
        env = {**os.environ, "KRB5_CONFIG": str(directory / "krb5.conf")}
    _give_to_squid_user(directory)
    proc = start_process(
        [SQUID_BIN, "-N", "-f", str(conf)], log_path=directory / "squid.out", cwd=directory, env=env
    )
    try:
        # Readiness from the log, not a probe connection: a probe would add an access-log line.
        ready = f" local={LOOPBACK}:{port} "  # in "Accepting HTTP Socket connections at ..."
        wait_for_text(directory / "cache.log", ready, timeout=START_TIMEOUT, proc=proc)
    except ServerStartError as exc:
        stop_process(proc)
        tail = log_tail(directory / "cache.log") + "\n" + log_tail(directory / "squid.out")
        raise ServerStartError(f"squid ({mode}) failed to start: {exc}\n{tail}") from exc
    info = SquidInfo(
        LOOPBACK,
        port,
        mode,
        proc.pid,
        directory / "access.log",
        directory / "cache.log",
        dict(users) if mode == "basic" else {},
    )
    return info, proc


def _start(
    mode: SquidMode, directory: Path, users: Mapping[str, str], kerberos: SquidKerberos | None
) -> _Started:
    """Start squid, retrying with a new port when the picked one was taken meanwhile."""
    error: ServerStartError | None = None
    for _attempt in range(_START_ATTEMPTS):
        try:
            return _start_once(mode, directory, users, kerberos)
        except ServerStartError as exc:
            error = exc
    assert error is not None
    raise error


@contextlib.contextmanager
def squid_proxy(
    mode: SquidMode = "ntlm",
    *,
    users: Mapping[str, str] = BASIC_USERS,
    kerberos: SquidKerberos | None = None,
) -> Iterator[SquidInfo]:
    """Run squid on 127.0.0.1:<free port> for the block; stopped by PID afterwards.

    mode "none": no authentication; "ntlm": NTLM via ntlm_fake_auth (any password, no NTLMv2);
    "basic": Basic via basic_ncsa_auth with `users` (name -> password); "negotiate": Kerberos
    via negotiate_kerberos_auth with `kerberos`'s keytab (any principal in it), then NTLM as
    in "ntlm".
    """
    _require_tools(mode)
    if (mode == "negotiate") != (kerberos is not None):
        raise ValueError('squid mode "negotiate" needs kerberos=, and only it')
    with temp_dir("pycntlm-squid-") as directory:
        info, proc = _start(mode, directory, users, kerberos)
        try:
            yield info
        finally:
            stop_process(proc)


# One squid per mode per session (squid needs ~1-2 s to shut down); each test gets a view whose
# access-log counts start at that test. A test that stops or breaks squid must use squid_proxy().


@pytest.fixture(scope="session")
def squid_ntlm_session() -> Iterator[SquidInfo]:
    """squid requiring NTLM (ntlm_fake_auth: any password, no NTLMv2), shared by the session."""
    with squid_proxy("ntlm") as info:
        yield info


@pytest.fixture(scope="session")
def squid_noauth_session() -> Iterator[SquidInfo]:
    """squid without authentication, shared by the session."""
    with squid_proxy("none") as info:
        yield info


@pytest.fixture(scope="session")
def squid_basic_session() -> Iterator[SquidInfo]:
    """squid requiring Basic auth for BASIC_USERS, shared by the session."""
    with squid_proxy("basic") as info:
        yield info


@pytest.fixture
def squid_ntlm(squid_ntlm_session: SquidInfo) -> SquidInfo:
    """The session's NTLM squid; access-log counts start at this test."""
    return squid_ntlm_session.fresh_view()


@pytest.fixture
def squid_noauth(squid_noauth_session: SquidInfo) -> SquidInfo:
    """The session's no-auth squid; access-log counts start at this test."""
    return squid_noauth_session.fresh_view()


@pytest.fixture
def squid_basic(squid_basic_session: SquidInfo) -> SquidInfo:
    """The session's Basic squid; access-log counts start at this test."""
    return squid_basic_session.fresh_view()
