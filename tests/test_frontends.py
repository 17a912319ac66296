"""Tunnel (-L) front end end to end, and the config syntax of Tunnel.

A tunnel carries real protocols: git over https (TLS passes through untouched) and plain HTTP,
through the verifying NTLM parent, or directly for NoProxy targets.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
from proxyrun import conf, running_proxy
from servers.gitserver import GitServerInfo
from servers.procs import run_client
from servers.tls import clean_env

from pycntlm import config, context, creds, frontends
from pycntlm.config import ListenAddr, TunnelSpec
from pycntlm.demo.origin import HELLO, Origin
from pycntlm.demo.parent import NtlmParent
from pycntlm.errors import ConfigError

CLIENT_TIMEOUT = 60.0


def free_port() -> int:
    """A loopback port nothing listens on right now (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run(*argv: str, cwd: Path | None = None) -> tuple[int, str, str]:
    """A client process that does not block the event loop pycntlm runs in."""
    rc, out, err = await run_client(argv, env=clean_env(), timeout=CLIENT_TIMEOUT, cwd=cwd)
    return rc, out.decode(errors="replace"), err.decode(errors="replace")


async def http_get(port: int, path: str = "/") -> bytes:
    """GET through a tunnel port (origin-form: the far end is the origin itself)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


# ---------------------------------------------------------------- git over https through a tunnel


async def test_git_clone_https_through_tunnel(
    tmp_path: Path, parent: NtlmParent, git_https_server: GitServerInfo
) -> None:
    lport = free_port()
    tunnel = f"Tunnel 127.0.0.1:{lport}:localhost:{git_https_server.port}"
    url = git_https_server.url.replace(f":{git_https_server.port}/", f":{lport}/")
    assert git_https_server.ca_pem is not None
    async with running_proxy(conf(parent.address, extra=tunnel), tmp_path) as proxy:
        rc, _, err = await run(
            "git", "-c", f"http.sslCAInfo={git_https_server.ca_pem}", "clone", "-q", url,
            str(tmp_path / "clone"),
        )  # fmt: skip
        assert rc == 0, err
        assert proxy.ctx.stats.tunnels_active == 0
    rc, head, err = await run("git", "-C", str(tmp_path / "clone"), "rev-parse", "HEAD")
    assert rc == 0, err
    assert head.strip() == git_https_server.head
    # every tunnel connection was a CONNECT through the verifying parent, authenticated
    assert parent.stats.requests >= 1
    assert parent.stats.logons_ok == parent.stats.requests
    assert parent.stats.logons_failed == 0
    assert set(parent.stats.dialects) == {"NTLMv2"}


# ---------------------------------------------------------------- plain HTTP, routes, failures


async def test_tunnel_plain_http_via_parent_many_connections(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    lport = free_port()
    extra = f"Tunnel {lport}:127.0.0.1:{origin.port}"  # no saddr: loopback (no Gateway)
    async with running_proxy(conf(parent.address, extra=extra), tmp_path):
        answers = await asyncio.gather(*(http_get(lport) for _ in range(5)))
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(HELLO)
    assert parent.stats.requests == 5
    assert parent.stats.logons_failed == 0


async def test_port_alone_binds_loopback_only() -> None:
    """cntlm: without Gateway a port alone means 127.0.0.1 (Tunnel and SOCKS5Proxy alike)."""
    tport, sport = free_port(), free_port()
    cfg = config.parse_file(f"Proxy 127.0.0.1:1\nTunnel {tport}:h:1\nSOCKS5Proxy {sport}\n", "c")
    servers = await frontends.start_frontends(context.build(cfg, None), lambda coro: coro.close())
    try:
        names = {sock.getsockname()[:2] for srv in servers for sock in srv.sockets}
    finally:
        for srv in servers:
            srv.close()
    assert names == {("127.0.0.1", tport), ("127.0.0.1", sport)}


async def test_tunnel_noproxy_target_goes_direct(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    lport = free_port()
    extra = f"Tunnel 127.0.0.1:{lport}:127.0.0.1:{origin.port}\nNoProxy 127.0.0.1"
    async with running_proxy(conf(parent.address, extra=extra), tmp_path):
        answer = await http_get(lport)
    assert answer.endswith(HELLO)
    assert parent.stats.connections == 0


async def test_tunnel_to_dead_target_closes_and_keeps_serving(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    dead, good = free_port(), free_port()
    extra = (
        f"Tunnel 127.0.0.1:{dead}:127.0.0.1:{free_port()}\n"
        f"Tunnel 127.0.0.1:{good}:127.0.0.1:{origin.port}"
    )
    async with running_proxy(conf(parent.address, extra=extra), tmp_path):
        assert await http_get(dead) == b""  # the parent answered 502: the client is closed
        assert (await http_get(good)).endswith(HELLO)
        assert await http_get(dead) == b""
    assert parent.stats.logons_failed == 0


async def test_tunnel_wrong_credentials_closes_client(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    lport = free_port()
    text = conf(
        parent.address,
        creds_lines="Password wrong",
        extra=f"Tunnel 127.0.0.1:{lport}:127.0.0.1:{origin.port}",
    )
    async with running_proxy(text, tmp_path):
        assert await http_get(lport) == b""
        assert await http_get(lport) == b""  # locked out now: no second failed logon
    assert parent.stats.logons_failed == 1
    assert origin.stats.requests == 0


async def test_tunnel_clients_obey_deny(tmp_path: Path, parent: NtlmParent, origin: Origin) -> None:
    lport = free_port()
    extra = f"Tunnel 127.0.0.1:{lport}:127.0.0.1:{origin.port}\nDeny 127.0.0.1"
    async with running_proxy(conf(parent.address, extra=extra), tmp_path):
        assert await http_get(lport) == b""
    assert parent.stats.connections == 0


async def test_tunnel_port_in_use_is_a_config_error(tmp_path: Path, parent: NtlmParent) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        text = conf(parent.address, extra=f"Tunnel 127.0.0.1:{port}:127.0.0.1:1")
        with pytest.raises(
            ConfigError, match=f"^tunnel to 127.0.0.1:1: cannot listen on 127.0.0.1:{port}"
        ):
            async with running_proxy(text, tmp_path):
                pass


def test_bind_frontends_before_the_loop_and_all_or_nothing() -> None:
    """Bound before the event loop (before a daemon forks or -U drops privileges); when one
    cannot be bound, none stays bound."""
    first, second = free_port(), free_port()
    text = f"Proxy 127.0.0.1:1\nTunnel {first}:h:1\nSOCKS5Proxy 127.0.0.1:{second}\n"
    bound = frontends.bind_frontends(config.parse_file(text, "c.conf"))
    try:
        assert [(lis.what, sock.getsockname()) for lis, sock in bound] == [
            ("tunnel to h:1", ("127.0.0.1", first)),
            ("SOCKS5 proxy", ("127.0.0.1", second)),
        ]
    finally:
        for _, sock in bound:
            sock.close()
    busy = socket.socket()
    message = f"^SOCKS5 proxy: cannot listen on 127.0.0.1:{second}"
    with busy, pytest.raises(ConfigError, match=message):
        busy.bind(("127.0.0.1", second))
        busy.listen()
        frontends.bind_frontends(config.parse_file(text, "c.conf"))
    with socket.socket() as again:  # the tunnel's port was released after the failure
        again.bind(("127.0.0.1", first))


# ---------------------------------------------------------------- Tunnel syntax


@pytest.mark.parametrize(
    ("value", "spec"),
    [
        ("3:b:4", TunnelSpec(ListenAddr(None, 3), "b", 4)),
        ("127.0.0.1:8443:a.b:443", TunnelSpec(ListenAddr("127.0.0.1", 8443), "a.b", 443)),
        ("[::1]:8443:[2001:db8::1]:22", TunnelSpec(ListenAddr("::1", 8443), "2001:db8::1", 22)),
        ("8443:[::1]:443", TunnelSpec(ListenAddr(None, 8443), "::1", 443)),
        ("docker0:2222:git.corp:22", TunnelSpec(ListenAddr("docker0", 2222), "git.corp", 22)),
    ],
)  # fmt: skip
def test_tunnel_spec_values(value: str, spec: TunnelSpec) -> None:
    cfg = config.parse_file(f"Tunnel {value}\n", "cntlm.conf")
    assert cfg.tunnels == (value,)
    assert config.tunnel_spec(value) == spec
    assert not any("Tunnel" in w for w in cfg.warnings)


@pytest.mark.parametrize(
    "value",
    ["8443", "8443:host", "x:host:443", "0:host:443", "8443:host:0", "8443:host:70000",
     "8443::443", "8443:::1:443", ":8443:host:443", "8443:ho st:443", "[::1]:443"],
)  # fmt: skip
def test_tunnel_bad_values_name_file_and_line(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.parse_file(f"Username u\nTunnel {value}\n", "/etc/cntlm.conf")
    assert str(info.value).startswith("/etc/cntlm.conf:2: Tunnel needs [saddr:]lport:rhost:rport")


def test_tunnel_cli_flag_error_names_the_option() -> None:
    with pytest.raises(ConfigError, match=r"^-L: Tunnel needs"):
        config.load(["-L", "nonsense"], default_path="/nonexistent/cntlm.conf")
    cfg = config.load(["-L", "1:a:2"], default_path="/nonexistent/cntlm.conf")
    assert config.tunnel_spec(cfg.tunnels[0]) == TunnelSpec(ListenAddr(None, 1), "a", 2)


async def test_connections_use_the_context_in_force(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    """`current` gives the Context after a reload (new credentials, ACL, SOCKS5 accounts)."""
    lport = free_port()
    base = conf(parent.address, extra=f"Tunnel 127.0.0.1:{lport}:127.0.0.1:{origin.port}")
    denied = config.parse_file(base + "Deny 127.0.0.1\n", "c.conf")
    allowed = config.parse_file(base, "c.conf")
    now = [context.build(denied, creds.from_config(denied, "TESTHOST"))]
    tasks: set[asyncio.Task[None]] = set()

    def spawn(coro: Coroutine[Any, Any, None]) -> None:
        tasks.add(asyncio.get_running_loop().create_task(coro))

    servers = await frontends.start_frontends(now[0], spawn, lambda: now[0])
    try:
        assert await http_get(lport) == b""  # denied by the first Context's ACL
        now[0] = context.build(allowed, creds.from_config(allowed, "TESTHOST"))
        assert (await http_get(lport)).endswith(HELLO)
    finally:
        for srv in servers:
            srv.close()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert parent.stats.requests == 1
