"""Debian's squid as a parent that speaks TLS itself (`https_port`), next to a plain `http_port`.

Owns one squid (GnuTLS build) listening on 127.0.0.1 twice: plain HTTP and TLS with the test CA's
server certificate (names in tls.TLS_NAMES), both requiring NTLM via ntlm_fake_auth (any password,
no NTLMv2: use `Auth NTLM`). The configuration is squid.py's plus one `https_port` line. Only
loopback clients and targets, as in squid.py; stopped by PID.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from .squid import (
    SQUID_BIN,
    SquidInfo,
    _give_to_squid_user,
    _hosts_file,
    _require_tools,
    squid_config,
)
from .tls import TlsMaterial

_START_ATTEMPTS = 3


@dataclass(frozen=True)
class SquidTls:
    """A running squid with a plain port (info.port) and a TLS port (tls_port), one access log."""

    info: SquidInfo
    tls_port: int
    ca_pem: Path  # the CA that signed squid's certificate

    @property
    def https_parent(self) -> str:
        """The `Proxy` value for the TLS port."""
        return f"https://{self.info.host}:{self.tls_port}"

    @property
    def http_parent(self) -> str:
        return f"{self.info.host}:{self.info.port}"

    def fresh_view(self) -> SquidTls:
        return dataclasses.replace(self, info=self.info.fresh_view())


def squid_tls_config(port: int, tls_port: int, directory: Path) -> str:
    """squid.py's NTLM configuration plus an https_port with the certificate in `directory`."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    return squid_config("ntlm", port, directory) + (
        f"https_port {LOOPBACK}:{tls_port} tls-cert={cert} tls-key={key}\n"
    )


def _start_once(directory: Path, tls: TlsMaterial) -> tuple[SquidTls, subprocess.Popen[bytes]]:
    port, tls_port = free_port(), free_port()
    shutil.copyfile(tls.cert_pem, directory / "cert.pem")
    shutil.copyfile(tls.key_pem, directory / "key.pem")
    (directory / "key.pem").chmod(0o600)
    conf = directory / "squid.conf"
    conf.write_text(squid_tls_config(port, tls_port, directory))
    (directory / "hosts").write_text(_hosts_file())
    (directory / "htpasswd").write_text("")
    _give_to_squid_user(directory)
    proc = start_process(
        [SQUID_BIN, "-N", "-f", str(conf)], log_path=directory / "squid.out", cwd=directory
    )
    try:
        # Readiness from the log (a probe connection would add an access-log line).
        ready = "Accepting HTTPS Socket connections at "
        wait_for_text(directory / "cache.log", ready, timeout=START_TIMEOUT, proc=proc)
        wait_for_text(
            directory / "cache.log", f" local={LOOPBACK}:{tls_port} ", timeout=1, proc=proc
        )
    except ServerStartError as exc:
        stop_process(proc)
        tail = log_tail(directory / "cache.log") + "\n" + log_tail(directory / "squid.out")
        raise ServerStartError(f"squid (https_port) failed to start: {exc}\n{tail}") from exc
    info = SquidInfo(
        LOOPBACK, port, "ntlm", proc.pid, directory / "access.log", directory / "cache.log"
    )
    return SquidTls(info, tls_port, tls.ca_pem), proc


@contextlib.contextmanager
def squid_tls_proxy(tls: TlsMaterial) -> Iterator[SquidTls]:
    """Run squid with http_port and https_port on 127.0.0.1 for the block."""
    _require_tools("ntlm")
    with temp_dir("pycntlm-squid-tls-") as directory:
        error: ServerStartError | None = None
        for _attempt in range(_START_ATTEMPTS):  # a picked port may be taken meanwhile
            try:
                started, proc = _start_once(directory, tls)
                break
            except ServerStartError as exc:
                error = exc
        else:
            assert error is not None
            raise error
        try:
            yield started
        finally:
            stop_process(proc)


@pytest.fixture(scope="session")
def squid_tls_session(server_tls: TlsMaterial) -> Iterator[SquidTls]:
    with squid_tls_proxy(server_tls) as running:
        yield running


@pytest.fixture
def squid_tls(squid_tls_session: SquidTls) -> SquidTls:
    """The session's TLS squid; access-log counts start at this test."""
    return squid_tls_session.fresh_view()
