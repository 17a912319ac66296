"""Test helpers: run pycntlm in-process on port 0, and a small raw HTTP/1.1 client.

The raw client is deliberately independent of pycntlm.http1 where it checks framing, so tests do
not trust the code under test to judge itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from pycntlm import config, context, server
from pycntlm.cli import credentials_for
from pycntlm.config import ListenAddr

USER = ("corp-uk", "testuser", "password")
# cntlm -H for testuser / corp-uk / password (cntlm's inverted form):
PASS_LM = "1AD35398BE6565DDB5C4EF70C0593492"
PASS_NT = "77B9081511704EE852F94227CF48A793"
PASS_NTLMV2 = "1F6839EE15E639893286CF65C5D0A65C"


@dataclass
class Proxy:
    ctx: context.Context
    server: server.Server
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def running_proxy(
    conf_text: str, tmp_path: Path, **overrides: object
) -> AsyncIterator[Proxy]:
    """Start pycntlm in this event loop from a cntlm.conf text, listening on 127.0.0.1:0."""
    path = tmp_path / "cntlm.conf"
    path.write_text(conf_text)
    cfg = config.load(["-c", str(path), "-f"], default_path=str(tmp_path / "absent.conf"))
    cfg = dataclasses.replace(cfg, listen=(ListenAddr("127.0.0.1", 0),), **overrides)  # type: ignore[arg-type]
    credentials = credentials_for(cfg)  # the same rule as the real start-up
    ctx = context.build(dataclasses.replace(cfg, password=None), credentials)
    srv = server.Server(ctx)
    await srv.start(server.bind_listeners(ctx.config))
    task = asyncio.get_running_loop().create_task(srv.serve_until_stopped(grace=1.0))
    try:
        yield Proxy(ctx, srv, srv.addresses[0][1])
    finally:
        srv.stop()
        await asyncio.wait_for(task, 10)


def conf(
    *parents: str,
    auth: str = "NTLMv2",
    creds_lines: str = "",
    extra: str = "",
    connect_ports: str = "*",
    spares: int = 0,
) -> str:
    """A cntlm.conf text. Default credentials: testuser / corp-uk / password (plaintext).
    Test servers use random ports, so CONNECT is allowed to any port unless told otherwise.
    No spare connections unless asked (test_e2e_spares.py): other tests count connections and
    logons exactly, and spares made in the background would blur those counts."""
    lines = ["Username testuser", "Domain corp-uk", f"Auth {auth}", f"PoolSpare {spares}"]
    if connect_ports:
        lines.append(f"ConnectPorts {connect_ports}")
    lines.append(creds_lines or "Password password")
    lines += [f"Proxy {p}" for p in parents]
    lines.append("Listen 127.0.0.1:3128")
    if extra:
        lines.append(extra)
    return "\n".join(lines) + "\n"


@dataclass
class Reply:
    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


class RawClient:
    """One client connection to the proxy, speaking raw HTTP/1.1."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        return cls(r, w)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self, method: str = "GET", timeout: float = 20) -> Reply:
        return await asyncio.wait_for(self._reply(method), timeout)

    async def _reply(self, method: str) -> Reply:
        while True:
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            _, status, *rest = lines[0].split(" ", 2)
            headers = []
            for line in lines[1:]:
                if line:
                    k, _, v = line.partition(":")
                    headers.append((k.strip(), v.strip()))
            rep = Reply(int(status), rest[0] if rest else "", headers)
            if rep.status >= 200 or rep.status == 101:
                break
        rep.body = await self._body(rep, method)
        return rep

    async def _body(self, rep: Reply, method: str) -> bytes:
        if (
            method == "HEAD"
            or rep.status in (204, 304)
            or (method == "CONNECT" and rep.status < 300)
        ):
            return b""
        te = (rep.header("transfer-encoding") or "").lower()
        if "chunked" in te:
            out = bytearray()
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    while (await self.reader.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    return bytes(out)
                out += await self.reader.readexactly(size)
                await self.reader.readexactly(2)
        cl = rep.header("content-length")
        if cl is not None:
            return await self.reader.readexactly(int(cl))
        return await self.reader.read()

    async def request(
        self, method: str, url: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> Reply:
        hdrs = {"Host": url.split("/")[2], **(headers or {})}
        if body and "Content-Length" not in hdrs and "Transfer-Encoding" not in hdrs:
            hdrs["Content-Length"] = str(len(body))
        head = f"{method} {url} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
        await self.send(head.encode() + b"\r\n" + body)
        return await self.reply(method)


async def get(port: int, url: str, headers: dict[str, str] | None = None) -> Reply:
    c = await RawClient.connect(port)
    try:
        return await c.request("GET", url, headers)
    finally:
        await c.close()


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll `predicate` (bounded): squid writes its access log after the reply, and background
    work (spare connections) finishes a moment later."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True
