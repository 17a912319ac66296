"""End to end: Workstation / -w, the name in the NTLM Type 3 the verifying parent receives
(NtlmParent.stats.workstations: the workstation field of each Type 3, accepted or not)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from proxyrun import conf, get, running_proxy
from servers.procs import free_port
from test_e2e_cli import proxy_conf, pycntlm_process

from pycntlm.demo.origin import HELLO, Origin
from pycntlm.demo.parent import NtlmParent


@pytest.mark.parametrize("auth", ["NTLMv2", "NTLM"])
async def test_workstation_line_is_in_the_type3(
    tmp_path: Path, parent: NtlmParent, origin: Origin, auth: str
) -> None:
    text = conf(parent.address, auth=auth, extra="Workstation MYBOX")
    async with running_proxy(text, tmp_path) as proxy:
        reply = await get(proxy.port, origin.url("/"))
    assert reply.status == 200 and reply.body == HELLO
    assert parent.stats.workstations == ["MYBOX"]
    assert parent.stats.logons_ok == 1 and parent.stats.logons_failed == 0


async def test_without_a_workstation_line_the_host_name_is_sent(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    async with running_proxy(conf(parent.address), tmp_path) as proxy:
        assert (await get(proxy.port, origin.url("/"))).status == 200
    assert parent.stats.workstations == [socket.gethostname().upper()]  # upper-cased: see below


async def test_dash_w_on_the_command_line_beats_the_config(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    port = free_port()
    path = proxy_conf(tmp_path / "cntlm.conf", parent.address, port, "password")
    path.write_text(path.read_text() + "Workstation FILEBOX\n")
    async with pycntlm_process(["-c", str(path), "-f", "-w", "CLIBOX"], port, tmp_path) as p:
        reply = await get(port, origin.url("/"))
        assert await p.terminate() == 0
    assert reply.status == 200 and reply.body == HELLO
    assert parent.stats.workstations == ["CLIBOX"]
    assert parent.stats.logons_ok == 1


async def test_workstation_is_upper_cased_as_cntlm_does(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    """cntlm 0.92.3 sends the workstation upper-cased in its Type 3 (measured: 'Workstation
    MyBox' and '-w clibox' reach the parent as MYBOX and CLIBOX). A regression: pycntlm's Type 3
    used to keep the case as configured (auth.build_type3)."""
    text = conf(parent.address, extra="Workstation MyBox")
    async with running_proxy(text, tmp_path) as proxy:
        assert (await get(proxy.port, origin.url("/"))).status == 200
    assert parent.stats.workstations == ["MYBOX"]
