"""Soak: bounded mixed load against pycntlm as a subprocess, with a parent that flaps.

    python tests/soak.py [--minutes 2] [--workers 16]

Servers (all 127.0.0.1, in this process): an origin, two verifying NTLM parents A and B, each
behind a FaultParent that flaps (F1 refuses for 5 s in every 20, F2 blackholes for 5 s in every
20, never both at once; each kills its open connections at every change). pycntlm runs as
`python -m pycntlm -c CONF -f` with parents F1 then F2, so it must fail over both ways.
Workers run plain GETs (keep-alive), large GETs, CONNECT tunnels, small (replayable) and large
(streamed) uploads, each checked byte for byte and bounded by a timeout. Every 10 s: pycntlm's
RSS and open fds; at the end a summary (requests, errors by kind, RSS start / after warm-up /
end). Not collected by pytest.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import json
import os
import random
import socket
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]

from faultparent import FaultParent  # noqa: E402
from proxyrun import RawClient  # noqa: E402

from pycntlm.demo.origin import Origin, pattern  # noqa: E402
from pycntlm.demo.parent import NtlmParent  # noqa: E402

USER = ("corp-uk", "testuser", "password")
OP_TIMEOUT = 30.0
WARMUP = 30.0


def proc_figures(pid: int) -> tuple[int, int]:
    """(RSS in KiB, open fds) of a process."""
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


class Tally:
    def __init__(self) -> None:
        self.ok: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()

    def total(self) -> int:
        return sum(self.ok.values()) + sum(self.errors.values())


async def op_get(port: int, origin: Origin, rng: random.Random) -> None:
    c = await RawClient.connect(port)
    try:
        for _ in range(rng.randint(1, 10)):
            n = rng.randint(0, 20000)
            rep = await c.request("GET", origin.url(f"/bytes/{n}"))
            check(rep.status == 200, f"status {rep.status}")
            check(rep.body == pattern(n), "body mismatch")
    finally:
        await c.close()


async def op_big_get(port: int, origin: Origin, rng: random.Random) -> None:
    c = await RawClient.connect(port)
    try:
        n = rng.choice((1_000_000, 3_000_000))
        path = rng.choice(("bytes", "chunked"))
        rep = await c.request("GET", origin.url(f"/{path}/{n}"))
        check(rep.status == 200, f"status {rep.status}")
        check(rep.body == pattern(n), "body mismatch")
    finally:
        await c.close()


async def op_tunnel(port: int, origin: Origin, rng: random.Random) -> None:
    c = await RawClient.connect(port)
    try:
        await c.send(
            f"CONNECT {origin.address} HTTP/1.1\r\nHost: {origin.address}\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(c.reader.readuntil(b"\r\n\r\n"), OP_TIMEOUT)
        status = int(head.split(b" ", 2)[1])
        if status != 200:
            rest = head.lower()
            n = (
                int(rest.split(b"content-length:")[1].split(b"\r\n")[0])
                if b"content-length:" in rest
                else 0
            )
            await c.reader.readexactly(n)
            check(False, f"status {status}")
        for _ in range(rng.randint(1, 5)):
            n = rng.randint(0, 100000)
            await c.send(f"GET /bytes/{n} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            rep = await c.reply()
            check(rep.status == 200 and rep.body == pattern(n), "tunnel body mismatch")
            await asyncio.sleep(rng.random() * 0.3)
    finally:
        await c.close()


async def op_upload(port: int, origin: Origin, rng: random.Random) -> None:
    n = rng.choice((rng.randint(1, 60000), rng.randint(100_000, 2_000_000)))
    data = random.Random(n).randbytes(n)
    c = await RawClient.connect(port)
    try:
        chunked = n > 65536 and rng.random() < 0.5
        headers = {"Transfer-Encoding": "chunked"} if chunked else {}
        body = data
        if chunked:
            step = 65536
            body = (
                b"".join(
                    f"{len(data[i : i + step]):x}\r\n".encode() + data[i : i + step] + b"\r\n"
                    for i in range(0, n, step)
                )
                + b"0\r\n\r\n"
            )
        rep = await c.request("POST", origin.url("/echo"), headers, body)
        check(rep.status == 200, f"status {rep.status}")
        got = json.loads(rep.body)
        check(got == {"length": n, "sha256": hashlib.sha256(data).hexdigest()}, "echo mismatch")
    finally:
        await c.close()


OPS = {
    "get": (op_get, 5),
    "big_get": (op_big_get, 1),
    "tunnel": (op_tunnel, 2),
    "upload": (op_upload, 2),
}


class Mismatch(Exception):
    pass


def check(cond: bool, what: str) -> None:
    if not cond:
        raise Mismatch(what)


async def worker(
    wid: int, port: int, origin: Origin, tally: Tally, stop_at: float, flaps: list[int]
) -> None:
    """Errors are labelled "(across a flap)" when a parent changed state during the operation
    (a flapping parent kills its open connections: expected casualties, never hangs)."""
    rng = random.Random(wid)
    names = list(OPS)
    weights = [OPS[k][1] for k in names]
    while time.monotonic() < stop_at:
        kind = rng.choices(names, weights)[0]
        flaps_before = flaps[0]
        try:
            await asyncio.wait_for(OPS[kind][0](port, origin, rng), OP_TIMEOUT)
            tally.ok[kind] += 1
        except TimeoutError:
            tally.errors[f"{kind}: HANG (no answer in {OP_TIMEOUT:.0f} s)"] += 1
        except (Mismatch, OSError, asyncio.IncompleteReadError, EOFError) as exc:
            why = str(exc) if isinstance(exc, Mismatch) else type(exc).__name__
            when = "across a flap" if flaps[0] != flaps_before else "no flap"
            tally.errors[f"{kind}: {why} ({when})"] += 1
        except Exception as exc:  # report it and keep soaking
            tally.errors[f"{kind}: {type(exc).__name__}: {exc}"] += 1


async def flapper(
    fp: FaultParent, down: str, offset: float, stop_at: float, state: list[str], flaps: list[int]
) -> None:
    """Every 20 s (after `offset`), parent `fp` is down for 5 s (`down`: "refused" or
    "blackhole"), killing its open connections as it goes down and as it comes back."""
    await asyncio.sleep(offset)
    while time.monotonic() < stop_at:
        for name, seconds in (("relay", 15.0), (down, 5.0)):
            fp.die()
            if name == "refused":
                fp.refuse()
            else:
                fp.mode = name
                await fp.listen()
            state[0] = name
            flaps[0] += 1
            await asyncio.sleep(min(seconds, max(0.0, stop_at - time.monotonic())))
    fp.mode = "relay"
    await fp.listen()


def free_port() -> int:
    """A loopback port nothing listens on now (Listen does not take port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_pycntlm(conf: Path, log: Path) -> tuple[asyncio.subprocess.Process, int]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["PYTHONPATH"] = str(REPO)
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pycntlm", "-c", str(conf), "-f",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=err,
            env=env,
        )  # fmt: skip
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "listening on 127.0.0.1:" in text:
            port = int(text.split("listening on 127.0.0.1:")[1].split()[0])
            return proc, port
        if proc.returncode is not None:
            break
        await asyncio.sleep(0.1)
    if proc.returncode is None:
        proc.kill()
    raise SystemExit(f"pycntlm did not start:\n{log.read_text(errors='replace')}")


async def soak(minutes: float, workers: int) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="pycntlm-soak-"))
    async with (
        Origin() as origin,
        NtlmParent([USER], timeout=60) as a,
        NtlmParent([USER], timeout=60) as b,
        FaultParent(("127.0.0.1", a.port)) as f1,
        FaultParent(("127.0.0.1", b.port)) as f2,
    ):
        conf = tmp / "cntlm.conf"
        conf.write_text(
            "Username testuser\nDomain corp-uk\nPassword password\nAuth NTLMv2\n"
            f"Proxy {f1.address}\nProxy {f2.address}\nListen 127.0.0.1:{free_port()}\n"
            "ConnectPorts *\n"
            "HandshakeTimeout 2\nConnectTimeout 2\nFailbackInterval 5\nIdleTimeout 30\n"
        )
        proc, port = await start_pycntlm(conf, tmp / "pycntlm.log")
        print(f"pycntlm pid {proc.pid} on 127.0.0.1:{port}; {minutes} min, {workers} workers")
        tally = Tally()
        t0 = time.monotonic()
        stop_at = t0 + minutes * 60
        state1, state2, flaps = ["relay"], ["relay"], [0]
        samples: list[tuple[float, int, int]] = []
        rss0, fds0 = proc_figures(proc.pid)
        samples.append((0.0, rss0, fds0))
        print(
            f"{'t/s':>6} {'RSS/KiB':>9} {'fds':>5} {'requests':>9} {'errors':>7}  "
            "F1 / F2 / F1 conns / F2 conns"
        )
        print(f"{0:6.0f} {rss0:9d} {fds0:5d} {0:9d} {0:7d}  relay / relay")
        tasks = [
            asyncio.ensure_future(worker(i, port, origin, tally, stop_at, flaps))
            for i in range(workers)
        ]
        tasks.append(asyncio.ensure_future(flapper(f1, "refused", 0.0, stop_at, state1, flaps)))
        tasks.append(asyncio.ensure_future(flapper(f2, "blackhole", 7.0, stop_at, state2, flaps)))
        try:
            while time.monotonic() < stop_at:
                await asyncio.sleep(min(10.0, max(0.0, stop_at - time.monotonic())))
                if proc.returncode is not None:
                    print(f"pycntlm DIED with exit code {proc.returncode}")
                    break
                rss, fds = proc_figures(proc.pid)
                t = time.monotonic() - t0
                samples.append((t, rss, fds))
                n_err = sum(tally.errors.values())
                print(
                    f"{t:6.0f} {rss:9d} {fds:5d} {tally.total():9d} {n_err:7d}  "
                    f"{state1[0]} / {state2[0]} / {f1.stats.connections} / {f2.stats.connections}"
                )
                sys.stdout.flush()
            await asyncio.wait(tasks, timeout=OP_TIMEOUT + 10)
        finally:
            for t in tasks:
                t.cancel()
        await asyncio.sleep(3)  # settle: let pycntlm close what the workers left
        alive = proc.returncode is None
        rss_end, fds_end = proc_figures(proc.pid) if alive else (0, 0)
        # one good request after the soak
        final = "not tried"
        with contextlib.suppress(Exception):
            c = await RawClient.connect(port)
            rep = await c.request("GET", origin.url("/"))
            await c.close()
            final = str(rep.status)
        if alive:
            proc.terminate()
            try:
                rc = await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                rc = await proc.wait()
        else:
            rc = proc.returncode
        warm = next((s for s in samples if s[0] >= WARMUP), samples[-1])
        print("\n== summary ==")
        print(f"duration {time.monotonic() - t0:.0f} s, workers {workers}, parent flaps {flaps[0]}")
        print(f"requests ok: {sum(tally.ok.values())} ({dict(tally.ok)})")
        print(f"errors: {sum(tally.errors.values())}")
        for kind, n in tally.errors.most_common():
            print(f"  {n:6d}  {kind}")
        print(f"RSS KiB: start {rss0}, after warm-up ({warm[0]:.0f} s) {warm[1]}, end {rss_end}")
        print(f"RSS max {max(s[1] for s in samples)} KiB; fds start {fds0}, max "
              f"{max(s[2] for s in samples)}, end (settled) {fds_end}")  # fmt: skip
        print(f"parents: A logons {a.stats.logons_ok} ok / {a.stats.logons_failed} failed, "
              f"B logons {b.stats.logons_ok} ok / {b.stats.logons_failed} failed")  # fmt: skip
        print(f"final GET after soak: {final}; pycntlm exit code on SIGTERM: {rc}")
        log_text = (tmp / "pycntlm.log").read_text(errors="replace")
        internal = log_text.count("internal error")
        tracebacks = log_text.count("Traceback")
        print(f"pycntlm log: {internal} 'internal error', {tracebacks} tracebacks; log {tmp}")
        hangs = sum(n for k, n in tally.errors.items() if "HANG" in k)
        return 0 if alive and final == "200" and hangs == 0 and internal == 0 else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--workers", type=int, default=16)
    args = ap.parse_args()
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        return runner.run(soak(args.minutes, args.workers))


if __name__ == "__main__":
    sys.exit(main())
