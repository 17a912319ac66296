"""An image pull the way dockerd does it, end to end on loopback (issue "GitLab Runner / Docker
set-up"): skopeo (Go's net/http + containers/image, like dockerd) pulls from Debian's
docker-registry over TLS with HTTPS_PROXY pointing at pycntlm, which authenticates to a parent
that requires NTLM.

Go never proxies `localhost` or loopback IP literals, so the registry is `registry.test`, added
to /etc/hosts as 127.0.0.1. The image is pushed once per module directly (no proxy); every pull
must reproduce its manifest, config and layer digests.

The verifying demo parent (pycntlm.demo.parent.NtlmParent) only tunnels to loopback literals and
`localhost` and answers 403 to CONNECT registry.test. The tests therefore run twice over:
- through Debian's squid with ntlm_fake_auth (real name resolution from its own hosts file, but
  any password is accepted and NTLMv2 is impossible, hence `Auth NTLM`);
- through NtlmParent (real NTLMv2 verification), with its loopback check widened, for this
  module only, to `registry.test`, which the fixture first proves resolves to loopback only.

pycntlm runs in this event loop, so clients run as asyncio subprocesses; the registry and the
push are set up synchronously before any loop runs.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from proxyrun import USER, conf, running_proxy
from servers.registry import (
    REGISTRY_HOST,
    OciImage,
    RegistryInfo,
    Skopeo,
    make_oci_image,
    read_oci_image,
    registry_server,
)
from servers.squid import SquidInfo, squid_ntlm, squid_ntlm_session  # noqa: F401
from servers.tls import TlsMaterial

from pycntlm.demo import parent as parent_module
from pycntlm.demo.parent import NtlmParent

CLIENT_TIMEOUT = 60.0
REPO, TAG = "demo/app", "1"
BIG_LAYER = 3 << 20
# What a GitLab Runner host's docker.service drop-in typically sets besides the proxy.
NO_PROXY = "localhost,127.0.0.1,::1,docker,.corp.example"


@dataclass(frozen=True)
class Pushed:
    registry: RegistryInfo
    image: OciImage
    skopeo: Skopeo


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory, server_tls: TlsMaterial) -> Iterator[Pushed]:
    """A TLS registry for registry.test with demo/app:1 pushed into it directly (no proxy)."""
    base = tmp_path_factory.mktemp("registry")
    image = make_oci_image(base / "image", TAG, big_layer=BIG_LAYER)
    skopeo = Skopeo.create(base / "skopeo")
    with registry_server(base / "registry", server_tls) as registry:
        digestfile = base / "pushed.digest"
        argv = skopeo.argv(
            "copy",
            "--preserve-digests",
            "--dest-no-creds",
            "--dest-cert-dir",
            str(registry.cert_dir),
            "--digestfile",
            str(digestfile),
            image.ref,
            registry.ref(REPO, TAG),
        )
        # No event loop runs yet, so a blocking run is fine here.
        done = subprocess.run(
            argv, env=skopeo.env(), capture_output=True, timeout=CLIENT_TIMEOUT, check=False
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        assert digestfile.read_text().strip() == image.manifest_digest
        yield Pushed(registry, image, skopeo)


@pytest.fixture
def registry_test_parent_policy(pushed: Pushed, monkeypatch: pytest.MonkeyPatch) -> None:
    """Let NtlmParent tunnel to registry.test, after proving the name resolves to loopback only
    (`pushed` has put it into /etc/hosts)."""
    addresses = {str(info[4][0]) for info in socket.getaddrinfo(REGISTRY_HOST, 443)}
    assert addresses, REGISTRY_HOST
    assert all(parent_module._is_loopback(a) for a in addresses), addresses
    loopback_only = parent_module._is_loopback
    monkeypatch.setattr(
        parent_module,
        "_is_loopback",
        lambda host: loopback_only(host) or host.lower() == REGISTRY_HOST,
    )


@dataclass(frozen=True)
class Done:
    rc: int
    out: str
    err: str
    seconds: float


async def run_skopeo(skopeo: Skopeo, env: dict[str, str], *args: str) -> Done:
    """Run skopeo without blocking the loop; killed (by its PID) if it overruns."""
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *skopeo.argv(*args),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CLIENT_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Done(
        proc.returncode,
        out.decode(errors="replace"),
        err.decode(errors="replace"),
        time.monotonic() - started,
    )


async def pull(pushed: Pushed, proxy_url: str, out: Path) -> Done:
    """`docker pull` as dockerd does it: HTTPS_PROXY (+ HTTP_PROXY, NO_PROXY) from a drop-in."""
    env = pushed.skopeo.env(
        {"HTTPS_PROXY": proxy_url, "HTTP_PROXY": proxy_url, "NO_PROXY": NO_PROXY}
    )
    return await run_skopeo(
        pushed.skopeo,
        env,
        "copy",
        "--preserve-digests",
        "--src-no-creds",
        "--src-cert-dir",
        str(pushed.registry.cert_dir),
        pushed.registry.ref(REPO, TAG),
        f"oci:{out}:{TAG}",
    )


def assert_same_image(pulled: Path, image: OciImage) -> None:
    got = read_oci_image(pulled, TAG)  # also re-hashes every blob it names
    assert got.manifest_digest == image.manifest_digest
    assert got.config_digest == image.config_digest
    assert got.layer_digests == image.layer_digests


def registry_requests(registry: RegistryInfo, since: int) -> list[str]:
    """The registry's access-log request lines ("GET /v2/... HTTP/1.1") written after `since`."""
    with registry.log.open("rb") as log:
        log.seek(since)
        text = log.read().decode(errors="replace")
    return [line.split('"')[1] for line in text.splitlines() if line.startswith("127.0.0.1 - ")]


async def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.05)
    return check()


async def test_pull_through_pycntlm_and_verifying_ntlm_parent(
    pushed: Pushed, registry_test_parent_policy: None, parent: NtlmParent, tmp_path: Path
) -> None:
    since = pushed.registry.log.stat().st_size
    async with running_proxy(conf(parent.address), tmp_path) as proxy:
        done = await pull(pushed, proxy.url, tmp_path / "pulled")
        assert done.rc == 0, done.err
        assert_same_image(tmp_path / "pulled", pushed.image)
        # The layers came through pycntlm's tunnel, not around it.
        assert proxy.ctx.stats.bytes_to_clients > BIG_LAYER
    assert parent.stats.logons_ok >= 1
    assert parent.stats.logons_failed == 0
    assert set(parent.stats.dialects) == {"NTLMv2"}
    assert parent.stats.requests >= 1  # tunnels to registry.test:PORT
    requests = registry_requests(pushed.registry, since)
    manifest = f"GET /v2/{REPO}/manifests/{TAG} HTTP/1.1"
    assert manifest in requests, requests
    for digest in pushed.image.layer_digests:
        assert f"GET /v2/{REPO}/blobs/{digest} HTTP/1.1" in requests, requests
    assert done.seconds < 20, done.seconds


async def test_pull_with_wrong_password_fails_at_the_parent(
    pushed: Pushed, registry_test_parent_policy: None, tmp_path: Path
) -> None:
    """Proves the pull cannot go around the proxy: the parent refuses, so nothing is pulled."""
    since = pushed.registry.log.stat().st_size
    async with NtlmParent([(USER[0], USER[1], "not-the-password")]) as strict:
        async with running_proxy(conf(strict.address), tmp_path) as proxy:
            done = await pull(pushed, proxy.url, tmp_path / "pulled")
        assert done.rc != 0
        assert "Proxy Authentication Required" in done.err, done.err
        assert strict.stats.logons_failed >= 1
        assert strict.stats.logons_ok == 0
        assert strict.stats.requests == 0
    assert registry_requests(pushed.registry, since) == []
    assert not (tmp_path / "pulled" / "index.json").exists()
    assert done.seconds < 20, done.seconds


async def test_pull_through_pycntlm_and_squid_ntlm(
    pushed: Pushed,
    squid_ntlm: SquidInfo,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Unpatched: squid resolves registry.test itself; ntlm_fake_auth needs `Auth NTLM`."""
    parent = f"127.0.0.1:{squid_ntlm.port}"
    async with running_proxy(conf(parent, auth="NTLM"), tmp_path) as proxy:
        done = await pull(pushed, proxy.url, tmp_path / "pulled")
        assert done.rc == 0, done.err
        assert_same_image(tmp_path / "pulled", pushed.image)
        assert proxy.ctx.stats.bytes_to_clients > BIG_LAYER
    target = pushed.registry.authority

    def tunnels() -> list[str]:
        return [
            e.user
            for e in squid_ntlm.entries()
            if e.method == "CONNECT" and e.code == 200 and e.url == target
        ]

    # squid logs a tunnel when it closes; pycntlm closed its tunnels when it stopped.
    assert await wait_for(lambda: len(tunnels()) >= 1), squid_ntlm.entries()
    assert all(user != "-" for user in tunnels())  # every tunnel was NTLM-authenticated
    assert done.seconds < 20, done.seconds
