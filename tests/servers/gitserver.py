"""git's smart HTTP (`git http-backend` as CGI) served on loopback over http or https.

Owns a small test repository and a child process (`python -m servers.gitserver`) that serves it
with aiohttp, one http-backend CGI per request, streaming both ways. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import socket
import ssl
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from .procs import LOOPBACK, START_TIMEOUT, ServerStartError, log_tail, running, wait_for_file
from .tls import TlsMaterial, clean_env

REPO_NAME = "repo.git"
BLOB_SIZE = 3 * 1024 * 1024
CHUNK = 256 * 1024
_MAX_CGI_HEADER_LINES = 100
_TESTS_DIR = Path(__file__).resolve().parent.parent
_FIXED_DATE = "2024-01-01T00:00:00+00:00"
_CHILD_MAIN = "import sys; from servers.gitserver import main; main(sys.argv[1:])"


# --- the repository -------------------------------------------------------------------------


def _git(args: Sequence[str], cwd: Path, env: Mapping[str, str]) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=dict(env), capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def _commit_env() -> dict[str, str]:
    who = {"NAME": "pycntlm test", "EMAIL": "test@example.invalid", "DATE": _FIXED_DATE}
    extra = {
        f"GIT_{role}_{key}": value for role in ("AUTHOR", "COMMITTER") for key, value in who.items()
    }
    return clean_env(extra)


def make_repo(directory: Path, blob_size: int = BLOB_SIZE) -> tuple[Path, str]:
    """Create (or reuse) `directory/repo.git`: three commits, one an incompressible blob.

    Returns the bare repository's path and its HEAD commit sha. Content and dates are fixed, so
    the sha is the same on every run for the same `blob_size`.
    """
    bare = directory / REPO_NAME
    env = _commit_env()
    if bare.exists():
        return bare, _git(["rev-parse", "HEAD"], bare, env)
    work = directory / "repo-work"
    work.mkdir(parents=True)
    _git(["init", "-q", "-b", "main"], work, env)
    steps: list[tuple[str, bytes]] = [
        ("README.md", b"# pycntlm test repository\n"),
        ("data/blob.bin", random.Random(1).randbytes(blob_size)),
        ("src/hello.py", b'print("hello through the proxy")\n'),
    ]
    for name, content in steps:
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_bytes(content)
        _git(["add", name], work, env)
        _git(["commit", "-q", "-m", f"add {name}"], work, env)
    _git(["clone", "-q", "--bare", str(work), str(bare)], directory, env)
    return bare, _git(["rev-parse", "HEAD"], bare, env)


# --- the CGI server (runs in the child process) ----------------------------------------------


def _cgi_env(request: web.Request, root: Path) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "GIT_PROJECT_ROOT": str(root),
        "GIT_HTTP_EXPORT_ALL": "1",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_PROTOCOL": f"HTTP/{request.version.major}.{request.version.minor}",
        "REQUEST_METHOD": request.method,
        "PATH_INFO": request.path,
        "QUERY_STRING": request.query_string,
        "CONTENT_TYPE": request.headers.get("Content-Type", ""),
        "REMOTE_ADDR": request.remote or "",
    }
    optional = {
        "CONTENT_LENGTH": "Content-Length",
        "HTTP_CONTENT_ENCODING": "Content-Encoding",
        "GIT_PROTOCOL": "Git-Protocol",
    }
    for name, header in optional.items():
        if header in request.headers:
            env[name] = request.headers[header]
    return env


async def _feed_body(request: web.Request, stdin: asyncio.StreamWriter) -> None:
    try:
        async for chunk in request.content.iter_chunked(CHUNK):
            stdin.write(chunk)
            await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        stdin.close()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await stdin.wait_closed()


async def _read_cgi_head(stdout: asyncio.StreamReader) -> tuple[int, list[tuple[str, str]]]:
    status = 200
    headers: list[tuple[str, str]] = []
    for _ in range(_MAX_CGI_HEADER_LINES):
        line = (await stdout.readline()).decode("latin-1").rstrip("\r\n")
        if not line:
            return status, headers
        name, _, value = line.partition(":")
        if name.strip().lower() == "status":
            status = int(value.split()[0])
        else:
            headers.append((name.strip(), value.strip()))
    raise RuntimeError("CGI header block too long")


async def _relay_output(request: web.Request, stdout: asyncio.StreamReader) -> web.StreamResponse:
    status, headers = await _read_cgi_head(stdout)
    response = web.StreamResponse(status=status)
    for name, value in headers:
        response.headers.add(name, value)
    await response.prepare(request)
    while chunk := await stdout.read(CHUNK):
        await response.write(chunk)
    await response.write_eof()
    return response


def _cgi_handler(root: Path) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        proc = await asyncio.create_subprocess_exec(
            "git",
            "http-backend",
            env=_cgi_env(request, root),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(_feed_body(request, proc.stdin))
                response = await _relay_output(request, proc.stdout)
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await proc.wait()
        return response

    return handle


def _listen_sockets() -> list[socket.socket]:
    """127.0.0.1 on a free port, plus ::1 on the same port when IPv6 loopback allows it."""
    v4 = socket.create_server((LOOPBACK, 0))
    sockets = [v4]
    with contextlib.suppress(OSError):
        sockets.append(socket.create_server(("::1", v4.getsockname()[1]), family=socket.AF_INET6))
    return sockets


async def serve(root: Path, port_file: Path, ssl_context: ssl.SSLContext | None) -> None:
    """Serve every repository under `root`; write the port to `port_file` once listening."""
    app = web.Application()
    app.router.add_route("*", "/{path:.*}", _cgi_handler(root))
    runner = web.AppRunner(app, auto_decompress=False, access_log=logging.getLogger("access"))
    await runner.setup()
    sockets = _listen_sockets()
    for sock in sockets:
        await web.SockSite(runner, sock, ssl_context=ssl_context).start()
    port_file.write_text(f"{sockets[0].getsockname()[1]}\n")
    await asyncio.Event().wait()  # until SIGTERM


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="git smart-HTTP test server (loopback only)")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--cert", type=Path)
    parser.add_argument("--key", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    context = None
    if args.cert is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
    asyncio.run(serve(args.root, args.port_file, context))


# --- the parent side --------------------------------------------------------------------------


@dataclass(frozen=True)
class GitServerInfo:
    """A running git smart-HTTP server and what a clone of it must yield."""

    scheme: str  # "http" or "https"
    host: str  # host name used in `url`
    port: int
    head: str  # expected HEAD commit sha of the served repository
    pid: int
    log: Path  # the server's access log and stderr
    ca_pem: Path | None  # CA to trust for https

    @property
    def url(self) -> str:
        return self.url_for(self.host)

    def url_for(self, host: str) -> str:
        """The repository URL with another host name (e.g. "git.test" through squid)."""
        return f"{self.scheme}://{host}:{self.port}/{REPO_NAME}"


def _server_argv(root: Path, port_file: Path, tls: TlsMaterial | None) -> list[str]:
    # Not "-m servers.gitserver": the package imports this module first, which runpy warns about.
    argv = [sys.executable, "-c", _CHILD_MAIN, "--root", str(root)]
    argv += ["--port-file", str(port_file)]
    if tls is not None:
        argv += ["--cert", str(tls.cert_pem), "--key", str(tls.key_pem)]
    return argv


@contextlib.contextmanager
def git_server(tmpdir: Path, tls: TlsMaterial | None = None) -> Iterator[GitServerInfo]:
    """Serve `tmpdir/repo.git` (created if missing) on loopback; stopped by PID afterwards.

    With `tls` the URL is https://localhost:PORT/repo.git, else http://127.0.0.1:PORT/repo.git.
    """
    _, head = make_repo(tmpdir)
    scheme = "https" if tls is not None else "http"
    port_file = tmpdir / f"gitserver-{scheme}.port"
    log = tmpdir / f"gitserver-{scheme}.log"
    port_file.unlink(missing_ok=True)
    env = clean_env({"PYTHONPATH": str(_TESTS_DIR)})
    with running(_server_argv(tmpdir, port_file, tls), log_path=log, env=env, cwd=tmpdir) as proc:
        try:
            port = int(wait_for_file(port_file, timeout=START_TIMEOUT, proc=proc))
        except ServerStartError as exc:
            raise ServerStartError(f"git server failed: {exc}\n{log_tail(log)}") from exc
        host = "localhost" if tls is not None else LOOPBACK
        ca = tls.ca_pem if tls is not None else None
        yield GitServerInfo(scheme, host, port, head, proc.pid, log, ca)


# --- pytest fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def git_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session directory holding the test repository (shared by the git server fixtures)."""
    directory = tmp_path_factory.mktemp("git")
    make_repo(directory)
    return directory


@pytest.fixture(scope="session")
def git_http_server(git_root: Path) -> Iterator[GitServerInfo]:
    """git smart HTTP over plain http on 127.0.0.1."""
    with git_server(git_root) as info:
        yield info


@pytest.fixture(scope="session")
def git_https_server(git_root: Path, server_tls: TlsMaterial) -> Iterator[GitServerInfo]:
    """git smart HTTP over https (certificate from `server_tls`) on localhost."""
    with git_server(git_root, server_tls) as info:
        yield info


if __name__ == "__main__":
    main()
