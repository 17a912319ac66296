"""Reload (SIGHUP) in-process: new parents and listeners apply, open tunnels survive,
a broken configuration is refused and the running one kept."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from pathlib import Path

from proxyrun import RawClient, conf, get

from pycntlm import config, context, creds, server
from pycntlm.demo.origin import Origin
from pycntlm.demo.parent import NtlmParent
from pycntlm.errors import ConfigError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build(path: Path) -> context.Context:
    cfg = config.load(["-c", str(path), "-f"], default_path="/nonexistent")
    return context.build(dataclasses.replace(cfg, password=None), creds.from_config(cfg, "WS"))


async def test_reload_applies_new_parent_and_listener_keeps_tunnel(
    tmp_path: Path, origin: Origin
) -> None:
    port_a, port_b = free_port(), free_port()
    path = tmp_path / "c.conf"
    async with (
        NtlmParent([("corp-uk", "testuser", "password")]) as p1,
        NtlmParent([("corp-uk", "testuser", "password")]) as p2,
    ):
        path.write_text(conf(p1.address).replace("Listen 127.0.0.1:3128", f"Listen {port_a}"))
        srv = server.Server(build(path), lambda: build(path))
        await srv.start()
        task = asyncio.get_running_loop().create_task(srv.serve_until_stopped(grace=1))
        try:
            tunnel = await RawClient.connect(port_a)
            await tunnel.send(f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\n\r\n".encode())
            assert (await tunnel.reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")

            path.write_text(conf(p2.address).replace("Listen 127.0.0.1:3128", f"Listen {port_b}"))
            srv.reload()
            for _ in range(50):  # the new listener is bound by a task
                if any(
                    a[1] == port_b
                    for a in [s.getsockname() for x in srv._servers for s in x.sockets]
                ):
                    break
                await asyncio.sleep(0.05)
            assert (await get(port_b, origin.url("/"))).status == 200
            assert p2.stats.logons_ok == 1
            # the old listener is gone, the tunnel opened through it still works
            try:
                await get(port_a, origin.url("/"))
                raise AssertionError("the old listener still answers")
            except OSError:
                pass
            await tunnel.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await tunnel.reply()).status == 200
            await tunnel.close()

            path.write_text("Proxy nonsense\n")
            srv.reload()  # refused: the running configuration stays
            assert (await get(port_b, origin.url("/"))).status == 200
        finally:
            srv.stop()
            await asyncio.wait_for(task, 10)


def test_broken_config_on_reload_raises_config_error(tmp_path: Path) -> None:
    path = tmp_path / "c.conf"
    path.write_text("Proxy nonsense\n")
    try:
        build(path)
    except ConfigError as exc:
        assert ":1:" in str(exc)
    else:
        raise AssertionError("no error")
