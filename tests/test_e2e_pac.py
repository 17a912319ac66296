"""Pac: the parent chosen per request by a PAC file, end to end through verifying parents; the
PAC file from a path, or from an http:// URL served on loopback (refresh and reload included)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from proxyrun import get, running_proxy, wait_for

from pycntlm import config, context, server
from pycntlm.cli import credentials_for
from pycntlm.demo.origin import HELLO, Origin
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


async def test_a_failing_pac_is_logged_once_per_host_not_per_request(
    tmp_path: Path, parent: NtlmParent, origin: Origin, caplog: pytest.LogCaptureFixture
) -> None:
    """The engine remembers the failure per host; only the fresh one is logged (a busy client
    would otherwise write a warning per request)."""
    caplog.set_level(logging.WARNING, logger="pycntlm")
    text = pac_conf(tmp_path, "throw 'broken';", proxy_lines=f"Proxy {parent.address}\n")
    async with running_proxy(text, tmp_path) as proxy:
        for _ in range(20):
            assert (await get(proxy.port, origin.url("/"))).status == 200
    assert parent.stats.requests == 20
    assert caplog.text.count("PAC failed for") == 1


# --- Pac http://...: fetched from a loopback web server ------------------------------------


class PacServer:
    """A PAC file served over HTTP on loopback (aiohttp); counts the fetches. Clear `answering`
    to hold answers back until it is set again."""

    def __init__(self, body: str) -> None:
        self.body = body
        self.fetches = 0
        self.answering = asyncio.Event()
        self.answering.set()
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/proxy.pac"

    async def _pac(self, request: web.Request) -> web.Response:
        self.fetches += 1
        await asyncio.wait_for(self.answering.wait(), 30)
        text = "function FindProxyForURL(url, host) {\n" + self.body + "\n}\n"
        return web.Response(text=text, content_type="application/x-ns-proxy-autoconfig")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/proxy.pac", self._pac)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@contextlib.asynccontextmanager
async def pac_server(body: str) -> AsyncIterator[PacServer]:
    server = PacServer(body)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def routes_to(address: str) -> str:
    """127.0.0.1 through the parent at `address`, localhost DIRECT."""
    return f"""
      if (host == "localhost") return "DIRECT";
      return "PROXY {address}";"""


def local(origin: Origin) -> str:
    return origin.url("/").replace("127.0.0.1", "localhost")


async def test_pac_url_routes_to_its_parent_and_direct(
    tmp_path: Path, parent: NtlmParent, parent2: NtlmParent, origin: Origin
) -> None:
    """The PAC's answer beats the Proxy line (parent2), which only serves without a PAC."""
    async with pac_server(routes_to(parent.address)) as pac:
        text = CREDS + f"Proxy {parent2.address}\nPac {pac.url}\n"
        async with running_proxy(text, tmp_path) as proxy:
            assert (await get(proxy.port, origin.url("/"))).body == HELLO
            assert (await get(proxy.port, local(origin))).body == HELLO
    assert parent.stats.requests == 1 and parent.stats.logons_ok == 1
    assert parent2.stats.connections == 0
    assert origin.stats.requests == 2  # one through the parent, one DIRECT
    assert pac.fetches == 1


async def test_pac_url_refresh_takes_a_new_copy_and_keeps_the_last_good_one(
    tmp_path: Path, parent: NtlmParent, parent2: NtlmParent, origin: Origin
) -> None:
    async with (
        pac_server(routes_to(parent.address)) as pac,
        running_proxy(CREDS + f"Pac {pac.url}\n", tmp_path) as proxy,
    ):
        source = proxy.ctx.pac
        assert source is not None
        assert (await get(proxy.port, origin.url("/"))).status == 200
        assert (parent.stats.requests, parent2.stats.requests) == (1, 0)

        pac.body = routes_to(parent2.address)  # a new copy: the refresh must take it
        assert await source.refresh()
        assert pac.fetches == 2
        assert (await get(proxy.port, origin.url("/"))).status == 200
        assert (parent.stats.requests, parent2.stats.requests) == (1, 1)

        await pac.stop()  # the PAC server is gone: the last good copy stays in use
        assert not await source.refresh()
        assert source.last_error and source.engine is not None
        assert (await get(proxy.port, origin.url("/"))).status == 200
        assert (await get(proxy.port, local(origin))).status == 200
    assert (parent.stats.requests, parent2.stats.requests) == (1, 2)
    assert origin.stats.requests == 4  # the last one DIRECT, as the kept copy says


@contextlib.asynccontextmanager
async def reloadable_proxy(text: str, tmp_path: Path) -> AsyncIterator[tuple[server.Server, int]]:
    """pycntlm in this loop with a reload callable that reads the config file again (SIGHUP)."""
    port = dead_port()
    path = tmp_path / "cntlm.conf"
    path.write_text(text.replace("Listen 3128", f"Listen 127.0.0.1:{port}"))

    def build() -> context.Context:
        cfg = config.load(["-c", str(path), "-f"], default_path=str(tmp_path / "absent.conf"))
        return context.build(dataclasses.replace(cfg, password=None), credentials_for(cfg))

    srv = server.Server(build(), build)
    await srv.start()
    task = asyncio.get_running_loop().create_task(srv.serve_until_stopped(grace=1.0))
    try:
        yield srv, port
    finally:
        srv.stop()
        await asyncio.wait_for(task, 10)


async def test_pac_url_reload_with_the_server_down_keeps_the_last_good_copy(
    tmp_path: Path, parent: NtlmParent, parent2: NtlmParent, origin: Origin
) -> None:
    """A regression: the reloaded context's PacSource started empty, so with the PAC server
    down requests followed the Proxy lines."""
    async with pac_server(routes_to(parent.address)) as pac:
        text = CREDS + f"Proxy {parent2.address}\nPac {pac.url}\n"
        async with reloadable_proxy(text, tmp_path) as (srv, port):
            assert (await get(port, origin.url("/"))).status == 200
            assert (parent.stats.requests, parent2.stats.requests) == (1, 0)
            await pac.stop()
            old = srv.ctx
            srv.reload()
            assert srv.ctx is not old
            for _ in range(200):  # the reloaded context's PAC fetch runs in a task
                if srv.ctx.pac is not None and srv.ctx.pac.last_error:
                    break
                await asyncio.sleep(0.05)
            assert srv.ctx.pac is not None and srv.ctx.pac.last_error  # the fetch did fail
            assert (await get(port, origin.url("/"))).status == 200
    assert (parent.stats.requests, parent2.stats.requests) == (2, 0)


async def test_pac_url_requests_during_a_reload_still_follow_the_pac(
    tmp_path: Path, parent: NtlmParent, parent2: NtlmParent, origin: Origin
) -> None:
    """A regression: the reload switched to a context whose PAC file was not fetched yet, so
    until the fetch ended requests followed the Proxy lines."""
    async with pac_server(routes_to(parent.address)) as pac:
        text = CREDS + f"Proxy {parent2.address}\nPac {pac.url}\n"
        async with reloadable_proxy(text, tmp_path) as (srv, port):
            assert (await get(port, origin.url("/"))).status == 200
            pac.answering.clear()  # the reload's fetch is held back while a request comes in
            srv.reload()
            try:
                # the fetch must be in flight (held) when the request comes: under load the
                # background refresh may not have reached the PAC server yet
                assert await wait_for(lambda: pac.fetches == 2)
                assert (await get(port, origin.url("/"))).status == 200
            finally:
                pac.answering.set()
    assert pac.fetches == 2
    assert (parent.stats.requests, parent2.stats.requests) == (2, 0)


def repoint_pac(tmp_path: Path, url: str) -> None:
    """Point the Pac line of reloadable_proxy's file at `url`, keeping its mtime so that only
    srv.reload() reloads it (not the housekeeping's mtime check)."""
    path = tmp_path / "cntlm.conf"
    before = path.stat()
    path.write_text(re.sub(r"^Pac .*$", f"Pac {url}", path.read_text(), flags=re.M))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


async def switched(srv: server.Server, old: context.Context) -> None:
    async with asyncio.timeout(10):
        while srv.ctx is old:
            await asyncio.sleep(0.02)


async def test_pac_url_reload_to_a_new_location_loads_it_before_switching(
    tmp_path: Path, parent: NtlmParent, parent2: NtlmParent, origin: Origin
) -> None:
    dead = f"127.0.0.1:{dead_port()}"  # the Proxy line: a request that follows it fails
    async with (
        pac_server(routes_to(parent.address)) as pac,
        pac_server(routes_to(parent2.address)) as pac2,
    ):
        text = CREDS + f"Proxy {dead}\nPac {pac.url}\n"
        async with reloadable_proxy(text, tmp_path) as (srv, port):
            assert (await get(port, origin.url("/"))).status == 200
            pac2.answering.clear()
            repoint_pac(tmp_path, pac2.url)
            old = srv.ctx
            srv.reload()
            try:
                assert (await get(port, origin.url("/"))).status == 200  # the running PAC
                assert srv.ctx is old
            finally:
                pac2.answering.set()
            await switched(srv, old)
            assert (await get(port, origin.url("/"))).status == 200  # the new PAC
    assert pac2.fetches == 1
    assert (parent.stats.requests, parent2.stats.requests) == (2, 1)


async def test_pac_url_reload_to_a_dead_location_keeps_the_previous_pac(
    tmp_path: Path, parent: NtlmParent, parent2: NtlmParent, origin: Origin
) -> None:
    async with pac_server(routes_to(parent.address)) as pac:
        text = CREDS + f"Proxy {parent2.address}\nPac {pac.url}\n"
        async with reloadable_proxy(text, tmp_path) as (srv, port):
            assert (await get(port, origin.url("/"))).status == 200
            repoint_pac(tmp_path, f"http://127.0.0.1:{dead_port()}/proxy.pac")
            old = srv.ctx
            srv.reload()
            await switched(srv, old)
            assert srv.ctx.pac is not None and srv.ctx.pac.last_error
            assert (await get(port, origin.url("/"))).status == 200
    assert (parent.stats.requests, parent2.stats.requests) == (2, 0)
