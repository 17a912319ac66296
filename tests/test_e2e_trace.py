"""End to end: -T FILE, the debug trace, with the real `pycntlm` process.

The trace gets every DEBUG record with or without -v, is 0600, is appended to (never truncated)
across runs, goes through the console's redaction (no password, hash or token blob), and a file
that cannot be used safely (symlink, another user's, hard-linked, missing directory) stops the
start with one line and exit 2.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers.procs import free_port
from servers.tls import TlsMaterial
from test_e2e_cli import (
    PYCNTLM,
    RIGHT_PASSWORD,
    child_env,
    curl_status,
    proxy_conf,
    pycntlm_process,
    run,
    secret_strings,
)

from pycntlm import log as logsetup
from pycntlm.demo.origin import Origin
from pycntlm.demo.parent import NtlmParent

TOKEN = re.compile(r"\b(NTLM|Negotiate|Basic) +[A-Za-z0-9+/=]{8,}", re.I)
MARK = "a line that was there before pycntlm\n"


def assert_clean(text: str, password: str) -> None:
    for secret in secret_strings(password):
        assert secret not in text, f"secret-derived string {secret[:4]}... in the trace"
    assert "TlRMTVNT" not in text  # base64 of "NTLMSSP": no NTLM message
    assert "dTpwdw" not in text  # base64 of the client's Basic "u:pw"
    assert not TOKEN.search(text), TOKEN.search(text)


async def _serve_some(port: int, origin: Origin, tls_origin: Origin, ca: str) -> None:
    assert await curl_status(port, origin.url("/")) == 200
    assert await curl_status(port, tls_origin.url("/"), "--cacert", ca) == 200
    assert await curl_status(port, origin.url("/"), "--proxy-user", "u:pw") == 200


async def test_trace_is_debug_0600_appended_and_redacted(
    tmp_path: Path, origin: Origin, tls_origin: Origin, server_tls: TlsMaterial
) -> None:
    trace = tmp_path / "trace.log"
    trace.write_text(MARK)
    trace.chmod(0o644)  # an existing file: kept, appended to, tightened to 0600
    port = free_port()
    ca = str(server_tls.ca_pem)
    async with NtlmParent([("corp-uk", "testuser", RIGHT_PASSWORD)]) as parent:
        path = proxy_conf(tmp_path / "cntlm.conf", parent.address, port, RIGHT_PASSWORD)
        # run 1: -T without -v: the trace has the debug lines, the console does not
        async with pycntlm_process(["-c", str(path), "-f", "-T", str(trace)], port, tmp_path) as p:
            await _serve_some(port, origin, tls_origin, ca)
            assert await p.terminate() == 0
            console = p.stderr()
        first = trace.read_text()
        # run 2: -T with -v, after the first run's lines
        async with pycntlm_process(["-T", str(trace), "-c", str(path), "-v"], port, tmp_path) as p:
            await _serve_some(port, origin, tls_origin, ca)
            assert await p.terminate() == 0
            console2 = p.stderr()
    assert parent.stats.logons_ok >= 2
    text = trace.read_text()
    assert stat.S_IMODE(os.stat(trace).st_mode) == 0o600
    assert first.startswith(MARK) and text.startswith(first), "the trace was truncated"
    assert len(text) > len(first)
    for run_text in (first[len(MARK) :], text[len(first) :]):
        assert " DEBUG pycntlm: pycntlm " in run_text and " trace (pid " in run_text
        assert " DEBUG pycntlm: open files limit: " in run_text
        assert re.search(r" INFO pycntlm\.access: 127\.0\.0\.1 GET http://\S+ parent ", run_text)
        assert re.search(r" pycntlm\.access: 127\.0\.0\.1 CONNECT 127\.0\.0\.1:\d+ ", run_text)
    assert " DEBUG " not in console and " DEBUG " in console2
    assert "listening on" in console  # the console keeps its own lines
    assert_clean(text, RIGHT_PASSWORD)
    assert_clean(console + console2, RIGHT_PASSWORD)


async def test_new_trace_is_created_0600(tmp_path: Path, parent: NtlmParent) -> None:
    trace = tmp_path / "new.log"
    old = os.umask(0)  # the child inherits it: the mode must not depend on the umask
    try:
        port = free_port()
        path = proxy_conf(tmp_path / "cntlm.conf", parent.address, port, "password")
        async with pycntlm_process(["-c", str(path), "-f", "-T", str(trace)], port, tmp_path) as p:
            assert await p.terminate() == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(trace).st_mode) == 0o600
    assert " DEBUG " in trace.read_text()


async def _refused(tmp_path: Path, trace: Path) -> str:
    path = proxy_conf(tmp_path / "cntlm.conf", f"127.0.0.1:{free_port()}", free_port(), "x")
    done = await run([*PYCNTLM, "-c", str(path), "-f", "-T", str(trace)], cwd=tmp_path)
    err = done.err.decode()
    assert done.rc == 2, err
    assert err.count("\n") == 1 and err.startswith(f"pycntlm: -T {trace}: "), err
    assert "Traceback" not in err
    return err


async def test_symlink_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("keep\n")
    link = tmp_path / "trace.log"
    link.symlink_to(target)
    assert "symbolic link" in await _refused(tmp_path, link)
    assert target.read_text() == "keep\n"


async def test_another_users_file_is_refused(tmp_path: Path) -> None:
    trace = tmp_path / "trace.log"
    trace.write_text("theirs\n")
    uid = 65534 if os.geteuid() == 0 else os.geteuid()
    if os.geteuid() == 0:
        os.chown(trace, uid, uid)
        assert "owned by another user" in await _refused(tmp_path, trace)
        assert trace.read_text() == "theirs\n"


async def test_hard_linked_file_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.write_text("keep\n")
    trace = tmp_path / "trace.log"
    os.link(other, trace)
    assert "hard links" in await _refused(tmp_path, trace)
    assert other.read_text() == "keep\n"


async def test_missing_directory_and_directory_are_refused(tmp_path: Path) -> None:
    assert "No such file or directory" in await _refused(tmp_path, tmp_path / "no" / "t.log")
    (tmp_path / "dir").mkdir()
    await _refused(tmp_path, tmp_path / "dir")


# ---- in process: the trace handler's redaction and levels ------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger("pycntlm")
    access = logging.getLogger("pycntlm.access")
    saved = (list(root.handlers), root.level, root.propagate, access.level)
    try:
        yield
    finally:
        for handler in root.handlers:
            if isinstance(handler, logsetup.TraceHandler):
                handler.close()
        root.handlers[:] = saved[0]
        root.level, root.propagate = saved[1], saved[2]
        access.setLevel(saved[3])


@pytest.mark.parametrize("quiet", [False, True])
def test_trace_records_go_through_the_redactor(
    tmp_path: Path, restore_logging: None, quiet: bool
) -> None:
    trace = tmp_path / "t.log"
    console = io.StringIO()
    redactor = logsetup.setup(quiet=quiet, stream=console, trace_fd=logsetup.open_trace(str(trace)))
    redactor.add("S3cret-pw")
    log = logging.getLogger("pycntlm")
    log.debug("debug with S3cret-pw and Proxy-Authorization: NTLM TlRMTVNTUAABAAAAB4IIAAAA")
    log.info("info with Negotiate YIIBhwYGKwYBBQUCoIIBezCCAXeg and Basic dTpwdw==")
    logging.getLogger("pycntlm.access").info("127.0.0.1 GET http://x/S3cret-pw parent 200")
    for handler in log.handlers:
        handler.flush()
    text = trace.read_text()
    assert text.count("\n") == 3
    assert "S3cret-pw" not in text and "TlRMTVNT" not in text and "YIIB" not in text
    assert "dTpwdw" not in text and text.count("***") == 5
    shown = console.getvalue()
    assert "debug with" not in shown and "info with" in shown  # no -v: no DEBUG on the console
    assert ("127.0.0.1 GET" in shown) is not quiet  # -q drops access lines from the console only
    assert "S3cret-pw" not in shown


async def test_trace_goes_on_in_daemon_mode(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    """Without -f: the trace (a relative path, opened before the daemon's chdir /) gets the
    daemon's records."""
    port = free_port()
    pidfile = tmp_path / "pycntlm.pid"
    path = proxy_conf(tmp_path / "cntlm.conf", parent.address, port, "password")
    err = tmp_path / "stderr"
    with err.open("wb") as f:  # a file, not a pipe (as test_daemon.py)
        proc = await asyncio.create_subprocess_exec(
            *PYCNTLM, "-c", str(path), "-P", str(pidfile), "-T", "t.log",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=f,
            cwd=tmp_path, env=child_env(),
        )  # fmt: skip
    assert await asyncio.wait_for(proc.wait(), 20) == 0, err.read_text()
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        await asyncio.sleep(0.05)
    pid = int(pidfile.read_text())
    try:
        assert await curl_status(port, origin.url("/")) == 200
    finally:
        os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        if not pidfile.exists():
            break
        await asyncio.sleep(0.05)
    assert not pidfile.exists()
    text = (tmp_path / "t.log").read_text()
    assert " DEBUG pycntlm: open files limit: " in text  # logged after daemonizing
    assert re.search(r" INFO pycntlm\.access: 127\.0\.0\.1 GET http://\S+ parent ", text)
    assert_clean(text, "password")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges with -U")
async def test_trace_opened_before_dropping_privileges(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    """-U nobody: the root-owned 0600 trace, which nobody could not open, is still written."""
    port = free_port()
    path = proxy_conf(tmp_path / "cntlm.conf", parent.address, port, "password")
    path.chmod(0o644)
    tmp_path.chmod(0o755)
    trace = tmp_path / "t.log"
    args = ["-c", str(path), "-f", "-U", "nobody", "-T", str(trace)]
    async with pycntlm_process(args, port, tmp_path) as p:
        assert await curl_status(port, origin.url("/")) == 200
        assert await p.terminate() == 0
    text = trace.read_text()
    assert os.stat(trace).st_uid == 0 and stat.S_IMODE(os.stat(trace).st_mode) == 0o600
    after = text[text.index("running as nobody") :]
    assert re.search(r" INFO pycntlm\.access: 127\.0\.0\.1 GET http://\S+ parent ", after)
