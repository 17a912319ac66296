"""End to end with real clients: curl and git through pycntlm to the verifying NTLM parent and to
Debian's squid (ntlm_fake_auth), all on loopback.

pycntlm runs in this event loop, so every client is an asyncio subprocess (a blocking
subprocess.run would deadlock the proxy it talks to).
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from proxyrun import RawClient, conf, running_proxy, wait_for
from servers.gitserver import GitServerInfo
from servers.procs import run_client
from servers.squid import SquidInfo, squid_ntlm, squid_ntlm_session  # noqa: F401
from servers.tls import TlsMaterial, clean_env

from pycntlm import auth
from pycntlm.demo.origin import HELLO, Origin, pattern, pattern_sha256
from pycntlm.demo.parent import NtlmParent

CLIENT_TIMEOUT = 90.0
BIG_DOWNLOAD = 20_000_000
UPLOAD_SIZE = 6 * 1024 * 1024


@dataclass(frozen=True)
class Done:
    rc: int
    out: bytes
    err: bytes


async def run(
    argv: Sequence[str], *, timeout: float = CLIENT_TIMEOUT, cwd: Path | None = None
) -> Done:
    """Run a client without blocking the loop; killed (by its PID) if it overruns."""
    rc, out, err = await run_client(argv, env=clean_env(), timeout=timeout, cwd=cwd)
    return Done(rc, out, err)


async def curl(proxy_port: int, url: str, out: Path, *args: str) -> int:
    """curl through pycntlm; the body goes to `out`; returns the HTTP status."""
    done = await run(
        [
            "curl",
            "-sS",
            "--max-time",
            "60",
            "-x",
            f"http://127.0.0.1:{proxy_port}",
            "-o",
            str(out),
            "-w",
            "%{http_code}",
            *args,
            url,
        ]
    )
    assert done.rc == 0, done.err.decode(errors="replace")
    return int(done.out)


async def git_clone(proxy_port: int, server: GitServerInfo, dest: Path) -> str:
    """git clone through pycntlm (http.proxy); returns the clone's HEAD."""
    argv = ["git", "-c", f"http.proxy=http://127.0.0.1:{proxy_port}"]
    if server.ca_pem is not None:
        argv += ["-c", f"http.sslCAInfo={server.ca_pem}"]
    done = await run([*argv, "clone", "-q", server.url, str(dest)])
    assert done.rc == 0, done.err.decode(errors="replace")
    head = await run(["git", "-C", str(dest), "rev-parse", "HEAD"])
    assert head.rc == 0, head.err.decode(errors="replace")
    return head.out.decode().strip()


# --- curl -> pycntlm -> verifying NTLM parent -> origin ---------------------------------------


async def test_curl_plain_get(tmp_path: Path, parent: NtlmParent, origin: Origin) -> None:
    async with running_proxy(conf(parent.address), tmp_path) as proxy:
        status = await curl(proxy.port, origin.url("/"), tmp_path / "body")
    assert status == 200
    assert (tmp_path / "body").read_bytes() == HELLO
    assert parent.stats.logons_ok == 1
    assert parent.stats.logons_failed == 0


async def test_curl_https_through_connect(
    tmp_path: Path, parent: NtlmParent, tls_origin: Origin, server_tls: TlsMaterial
) -> None:
    url = f"https://localhost:{tls_origin.port}/bytes/100000"
    async with running_proxy(conf(parent.address), tmp_path) as proxy:
        status = await curl(proxy.port, url, tmp_path / "body", "--cacert", str(server_tls.ca_pem))
    assert status == 200
    assert (tmp_path / "body").read_bytes() == pattern(100_000)
    assert parent.stats.logons_ok == 1


async def test_curl_20mb_download_sha256(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    out = tmp_path / "big"
    async with running_proxy(conf(parent.address), tmp_path) as proxy:
        status = await curl(proxy.port, origin.url(f"/bytes/{BIG_DOWNLOAD}"), out)
    assert status == 200
    assert out.stat().st_size == BIG_DOWNLOAD
    assert hashlib.sha256(out.read_bytes()).hexdigest() == pattern_sha256(BIG_DOWNLOAD)


async def test_curl_post_upload_several_mb(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    # Large enough that curl sends "Expect: 100-continue"; the origin answers it.
    data = random.Random(7).randbytes(UPLOAD_SIZE)
    src = tmp_path / "upload.bin"
    src.write_bytes(data)
    out = tmp_path / "answer.json"
    async with running_proxy(conf(parent.address), tmp_path) as proxy:
        status = await curl(
            proxy.port,
            origin.url("/echo"),
            out,
            "--data-binary",
            f"@{src}",
            "-H",
            "Content-Type: application/octet-stream",
        )
    assert status == 200
    answer = json.loads(out.read_text())
    assert answer == {"length": UPLOAD_SIZE, "sha256": hashlib.sha256(data).hexdigest()}


async def test_curl_proxy_user_basic_creds_never_reach_parent(
    tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    async with running_proxy(conf(parent.address), tmp_path) as proxy:
        status = await curl(
            proxy.port, origin.url("/"), tmp_path / "body", "--proxy-user", "client:s3cret"
        )
    assert status == 200
    assert (tmp_path / "body").read_bytes() == HELLO
    assert parent.stats.auth_headers_seen, "the parent saw no authentication at all"
    assert "Basic" not in parent.stats.auth_headers_seen
    assert origin.stats.auth_headers_seen == []
    assert not any(k.lower() == "proxy-authorization" for k, _ in origin.stats.last_headers)


# --- git clone through pycntlm -> verifying parent --------------------------------------------


async def test_git_clone_https_through_connect(
    tmp_path: Path, parent: NtlmParent, git_https_server: GitServerInfo
) -> None:
    assert "GIT_SSL_CAINFO" not in clean_env()
    async with running_proxy(conf(parent.address), tmp_path) as proxy:
        head = await git_clone(proxy.port, git_https_server, tmp_path / "clone")
    assert head == git_https_server.head
    assert parent.stats.logons_ok >= 1
    assert parent.stats.logons_failed == 0


async def test_git_clone_http_absolute_form(
    tmp_path: Path, parent: NtlmParent, git_http_server: GitServerInfo
) -> None:
    async with running_proxy(conf(parent.address), tmp_path) as proxy:
        head = await git_clone(proxy.port, git_http_server, tmp_path / "clone")
    assert head == git_http_server.head
    assert parent.stats.requests >= 2  # info/refs and at least one upload-pack POST
    assert parent.stats.logons_failed == 0


# --- Debian squid (ntlm_fake_auth) as the parent ---------------------------------------------
# Its Type 2 has no target info (NTLMv2 impossible, so `Auth NTLM`), a garbage TargetName offset
# that clients must tolerate, and it accepts any password.

# A Type 2 as squid 5.7's ntlm_fake_auth sends it (captured on loopback): 49 bytes, TargetName
# "WORKGROUP" (len 9) at a garbage offset 0xAAAAAAAE, no NEGOTIATE_TARGET_INFO flag.
SQUID_FAKE_TYPE2 = "TlRMTVNTUAACAAAACQAJAK6qqqoHggiiveMSHP8petkAAAAAAAA6AFdPUktHUk9VUA=="
_NEGOTIATE_TARGET_INFO = 0x00800000


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def squid_conf(*parents: str) -> str:
    return conf(*parents, auth="NTLM")


def test_squid_fake_auth_type2_is_accepted() -> None:
    raw = base64.b64decode(SQUID_FAKE_TYPE2)
    assert not int.from_bytes(raw[20:24], "little") & _NEGOTIATE_TARGET_INFO
    t2 = auth.parse_type2(raw)
    assert t2.target_info == b""
    assert t2.flags == int.from_bytes(raw[20:24], "little")


async def test_squid_curl_plain_get(
    tmp_path: Path,
    squid_ntlm: SquidInfo,  # noqa: F811
    origin: Origin,
) -> None:
    async with running_proxy(squid_conf(f"127.0.0.1:{squid_ntlm.port}"), tmp_path) as proxy:
        status = await curl(proxy.port, origin.url("/"), tmp_path / "body")
    assert status == 200
    assert (tmp_path / "body").read_bytes() == HELLO
    assert await wait_for(lambda: squid_ntlm.count_requests("GET", 200) == 1)


async def test_squid_curl_https_connect(
    tmp_path: Path,
    squid_ntlm: SquidInfo,  # noqa: F811
    tls_origin: Origin,
    server_tls: TlsMaterial,
) -> None:
    # 127.0.0.1, not localhost: squid's hosts file maps localhost to ::1 too, where the origin
    # does not listen (squid answers 503).
    url = tls_origin.url("/bytes/300000")
    async with running_proxy(squid_conf(f"127.0.0.1:{squid_ntlm.port}"), tmp_path) as proxy:
        status = await curl(proxy.port, url, tmp_path / "body", "--cacert", str(server_tls.ca_pem))
    assert status == 200
    assert (tmp_path / "body").read_bytes() == pattern(300_000)
    # squid logs a tunnel when it closes, which may be a moment after curl finished
    assert await wait_for(lambda: squid_ntlm.count_requests("CONNECT", 200) == 1)


async def test_squid_keep_alive_20_requests_one_handshake(
    tmp_path: Path,
    squid_ntlm: SquidInfo,  # noqa: F811
    origin: Origin,
) -> None:
    async with running_proxy(squid_conf(f"127.0.0.1:{squid_ntlm.port}"), tmp_path) as proxy:
        client = await RawClient.connect(proxy.port)
        try:
            for i in range(20):
                rep = await client.request("GET", origin.url(f"/bytes/{1000 + i}"))
                assert rep.status == 200
                assert rep.body == pattern(1000 + i)
        finally:
            await client.close()
        assert proxy.ctx.stats.handshakes == 1
    assert await wait_for(lambda: squid_ntlm.count_requests("GET", 200) == 20)
    # one NTLM handshake: exactly one 407 (the leg carrying the Type 2) in squid's log
    assert squid_ntlm.count_requests(code=407) == 1
    assert origin.stats.requests == 20


async def test_squid_git_clone_https(
    tmp_path: Path,
    squid_ntlm: SquidInfo,  # noqa: F811
    git_https_server: GitServerInfo,
) -> None:
    async with running_proxy(squid_conf(f"127.0.0.1:{squid_ntlm.port}"), tmp_path) as proxy:
        head = await git_clone(proxy.port, git_https_server, tmp_path / "clone")
    assert head == git_https_server.head
    assert await wait_for(lambda: squid_ntlm.count_requests("CONNECT", 200) >= 1)


async def test_squid_failover_from_dead_first_parent(
    tmp_path: Path,
    squid_ntlm: SquidInfo,  # noqa: F811
    origin: Origin,
) -> None:
    squid = f"127.0.0.1:{squid_ntlm.port}"
    async with running_proxy(squid_conf(f"127.0.0.1:{dead_port()}", squid), tmp_path) as proxy:
        for i in range(3):
            status = await curl(proxy.port, origin.url("/"), tmp_path / f"body{i}")
            assert status == 200
            assert (tmp_path / f"body{i}").read_bytes() == HELLO
        assert str(proxy.ctx.upstreams.current) == squid
    assert await wait_for(lambda: squid_ntlm.count_requests("GET", 200) == 3)
