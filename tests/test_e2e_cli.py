"""End to end: the real `pycntlm` process (python -m pycntlm) as users and systemd run it.

Every child runs as an asyncio subprocess: the servers it talks to (NtlmParent, Origin) live in
this event loop, which a blocking subprocess call would freeze. Children are stopped by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from proxyrun import PASS_LM, PASS_NT, PASS_NTLMV2, RawClient
from servers.procs import free_port
from servers.tls import TlsMaterial, clean_env

from pycntlm import creds
from pycntlm.demo.origin import HELLO, Origin
from pycntlm.demo.parent import NtlmParent

REPO = Path(__file__).resolve().parent.parent
PYCNTLM = (sys.executable, "-m", "pycntlm")
RUN_TIMEOUT = 60.0
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0  # SIGTERM -> exit, with nothing in flight
WRONG_PASSWORD = "Sekr3t-Wr0ng"
RIGHT_PASSWORD = "R1ght-Pa55-e2e"
PASS_LINE = re.compile(rb"^(PassLM|PassNT|PassNTLMv2) +([0-9A-F]{32})\b", re.M)


@dataclass(frozen=True)
class Done:
    rc: int
    out: bytes
    err: bytes


def child_env() -> dict[str, str]:
    return clean_env({"PYTHONPATH": str(REPO)})


async def run(
    argv: Sequence[str],
    *,
    stdin: bytes = b"",
    cwd: Path | None = None,
    timeout: float = RUN_TIMEOUT,
) -> Done:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=child_env(),
        cwd=cwd,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Done(proc.returncode, out, err)


def write_conf(path: Path, lines: Sequence[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)  # no "readable plaintext password" warning on stderr
    return path


def proxy_conf(path: Path, parent: str, port: int, password: str | None) -> Path:
    lines = ["Username testuser", "Domain corp-uk", "Auth NTLMv2", f"Proxy {parent}"]
    if password is not None:
        lines.append(f"Password {password}")
    lines.append(f"Listen 127.0.0.1:{port}")
    lines.append("ConnectPorts *")  # test servers listen on random ports, not 443
    return write_conf(path, lines)


@dataclass
class Running:
    proc: asyncio.subprocess.Process
    port: int
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    async def wait_for_stderr(self, needle: str, timeout: float = READY_TIMEOUT) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while needle not in self.stderr():
            assert self.proc.returncode is None, f"pycntlm exited early:\n{self.stderr()}"
            assert loop.time() < deadline, f"{needle!r} not logged:\n{self.stderr()}"
            await asyncio.sleep(0.05)

    async def terminate(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then the exit code; fails (after killing it) if it takes over `timeout`."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(
                f"no exit within {timeout} s of SIGTERM:\n{self.stderr()}"
            ) from None


@contextlib.asynccontextmanager
async def pycntlm_process(args: Sequence[str], port: int, tmp_path: Path) -> AsyncIterator[Running]:
    """`pycntlm ARGS` in the foreground, stderr to a file, until it logs that it listens."""
    stderr_path = tmp_path / "pycntlm.stderr"
    with stderr_path.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            *PYCNTLM,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=err,
            env=child_env(),
            cwd=tmp_path,
        )
    running = Running(proc, port, stderr_path)
    try:
        await running.wait_for_stderr(f"listening on 127.0.0.1:{port}")
        yield running
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def curl_status(proxy_port: int, url: str, *args: str) -> int:
    done = await run(
        [
            *("curl", "-sS", "--max-time", "30", "-x", f"http://127.0.0.1:{proxy_port}"),
            *("-o", os.devnull, "-w", "%{http_code}", *args, url),
        ]
    )
    assert done.rc in (0, 56), done.err  # 56: curl's "CONNECT tunnel failed"
    return int(done.out)


# --- (a) -H --------------------------------------------------------------------------------


async def test_hash_values_equal_cntlm(tmp_path: Path) -> None:
    ours = await run(
        [*PYCNTLM, "-H", "-u", "testuser", "-d", "corp-uk", "-c", os.devnull], stdin=b"password\n"
    )
    theirs = await run(
        ["cntlm", "-H", "-u", "testuser", "-d", "corp-uk", "-c", os.devnull], stdin=b"password\n"
    )
    assert ours.rc == 0 and theirs.rc == 0, (ours.err, theirs.err)
    assert ours.out.startswith(b"Password: ") and theirs.out.startswith(b"Password: ")
    expected = [(b"PassLM", PASS_LM), (b"PassNT", PASS_NT), (b"PassNTLMv2", PASS_NTLMV2)]
    # Values compared wherever they stand on the line (see the strict line test elsewhere).
    values = re.compile(rb"(PassLM|PassNT|PassNTLMv2) +([0-9A-F]{32})")
    assert [(k, v.decode()) for k, v in values.findall(theirs.out)] == expected
    assert values.findall(ours.out) == values.findall(theirs.out)
    assert b"password" not in ours.out + ours.err


# --- (b), (c), (d): configuration errors and -t ------------------------------------------------


async def test_bad_config_line_is_one_line_and_exit_2(tmp_path: Path) -> None:
    path = write_conf(
        tmp_path / "bad.conf",
        ["Username testuser", "Domain corp-uk", "Password x", "Proxy nonsense", "Listen 3128"],
    )
    done = await run([*PYCNTLM, "-c", str(path), "-f"], cwd=tmp_path)
    assert done.rc == 2
    err = done.err.decode()
    assert err.startswith(f"pycntlm: {path}:4: "), err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err
    assert "nonsense" in err
    assert done.out == b""


async def test_listen_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = proxy_conf(tmp_path / "busy.conf", f"127.0.0.1:{free_port()}", port, "x")
        done = await run([*PYCNTLM, "-c", str(path), "-f"], cwd=tmp_path)
    assert done.rc == 2
    err = done.err.decode()
    assert err.count("\n") == 1, err
    assert err.startswith("pycntlm: ") and f"127.0.0.1:{port}" in err, err
    assert "in use" in err.lower(), err
    assert "Traceback" not in err


async def test_check_config_exits_0_on_good_config(tmp_path: Path) -> None:
    path = proxy_conf(tmp_path / "good.conf", "127.0.0.1:3129", free_port(), "x")
    for flag in ("-t", "--check-config"):
        done = await run([*PYCNTLM, "-c", str(path), flag], cwd=tmp_path)
        assert done.rc == 0, done.err
        assert b"configuration OK" in done.out
        assert b"Traceback" not in done.err


async def test_check_config_exits_2_on_bad_config(tmp_path: Path) -> None:
    path = write_conf(tmp_path / "bad.conf", ["Proxy nonsense"])
    done = await run([*PYCNTLM, "-c", str(path), "-t"], cwd=tmp_path)
    assert done.rc == 2
    assert done.err.decode().startswith(f"pycntlm: {path}:1: ")


# --- (e) secrets never reach the log, even with -v ---------------------------------------------


def secret_strings(password: str) -> list[str]:
    """The password, and every hash of it in plain and cntlm-inverted hex, both cases."""
    c = creds.from_password("testuser", "corp-uk", "ANY", password)
    out = [password]
    for h in (c.nt_hash, c.lm_hash, c.ntlmv2_hash):
        assert h is not None
        for form in (h, bytes(b ^ 0xFF for b in h)):
            out += [form.hex(), form.hex().upper()]
    return out


async def test_verbose_log_holds_no_secrets_wrong_then_right_password(
    tmp_path: Path, origin: Origin, tls_origin: Origin, server_tls: TlsMaterial
) -> None:
    port = free_port()
    async with NtlmParent([("corp-uk", "testuser", RIGHT_PASSWORD)]) as parent:
        path = proxy_conf(tmp_path / "cntlm.conf", parent.address, port, WRONG_PASSWORD)
        async with pycntlm_process(["-c", str(path), "-f", "-v"], port, tmp_path) as p:
            for _ in range(3):
                assert await curl_status(port, origin.url("/")) == 407
            assert parent.stats.logons_failed >= 1
            # The user fixes the password and reloads (SIGHUP), as after a lockout.
            proxy_conf(path, parent.address, port, RIGHT_PASSWORD)
            p.proc.send_signal(signal.SIGHUP)
            await p.wait_for_stderr("reloaded")
            for _ in range(3):
                assert await curl_status(port, origin.url("/")) == 200
            ca = str(server_tls.ca_pem)
            assert await curl_status(port, tls_origin.url("/"), "--cacert", ca) == 200
            assert await curl_status(port, origin.url("/"), "--proxy-user", "u:pw") == 200
            assert await p.terminate() == 0
            log = p.stderr()
    assert parent.stats.logons_ok >= 1
    assert len(log.splitlines()) >= 10, log  # -v logged something worth searching
    for secret in secret_strings(WRONG_PASSWORD) + secret_strings(RIGHT_PASSWORD):
        assert secret not in log, f"secret-derived string {secret[:4]}... in the log"
    assert "TlRMTVNT" not in log  # base64 of "NTLMSSP": no NTLM message
    assert "dTpwdw" not in log  # base64 of the client's Basic "u:pw"


# --- (f) -p is scrubbed from the command line --------------------------------------------------


async def test_dash_p_value_is_used_and_hidden_from_cmdline(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    port = free_port()
    path = proxy_conf(tmp_path / "cntlm.conf", parent.address, port, None)
    # -p password: the parent fixture's user is corp-uk\testuser / password
    async with pycntlm_process(["-c", str(path), "-f", "-p", "password"], port, tmp_path) as p:
        cmdline = Path(f"/proc/{p.proc.pid}/cmdline").read_bytes()
        assert await curl_status(port, origin.url("/")) == 200
        assert await p.terminate() == 0
    assert b"password" not in cmdline, cmdline
    assert b"pycntlm" in cmdline


async def test_dash_p_value_hidden_from_cmdline_while_running(
    tmp_path: Path, parent: NtlmParent
) -> None:
    port = free_port()
    path = proxy_conf(tmp_path / "cntlm.conf", parent.address, port, None)
    async with pycntlm_process(["-c", str(path), "-f", "-p", "secret"], port, tmp_path) as p:
        cmdline = Path(f"/proc/{p.proc.pid}/cmdline").read_bytes()
        assert await p.terminate() == 0
    assert b"secret" not in cmdline, cmdline
    assert "secret" not in p.stderr()


# --- (g) serves, then stops cleanly on SIGTERM -------------------------------------------------


async def test_serves_then_sigterm_exits_0(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    port = free_port()
    path = proxy_conf(tmp_path / "cntlm.conf", parent.address, port, "password")
    async with pycntlm_process(["-c", str(path), "-f"], port, tmp_path) as p:
        assert await curl_status(port, origin.url("/")) == 200
        client = await RawClient.connect(port)
        try:
            rep = await client.request("GET", origin.url("/"), {"Connection": "close"})
        finally:
            await client.close()
        assert rep.status == 200 and rep.body == HELLO
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await p.terminate() == 0
        assert loop.time() - started < STOP_TIMEOUT
    assert "Traceback" not in p.stderr()
    # the listener is gone
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            raise AssertionError("still accepting after exit")
    except ConnectionRefusedError:
        pass


# --- (h) demo ----------------------------------------------------------------------------------


async def test_demo_once_self_check_200(tmp_path: Path) -> None:
    done = await run([*PYCNTLM, "demo", "--once"], cwd=tmp_path)
    assert done.rc == 0, done.err
    out = done.out.decode()
    assert re.search(r"self-check through the chain -> 200\b", out), out
    assert "failed: 0" in out
    assert "Traceback" not in done.err.decode()
