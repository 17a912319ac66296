"""Pac: the parent chosen per request by a PAC file, end to end through verifying parents."""

from __future__ import annotations

import socket
from pathlib import Path

from proxyrun import get, running_proxy

from pycntlm.demo.origin import Origin
from pycntlm.demo.parent import NtlmParent

CREDS = "Username testuser\nDomain corp-uk\nPassword password\nConnectPorts *\nListen 3128\n"


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pac_conf(tmp_path: Path, body: str, proxy_lines: str = "") -> str:
    pac = tmp_path / "proxy.pac"
    pac.write_text("function FindProxyForURL(url, host) {\n" + body + "\n}\n")
    return CREDS + proxy_lines + f"Pac {pac}\n"


async def test_pac_picks_the_parent_per_host(
    tmp_path: Path, parent: NtlmParent, parent2: NtlmParent, origin: Origin
) -> None:
    body = f"""
      if (shExpMatch(host, "localhost")) return "PROXY {parent2.address}";
      if (isInNet(host, "127.0.0.0", "255.0.0.0")) return "PROXY {parent.address}";
      return "DIRECT";"""
    async with running_proxy(pac_conf(tmp_path, body), tmp_path) as proxy:
        assert (await get(proxy.port, origin.url("/"))).status == 200
        local = origin.url("/").replace("127.0.0.1", "localhost")
        assert (await get(proxy.port, local)).status == 200
    assert parent.stats.requests == 1
    assert parent2.stats.requests == 1


async def test_pac_direct_and_failover_inside_the_list(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    dead = f"127.0.0.1:{dead_port()}"
    body = f"""
      if (host == "localhost") return "DIRECT";
      return "PROXY {dead}; PROXY {parent.address}";"""
    async with running_proxy(pac_conf(tmp_path, body), tmp_path) as proxy:
        assert (await get(proxy.port, origin.url("/"))).status == 200  # via the 2nd entry
        local = origin.url("/").replace("127.0.0.1", "localhost")
        assert (await get(proxy.port, local)).status == 200  # DIRECT
    assert parent.stats.requests == 1
    assert origin.stats.requests == 2


async def test_pac_list_ending_in_direct_falls_back_when_all_proxies_are_down(
    tmp_path: Path, origin: Origin
) -> None:
    body = f'return "PROXY 127.0.0.1:{dead_port()}; DIRECT";'
    async with running_proxy(pac_conf(tmp_path, body), tmp_path) as proxy:
        assert (await get(proxy.port, origin.url("/"))).status == 200
    assert origin.stats.requests == 1


async def test_broken_pac_falls_back_to_the_proxy_lines(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    text = pac_conf(tmp_path, 'throw "broken";', proxy_lines=f"Proxy {parent.address}\n")
    async with running_proxy(text, tmp_path) as proxy:
        assert (await get(proxy.port, origin.url("/"))).status == 200
    assert parent.stats.requests == 1
