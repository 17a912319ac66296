"""Configurable limits: MaxClients, MaxHeadSize, MaxHeaders."""

from __future__ import annotations

import asyncio
from pathlib import Path

from proxyrun import RawClient, conf, get, running_proxy

from pycntlm.demo.origin import Origin
from pycntlm.demo.parent import NtlmParent


async def test_max_clients_answers_503_fast_and_recovers(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    async with running_proxy(conf(parent.address, extra="MaxClients 2"), tmp_path) as proxy:
        held = [await RawClient.connect(proxy.port) for _ in range(2)]
        await asyncio.sleep(0.1)
        extra = await RawClient.connect(proxy.port)
        rep = await extra.reply(timeout=5)
        assert rep.status == 503
        assert b"MaxClients" in rep.body
        await extra.close()
        # the held ones still work, and once they leave new clients are served again
        assert (await held[0].request("GET", origin.url("/"))).status == 200
        for c in held:
            await c.close()
        await asyncio.sleep(0.1)
        assert (await get(proxy.port, origin.url("/"))).status == 200


async def test_max_head_size_and_max_headers_are_configurable(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    text = conf(parent.address, extra="MaxHeadSize 2048\nMaxHeaders 10")
    async with running_proxy(text, tmp_path) as proxy:
        big = {"X-Big": "a" * 3000}
        assert (await get(proxy.port, origin.url("/"), big)).status == 431
        many = {f"X-{i}": "v" for i in range(12)}
        assert (await get(proxy.port, origin.url("/"), many)).status == 431
        few = {f"X-{i}": "v" for i in range(5)}
        assert (await get(proxy.port, origin.url("/"), few)).status == 200
