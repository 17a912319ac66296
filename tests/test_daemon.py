"""Daemon mode (no -f) like cntlm, and the open-relay warning at start-up."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
from pathlib import Path

import pytest
from servers.procs import free_port
from test_e2e_cli import PYCNTLM, curl_status, write_conf

from pycntlm import config, context, server
from pycntlm.config import ListenAddr
from pycntlm.demo.origin import Origin
from pycntlm.demo.parent import NtlmParent


async def test_daemon_mode_forks_writes_pidfile_and_removes_it(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    port = free_port()
    pidfile = tmp_path / "pycntlm.pid"
    conf = write_conf(
        tmp_path / "c.conf",
        ["Username testuser", "Domain corp-uk", "Password password",
         f"Proxy {parent.address}", f"Listen 127.0.0.1:{port}"],
    )  # fmt: skip
    err = tmp_path / "stderr"
    with err.open("wb") as f:  # a file, not a pipe: the daemon keeps nothing of ours open
        proc = await asyncio.create_subprocess_exec(
            *PYCNTLM, "-c", str(conf), "-P", str(pidfile),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=f,
        )  # fmt: skip
    rc = await asyncio.wait_for(proc.wait(), 20)
    assert rc == 0, err.read_text()  # the parent returns once the daemon is detached
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        await asyncio.sleep(0.05)
    pid = int(pidfile.read_text())
    try:
        assert oct(pidfile.stat().st_mode & 0o777) == "0o644"
        assert await curl_status(port, origin.url("/")) == 200
        assert os.getsid(pid) != os.getsid(0)  # a session of its own: detached from ours
    finally:
        os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        if not pidfile.exists():
            break
        await asyncio.sleep(0.05)
    assert not pidfile.exists()


@pytest.mark.parametrize(
    ("acl", "warned"), [((), True), ((config.AclRule(True, "127.0.0.1"),), False)]
)
async def test_listener_open_to_other_hosts_without_acl_is_warned_about(
    caplog: pytest.LogCaptureFixture, acl: tuple[config.AclRule, ...], warned: bool
) -> None:
    cfg = config.Config(listen=(ListenAddr("0.0.0.0", 0),), acl=acl)
    srv = server.Server(context.build(dataclasses.replace(cfg), None))
    with caplog.at_level(logging.WARNING, logger="pycntlm"):
        await srv.start()
        srv.stop()
        await srv.serve_until_stopped(grace=0.1)
    assert ("open relay" in caplog.text) is warned
