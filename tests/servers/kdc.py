"""An MIT Kerberos KDC on 127.0.0.1 with a fresh realm, for Kerberos tests.

Owns: a throw-away realm in a temp dir (database, stash, krb5.conf, kdc.conf), its principals and
keytabs, krb5kdc's lifetime (by PID) and kinit into temp ticket caches. Must not: touch
/etc/krb5.conf or the system keytab, listen anywhere but 127.0.0.1, or leave its process running.
Tools: Debian's krb5-kdc (krb5kdc, kdb5_util), krb5-admin-server (kadmin.local), krb5-user (kinit).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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

REALM = "PYCNTLM.TEST"
USER = "testuser"
PASSWORD = "password"
SERVICE_HOSTS = ("localhost", "127.0.0.1")  # HTTP/<host> principals in the service keytab
CLOCK_SKEW = 1  # seconds; small, so a test can watch a ticket expire
TOOLS = ("krb5kdc", "kdb5_util", "kadmin.local", "kinit")
_TOOL_DIRS = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
_CMD_TIMEOUT = 20.0
_START_ATTEMPTS = 3


def tool(name: str) -> str:
    """The path of a krb5 tool (root's PATH may lack /usr/sbin); ServerStartError if missing."""
    found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(_TOOL_DIRS))
    if found is None:
        raise ServerStartError(
            f"{name} is not installed (apt-get install krb5-kdc krb5-admin-server krb5-user)"
        )
    return found


def _krb5_conf(port: int) -> str:
    return f"""[libdefaults]
    default_realm = {REALM}
    dns_lookup_kdc = false
    dns_lookup_realm = false
    rdns = false
    dns_canonicalize_hostname = false
    udp_preference_limit = 1
    clockskew = {CLOCK_SKEW}
[realms]
    {REALM} = {{
        kdc = {LOOPBACK}:{port}
    }}
[domain_realm]
    localhost = {REALM}
    127.0.0.1 = {REALM}
    .pycntlm.test = {REALM}
"""


def _kdc_conf(port: int, directory: Path) -> str:
    return f"""[kdcdefaults]
    kdc_listen = {LOOPBACK}:{port}
    kdc_tcp_listen = {LOOPBACK}:{port}
[realms]
    {REALM} = {{
        database_name = {directory / "principal"}
        key_stash_file = {directory / "stash"}
        kdc_listen = {LOOPBACK}:{port}
        kdc_tcp_listen = {LOOPBACK}:{port}
    }}
[logging]
    kdc = FILE:{directory / "kdc.log"}
"""


@dataclass(frozen=True)
class KdcInfo:
    """A running KDC: its realm, address, files, and a user with a ticket in `ccache`."""

    realm: str
    port: int
    pid: int
    directory: Path
    krb5_config: Path
    keytab: Path  # HTTP/<host>@REALM keys for every host in SERVICE_HOSTS
    ccache: str  # "FILE:<path>": USER's tickets after kinit
    user: str = USER
    password: str = PASSWORD

    @property
    def env(self) -> dict[str, str]:
        """What a Kerberos client (and the parent's acceptor) needs in its environment."""
        return {"KRB5_CONFIG": str(self.krb5_config), "KRB5CCNAME": self.ccache}

    def admin_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KRB5")}
        env["KRB5_CONFIG"] = str(self.krb5_config)
        env["KRB5_KDC_PROFILE"] = str(self.directory / "kdc.conf")
        return env

    def kadmin(self, query: str) -> None:
        """Run one kadmin.local query against this realm's database."""
        _run([tool("kadmin.local"), "-r", self.realm, "-q", query], self.admin_env())

    def add_service(self, name: str, keytab: Path) -> Path:
        """Create principal `name` (random key) and write its keys to `keytab`."""
        self.kadmin(f"addprinc -randkey {name}")
        self.kadmin(f"ktadd -k {keytab} {name}")
        return keytab

    def rekey(self, name: str, keytab: Path) -> Path:
        """Give `name` a new random key and write only the new one to `keytab` (a new file)."""
        self.kadmin(f"cpw -randkey {name}")
        self.kadmin(f"ktadd -k {keytab} {name}")
        return keytab

    def kinit(
        self, ccache: Path, *, password: str | None = None, lifetime: str | None = None
    ) -> str:
        """kinit USER into a new cache file; returns its "FILE:" name. Raises on a bad password."""
        name = f"FILE:{ccache}"
        argv = [tool("kinit"), "-c", name, *(["-l", lifetime] if lifetime else []), self.user]
        _run(argv, self.admin_env(), stdin=(password or self.password) + "\n")
        return name


def _run(argv: list[str], env: dict[str, str], stdin: str = "") -> None:
    done = subprocess.run(
        argv, input=stdin.encode(), capture_output=True, env=env, timeout=_CMD_TIMEOUT, check=False
    )
    if done.returncode != 0:  # krb5 tools never echo passwords or keys
        output = (done.stdout + done.stderr).decode(errors="replace").strip()[-500:]
        raise ServerStartError(f"{Path(argv[0]).name} failed ({done.returncode}): {output}")


def _create_realm(directory: Path) -> KdcInfo:
    """Database, user principal and service keytab; the port is filled in by _start_once."""
    info = KdcInfo(REALM, 0, 0, directory, directory / "krb5.conf", directory / "http.keytab", "")
    (directory / "krb5.conf").write_text(_krb5_conf(1))
    (directory / "kdc.conf").write_text(_kdc_conf(1, directory))
    master = secrets.token_hex(16)
    _run([tool("kdb5_util"), "create", "-s", "-r", REALM, "-P", master], info.admin_env())
    info.kadmin(f"addprinc -pw {PASSWORD} {USER}")
    for host in SERVICE_HOSTS:
        info.add_service(f"HTTP/{host}", info.keytab)
    return info


def _start_once(info: KdcInfo) -> tuple[KdcInfo, subprocess.Popen[bytes]]:
    directory = info.directory
    port = free_port()
    (directory / "krb5.conf").write_text(_krb5_conf(port))
    (directory / "kdc.conf").write_text(_kdc_conf(port, directory))
    log = directory / "kdc.log"
    log.unlink(missing_ok=True)  # a failed attempt's log must not look like a start
    proc = start_process(
        [tool("krb5kdc"), "-n", "-r", REALM],
        log_path=directory / "krb5kdc.out",
        env=info.admin_env(),
        cwd=directory,
    )
    try:
        wait_for_text(log, "commencing operation", timeout=START_TIMEOUT, proc=proc)
    except ServerStartError as exc:
        stop_process(proc)
        tail = log_tail(log) + "\n" + log_tail(directory / "krb5kdc.out")
        raise ServerStartError(f"krb5kdc failed to start: {exc}\n{tail}") from exc
    return dataclasses.replace(info, port=port, pid=proc.pid), proc


@contextlib.contextmanager
def running_kdc() -> Iterator[KdcInfo]:
    """A KDC for a fresh realm on 127.0.0.1:<free port>, USER kinit'ed into a temp cache;
    stopped by PID and its directory removed afterwards."""
    with temp_dir("pycntlm-kdc-") as directory:
        info = _create_realm(directory)
        proc: subprocess.Popen[bytes] | None = None
        error: ServerStartError | None = None
        for _attempt in range(_START_ATTEMPTS):  # a picked port may be taken meanwhile
            try:
                info, proc = _start_once(info)
                break
            except ServerStartError as exc:
                error = exc
        if proc is None:
            assert error is not None
            raise error
        try:
            ccache = info.kinit(directory / "ccache")
            yield dataclasses.replace(info, ccache=ccache)
        finally:
            stop_process(proc)


@pytest.fixture
def kdc() -> Iterator[KdcInfo]:
    """A fresh realm and KDC for one test (setting up takes ~0.5 s)."""
    with running_kdc() as info:
        yield info


@pytest.fixture
def kerberos_env(kdc: KdcInfo, monkeypatch: pytest.MonkeyPatch) -> KdcInfo:
    """The KDC, with KRB5_CONFIG and KRB5CCNAME pointing at it for this test's process."""
    for name, value in kdc.env.items():
        monkeypatch.setenv(name, value)
    return kdc
