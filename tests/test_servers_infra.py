"""The loopback test servers work with real clients (curl, git, Python ssl).

These tests guard the infrastructure the end-to-end tests rely on; a missing tool fails them.
"""

from __future__ import annotations

import gzip
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from servers import (
    LOOPBACK,
    GitServerInfo,
    ServerStartError,
    SquidInfo,
    TlsMaterial,
    clean_env,
    free_port,
    git_http_server,
    git_https_server,
    git_root,
    http_origin,
    running,
    server_tls,
    squid_basic,
    squid_basic_session,
    squid_noauth,
    squid_noauth_session,
    squid_ntlm,
    squid_ntlm_session,
    squid_proxy,
    stop_process,
    wait_for_port,
)

# Fixtures used by parameter name; imported so this module does not depend on conftest.py.
FIXTURES = (
    git_http_server,
    git_https_server,
    git_root,
    server_tls,
    squid_basic,
    squid_basic_session,
    squid_noauth,
    squid_noauth_session,
    squid_ntlm,
    squid_ntlm_session,
)
RUN_TIMEOUT = 60


def _curl_status(proxy: SquidInfo, url: str, *options: str, output: str = os.devnull) -> int:
    argv = ["curl", "-q", "-sS", "-o", output, "-w", "%{http_code}", "-x", proxy.url]
    done = subprocess.run(
        [*argv, *options, url], env=clean_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def _clone(url: str, dest: Path, *config: str) -> str:
    """git clone with `-c` options; return the clone's HEAD sha."""
    options = [arg for item in config for arg in ("-c", item)]
    done = subprocess.run(
        ["git", *options, "clone", "-q", url, str(dest)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    head = subprocess.run(
        ["git", "-C", str(dest), "rev-parse", "HEAD"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=True,
    )
    return head.stdout.strip()


def _blob_size(dest: Path) -> int:
    return (dest / "data" / "blob.bin").stat().st_size


# --- squid -------------------------------------------------------------------------------------


def test_squid_ntlm_accepts_curl_ntlm(squid_ntlm: SquidInfo) -> None:
    with http_origin() as origin:
        status = _curl_status(squid_ntlm, origin.url, "--proxy-ntlm", "--proxy-user", "D\\u:p")
    assert status == 200
    assert squid_ntlm.count_requests("GET", 200) == 1


def test_squid_ntlm_requires_credentials(squid_ntlm: SquidInfo) -> None:
    with http_origin() as origin:
        assert _curl_status(squid_ntlm, origin.url) == 407
        assert _curl_status(squid_ntlm, origin.url, "--proxy-user", "u:p") == 407  # Basic
    assert squid_ntlm.count_requests(code=407) == 2
    assert squid_ntlm.count_requests(code=200) == 0


def test_squid_basic_checks_the_password(squid_basic: SquidInfo) -> None:
    ((user, password),) = squid_basic.users.items()
    with http_origin() as origin:
        assert _curl_status(squid_basic, origin.url, "--proxy-user", f"{user}:{password}") == 200
        assert _curl_status(squid_basic, origin.url, "--proxy-user", f"{user}:wrong") == 407
        assert _curl_status(squid_basic, origin.url) == 407


def test_squid_noauth_relays_the_body(squid_noauth: SquidInfo, tmp_path: Path) -> None:
    body = os.urandom(200_000)
    out = tmp_path / "body"
    with http_origin(body) as origin:
        assert _curl_status(squid_noauth, origin.url, output=str(out)) == 200
    assert out.read_bytes() == body
    assert [entry.url for entry in squid_noauth.entries()] == [origin.url]


def test_squid_view_counts_from_its_start(squid_noauth: SquidInfo) -> None:
    with http_origin() as origin:
        assert _curl_status(squid_noauth, origin.url) == 200
        later = squid_noauth.fresh_view()
        assert later.count_requests() == 0
        assert _curl_status(squid_noauth, origin.url) == 200
    assert later.count_requests("GET", 200) == 1
    assert squid_noauth.count_requests("GET", 200) == 2


def test_squid_instances_are_independent() -> None:
    with squid_proxy("none") as first, squid_proxy("ntlm") as second:
        assert first.port != second.port
        assert first.access_log != second.access_log
        pid = first.pid
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# --- git server --------------------------------------------------------------------------------


def test_git_clone_over_http(git_http_server: GitServerInfo, tmp_path: Path) -> None:
    assert git_http_server.url.startswith("http://127.0.0.1:")
    assert _clone(git_http_server.url, tmp_path / "c") == git_http_server.head
    assert _blob_size(tmp_path / "c") >= 1024 * 1024


def test_git_clone_over_https(git_https_server: GitServerInfo, tmp_path: Path) -> None:
    ca = f"http.sslCAInfo={git_https_server.ca_pem}"
    assert git_https_server.url.startswith("https://localhost:")
    assert _clone(git_https_server.url, tmp_path / "c", ca) == git_https_server.head


def test_git_https_rejects_an_untrusted_server(
    git_https_server: GitServerInfo, tmp_path: Path
) -> None:
    done = subprocess.run(
        ["git", "clone", "-q", git_https_server.url, str(tmp_path / "c")],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert done.returncode != 0
    assert "certificate" in done.stderr.lower()


def _pkt_line(text: str) -> bytes:
    data = text.encode()
    return f"{len(data) + 4:04x}".encode() + data


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
def test_git_server_takes_chunked_request_bodies(
    git_http_server: GitServerInfo, tmp_path: Path, encoding: str
) -> None:
    """A chunked (and gzip-encoded) upload-pack request, as git sends for large negotiations."""
    body = _pkt_line(f"want {git_http_server.head}\n") + b"0000" + _pkt_line("done\n")
    (tmp_path / "body").write_bytes(gzip.compress(body) if encoding == "gzip" else body)
    headers = ["Content-Type: application/x-git-upload-pack-request"]
    headers += ["Transfer-Encoding: chunked", f"Content-Encoding: {encoding}"]
    argv = ["curl", "-q", "-sS", "-f", "-o", str(tmp_path / "out"), "--data-binary"]
    argv += [f"@{tmp_path / 'body'}", *(arg for h in headers for arg in ("-H", h))]
    done = subprocess.run(
        [*argv, f"{git_http_server.url}/git-upload-pack"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    answer = (tmp_path / "out").read_bytes()
    assert answer.startswith(b"0008NAK\nPACK")
    assert len(answer) >= 1024 * 1024


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_git_clone_through_squid(
    scheme: str,
    git_http_server: GitServerInfo,
    git_https_server: GitServerInfo,
    squid_noauth: SquidInfo,
    tmp_path: Path,
) -> None:
    server = git_https_server if scheme == "https" else git_http_server
    config = [f"http.proxy={squid_noauth.url}", f"http.sslCAInfo={server.ca_pem or ''}"]
    # git.test exists only in squid's hosts file: success proves the request went via squid.
    assert _clone(server.url_for("git.test"), tmp_path / "c", *config) == server.head
    method = "CONNECT" if scheme == "https" else "POST"
    assert _wait_for_count(squid_noauth, method) >= 1


def test_git_clone_through_squid_ntlm(
    git_https_server: GitServerInfo, squid_ntlm: SquidInfo, tmp_path: Path
) -> None:
    proxy = f"http://D%5Cu:p@{squid_ntlm.host}:{squid_ntlm.port}"
    config = [f"http.proxy={proxy}", "http.proxyAuthMethod=ntlm"]
    config.append(f"http.sslCAInfo={git_https_server.ca_pem}")
    url = git_https_server.url_for("git.test")
    assert _clone(url, tmp_path / "c", *config) == git_https_server.head
    assert _wait_for_count(squid_ntlm, "CONNECT", 200) >= 1


def _wait_for_count(squid: SquidInfo, method: str, code: int | None = None) -> int:
    """squid logs a tunnel when it ends: poll the access log briefly (bounded)."""
    deadline = time.monotonic() + 5.0
    count = squid.count_requests(method, code)
    while count == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
        count = squid.count_requests(method, code)
    return count


# --- TLS material and environment --------------------------------------------------------------


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1", "git.test", "registry.test"])
def test_tls_client_context_verifies_the_server(
    git_https_server: GitServerInfo, server_tls: TlsMaterial, name: str
) -> None:
    with (
        socket.create_connection((LOOPBACK, git_https_server.port), timeout=10) as raw,
        server_tls.client_context.wrap_socket(raw, server_hostname=name) as tls,
    ):
        assert tls.version() is not None


def test_tls_client_context_refuses_other_names(
    git_https_server: GitServerInfo, server_tls: TlsMaterial
) -> None:
    with (
        socket.create_connection((LOOPBACK, git_https_server.port), timeout=10) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        server_tls.client_context.wrap_socket(raw, server_hostname="other.test")


def test_clean_env_scrubs_ca_and_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GIT_SSL_CAINFO", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        monkeypatch.setenv(name, "/elsewhere.pem")
    for name in ("http_proxy", "HTTPS_PROXY", "no_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.setenv("PYCNTLM_KEEP_ME", "1")
    env = clean_env({"https_proxy": "http://127.0.0.1:3128"})
    scrubbed = {"GIT_SSL_CAINFO", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"}
    assert not scrubbed & env.keys()
    assert [k for k in env if k.lower().endswith("_proxy")] == ["https_proxy"]
    assert env["PYCNTLM_KEEP_ME"] == "1"
    assert env["GIT_CONFIG_NOSYSTEM"] == "1"


# --- process helpers ---------------------------------------------------------------------------

_IGNORE_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"


def test_stop_process_kills_a_process_that_ignores_sigterm(tmp_path: Path) -> None:
    started = time.monotonic()
    argv = [sys.executable, "-c", _IGNORE_TERM]
    with running(argv, log_path=tmp_path / "log", stop_timeout=1.0) as proc:
        time.sleep(0.3)  # let it install the handler
    assert proc.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 10


def test_wait_for_port_fails_fast_when_the_process_dies(tmp_path: Path) -> None:
    port = free_port()
    with running([sys.executable, "-c", "raise SystemExit(3)"], log_path=tmp_path / "log") as p:
        started = time.monotonic()
        with pytest.raises(ServerStartError, match="exited with 3"):
            wait_for_port(LOOPBACK, port, timeout=10, proc=p)
        assert time.monotonic() - started < 5
    stop_process(p)  # idempotent


def test_wait_for_port_sees_a_listener() -> None:
    with socket.create_server((LOOPBACK, 0)) as listener:
        wait_for_port(LOOPBACK, listener.getsockname()[1], timeout=5)
