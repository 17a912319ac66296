"""Process, port and temp-dir helpers for loopback test servers.

Owns starting and stopping child processes by PID and waiting for loopback ports. Must never
touch a non-loopback address or a process it did not start.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
_POLL_INTERVAL = 0.05


class ServerStartError(RuntimeError):
    """A test server did not come up; the message carries its log tail."""


def free_port(host: str = LOOPBACK) -> int:
    """Return a port that was free a moment ago (bind port 0, read it back, close)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a TCP connect to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(
    host: str,
    port: int,
    *,
    timeout: float = START_TIMEOUT,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    """Wait (bounded) until host:port accepts; fail early if `proc` exits meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServerStartError(f"process {proc.pid} exited with {proc.returncode}")
        if port_accepts(host, port):
            return
        time.sleep(_POLL_INTERVAL)
    raise ServerStartError(f"{host}:{port} did not accept connections within {timeout:.0f} s")


def wait_for_text(
    path: Path,
    needle: str,
    *,
    timeout: float = START_TIMEOUT,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    """Wait (bounded) until the file at `path` contains `needle` (e.g. a "ready" log line)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            if needle in path.read_text(errors="replace"):
                return
        if proc is not None and proc.poll() is not None:
            raise ServerStartError(f"process {proc.pid} exited with {proc.returncode}")
        time.sleep(_POLL_INTERVAL)
    raise ServerStartError(f"{path} did not show {needle!r} within {timeout:.0f} s")


def wait_for_file(
    path: Path,
    *,
    timeout: float = START_TIMEOUT,
    proc: subprocess.Popen[bytes] | None = None,
) -> str:
    """Wait (bounded) until `path` exists with non-empty content; return that content."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            text = path.read_text()
            if text.endswith("\n"):
                return text
        if proc is not None and proc.poll() is not None:
            raise ServerStartError(f"process {proc.pid} exited with {proc.returncode}")
        time.sleep(_POLL_INTERVAL)
    raise ServerStartError(f"{path} was not written within {timeout:.0f} s")


def start_process(
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start `argv` in its own session with stdout+stderr appended to `log_path`."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )


def stop_process(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """Stop one process by its PID: SIGTERM, wait, then SIGKILL; always reap it."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
        return
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=timeout)


@contextlib.contextmanager
def running(
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stop_timeout: float = STOP_TIMEOUT,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `argv` for the duration of the block; it is stopped by PID even on failure."""
    proc = start_process(argv, log_path=log_path, env=env, cwd=cwd)
    try:
        yield proc
    finally:
        stop_process(proc, stop_timeout)


@contextlib.contextmanager
def temp_dir(prefix: str = "pycntlm-test-") -> Iterator[Path]:
    """A fresh directory under the system temp dir, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def log_tail(path: Path, lines: int = 30) -> str:
    """The last `lines` lines of a log file, or a note that it is missing."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<{path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class OriginInfo:
    """A tiny loopback HTTP origin server (see `http_origin`)."""

    host: str
    port: int
    body: bytes

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"


def _origin_handler(body: bytes) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    return Handler


@contextlib.contextmanager
def http_origin(body: bytes = b"hello from origin\n") -> Iterator[OriginInfo]:
    """A threaded stdlib HTTP server on 127.0.0.1:0 answering every GET with `body`."""
    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), _origin_handler(body))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="http-origin", daemon=True)
    thread.start()
    try:
        yield OriginInfo(LOOPBACK, server.server_address[1], body)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=STOP_TIMEOUT)


async def run_client(
    argv: Sequence[str], *, env: Mapping[str, str], timeout: float, cwd: Path | None = None
) -> tuple[int, bytes, bytes]:
    """A client process that does not block the event loop pycntlm runs in (tests run pycntlm
    in-process); killed by its PID if it overruns. Returns (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
        cwd=cwd,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out, err
