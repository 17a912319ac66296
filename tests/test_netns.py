"""pycntlm on a Docker host's network, re-created in a network namespace of our own.

Each test gets a fresh namespace (ip netns add pycntlm-test-...) with only `lo` up; everything
(pycntlm, cntlm, servers, curl) runs inside it via `ip netns exec`, so 172.17.0.1 and 10.0.0.x
there are not this host's. The namespace's "docker0" is a bridge named pyc0 (docker0 is a bridge
too; the real docker0 is never touched). Teardown kills the processes left in the namespace
(`ip netns pids`) and deletes it. Needs root and iproute2: a test FAILS, never skips, without.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_service import PYCNTLM, SAMPLE, Child, child_env, need, pycntlm, write_conf

from pycntlm.demo.origin import HELLO

BRIDGE = "pyc0"  # this namespace's docker0
BRIDGE_IP = "172.17.0.1"
ORIGIN_PORT = 8000
CURL_OK = "200"


@dataclass
class Netns:
    name: str

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    async def run(self, *argv: str, check: bool = True, timeout: float = 30) -> tuple[int, str]:
        """Run a command inside the namespace; (exit code, stdout + stderr)."""
        proc = await asyncio.create_subprocess_exec(
            *self.prefix,
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=child_env(),
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        assert proc.returncode is not None
        text = out.decode(errors="replace")
        if check:
            assert proc.returncode == 0, f"{' '.join(argv)} -> {proc.returncode}: {text}"
        return proc.returncode, text

    async def bridge(self, name: str, *cidrs: str) -> None:
        """A bridge with addresses, up (as Docker creates docker0)."""
        await self.run("ip", "link", "add", name, "type", "bridge")
        for cidr in cidrs:
            await self.run("ip", "addr", "add", cidr, "dev", name)
        await self.run("ip", "link", "set", name, "up")

    async def curl(self, url: str, *args: str, proxy: str = f"http://{BRIDGE_IP}:3128") -> str:
        """HTTP status code as text (000 when the connection failed) and the body."""
        _, out = await self.run(
            *("curl", "-sS", "--max-time", "15", "-x", proxy, "-w", "\n%{http_code}", *args, url),
            check=False,
        )
        return out


def _ns_pids(name: str) -> list[int]:
    done = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
    return [int(pid) for pid in done.stdout.split()]


@pytest.fixture
def netns() -> Iterator[Netns]:
    need("ip")
    name = f"pycntlm-test-{os.getpid()}-{secrets.token_hex(3)}"
    done = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(
            f"cannot create network namespace {name} (needs root, iproute2 and a kernel with "
            f"network namespaces): {done.stderr.strip()}"
        )
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        yield Netns(name)
    finally:
        for pid in _ns_pids(name):  # only processes in our own namespace: ours
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", name], check=False)
        assert (
            name
            not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        )


@contextlib.asynccontextmanager
async def http_server(ns: Netns, tmp_path: Path) -> AsyncIterator[None]:
    """python -m http.server on 127.0.0.1:ORIGIN_PORT inside the namespace, serving one file."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_bytes(HELLO)
    argv = [*ns.prefix, PYCNTLM[0], "-u", "-m", "http.server", "--bind", "127.0.0.1"]
    argv += ["--directory", str(root), str(ORIGIN_PORT)]
    log = tmp_path / "http.server.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, env=child_env()
        )
    try:
        child = Child(proc, log)
        await child.wait_log("Serving HTTP")
        yield
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def direct_conf(path: Path, listen: str) -> Path:
    """Everything direct (NoProxy *): no parent is needed in the namespace. cntlm.conf always
    names a parent, so one (never used) is given."""
    lines = ["Username testuser", "Domain corp-uk", "Password password", "Proxy 192.0.2.1:8080"]
    return write_conf(path, [*lines, "NoProxy *", f"Listen {listen}"])


def status_of(curl_out: str) -> str:
    return curl_out.rsplit("\n", 1)[-1]


async def test_listens_on_an_interface_that_appears_after_start(
    netns: Netns, tmp_path: Path
) -> None:
    conf = direct_conf(tmp_path / "cntlm.conf", f"{BRIDGE}:3128")
    origin = f"http://127.0.0.1:{ORIGIN_PORT}/"
    async with (
        http_server(netns, tmp_path),
        pycntlm(
            tmp_path,
            ["-c", str(conf), "-f"],
            prefix=netns.prefix,
            ready=f"interface {BRIDGE} is not up yet",
        ) as p,
    ):
        await asyncio.sleep(2.5)  # Docker starts later than pycntlm
        assert p.proc.returncode is None
        await netns.bridge(BRIDGE, f"{BRIDGE_IP}/16")
        await p.wait_log(f"interface {BRIDGE} is up: listening on {BRIDGE_IP}:3128", timeout=10)
        out = await netns.curl(origin)
        assert status_of(out) == CURL_OK and out.startswith(HELLO.decode()), out
        # Docker deletes and re-creates its bridge: the bound socket keeps serving.
        await netns.run("ip", "link", "del", BRIDGE)
        assert status_of(await netns.curl(origin)) == "000"
        await netns.bridge(BRIDGE, f"{BRIDGE_IP}/16")
        out = await netns.curl(origin)
        assert status_of(out) == CURL_OK, out + p.log()
        assert await p.stop() == 0
    assert "Traceback" not in p.log()


async def test_listens_on_an_address_not_present_yet_with_ip_freebind(
    netns: Netns, tmp_path: Path
) -> None:
    conf = direct_conf(tmp_path / "cntlm.conf", f"{BRIDGE_IP}:3128")
    origin = f"http://127.0.0.1:{ORIGIN_PORT}/"
    async with (
        http_server(netns, tmp_path),
        pycntlm(
            tmp_path,
            ["-c", str(conf), "-f"],
            prefix=netns.prefix,
            ready=f"listening on {BRIDGE_IP}:3128",
        ) as p,
    ):
        assert f"{BRIDGE_IP} is not on this host yet" in p.log()
        assert status_of(await netns.curl(origin)) == "000"  # nothing has that address yet
        await netns.bridge(BRIDGE, f"{BRIDGE_IP}/16")
        out = await netns.curl(origin)
        assert status_of(out) == CURL_OK and out.startswith(HELLO.decode()), out + p.log()
        assert await p.stop() == 0
    assert "Traceback" not in p.log()


# --- the sample cntlm.conf, unchanged, on a re-created Docker host ------------------------------

# Inside the namespace: the corporate parent (verifying NTLM) on 10.0.0.42:8080 (10.0.0.41, the
# first Proxy, has nothing listening), a web site at 127.1.2.3 (port 80, and 443 for CONNECT),
# reached through the parent, and one at 127.0.0.1:8000 (NoProxy 127.0.0.*: direct).
# Prints "ready", and its counters as JSON when its stdin closes.
SERVERS = r"""
import asyncio, json, sys
from pycntlm.demo.origin import Origin
from pycntlm.demo.parent import NtlmParent

async def main():
    users = [("corp-uk", "testuser", "password")]
    async with NtlmParent(users, host="10.0.0.42", port=8080) as parent, \
            Origin("127.1.2.3", 80) as site, Origin("127.1.2.3", 443) as tls_port, \
            Origin("127.0.0.1", 8000) as direct:
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        s = parent.stats
        print(json.dumps({
            "logons_ok": s.logons_ok, "logons_failed": s.logons_failed,
            "parent_requests": s.requests, "site": site.stats.requests,
            "tunnelled": tls_port.stats.requests, "direct": direct.stats.requests,
        }), flush=True)

asyncio.run(main())
"""


@dataclass
class Servers:
    proc: asyncio.subprocess.Process

    async def stats(self) -> dict[str, int]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        line = await asyncio.wait_for(self.proc.stdout.readline(), 10)
        await asyncio.wait_for(self.proc.wait(), 10)
        result: dict[str, int] = json.loads(line)
        return result


@contextlib.asynccontextmanager
async def corporate_network(ns: Netns, tmp_path: Path) -> AsyncIterator[Servers]:
    await ns.bridge(BRIDGE, f"{BRIDGE_IP}/16")
    await ns.bridge("pyc1", "10.0.0.41/24", "10.0.0.42/24", "192.0.2.10/24")
    proc = await asyncio.create_subprocess_exec(
        *ns.prefix,
        PYCNTLM[0],
        "-c",
        SERVERS,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=(tmp_path / "servers.stderr").open("wb"),
        env=child_env(),
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line == b"ready\n", line + (tmp_path / "servers.stderr").read_bytes()
        yield Servers(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# argv, the log line that says it serves, the status a denied client gets (cntlm answers its
# "Access denied" page with 407, then resets the connection).
PROXIES: dict[str, tuple[Sequence[str], str, str]] = {
    "cntlm": (["cntlm", "-c", str(SAMPLE), "-f"], "Cntlm ready", "407"),
    "pycntlm": ([*PYCNTLM, "-c", str(SAMPLE), "-f"], f"listening on {BRIDGE_IP}:3128", "403"),
}


@pytest.mark.parametrize("proxy", list(PROXIES))
async def test_sample_conf_unchanged_serves_a_docker_host(
    netns: Netns, tmp_path: Path, proxy: str
) -> None:
    need("cntlm")
    need("curl")
    argv, ready, denied = PROXIES[proxy]
    async with (
        corporate_network(netns, tmp_path) as servers,
        pycntlm(tmp_path, [], argv=argv, prefix=netns.prefix, ready=ready, name=proxy) as p,
    ):
        # Through the parent: 10.0.0.41 refuses, 10.0.0.42 verifies the PassNTLMv2 logon.
        out = await netns.curl("http://127.1.2.3/")
        assert status_of(out) == CURL_OK and out.startswith(HELLO.decode()), out + p.log()
        # CONNECT (port 443) through the parent.
        out = await netns.curl("http://127.1.2.3:443/", "--proxytunnel")
        assert status_of(out) == CURL_OK and out.startswith(HELLO.decode()), out + p.log()
        # NoProxy 127.0.0.*: direct.
        out = await netns.curl(f"http://127.0.0.1:{ORIGIN_PORT}/")
        assert status_of(out) == CURL_OK, out + p.log()
        # A client outside 127.0.0.1 and 172.16.0.0/12 (Deny 0/0).
        out = await netns.curl("http://127.1.2.3/", "--interface", "192.0.2.10")
        assert status_of(out) == denied, out + p.log()
        assert "192.0.2.10" in p.log(), p.log()  # the denial is logged
        rc = await p.stop()
        stats = await servers.stats()
    assert rc == 0, p.log()
    assert stats["logons_ok"] >= 1 and stats["logons_failed"] == 0, stats
    assert stats["site"] == 1 and stats["tunnelled"] == 1 and stats["direct"] == 1, stats
    assert stats["parent_requests"] == 2, stats
    assert "Ignoring config file option" not in p.log() and "Traceback" not in p.log()
