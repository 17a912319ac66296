"""pycntlm as a service: the systemd unit, the sample cntlm.conf, and the real process's
lifecycle (sd_notify, SIGHUP, SIGTERM, pid file, ACL, -t/--version, secrets in the log).

Every pycntlm here is a real `python -m pycntlm` child on loopback, run as an asyncio
subprocess: the servers it talks to (NtlmParent, Origin, the echo and slow servers) live in this
event loop, which a blocking call would freeze. Children are stopped by PID.

The unit's sandbox cannot be started here (no systemd as PID 1), so one test re-creates the
parts that could break pycntlm at run time: no capabilities, no_new_privs, and a seccomp filter
built from the unit's SystemCallFilter=, RestrictAddressFamilies= and MemoryDenyWriteExecute=
lines (with libseccomp, as systemd does). Needs: systemd (systemd-analyze), cntlm, curl,
util-linux (setpriv), libseccomp2.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from proxyrun import USER, RawClient
from servers.procs import free_port
from servers.tls import clean_env

from pycntlm import __version__, creds
from pycntlm.demo.origin import HELLO, Origin
from pycntlm.demo.parent import NtlmParent

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "pycntlm.service"
SAMPLE = REPO / "etc" / "cntlm.conf"
PYCNTLM = (sys.executable, "-m", "pycntlm")
READY_TIMEOUT = 20.0
MAX_EXPOSURE = 2.0  # systemd-analyze security: 1.1 when written; "OK" goes up to 4.9


def need(tool: str) -> str:
    """The path of a tool the tests need; a missing tool is a failure, never a skip."""
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed (CI's .ci/run must apt-get install it)")
    return path


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = clean_env({"PYTHONPATH": str(REPO)})
    env.pop("NOTIFY_SOCKET", None)
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class Done:
    rc: int
    out: str
    err: str


async def run(argv: Sequence[str], timeout: float = 60.0, stdin: bytes = b"") -> Done:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=child_env(),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Done(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


def write_conf(path: Path, lines: Sequence[str], keep_mtime: bool = False) -> Path:
    """Write a config, mode 0600. keep_mtime: restore the old mtime, so that pycntlm's
    config-file watcher does not notice and only a SIGHUP can cause a reload."""
    old = path.stat() if keep_mtime else None
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    if old is not None:
        os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
    return path


def proxy_lines(parent: str, port: int, *extra: str, password: str = USER[2]) -> list[str]:
    return [
        "Username testuser",
        "Domain corp-uk",
        f"Password {password}",
        "Auth NTLMv2",
        "ConnectPorts *",  # test servers use random ports
        "PoolSpare 0",  # the tests count the parents' requests exactly (test_e2e_spares.py)
        f"Proxy {parent}",
        f"Listen 127.0.0.1:{port}",
        *extra,
    ]


@dataclass
class Child:
    """A running pycntlm; its stderr goes to a file the test can read at any time."""

    proc: asyncio.subprocess.Process
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_log(self, needle: str, timeout: float = READY_TIMEOUT, count: int = 1) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.log().count(needle) < count:
            assert self.proc.returncode is None, f"pycntlm exited early:\n{self.log()}"
            assert loop.time() < deadline, f"{needle!r} not logged in {timeout} s:\n{self.log()}"
            await asyncio.sleep(0.05)

    async def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then the exit code; fails (after SIGKILL) if it takes over `timeout`."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(f"no exit within {timeout} s of SIGTERM:\n{self.log()}") from None


@contextlib.asynccontextmanager
async def pycntlm(
    tmp_path: Path,
    args: Sequence[str],
    *,
    ready: str | None = "listening on ",
    prefix: Sequence[str] = (),
    argv: Sequence[str] | None = None,
    env: dict[str, str] | None = None,
    name: str = "pycntlm",
) -> AsyncIterator[Child]:
    """`[prefix] python -m pycntlm ARGS` (or `prefix argv`), until `ready` is logged."""
    log_path = tmp_path / f"{name}.stderr"
    with log_path.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            *prefix,
            *(argv if argv is not None else (*PYCNTLM, *args)),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=err,
            env=env if env is not None else child_env(),
            cwd=tmp_path,
        )
    child = Child(proc, log_path)
    try:
        if ready is not None:
            await child.wait_log(ready)
        yield child
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def http_get(port: int, url: str, host: str = "127.0.0.1") -> tuple[int, bytes]:
    """One GET through the proxy on a new connection (Connection: close)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
    client = RawClient(reader, writer)
    try:
        rep = await client.request("GET", url, {"Connection": "close"})
        return rep.status, rep.body
    finally:
        await client.close()


async def open_tunnel(port: int, target: str) -> RawClient:
    """A CONNECT tunnel through the proxy; fails unless it answers 200."""
    client = await RawClient.connect(port)
    await client.send(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    rep = await client.reply("CONNECT")
    if rep.status != 200:
        await client.close()
        raise AssertionError(f"CONNECT {target}: {rep.status} {rep.reason}")
    return client


def free_dual_port() -> int:
    """A port free on both 127.0.0.1 and ::1 a moment ago."""
    for _ in range(20):
        port = free_port()
        with socket.socket(socket.AF_INET6) as s6:
            try:
                s6.bind(("::1", port))
            except OSError:
                continue
        return port
    raise AssertionError("no port free on both 127.0.0.1 and ::1")


def refused(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


# --- small servers of our own ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    """A TCP echo server on 127.0.0.1; yields its port."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()


SLOW_BODY = bytes(range(256)) * (4 * 4096)  # 4 MiB
SLOW_PIECE = 64 * 1024
SLOW_PAUSE = 0.05  # 64 pieces: the download takes ~3 s


@contextlib.asynccontextmanager
async def slow_origin() -> AsyncIterator[int]:
    """An origin whose one page (SLOW_BODY) trickles out over ~3 s; yields its port."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(SLOW_BODY)
            )
            for at in range(0, len(SLOW_BODY), SLOW_PIECE):
                writer.write(SLOW_BODY[at : at + SLOW_PIECE])
                await writer.drain()
                await asyncio.sleep(SLOW_PAUSE)
        writer.close()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()


class NotifySocket:
    """What systemd listens on for Type=notify: an AF_UNIX datagram socket that records each
    message with the PID of its sender (SO_PASSCRED), as systemd checks NotifyAccess=main."""

    def __init__(self, address: str) -> None:
        self.address = address  # "@name" = abstract namespace, as in $NOTIFY_SOCKET
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setblocking(False)
        self.messages: list[tuple[int, dict[str, str]]] = []

    def close(self) -> None:
        self.sock.close()

    def _drain(self) -> None:
        size = socket.CMSG_SPACE(struct.calcsize("3i"))
        while True:
            try:
                data, anc, _, _ = self.sock.recvmsg(4096, size)
            except BlockingIOError:
                return
            pid = -1
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", payload[: struct.calcsize("3i")])[0]
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((pid, fields))

    async def wait_for(
        self, key: str, timeout: float = READY_TIMEOUT
    ) -> tuple[int, dict[str, str]]:
        """The first message that sets `key` (e.g. READY), with its sender's PID."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._drain()
            for pid, fields in self.messages:
                if key in fields:
                    return pid, fields
            assert loop.time() < deadline, f"no {key}= within {timeout} s: {self.messages}"
            await asyncio.sleep(0.02)


# --- the systemd unit --------------------------------------------------------------------------


def unit_settings() -> list[tuple[str, str]]:
    """(key, value) pairs of the unit file, in order (comments and sections dropped)."""
    pairs = []
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, sep, value = line.partition("=")
            assert sep, f"not a setting: {line!r}"
            pairs.append((key.strip(), value.strip()))
    return pairs


def unit_values(key: str) -> list[str]:
    return [v for k, v in unit_settings() if k == key]


def test_unit_declares_notify_reload_restart_and_the_sandbox() -> None:
    one = {k: v for k, v in unit_settings()}
    assert one["Type"] == "notify"
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert one["Restart"] == "on-failure"
    assert one["ExecStart"].split()[0] == "/usr/local/bin/pycntlm"
    assert "-f" in one["ExecStart"].split()
    assert "-t" in one["ExecStartPre"].split()
    assert one["LoadCredential"] == "cntlm.conf:/etc/cntlm.conf"
    hardening = {
        "DynamicUser": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "ProtectClock": "yes",
        "ProtectHostname": "yes",
        "RestrictNamespaces": "yes",
        "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
        "UMask": "0077",
    }
    assert {k: one.get(k) for k in hardening} == hardening
    assert unit_values("SystemCallFilter")[0] == "@system-service"
    # Docker is ordered, never required: pycntlm waits for docker0 itself.
    assert "docker.service" in one["After"].split()
    for key in ("Requires", "BindsTo", "Requisite"):
        assert "docker.service" not in one.get(key, "")


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """The unit as shipped, checked in a scratch root that has the ExecStart binary (a stub)
    and the host's system units: no warnings at all (verify exits 0 even on unknown keys)."""
    analyze = need("systemd-analyze")
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system/pycntlm.service")
    for path in ("/usr/local/bin/pycntlm", "/bin/kill"):
        stub = root / path.lstrip("/")
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    done = subprocess.run(
        [analyze, "verify", f"--root={root}", "pycntlm.service"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "" and done.stdout.strip() == "", done.stderr + done.stdout


def test_unit_security_exposure_is_ok() -> None:
    analyze = need("systemd-analyze")
    done = subprocess.run(
        [analyze, "security", "--offline=yes", str(UNIT)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    found = re.search(r"Overall exposure level for pycntlm\.service: ([0-9.]+) (\w+)", done.stdout)
    assert found, done.stdout
    print(f"systemd-analyze security: {found.group(1)} {found.group(2)}")
    assert float(found.group(1)) <= MAX_EXPOSURE, done.stdout


async def test_unit_exec_lines_are_valid_pycntlm_commands(tmp_path: Path) -> None:
    """ExecStartPre and ExecStart, with %d (the credentials directory) holding a copy of the
    sample config readable only by its owner, as systemd's LoadCredential= leaves it."""
    creds_dir = tmp_path / "credentials"
    creds_dir.mkdir()
    copy = creds_dir / "cntlm.conf"
    shutil.copy(SAMPLE, copy)
    copy.chmod(0o400)

    def argv(line: str) -> list[str]:
        words = line.replace("%d", str(creds_dir)).split()
        assert words[0] == "/usr/local/bin/pycntlm"
        return [*PYCNTLM, *words[1:]]

    pre = await run(argv(unit_values("ExecStartPre")[0]))
    assert pre.rc == 0 and "configuration OK" in pre.out, pre.err
    assert pre.err == "", pre.err
    # ExecStart itself would bind 172.17.0.1:3128 on this host; -t checks the same command.
    start = await run([*argv(unit_values("ExecStart")[0]), "-t"])
    assert start.rc == 0 and "configuration OK" in start.out, start.err


# --- the unit's sandbox, re-created: no capabilities, no_new_privs, seccomp --------------------

# Runs in the child before pycntlm: builds and loads the filter with libseccomp, then execs.
SECCOMP_EXEC = r"""
import ctypes, json, os, sys
spec = json.loads(sys.argv[1])
lib = ctypes.CDLL("libseccomp.so.2")
class Cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_init.argtypes = [ctypes.c_uint32]
lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
lib.seccomp_rule_add_array.argtypes = [
    ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(Cmp)]
lib.seccomp_load.argtypes = [ctypes.c_void_p]
ALLOW, EQ, MASKED_EQ = 0x7FFF0000, 4, 7
deny = 0x00050000 | spec["errno"] if spec["errno"] else 0x80000000  # ERRNO(n) / KILL_PROCESS
ctx = lib.seccomp_init(deny)
def allow(name, *conds):
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr < 0:
        return  # not a system call on this architecture
    arr = (Cmp * len(conds))(*conds) if conds else None
    rc = lib.seccomp_rule_add_array(ctx, ALLOW, nr, len(conds), arr)
    if rc:
        sys.exit(f"seccomp_rule_add({name}) failed: {rc}")
W, X, SHM_EXEC = 2, 4, 0o100000
special = {"socket", "mmap", "mmap2", "mprotect", "pkey_mprotect", "shmat"}
for name in spec["allow"]:
    if name not in special:
        allow(name)
if "socket" in spec["allow"]:
    for family in spec["families"] or ():
        allow("socket", Cmp(0, EQ, family, 0))
    if spec["families"] is None:
        allow("socket")
for name in ("mmap", "mmap2"):
    if name in spec["allow"]:
        if spec["mdwe"]:  # not writable AND executable at once
            for prot in (0, W, X):
                allow(name, Cmp(2, MASKED_EQ, W | X, prot))
        else:
            allow(name)
for name in ("mprotect", "pkey_mprotect"):
    if name in spec["allow"]:
        allow(name, *([Cmp(2, MASKED_EQ, X, 0)] if spec["mdwe"] else []))
if "shmat" in spec["allow"]:
    allow("shmat", *([Cmp(2, MASKED_EQ, SHM_EXEC, 0)] if spec["mdwe"] else []))
if lib.seccomp_load(ctx):
    sys.exit("seccomp_load failed")
os.execv(sys.executable, [sys.executable, *spec["argv"]])
"""

# Run under the filter to show it bites: each probe prints what the kernel answered.
SANDBOX_PROBE = r"""
import json, mmap, os, socket
out = {}
def probe(name, fn):
    try:
        fn()
        out[name] = "ok"
    except OSError as exc:
        out[name] = exc.errno
probe("mmap_wx", lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_WRITE | mmap.PROT_EXEC))
probe("mmap_rw", lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_WRITE | mmap.PROT_READ))
probe("packet", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close())
probe("netlink", lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW).close())
probe("inet6", lambda: socket.socket(socket.AF_INET6).close())
probe("if_nameindex", socket.if_nameindex)
probe("setuid", lambda: os.setuid(0))
print(json.dumps(out))
"""


def syscall_groups() -> dict[str, list[str]]:
    """systemd's @groups as systemd-analyze prints them (members may be groups)."""
    text = subprocess.run(
        [need("systemd-analyze"), "syscall-filter"], capture_output=True, text=True, check=True
    ).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.split()[0], [])
        elif current is not None and line.strip() and not line.strip().startswith("#"):
            current.append(line.split()[0])
    return groups


def expand(items: Sequence[str], groups: dict[str, list[str]]) -> set[str]:
    names: set[str] = set()
    for item in items:
        names |= expand(groups[item], groups) if item.startswith("@") else {item}
    return names


def unit_seccomp_spec(argv: Sequence[str]) -> dict[str, object]:
    """The filter the unit asks systemd for, as SECCOMP_EXEC's JSON argument."""
    groups = syscall_groups()
    allowed: set[str] = set()
    denied: set[str] = set()
    for value in unit_values("SystemCallFilter"):
        if value.startswith("~"):
            denied |= expand(value[1:].split(), groups)
        else:
            allowed |= expand(value.split(), groups)
    assert allowed, "the unit has no SystemCallFilter allow-list"
    families = unit_values("RestrictAddressFamilies")
    error = unit_values("SystemCallErrorNumber")
    return {
        "allow": sorted(allowed - denied),
        "families": [int(getattr(socket, f)) for f in families[-1].split()] if families else None,
        "mdwe": unit_values("MemoryDenyWriteExecute") == ["yes"],
        "errno": int(getattr(errno, error[-1])) if error else 0,
        "argv": list(argv),
    }


def sandbox_prefix(argv: Sequence[str]) -> list[str]:
    """Command line that runs `python ARGV` inside the re-created sandbox."""
    setpriv = need("setpriv")
    spec = json.dumps(unit_seccomp_spec(argv))
    drop = ["--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all", "--no-new-privs"]
    return [setpriv, *drop, "--", sys.executable, "-c", SECCOMP_EXEC, spec]


async def test_sandbox_re_creation_really_restricts() -> None:
    done = await run(sandbox_prefix(["-c", SANDBOX_PROBE]))
    assert done.rc == 0, done.err
    got = json.loads(done.out)
    assert got == {
        "mmap_wx": errno.EPERM,  # MemoryDenyWriteExecute=
        "mmap_rw": "ok",
        "packet": errno.EPERM,  # RestrictAddressFamilies= (systemd: EAFNOSUPPORT)
        "netlink": "ok",
        "inet6": "ok",
        "if_nameindex": "ok",
        "setuid": errno.EPERM,  # ~@privileged (and no CAP_SETUID)
    }, got


async def test_serves_inside_the_units_sandbox(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    """uvloop, the NTLM handshake (pyspnego, cryptography), CONNECT, an interface Listen
    (netlink + ioctl), sd_notify, SIGHUP and SIGTERM all work under the unit's restrictions."""
    port, port_lo = free_port(), free_port()
    creds_dir = tmp_path / "credentials"
    creds_dir.mkdir()
    conf = write_conf(creds_dir / "cntlm.conf", proxy_lines(parent.address, port))
    with conf.open("a") as f:
        f.write(f"Listen lo:{port_lo}\n")
    conf.chmod(0o400)
    notify = NotifySocket(f"@pycntlm-test-{secrets.token_hex(8)}")
    argv = ["-m", "pycntlm", "-c", str(conf), "-f"]
    try:
        async with (
            echo_server() as echo,
            pycntlm(
                tmp_path,
                [],
                argv=sandbox_prefix(argv),
                env=child_env({"NOTIFY_SOCKET": notify.address}),
                ready=f"listening on 127.0.0.1:{port_lo}",
            ) as p,
        ):
            pid, _ = await notify.wait_for("READY")
            assert pid == p.proc.pid
            status = Path(f"/proc/{p.proc.pid}/status").read_text()
            assert re.search(r"^CapEff:\s+0+$", status, re.M), status
            assert re.search(r"^CapBnd:\s+0+$", status, re.M), status
            assert re.search(r"^NoNewPrivs:\s+1$", status, re.M), status
            assert re.search(r"^Seccomp:\s+2$", status, re.M), status
            for listen in (port, port_lo):
                assert await http_get(listen, origin.url("/")) == (200, HELLO)
            client = await open_tunnel(port, f"127.0.0.1:{echo}")
            try:
                await client.send(b"through the sandbox")
                got = await asyncio.wait_for(client.reader.readexactly(19), 10)
                assert got == b"through the sandbox"
            finally:
                await client.close()
            p.proc.send_signal(signal.SIGHUP)
            await p.wait_log("configuration reloaded")
            assert await http_get(port, origin.url("/")) == (200, HELLO)
            assert await p.stop() == 0
            await notify.wait_for("STOPPING")
    finally:
        notify.close()
    assert parent.stats.logons_ok >= 1
    assert "Traceback" not in p.log() and "ERROR" not in p.log(), p.log()


# --- the sample configuration ------------------------------------------------------------------


def test_sample_conf_has_only_keywords_cntlm_knows() -> None:
    """cntlm 0.92.3 logs "Ignoring config file option" for keywords it does not know; the
    sample must not have any (pycntlm-only keywords would be ignored by cntlm)."""
    cntlm_keywords = {
        "Username",
        "Domain",
        "Password",
        "PassLM",
        "PassNT",
        "PassNTLMv2",
        "Workstation",
        "Auth",
        "Proxy",
        "NoProxy",
        "Listen",
        "Allow",
        "Deny",
    }
    used = [
        line.split()[0]
        for line in SAMPLE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert set(used) <= cntlm_keywords, set(used) - cntlm_keywords
    assert used.count("Proxy") == 2 and "NoProxy" in used and used[-1] == "Deny"


async def test_sample_conf_passes_pycntlm_check_without_a_warning() -> None:
    done = await run([*PYCNTLM, "-t", "-c", str(SAMPLE)])
    assert done.rc == 0, done.err
    assert done.out.startswith("pycntlm: configuration OK"), done.out
    assert "10.0.0.41:8080, 10.0.0.42:8080" in done.out
    assert done.err == "", done.err


async def test_sample_conf_is_read_by_cntlm_without_complaint(tmp_path: Path) -> None:
    """cntlm with the sample, plus a loopback -l so that it can start here (the sample's own
    172.17.0.1 is absent on this host; test_netns runs the sample unchanged where it exists)."""
    need("cntlm")
    port = free_port()
    argv = ["cntlm", "-c", str(SAMPLE), "-f", "-v", "-l", f"127.0.0.1:{port}"]
    async with pycntlm(tmp_path, [], argv=argv, ready="Cntlm ready", name="cntlm") as c:
        assert await c.stop() == 0
        log = c.log()
    assert "Ignoring config file option" not in log, log
    for rule in ("allow 127.0.0.1/32", "allow 172.16.0.0/12", "deny 0.0.0.0/0"):
        assert f"New ACL rule: {rule}" in log, log
    assert "NTLMv2(1)" in log, log  # the PassNTLMv2 line was taken


# --- lifecycle of the real process -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["path", "abstract"])
async def test_sd_notify_ready_after_listening_and_stopping_on_sigterm(
    tmp_path: Path, parent: NtlmParent, kind: str
) -> None:
    port = free_port()
    conf = write_conf(tmp_path / "cntlm.conf", proxy_lines(parent.address, port))
    address = f"@pycntlm-test-{secrets.token_hex(8)}" if kind == "abstract" else ""
    if kind == "path":
        address = str(tmp_path / "notify")
        assert len(address) < 100, "AF_UNIX path too long"
    notify = NotifySocket(address)
    env = child_env({"NOTIFY_SOCKET": address})
    try:
        async with pycntlm(tmp_path, ["-c", str(conf), "-f"], env=env, ready=None) as p:
            pid, fields = await notify.wait_for("READY")
            assert fields["READY"] == "1"
            assert pid == p.proc.pid  # NotifyAccess=main accepts only the main process
            # READY means: already listening
            assert not refused("127.0.0.1", port)
            assert f"listening on 127.0.0.1:{port}" in p.log()
            assert not any("STOPPING" in f for _, f in notify.messages)
            assert await p.stop() == 0
            pid, fields = await notify.wait_for("STOPPING")
            assert fields["STOPPING"] == "1" and pid == p.proc.pid
    finally:
        notify.close()


async def test_sighup_reload_keeps_the_open_tunnel_and_routes_new_requests_anew(
    tmp_path: Path, parent: NtlmParent, parent2: NtlmParent, origin: Origin
) -> None:
    port = free_port()
    conf = write_conf(tmp_path / "cntlm.conf", proxy_lines(parent.address, port))
    async with echo_server() as echo, pycntlm(tmp_path, ["-c", str(conf), "-f"]) as p:
        tunnel = await open_tunnel(port, f"127.0.0.1:{echo}")
        try:
            await tunnel.send(b"before")
            assert await asyncio.wait_for(tunnel.reader.readexactly(6), 10) == b"before"
            assert parent.stats.requests == 1
            # New parent; the old mtime is kept so that only SIGHUP can cause the reload.
            write_conf(conf, proxy_lines(parent2.address, port), keep_mtime=True)
            p.proc.send_signal(signal.SIGHUP)
            await p.wait_log("configuration reloaded", timeout=4)
            for n in range(50):  # the open tunnel still carries data, both ways
                await tunnel.send(b"after %03d" % n)
                got = await asyncio.wait_for(tunnel.reader.readexactly(9), 10)
                assert got == b"after %03d" % n
            assert await http_get(port, origin.url("/")) == (200, HELLO)
            assert parent2.stats.requests == 1 and parent2.stats.logons_ok == 1
            assert parent.stats.requests == 1  # the new request did not go to the old parent
        finally:
            await tunnel.close()
        assert await p.stop() == 0
    assert "Traceback" not in p.log()


async def test_sighup_with_a_broken_config_keeps_the_running_one(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    port = free_port()
    conf = write_conf(tmp_path / "cntlm.conf", proxy_lines(parent.address, port))
    async with pycntlm(tmp_path, ["-c", str(conf), "-f"]) as p:
        assert await http_get(port, origin.url("/")) == (200, HELLO)
        broken = proxy_lines(parent.address, port, "Proxy no-port-here")
        write_conf(conf, broken, keep_mtime=True)
        p.proc.send_signal(signal.SIGHUP)
        await p.wait_log("reload failed", timeout=4)
        lines = [line for line in p.log().splitlines() if "reload failed" in line]
        assert f"{conf}:{len(broken)}:" in lines[0], lines
        assert "keeping the running configuration" in lines[0]
        assert "Traceback" not in p.log()
        for _ in range(3):
            assert await http_get(port, origin.url("/")) == (200, HELLO)
        assert p.proc.returncode is None
        assert await p.stop() == 0


async def test_sigterm_lets_a_slow_download_finish_then_exits_0(
    tmp_path: Path, parent: NtlmParent
) -> None:
    port = free_port()
    conf = write_conf(tmp_path / "cntlm.conf", proxy_lines(parent.address, port))
    async with slow_origin() as slow, pycntlm(tmp_path, ["-c", str(conf), "-f"]) as p:
        client = await RawClient.connect(port)
        try:
            url = f"http://127.0.0.1:{slow}/big"
            await client.send(f"GET {url} HTTP/1.1\r\nHost: 127.0.0.1:{slow}\r\n\r\n".encode())
            head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200 ")
            first = await asyncio.wait_for(client.reader.read(SLOW_PIECE), 10)
            loop = asyncio.get_running_loop()
            started = loop.time()
            p.proc.send_signal(signal.SIGTERM)
            await p.wait_log("waiting up to")
            assert refused("127.0.0.1", port)  # no new clients while the transfer finishes
            rest = await asyncio.wait_for(
                client.reader.readexactly(len(SLOW_BODY) - len(first)), 15
            )
            body = first + rest
            assert hashlib.sha256(body).digest() == hashlib.sha256(SLOW_BODY).digest()
            assert loop.time() - started > 1.0, "the download was not in flight"
            assert p.proc.returncode is None  # it waited for the transfer
        finally:
            await client.close()
        assert await asyncio.wait_for(p.proc.wait(), 12) == 0
    assert "Traceback" not in p.log()


@pytest.mark.parametrize(
    ("allowed", "denied"), [("127.0.0.1", "::1"), ("::1", "127.0.0.1")], ids=["v4", "v6"]
)
async def test_acl_allow_one_family_deny_0_0_refuses_the_other(
    tmp_path: Path, parent: NtlmParent, origin: Origin, allowed: str, denied: str
) -> None:
    port = free_dual_port()
    lines = proxy_lines(parent.address, port, f"Listen [::1]:{port}", f"Allow {allowed}")
    conf = write_conf(tmp_path / "cntlm.conf", [*lines, "Deny 0/0"])
    async with pycntlm(tmp_path, ["-c", str(conf), "-f"], ready=f"listening on ::1:{port}") as p:
        assert await http_get(port, origin.url("/"), host=allowed) == (200, HELLO)
        status, _ = await http_get(port, origin.url("/"), host=denied)
        assert status == 403
        await p.wait_log(f"client {denied} denied by the Allow/Deny rules")
        assert await p.stop() == 0
    assert origin.stats.requests == 1 and parent.stats.requests == 1


async def test_pidfile_written_after_binding_and_removed_on_exit(
    tmp_path: Path, parent: NtlmParent
) -> None:
    port = free_port()
    conf = write_conf(tmp_path / "cntlm.conf", proxy_lines(parent.address, port))
    pidfile = tmp_path / "pycntlm.pid"
    async with pycntlm(tmp_path, ["-c", str(conf), "-f", "-P", str(pidfile)]) as p:
        assert pidfile.read_text() == f"{p.proc.pid}\n"
        assert stat.S_IMODE(pidfile.stat().st_mode) == 0o644
        assert await p.stop() == 0
    assert not pidfile.exists()
    # A port that cannot be bound: exit 2, and no pid file was ever written.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        write_conf(conf, proxy_lines(parent.address, taken))
        done = await run([*PYCNTLM, "-c", str(conf), "-f", "-P", str(pidfile)])
    assert done.rc == 2 and "cannot listen" in done.err, done.err
    assert not pidfile.exists()


@pytest.mark.parametrize("target", ["existing", "dangling"])
async def test_pidfile_does_not_follow_a_planted_symlink(
    tmp_path: Path, parent: NtlmParent, target: str
) -> None:
    victim = tmp_path / "victim"
    if target == "existing":
        victim.write_text("precious\n")
    pidfile = tmp_path / "pycntlm.pid"
    pidfile.symlink_to(victim)
    conf = write_conf(tmp_path / "cntlm.conf", proxy_lines(parent.address, free_port()))
    done = await run([*PYCNTLM, "-c", str(conf), "-f", "-P", str(pidfile)], timeout=30)
    assert done.rc == 2, done.err
    assert done.err.startswith(f"pycntlm: cannot write pid file {pidfile}"), done.err
    assert done.err.count("\n") == 1, done.err
    if target == "existing":
        assert victim.read_text() == "precious\n"
    else:
        assert not victim.exists()
    assert pidfile.is_symlink()


@pytest.mark.parametrize("flag", ["--version", "-V"])
async def test_version(flag: str) -> None:
    done = await run([*PYCNTLM, flag])
    assert done.rc == 0, done.err
    assert done.out == f"pycntlm {__version__}\n"
    assert done.err == ""


async def test_check_config_good_is_0_bad_is_2_with_one_line(tmp_path: Path) -> None:
    good = write_conf(tmp_path / "good.conf", proxy_lines("127.0.0.1:3129", free_port()))
    done = await run([*PYCNTLM, "-t", "-c", str(good)])
    assert done.rc == 0 and done.out.startswith("pycntlm: configuration OK"), done.err
    bad = write_conf(tmp_path / "bad.conf", ["Username u", "Auth NTLMv3"])
    done = await run([*PYCNTLM, "-t", "-c", str(bad)])
    assert done.rc == 2
    assert done.err.startswith(f"pycntlm: {bad}:2: ") and done.err.count("\n") == 1, done.err
    assert done.out == ""


def secret_forms(password: str) -> list[str]:
    """The password and each of its hashes: hex, upper-case hex, cntlm's inverted form."""
    c = creds.from_password(USER[1], USER[0], "ANY", password)
    out = [password]
    for h in (c.nt_hash, c.lm_hash, c.ntlmv2_hash):
        assert h is not None
        for form in (h, bytes(b ^ 0xFF for b in h)):
            out += [form.hex(), form.hex().upper()]
    return out


def hash_lines(password: str) -> list[str]:
    """The Pass* lines `pycntlm -H` would print for `password` (cntlm's inverted form)."""
    c = creds.from_password(USER[1], USER[0], "ANY", password)
    pairs = [("PassNT", c.nt_hash), ("PassLM", c.lm_hash), ("PassNTLMv2", c.ntlmv2_hash)]
    return [f"{k} {bytes(b ^ 0xFF for b in h).hex().upper()}" for k, h in pairs if h]


@pytest.mark.parametrize("form", ["Password", "Pass-hashes"])
async def test_wrong_password_100_requests_at_most_2_failed_logons_and_no_secret_in_log(
    tmp_path: Path, origin: Origin, form: str
) -> None:
    wrong = "Wr0ng-" + secrets.token_hex(6)
    port = free_port()
    async with NtlmParent([USER]) as parent:
        lines = proxy_lines(parent.address, port, password=wrong)
        if form == "Pass-hashes":
            lines = [line for line in lines if not line.startswith("Password")]
            lines += hash_lines(wrong)
        conf = write_conf(tmp_path / "cntlm.conf", lines)
        async with pycntlm(tmp_path, ["-c", str(conf), "-f", "-v"]) as p:
            statuses: list[int] = []
            for _ in range(10):  # 100 requests, 10 at a time
                batch = [http_get(port, origin.url("/")) for _ in range(10)]
                statuses += [s for s, _ in await asyncio.gather(*batch)]
            assert await p.stop() == 0
            log = p.log()
        failed = parent.stats.logons_failed
    assert len(statuses) == 100 and set(statuses) <= {407, 502}, statuses
    assert 1 <= failed <= 2, f"{failed} failed logons for 100 requests"
    assert origin.stats.requests == 0
    assert len(log.splitlines()) >= 100, log  # -v: an access line per request at least
    for secret in secret_forms(wrong):
        assert secret not in log, f"{secret[:4]}... (password or hash) in the log"
    assert "TlRMTVNT" not in log  # base64 "NTLMSSP": no NTLM message in the log
