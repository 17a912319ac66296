"""The loopback world of the benchmark: nginx (origin), squid (NTLM parent), the candidates.

Owns: generated configs in one temp dir, starting each service and stopping it by PID. squid
requires NTLM through ntlm_fake_auth (any password; its Type 2 has no target info, so clients
must use NTLMv1: "Auth NTLM"). Everything binds 127.0.0.1 only; squid never uses real DNS.
Must not: measure anything (figures.py) or touch a process it did not start.
"""

from __future__ import annotations

import os
import pwd
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import LOOPBACK, Proc, StartError, free_port, start

REPO = Path(__file__).resolve().parent.parent
PX_VENV_DIRS = (REPO / "bench" / ".venv-px", Path("/tmp/bench-venv-px"))
SIZES = {"1k": 1024, "1m": 1 << 20, "1g": 1 << 30}
USER, DOMAIN, PASSWORD = "benchuser", "CORP", "benchpass"
SQUID_USER = "proxy"


@dataclass
class Endpoint:
    """Where a load client connects, and whether it must do NTLM itself (direct to squid)."""

    name: str
    port: int
    ntlm: bool = False
    pid: int | None = None  # the proxy process whose CPU/RSS we read (None: no proxy)
    proc: Proc | None = field(default=None, repr=False)


def write_origin_files(root: Path) -> None:
    """1 KiB and 1 MiB files with content, a 1 GiB sparse file (reads as zeros)."""
    www = root / "www"
    www.mkdir(exist_ok=True)
    (www / "1k").write_bytes(bytes(range(256)) * 4)
    (www / "1m").write_bytes(os.urandom(1 << 16) * 16)
    with (www / "1g").open("wb") as f:
        f.truncate(SIZES["1g"])


def nginx_conf(root: Path, port: int) -> str:
    return f"""
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 100000;
pid {root}/nginx.pid;
error_log {root}/nginx-error.log warn;
user root;
events {{ worker_connections 40000; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {root}/ngx-body;
    proxy_temp_path {root}/ngx-proxy;
    fastcgi_temp_path {root}/ngx-fcgi;
    uwsgi_temp_path {root}/ngx-uwsgi;
    scgi_temp_path {root}/ngx-scgi;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 300s;
    keepalive_requests 10000000;
    default_type application/octet-stream;
    server {{
        listen {LOOPBACK}:{port} backlog=4096;
        root {root}/www;
        location / {{ }}
    }}
}}
"""


def start_nginx(root: Path) -> tuple[Proc, int]:
    if shutil.which("nginx") is None:
        raise StartError("nginx is not installed (apt-get install -y nginx)")
    write_origin_files(root)
    port = free_port()
    conf = root / "nginx.conf"
    conf.write_text(nginx_conf(root, port))
    proc = start("nginx", ["nginx", "-p", str(root), "-c", str(conf)], root / "nginx.out")
    try:
        proc.wait_port(port)
    except BaseException:
        proc.stop()
        raise
    return proc, port


def squid_conf(root: Path, port: int) -> str:
    lines = [
        f"http_port {LOOPBACK}:{port}",
        f"pid_filename {root}/squid.pid",
        f"cache_log {root}/squid-cache.log",
        "access_log none",
        "cache_store_log none",
        "logfile_rotate 0",
        f"coredump_dir {root}",
        "cache deny all",
        "cache_mem 8 MB",
        "max_filedescriptors 100000",
        "dns_nameservers 127.0.0.1",
        f"hosts_file {root}/hosts",
        "pinger_enable off",
        "netdb_filename none",
        "visible_hostname pycntlm-bench-squid",
        "shutdown_lifetime 0 seconds",
        "forwarded_for delete",
        "via off",
        "client_persistent_connections on",
        "server_persistent_connections on",
        "auth_param ntlm program /usr/lib/squid/ntlm_fake_auth",
        "auth_param ntlm children 100 startup=60 idle=20",
        "auth_param ntlm keep_alive on",
        "acl loopback_src src 127.0.0.0/8",
        "acl loopback_dst dst 127.0.0.0/8",
        "http_access deny !loopback_src",
        "http_access deny !loopback_dst",
        "acl authed proxy_auth REQUIRED",
        "http_access allow authed",
        "http_access deny all",
    ]
    if os.geteuid() == 0:
        lines.append(f"cache_effective_user {SQUID_USER}")
    return "\n".join(lines) + "\n"


def start_squid(root: Path) -> tuple[Proc, int]:
    if shutil.which("squid") is None:
        raise StartError("squid is not installed (apt-get install -y squid)")
    sq = root / "squid"
    sq.mkdir(exist_ok=True)
    port = free_port()
    (sq / "squid.conf").write_text(squid_conf(sq, port))
    (sq / "hosts").write_text("127.0.0.1 localhost\n")
    if os.geteuid() == 0:
        entry = pwd.getpwnam(SQUID_USER)
        for path in [sq, *sq.iterdir()]:
            os.chown(path, entry.pw_uid, entry.pw_gid)
    proc = start("squid", ["squid", "-N", "-f", str(sq / "squid.conf")], root / "squid.out")
    try:
        proc.wait_text(sq / "squid-cache.log", f" local={LOOPBACK}:{port} ")
    except BaseException:
        proc.stop()
        raise
    return proc, port


def cntlm_conf(squid_port: int, listen_port: int, origin_port: int) -> str:
    """One file that runs unchanged in cntlm and pycntlm. ConnectPorts: pycntlm refuses CONNECT
    to ports other than 443/563/22/8443 by default; cntlm ignores the key (it has no limit)."""
    return (
        f"Username {USER}\nDomain {DOMAIN}\nPassword {PASSWORD}\nAuth NTLM\n"
        f"Proxy {LOOPBACK}:{squid_port}\nListen {LOOPBACK}:{listen_port}\n"
        f"ConnectPorts {origin_port}\n"
    )


# pycntlm variants measured side by side with the default (PYCNTLM_SPLICE=0 is set in argv).
VARIANTS = {"pycntlm-spare20": "PoolSpare 20\n"}


def px_binary() -> Path | None:
    for venv in PX_VENV_DIRS:
        if (venv / "bin" / "px").exists():
            return venv / "bin" / "px"
    return None


def px_version() -> str:
    """From the venv's dist-info name (`px --version` takes seconds)."""
    px = px_binary()
    if px is None:
        return "not installed"
    found = sorted(px.parent.parent.glob("lib/python*/site-packages/px_proxy-*.dist-info"))
    return found[-1].name.removesuffix(".dist-info").split("-")[1] if found else "unknown"


def candidate_argv(
    name: str, conf: Path, port: int, squid_port: int
) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if name.startswith("pycntlm"):
        env["PYTHONPATH"] = str(REPO)
        if name == "pycntlm-base":  # another checkout (e.g. git worktree add DIR main~3)
            base = os.environ.get("PYCNTLM_BASE")
            if not base:
                raise StartError("pycntlm-base needs PYCNTLM_BASE=<a checkout of pycntlm>")
            env["PYTHONPATH"] = base
        if name == "pycntlm-protocol":  # the same, with the splice relay off (side by side)
            env["PYCNTLM_SPLICE"] = "0"
        return [sys.executable, "-m", "pycntlm", "-c", str(conf), "-f"], env
    if name == "socat":  # a C relay with no NTLM: the client authenticates through it
        if shutil.which("socat") is None:
            raise StartError("socat is not installed (apt-get install -y socat)")
        listen = f"TCP-LISTEN:{port},bind={LOOPBACK},fork,reuseaddr,backlog=4096"
        # -b: 256 KiB reads, as pycntlm's relay (socat's default of 8 KiB costs it ~2x the CPU)
        return ["socat", "-b", "262144", listen, f"TCP:{LOOPBACK}:{squid_port}"], env
    if name == "cntlm":
        if shutil.which("cntlm") is None:
            raise StartError("cntlm is not installed (apt-get install -y cntlm)")
        return ["cntlm", "-f", "-c", str(conf)], env
    if name == "px":
        px = px_binary()
        if px is None:
            raise StartError(
                "px is not installed: python -m venv bench/.venv-px && "
                "bench/.venv-px/bin/pip install px-proxy"
            )
        env["PX_PASSWORD"] = PASSWORD
        argv = [
            str(px),
            f"--server={LOOPBACK}:{squid_port}",
            f"--listen={LOOPBACK}",
            f"--port={port}",
            f"--username={DOMAIN}\\{USER}",
            "--auth=NTLM",
            "--foreground",
            "--noproxy=",
        ]
        return argv, env
    raise ValueError(name)


def start_candidate(name: str, root: Path, squid_port: int, origin_port: int) -> Endpoint:
    if name == "direct":
        return Endpoint("direct", squid_port, ntlm=True)
    port = free_port()
    conf = root / f"{name}.conf"
    conf.write_text(cntlm_conf(squid_port, port, origin_port) + VARIANTS.get(name, ""))
    conf.chmod(0o600)
    argv, env = candidate_argv(name, conf, port, squid_port)
    proc = start(name, argv, root / f"{name}.log", env=env, cwd=root)
    try:
        proc.wait_port(port)
    except BaseException:
        proc.stop()
        raise
    return Endpoint(name, port, ntlm=name == "socat", pid=proc.pid, proc=proc)
