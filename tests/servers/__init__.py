"""Real servers on loopback for tests: squid (parent proxy), a git smart-HTTP server, test TLS.

Import the fixtures into tests/conftest.py, e.g. ``from servers import *`` (see ``__all__``).
"""

from .gitserver import GitServerInfo, git_http_server, git_https_server, git_root, git_server
from .procs import (
    LOOPBACK,
    OriginInfo,
    ServerStartError,
    free_port,
    http_origin,
    running,
    stop_process,
    temp_dir,
    wait_for_port,
)
from .squid import (
    AccessEntry,
    SquidInfo,
    squid_basic,
    squid_basic_session,
    squid_noauth,
    squid_noauth_session,
    squid_ntlm,
    squid_ntlm_session,
    squid_proxy,
)
from .tls import TlsMaterial, clean_env, server_tls, tls_material

__all__ = [
    "LOOPBACK",
    "AccessEntry",
    "GitServerInfo",
    "OriginInfo",
    "ServerStartError",
    "SquidInfo",
    "TlsMaterial",
    "clean_env",
    "free_port",
    "git_http_server",
    "git_https_server",
    "git_root",
    "git_server",
    "http_origin",
    "running",
    "server_tls",
    "squid_basic",
    "squid_basic_session",
    "squid_noauth",
    "squid_noauth_session",
    "squid_ntlm",
    "squid_ntlm_session",
    "squid_proxy",
    "stop_process",
    "temp_dir",
    "tls_material",
    "wait_for_port",
]
