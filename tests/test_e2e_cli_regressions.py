"""Regression tests for CLI bugs found end to end (each failed before its fix)."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

from proxyrun import RawClient
from servers.procs import free_port
from test_e2e_cli import PYCNTLM, STOP_TIMEOUT, proxy_conf, pycntlm_process, run, write_conf

from pycntlm.demo.origin import HELLO, Origin
from pycntlm.demo.parent import NtlmParent

PASS_LINE = re.compile(rb"^Pass(LM|NT|NTLMv2) ")


def pass_lines(out: bytes) -> list[bytes]:
    return [line for line in out.split(b"\n") if PASS_LINE.match(line)]


async def test_hash_lines_byte_for_byte_like_cntlm() -> None:
    # The brief's exact commands: cntlm with -c /dev/null, pycntlm as a user would type it.
    ours = await run([*PYCNTLM, "-H", "-u", "testuser", "-d", "corp-uk"], stdin=b"password\n")
    theirs = await run(
        ["cntlm", "-H", "-u", "testuser", "-d", "corp-uk", "-c", os.devnull], stdin=b"password\n"
    )
    assert theirs.rc == 0 and ours.rc == 0
    assert len(pass_lines(theirs.out)) == 3
    assert pass_lines(ours.out) == pass_lines(theirs.out)
    assert ours.out == theirs.out  # "Password: \n" then the three lines


async def test_hash_prompt_ends_its_line_like_cntlm() -> None:
    argv = ["-H", "-u", "testuser", "-d", "corp-uk", "-c", os.devnull]
    ours = await run([*PYCNTLM, *argv], stdin=b"password\n")
    theirs = await run(["cntlm", *argv], stdin=b"password\n")
    assert theirs.out.startswith(b"Password: \nPassLM ")
    assert pass_lines(ours.out) == pass_lines(theirs.out)


async def test_hash_uses_the_typed_password_not_the_config_files(tmp_path: Path) -> None:
    # cntlm -H always prompts and hashes what was typed, whatever the config file holds.
    conf = write_conf(
        tmp_path / "c.conf", ["Username testuser", "Domain corp-uk", "Password password"]
    )
    argv = ["-H", "-u", "testuser", "-d", "corp-uk", "-c", str(conf)]
    ours = await run([*PYCNTLM, *argv], stdin=b"0ther-Typed\n")
    theirs = await run(["cntlm", *argv], stdin=b"0ther-Typed\n")
    values = re.compile(rb"(PassLM|PassNT|PassNTLMv2) +([0-9A-F]{32})")
    assert len(values.findall(theirs.out)) == 3
    assert values.findall(ours.out) == values.findall(theirs.out)


async def test_idle_keep_alive_client_does_not_delay_sigterm(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    port = free_port()
    path = proxy_conf(tmp_path / "cntlm.conf", parent.address, port, "password")
    async with pycntlm_process(["-c", str(path), "-f"], port, tmp_path) as p:
        idle = await RawClient.connect(port)
        try:
            rep = await idle.request("GET", origin.url("/"))
            assert rep.status == 200 and rep.body == HELLO
            loop = asyncio.get_running_loop()
            started = loop.time()
            # nothing in flight: the idle keep-alive connection should just be closed
            assert await p.terminate(timeout=15) == 0
            assert loop.time() - started < STOP_TIMEOUT, p.stderr()
        finally:
            await idle.close()
