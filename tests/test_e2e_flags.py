"""End to end: Flags / -F against the demo parent that verifies NTLM (pyspnego's acceptor).

cntlm's own NTLMv2 flag word (0xa208b205, from its ntlm_request) authenticates; and a Flags line
in the configuration is what the parent receives in the Type 1 (seen by a recording relay).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import struct
from collections.abc import AsyncIterator
from pathlib import Path

from proxyrun import USER, RawClient, conf, get, running_proxy

from pycntlm.auth import CNTLM_FLAGS, NtlmHandshake
from pycntlm.creds import from_password
from pycntlm.demo.origin import HELLO, Origin
from pycntlm.demo.parent import NtlmParent

CNTLM_V2 = CNTLM_FLAGS["NTLMv2"]  # 0xa208b205
_TYPE1 = re.compile(rb"Proxy-Authorization: *NTLM +(TlRMTVNTUAABAAAA[A-Za-z0-9+/=]*)\r\n", re.I)


async def _handshake_by_hand(parent: NtlmParent, url: str, flags: int | None) -> int:
    """Both NTLM legs on one connection to the parent, built by the auth module alone."""
    domain, user, password = USER
    hs = NtlmHandshake(from_password(user, domain, "ws", password), "NTLMv2", flags)
    client = await RawClient.connect(int(parent.address.rsplit(":", 1)[1]))
    try:
        first = await client.request("GET", url, {"Proxy-Authorization": hs.start()})
        assert first.status == 407
        offers = [v for k, v in first.headers if k.lower() == "proxy-authenticate"]
        second = await client.request("GET", url, {"Proxy-Authorization": hs.respond(offers)})
        assert second.status != 200 or second.body == HELLO
        return second.status
    finally:
        await client.close()


async def test_cntlm_ntlmv2_flag_word_authenticates(parent: NtlmParent, origin: Origin) -> None:
    assert await _handshake_by_hand(parent, origin.url("/"), CNTLM_V2) == 200
    assert parent.stats.logons_ok == 1 and parent.stats.logons_failed == 0
    assert parent.stats.dialects == ["NTLMv2"]


class Relay:
    """A TCP relay in front of the parent that keeps the Type 1 flag words it sees."""

    def __init__(self, port: int) -> None:
        self._port = port
        self.type1_flags: list[int] = []
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, watch: bool
    ) -> None:
        seen = b""
        try:
            while data := await asyncio.wait_for(src.read(65536), 30):
                if watch:
                    seen, end = (seen + data)[-16384:], 0
                    for match in _TYPE1.finditer(seen):
                        raw = base64.b64decode(match.group(1))
                        self.type1_flags.append(struct.unpack_from("<I", raw, 12)[0])
                        end = match.end()
                    seen = seen[end:]
                dst.write(data)
                await dst.drain()
        except (OSError, TimeoutError):
            pass
        finally:
            dst.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self._port)
        self._writers |= {writer, up_w}
        await asyncio.gather(self._pipe(reader, up_w, True), self._pipe(up_r, writer, False))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        try:
            yield f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        finally:
            self._server.close()
            for writer in self._writers:
                writer.transport.abort()


async def test_flags_line_is_what_the_parent_gets(
    parent: NtlmParent, origin: Origin, tmp_path: Path
) -> None:
    relay = Relay(int(parent.address.rsplit(":", 1)[1]))
    async with relay.running() as address:
        text = conf(address, extra="Flags 0xa208b205")
        async with running_proxy(text, tmp_path) as proxy:
            assert proxy.ctx.config.flags == CNTLM_V2
            reply = await get(proxy.port, origin.url("/"))
    assert reply.status == 200 and reply.body == HELLO
    assert parent.stats.logons_ok >= 1 and parent.stats.dialects[0] == "NTLMv2"
    assert relay.type1_flags and set(relay.type1_flags) == {CNTLM_V2}


async def test_without_flags_the_parent_gets_our_defaults(
    parent: NtlmParent, origin: Origin, tmp_path: Path
) -> None:
    relay = Relay(int(parent.address.rsplit(":", 1)[1]))
    async with relay.running() as address, running_proxy(conf(address), tmp_path) as proxy:
        reply = await get(proxy.port, origin.url("/"))
    assert reply.status == 200
    assert relay.type1_flags and CNTLM_V2 not in relay.type1_flags
