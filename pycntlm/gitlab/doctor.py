"""`pycntlm doctor`: check the Docker / GitLab Runner set-up and explain each finding.

Owns: the command line, the order of the checks, the live ones (docker0, a TCP connect to
pycntlm, one request through it, what systemd has loaded) and the report: one `[FAIL]`,
`[WARN]` or `[ OK ]` line per finding with its `fix:`; exit 0 when all is well, else 1.
Must not: change anything; run systemctl or `ip` when the root is not "/".
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from pycntlm.errors import ConfigError
from pycntlm.gitlab import checks, files, model, system
from pycntlm.gitlab.model import Finding

DEFAULT_TEST_URL = "http://example.com/"
TIMEOUT = 15.0  # one request through pycntlm and its parent


@dataclass(frozen=True)
class DoctorArgs:
    root: Path
    config: Path
    listen: tuple[str, int] | None
    test_url: str
    timeout: float = TIMEOUT


def parse_args(argv: list[str]) -> DoctorArgs:
    p = argparse.ArgumentParser(
        prog="pycntlm doctor",
        allow_abbrev=False,
        description="Check pycntlm, the docker and gitlab-runner drop-ins, config.toml and "
        "NO_PROXY; explain each problem and its fix. Exit 0 when all is well, 1 otherwise.",
    )
    p.add_argument("--root", metavar="DIR", default="/", help="look at DIR as if it were /")
    p.add_argument("--listen", metavar="IP:PORT", help="probe pycntlm here (default: Listen)")
    p.add_argument("--test-url", metavar="URL", default=DEFAULT_TEST_URL, help="http:// URL")
    p.add_argument("--config", metavar="FILE", help="cntlm.conf (default: ROOT/etc/cntlm.conf)")
    ns = p.parse_args(argv)
    if urllib.parse.urlsplit(ns.test_url).scheme != "http":
        raise ConfigError(f"--test-url must be an http:// URL, got {ns.test_url!r}")
    root = Path(ns.root)
    return DoctorArgs(
        root=root,
        config=Path(ns.config) if ns.config else root / model.CNTLM_CONF,
        listen=model.parse_listen(ns.listen) if ns.listen else None,
        test_url=ns.test_url,
    )


class Host:
    """The machine under the checks that read more than files: docker0, systemd, installed
    programs. Consulted only when the root is "/"; a test may pass its own."""

    def is_real_root(self, root: Path) -> bool:
        return system.is_real_root(root)

    def docker0_ipv4(self) -> str | None:
        return system.docker0_ipv4()

    def systemd_running(self) -> bool:
        return system.systemd_running()

    def loaded_environment(self, unit: str) -> dict[str, str] | None:
        return system.loaded_environment(unit)

    def which(self, command: str) -> str | None:
        return shutil.which(command)


def collect(args: DoctorArgs, host: Host | None = None) -> list[Finding]:
    """Every finding, in the order a reader fixes them: proxy, services, runners."""
    host = host or Host()
    real = host.is_real_root(args.root)
    found: list[Finding] = []
    docker0 = host.docker0_ipv4() if real else None
    if real:
        found.append(_docker0(docker0))
    conf_findings, expected = checks.check_cntlm_conf(args.config, docker0)
    found += conf_findings
    if expected is None and docker0 is not None:
        expected = (docker0, model.DEFAULT_PORT)  # what pycntlm setup would use
    found += _live(args.listen or expected, args.test_url, args.timeout)
    root = args.root
    which = host.which if real else None
    if _installed(root, model.DOCKER_DROPIN, "etc/docker", "dockerd", which):
        found += checks.check_dropin(root, model.DOCKER_DROPIN, "docker", expected)
    dind = False
    if _installed(root, model.RUNNER_DROPIN, "etc/gitlab-runner", "gitlab-runner", which):
        found += checks.check_dropin(root, model.RUNNER_DROPIN, "gitlab-runner", expected)
        runner_findings, dind = checks.check_runners(root, expected)
        found += runner_findings
    if dind or (root / model.ROOT_DOCKER_CONFIG).exists():
        found += checks.check_root_docker_config(root, expected)
    if real and host.systemd_running():
        found += _loaded(root, host)
    return found


def run(args: DoctorArgs, out: TextIO) -> int:
    found = collect(args)
    for finding in found:
        print(model.format_finding(finding), file=out)
    fails = sum(f.level == "FAIL" for f in found)
    warns = sum(f.level == "WARN" for f in found)
    if not fails and not warns:
        print("all good", file=out)
        return 0
    print(f"{fails} failure(s), {warns} warning(s)", file=out)
    return 1


def _installed(
    root: Path, dropin: str, etc: str, command: str, which: Callable[[str], str | None] | None
) -> bool:
    """Whether a service is worth checking: its drop-in or /etc directory exists, or (on this
    machine) its program does."""
    if (root / dropin).exists() or (root / etc).is_dir():
        return True
    return which is not None and which(command) is not None


def _docker0(address: str | None) -> Finding:
    if address is None:
        return Finding(
            "FAIL",
            "docker0-missing",
            "docker0 has no IPv4 address (`ip -4 -oneline addr show dev docker0`): Docker is "
            "not installed or not running, and containers have no way to the host yet.",
            fix="install and start Docker (systemctl start docker), then run pycntlm doctor again",
        )
    return Finding("OK", "docker0", f"docker0 is {address}.")


def _live(address: tuple[str, int] | None, url: str, timeout: float) -> list[Finding]:
    if address is None:
        return [
            Finding(
                "FAIL",
                "listen-unknown",
                "cannot tell where pycntlm listens for containers, so it was not probed.",
                fix="add a Listen line for docker0 to cntlm.conf, or pass --listen IP:PORT",
            )
        ]
    host, port = address
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.connect()
    except OSError as exc:
        return [
            Finding(
                "FAIL",
                "not-listening",
                f"nothing accepts connections on {host}:{port} ({exc.strerror or exc}): "
                "pycntlm is not running, or listens elsewhere.",
                fix="start pycntlm (systemctl start pycntlm) and check its Listen lines; "
                "pycntlm -v -f shows why it stops",
            )
        ]
    finally:
        conn.close()
    ok = Finding("OK", "listening", f"pycntlm accepts connections on {host}:{port}.")
    return [ok, _through(host, port, url, timeout)]


def _through(host: str, port: int, url: str, timeout: float) -> Finding:
    """One GET of the test URL through pycntlm, classified by what pycntlm answers."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    netloc = urllib.parse.urlsplit(url).netloc
    headers = {"Host": netloc, "User-Agent": "pycntlm-doctor", "Connection": "close"}
    try:
        conn.request("GET", url, headers=headers)
        response = conn.getresponse()
        status, body = response.status, response.read(4096)
    except (OSError, http.client.HTTPException) as exc:
        return Finding(
            "FAIL",
            "request-failed",
            f"a GET of {url} through {host}:{port} got no answer ({exc}).",
            fix="run pycntlm in the foreground with -v to see what it does with the request",
        )
    finally:
        conn.close()
    said = _first_line(body)
    via = f"a GET of {url} through {host}:{port}"
    if status == 407:
        return Finding(
            "FAIL",
            "auth-rejected",
            f"{via} got 407: the parent proxy rejected pycntlm's credentials. {said}",
            fix="check Username, Domain and the password or Pass* hashes in cntlm.conf "
            "(pycntlm -H makes new hashes); a locked-out account needs your IT desk",
        )
    if status in (502, 503, 504):
        return Finding(
            "FAIL",
            "parent-unreachable",
            f"{via} got {status}: pycntlm could not get through a parent proxy to the test "
            f"URL. {said}",
            fix="check the Proxy lines of cntlm.conf and that this host reaches them; "
            "or try another --test-url",
        )
    if status >= 400:
        return Finding(
            "WARN",
            "test-url-status",
            f"{via} got {status}: pycntlm passed it on, but the answer is an error. {said}",
            fix="try another --test-url that answers 200",
        )
    return Finding("OK", "through", f"{via} got {status}: pycntlm reaches the network.")


def _first_line(body: bytes) -> str:
    for line in body.decode("utf-8", "replace").splitlines():
        if line.strip():
            return f"It said: {line.strip()[:200]!r}"
    return ""


def _loaded(root: Path, host: Host) -> list[Finding]:
    """What systemd has loaded must match the drop-ins (daemon-reload is easy to forget)."""
    found: list[Finding] = []
    for unit, rel in (("docker", model.DOCKER_DROPIN), ("gitlab-runner", model.RUNNER_DROPIN)):
        path = root / rel
        try:
            text = files.read_text(path)
        except ConfigError:
            continue  # reported as unreadable already
        if text is None:
            continue
        wanted = model.parse_dropin(text).get("HTTP_PROXY")
        loaded = host.loaded_environment(unit)
        if loaded is None or loaded.get("HTTP_PROXY") == wanted:
            continue
        found.append(
            Finding(
                "WARN",
                "dropin-not-loaded",
                f"systemd has not loaded {path} (its HTTP_PROXY is "
                f"{loaded.get('HTTP_PROXY')!r}, the file says {wanted!r}).",
                fix=f"systemctl daemon-reload && systemctl restart {unit}",
            )
        )
    return found
