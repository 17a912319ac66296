"""Test TLS material (a throw-away trustme CA) and a clean client environment.

Owns certificates for loopback names and the environment scrubbing that keeps this machine's CA
and proxy variables away from test clients. Must never trust anything outside the test CA.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

# Names the test server certificate is valid for. The *.test names resolve to 127.0.0.1 only
# where a test arranges it (for example squid's own hosts file, see squid.py).
TLS_NAMES = ("localhost", "127.0.0.1", "::1", "git.test", "registry.test")

# Variables that make clients trust another CA bundle than the one a test passes explicitly.
_CA_VARS = frozenset(
    {
        "GIT_SSL_CAINFO",
        "GIT_SSL_CAPATH",
        "CURL_CA_BUNDLE",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        "NIX_SSL_CERT_FILE",
        "AWS_CA_BUNDLE",
        "HTTPLIB2_CA_CERTS",
        "PIP_CERT",
    }
)

# Keep git away from the user's and the system's configuration and from prompting.
_GIT_ISOLATION = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_TERMINAL_PROMPT": "0",
}


@dataclass(frozen=True)
class TlsMaterial:
    """A test CA and one server certificate for TLS_NAMES, as files and as contexts."""

    ca_pem: Path
    cert_pem: Path  # server certificate chain
    key_pem: Path  # server private key
    server_context: ssl.SSLContext
    client_context: ssl.SSLContext


def tls_material(directory: Path) -> TlsMaterial:
    """Create a CA and a server certificate; write the PEM files into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    cert = ca.issue_cert(*TLS_NAMES)
    ca_pem = directory / "ca.pem"
    cert_pem = directory / "server-chain.pem"
    key_pem = directory / "server-key.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    cert.private_key_pem.write_to_path(str(key_pem))
    with cert_pem.open("wb") as chain:
        for blob in cert.cert_chain_pems:
            chain.write(blob.bytes())
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_pem, key_pem)
    client_context = ssl.create_default_context(cafile=str(ca_pem))
    return TlsMaterial(ca_pem, cert_pem, key_pem, server_context, client_context)


def _is_scrubbed(name: str) -> bool:
    return name in _CA_VARS or name.lower().endswith("_proxy")


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of os.environ without CA-bundle and *_proxy variables, git isolated, plus `extra`.

    `extra` is applied last, so a test can set e.g. https_proxy explicitly.
    """
    env = {name: value for name, value in os.environ.items() if not _is_scrubbed(name)}
    env.update(_GIT_ISOLATION)
    if extra:
        env.update(extra)
    return env


@pytest.fixture(scope="session")
def server_tls(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    """One test CA and server certificate (TLS_NAMES) for the whole session."""
    return tls_material(tmp_path_factory.mktemp("tls"))
