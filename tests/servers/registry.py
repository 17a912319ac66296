"""Debian's docker-registry (distribution v2) on loopback over TLS, skopeo, and a tiny OCI image.

Owns: the registry's generated configuration and its lifetime (by PID), the /etc/hosts line that
makes `registry.test` resolve to 127.0.0.1 (Go clients never use a proxy for loopback literals or
`localhost`, so a pull through a proxy needs a name), a hermetic skopeo environment (own policy,
registries.conf, auth file and HOME; no proxy or CA variables unless a test passes them) and a
deterministic OCI image layout to push.
Must not: listen anywhere but 127.0.0.1, contact any other registry, remove /etc/hosts lines.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from .procs import (
    LOOPBACK,
    START_TIMEOUT,
    ServerStartError,
    free_port,
    log_tail,
    start_process,
    stop_process,
    wait_for_text,
)
from .tls import TlsMaterial, clean_env

REGISTRY_BIN = "docker-registry"
SKOPEO_BIN = "skopeo"
REGISTRY_HOST = "registry.test"
HOSTS_FILE = Path("/etc/hosts")
_START_ATTEMPTS = 3

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"


def ensure_hosts_entry(name: str = REGISTRY_HOST, address: str = LOOPBACK) -> None:
    """Append `address name` to /etc/hosts unless a line already maps `name` to `address`.

    Idempotent, under an exclusive lock (several test processes may add names); never rewrites
    or removes existing lines."""
    try:
        _add_hosts_line(name, address)
    except PermissionError as exc:
        raise ServerStartError(
            f"cannot add '{address} {name}' to {HOSTS_FILE} ({exc}); run the tests as root or "
            "add that line beforehand (Go clients need a name to use a proxy for loopback)"
        ) from exc


def _add_hosts_line(name: str, address: str) -> None:
    with HOSTS_FILE.open("r+") as hosts:
        fcntl.flock(hosts, fcntl.LOCK_EX)
        try:
            text = hosts.read()
            for line in text.splitlines():
                fields = line.split("#", 1)[0].split()
                if fields and fields[0] == address and name in fields[1:]:
                    return
            hosts.seek(0, os.SEEK_END)
            hosts.write(("" if text.endswith("\n") or not text else "\n") + f"{address} {name}\n")
        finally:
            fcntl.flock(hosts, fcntl.LOCK_UN)


# -- the registry ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegistryInfo:
    """A running registry: reachable as https://registry.test:PORT with the test CA."""

    port: int
    pid: int
    log: Path
    cert_dir: Path  # holds ca.crt only: what skopeo's --src-cert-dir/--dest-cert-dir want

    @property
    def authority(self) -> str:
        return f"{REGISTRY_HOST}:{self.port}"

    def ref(self, repo: str, tag: str) -> str:
        return f"docker://{self.authority}/{repo}:{tag}"


def registry_config(port: int, directory: Path, tls: TlsMaterial) -> str:
    """The registry's config.yml (YAML is a superset of JSON, so JSON it is)."""
    config = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
        "storage": {
            "filesystem": {"rootdirectory": str(directory / "storage")},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {
            "addr": f"{LOOPBACK}:{port}",
            "secret": "pycntlm-test-only",
            "tls": {"certificate": str(tls.cert_pem), "key": str(tls.key_pem)},
        },
    }
    return json.dumps(config, indent=2) + "\n"


def _registry_env() -> dict[str, str]:
    # REGISTRY_* variables override the config file; none may leak in.
    return {k: v for k, v in clean_env().items() if not k.startswith("REGISTRY_")}


def _start_once(directory: Path, tls: TlsMaterial) -> tuple[int, Path, subprocess.Popen[bytes]]:
    port = free_port()
    conf = directory / "config.yml"
    conf.write_text(registry_config(port, directory, tls))
    log = directory / "registry.log"
    log.write_bytes(b"")
    proc = start_process(
        [REGISTRY_BIN, "serve", str(conf)], log_path=log, env=_registry_env(), cwd=directory
    )
    try:
        wait_for_text(log, f"listening on {LOOPBACK}:{port}, tls", timeout=START_TIMEOUT, proc=proc)
    except ServerStartError as exc:
        stop_process(proc)
        raise ServerStartError(f"docker-registry failed to start: {exc}\n{log_tail(log)}") from exc
    return port, log, proc


@contextlib.contextmanager
def registry_server(directory: Path, tls: TlsMaterial) -> Iterator[RegistryInfo]:
    """Run docker-registry with TLS on 127.0.0.1:<free port> for the block; stopped by PID."""
    if shutil.which(REGISTRY_BIN) is None:
        raise ServerStartError("docker-registry is not installed (apt-get install docker-registry)")
    ensure_hosts_entry()
    directory.mkdir(parents=True, exist_ok=True)
    cert_dir = directory / "certs"
    cert_dir.mkdir(exist_ok=True)
    shutil.copyfile(tls.ca_pem, cert_dir / "ca.crt")
    error: ServerStartError | None = None
    for _attempt in range(_START_ATTEMPTS):  # a new port when the picked one was taken meanwhile
        try:
            port, log, proc = _start_once(directory, tls)
            break
        except ServerStartError as exc:
            error = exc
    else:
        assert error is not None
        raise error
    try:
        yield RegistryInfo(port, proc.pid, log, cert_dir)
    finally:
        stop_process(proc)


# -- skopeo ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Skopeo:
    """argv and environment for a hermetic skopeo living in `home`."""

    home: Path

    @classmethod
    def create(cls, home: Path) -> Skopeo:
        if shutil.which(SKOPEO_BIN) is None:
            raise ServerStartError("skopeo is not installed (apt-get install skopeo)")
        home.mkdir(parents=True, exist_ok=True)
        (home / "policy.json").write_text(
            json.dumps({"default": [{"type": "insecureAcceptAnything"}]})
        )
        (home / "registries.conf").write_text("unqualified-search-registries = []\n")
        (home / "auth.json").write_text("{}")
        (home / "tmp").mkdir(exist_ok=True)
        return cls(home)

    def argv(self, *args: str) -> list[str]:
        return [
            SKOPEO_BIN,
            "--policy",
            str(self.home / "policy.json"),
            "--tmpdir",
            str(self.home / "tmp"),
            "--command-timeout",
            "60s",
            *args,
        ]

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """clean_env() (no proxies, no CA bundles) pointed at this home, plus `extra`."""
        env = clean_env()
        env.pop("XDG_RUNTIME_DIR", None)
        env.pop("DOCKER_CONFIG", None)
        env.update(
            HOME=str(self.home),
            CONTAINERS_REGISTRIES_CONF=str(self.home / "registries.conf"),
            REGISTRY_AUTH_FILE=str(self.home / "auth.json"),
        )
        env.update(extra or {})
        return env


# -- a tiny OCI image --------------------------------------------------------------------------


@dataclass(frozen=True)
class OciImage:
    """An OCI image layout on disk with one tag; digests as `sha256:<hex>`."""

    layout: Path
    tag: str
    manifest_digest: str
    config_digest: str
    layer_digests: tuple[str, ...]

    @property
    def ref(self) -> str:
        return f"oci:{self.layout}:{self.tag}"

    @property
    def blob_digests(self) -> tuple[str, ...]:
        return (self.config_digest, *self.layer_digests)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tar(files: Mapping[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _write_blob(layout: Path, data: bytes) -> str:
    digest = _digest(data)
    (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).write_bytes(data)
    return digest


def make_oci_image(layout: Path, tag: str = "1", *, big_layer: int = 3 << 20) -> OciImage:
    """Write a two-layer linux/amd64 image (gzip layers, so no registry recompresses them).

    The second layer carries `big_layer` incompressible bytes, so a pull moves real data."""
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    noise = random.Random(2024).randbytes(big_layer)
    tars = [
        _tar({"etc/motd": b"pulled through pycntlm\n"}),
        _tar({"app/data.bin": noise}),
    ]
    layers = []
    for raw in tars:
        packed = gzip.compress(raw, compresslevel=1, mtime=0)
        layers.append(
            {
                "mediaType": OCI_LAYER_GZ,
                "digest": _write_blob(layout, packed),
                "size": len(packed),
                "diff_id": _digest(raw),
            }
        )
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": [layer["diff_id"] for layer in layers]},
            "history": [{"created_by": "pycntlm test"} for _ in layers],
        }
    ).encode()
    config_digest = _write_blob(layout, config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [{k: layer[k] for k in ("mediaType", "digest", "size")} for layer in layers],
        }
    ).encode()
    manifest_digest = _write_blob(layout, manifest)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    return OciImage(
        layout,
        tag,
        manifest_digest,
        config_digest,
        tuple(str(layer["digest"]) for layer in layers),
    )


def read_oci_image(layout: Path, tag: str) -> OciImage:
    """Read back an OCI layout (e.g. one skopeo wrote), checking every blob's digest."""

    def blob(digest: str) -> bytes:
        data = (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()
        if _digest(data) != digest:
            raise AssertionError(f"blob {digest} in {layout} does not match its digest")
        return data

    index = json.loads((layout / "index.json").read_text())
    entries = [
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    ]
    if len(entries) != 1:
        raise AssertionError(f"{layout}: {len(entries)} manifests tagged {tag!r}")
    manifest_digest = entries[0]["digest"]
    manifest = json.loads(blob(manifest_digest))
    config_digest = manifest["config"]["digest"]
    blob(config_digest)
    layer_digests = tuple(layer["digest"] for layer in manifest["layers"])
    for digest in layer_digests:
        blob(digest)
    return OciImage(layout, tag, manifest_digest, config_digest, layer_digests)
