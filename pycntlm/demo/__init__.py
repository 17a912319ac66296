"""The embedded default: `pycntlm demo` runs the whole chain on loopback, no corporate proxy needed.

  client -> pycntlm (127.0.0.1:3128) -> a parent proxy that demands and verifies NTLMv2 -> origin

Owns: wiring the demo parent, origin and a pycntlm server together, one self-check request, and
telling the user what to try. Must not: listen anywhere but on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import socket
import sys

from pycntlm import config, context, creds, server
from pycntlm.demo.origin import Origin
from pycntlm.demo.parent import NtlmParent

DEMO_USER = ("corp-uk", "demo")


async def _self_check(proxy_port: int, url: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", proxy_port), 5)
    try:
        host = url.split("/")[2]
        writer.write(f"GET {url} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await asyncio.wait_for(reader.readexactly(length), 10)
        return status, body
    finally:
        writer.close()


def _bind(port: int) -> list[socket.socket]:
    cfg = config.Config(listen=(config.ListenAddr("127.0.0.1", port),))
    return server.bind_listeners(cfg)


async def _demo(port: int, once: bool) -> int:
    password = secrets.token_urlsafe(12)  # generated: the demo has no real secret to protect
    async with Origin() as origin, NtlmParent([(*DEMO_USER, password)]) as parent:
        try:
            sockets = _bind(port)
        except Exception:
            sockets = _bind(0)
        cfg = config.Config(
            username=DEMO_USER[1],
            domain=DEMO_USER[0],
            auth="NTLMv2",
            proxies=(config.HostPort("127.0.0.1", parent.port),),
            listen=(config.ListenAddr("127.0.0.1", sockets[0].getsockname()[1]),),
            foreground=True,
        )
        credentials = creds.from_password(DEMO_USER[1], DEMO_USER[0], "DEMO", password)
        ctx = context.build(cfg, credentials)
        srv = server.Server(ctx)
        await srv.start(sockets)
        proxy_port = srv.addresses[0][1]
        task = asyncio.get_running_loop().create_task(srv.serve_until_stopped(grace=1.0))
        try:
            status, body = await _self_check(proxy_port, origin.url("/"))
            print(f"pycntlm demo: parent proxy (verifies NTLMv2) on 127.0.0.1:{parent.port}")
            print(f"pycntlm demo: origin server on 127.0.0.1:{origin.port}")
            print(f"pycntlm demo: pycntlm listening on 127.0.0.1:{proxy_port}")
            print(f"pycntlm demo: self-check through the chain -> {status} {body!r}")
            print(
                f"pycntlm demo: NTLM logons verified by the parent: {parent.stats.logons_ok}, "
                f"failed: {parent.stats.logons_failed}"
            )
            if status != 200:
                return 1
            if once:
                return 0
            print("pycntlm demo: try it (Ctrl-C to stop):")
            print(f"  curl -x http://127.0.0.1:{proxy_port} {origin.url('/')}")
            print(f"  curl -x http://127.0.0.1:{proxy_port} {origin.url('/bytes/1000000')} | wc -c")
            sys.stdout.flush()
            await task
            return 0
        finally:
            srv.stop()
            await asyncio.wait_for(task, 5)


def run_demo(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="pycntlm demo", description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=3128, help="pycntlm's port (default 3128)")
    ap.add_argument("--once", action="store_true", help="exit after the self-check")
    args = ap.parse_args(argv)
    from pycntlm import log as logsetup
    from pycntlm.cli import run_loop

    logsetup.setup()
    result: list[int] = []

    async def main() -> None:
        result.append(await _demo(args.port, args.once))

    try:
        run_loop(main)
    except KeyboardInterrupt:
        return 0
    return result[0] if result else 1
