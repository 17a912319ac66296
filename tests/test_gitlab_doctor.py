"""`pycntlm doctor`: a clean bill for what `pycntlm setup` writes, then one broken set-up per
finding. Files live under --root (tmp_path); pycntlm is a loopback stand-in that answers what a
test tells it to (and, in the last tests, the real pycntlm in front of a verifying NTLM parent).
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from proxyrun import conf, running_proxy
from test_gitlab_setup import FULL, make_root

from pycntlm.demo.origin import Origin
from pycntlm.demo.parent import NtlmParent
from pycntlm.gitlab import doctor, doctor_main, model, setup_main
from pycntlm.gitlab.model import Finding

LINE_RE = re.compile(r"^\[(FAIL|WARN| OK )\] ([a-z0-9-]+): ")


@dataclass
class StandIn:
    """A loopback stand-in for pycntlm: answers every request with `status` (or hangs up)."""

    status: int = 200
    hang_up: bool = False
    targets: list[str] = field(default_factory=list)
    port: int = 0


@pytest.fixture
def standin() -> Iterator[StandIn]:
    state = StandIn()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.targets.append(self.path)
            if state.hang_up:
                self.close_connection = True
                return
            body = f"stand-in says {state.status}\n".encode()
            self.send_response(state.status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A host set up by `pycntlm setup` (docker, gitlab-runner, dind)."""
    root = make_root(tmp_path)
    assert setup_main(["--root", str(root), *FULL]) == 0
    capsys.readouterr()
    return root


def run_doctor(root: Path, standin: StandIn, *extra: str) -> list[Finding]:
    args = ["--root", str(root), "--listen", f"127.0.0.1:{standin.port}"]
    args += ["--test-url", "http://127.0.0.1:9/ping", *extra]
    return doctor.collect(doctor.parse_args(args))


def problems(found: list[Finding]) -> set[tuple[str, str]]:
    return {(f.level, f.code) for f in found if f.level != "OK"}


def edit(path: Path, old: str, new: str, count: int = -1) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, count))


def test_clean_bill_for_what_setup_writes(
    root: Path, standin: StandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--root", str(root), "--listen", f"127.0.0.1:{standin.port}"]
    status = doctor_main([*argv, "--test-url", "http://127.0.0.1:9/ping"])
    out = capsys.readouterr().out
    assert status == 0, out
    lines = out.splitlines()
    assert lines[-1] == "all good"
    assert all(LINE_RE.match(line) and line.startswith("[ OK ]") for line in lines[:-1])
    codes = {LINE_RE.match(line).group(2) for line in lines[:-1]}  # type: ignore[union-attr]
    assert codes == {"listen-docker0", "listening", "through", "dropin", "runner"} | {
        "docker-config"
    }
    assert standin.targets == ["http://127.0.0.1:9/ping"]  # absolute-form, through the proxy


def test_output_has_one_line_per_finding_then_its_fix(
    root: Path, standin: StandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    standin.status = 407
    argv = ["--root", str(root), "--listen", f"127.0.0.1:{standin.port}"]
    assert doctor_main([*argv, "--test-url", "http://127.0.0.1:9/"]) == 1
    lines = capsys.readouterr().out.splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith("[FAIL] auth-rejected: "))
    assert "credentials" in lines[index] and "stand-in says 407" in lines[index]
    assert lines[index + 1].startswith("       fix: check Username, Domain")
    assert lines[-1] == "1 failure(s), 0 warning(s)"


# ---------------------------------------------------------------- pycntlm itself


def test_listen_not_on_docker0(root: Path, standin: StandIn) -> None:
    edit(root / model.CNTLM_CONF, "Listen\t\t172.17.0.1:3128", "#")
    assert problems(run_doctor(root, standin)) == {("FAIL", "listen-not-docker0")}


def test_cntlm_conf_missing(root: Path, standin: StandIn) -> None:
    (root / model.CNTLM_CONF).unlink()
    assert problems(run_doctor(root, standin)) == {("FAIL", "cntlm-conf-missing")}


def test_cntlm_conf_invalid(root: Path, standin: StandIn) -> None:
    edit(root / model.CNTLM_CONF, "Proxy\t\t10.0.0.42:8080", "Proxy nonsense")
    found = run_doctor(root, standin)
    assert problems(found) == {("FAIL", "cntlm-conf-invalid")}
    assert any(":7:" in f.text for f in found)  # file:line of the bad line


def test_listen_unknown_without_conf_or_listen(root: Path, standin: StandIn) -> None:
    (root / model.CNTLM_CONF).unlink()
    args = ["--root", str(root), "--test-url", "http://127.0.0.1:9/"]
    found = doctor.collect(doctor.parse_args(args))
    assert problems(found) == {("FAIL", "cntlm-conf-missing"), ("FAIL", "listen-unknown")}


def test_not_listening(root: Path, standin: StandIn) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    found = run_doctor(root, standin, "--listen", f"127.0.0.1:{closed}")
    assert problems(found) == {("FAIL", "not-listening")}


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (407, ("FAIL", "auth-rejected")),
        (502, ("FAIL", "parent-unreachable")),
        (504, ("FAIL", "parent-unreachable")),
        (404, ("WARN", "test-url-status")),
    ],
)
def test_answer_through_pycntlm(
    root: Path, standin: StandIn, status: int, expected: tuple[str, str]
) -> None:
    standin.status = status
    assert problems(run_doctor(root, standin)) == {expected}


def test_request_failed_when_pycntlm_hangs_up(root: Path, standin: StandIn) -> None:
    standin.hang_up = True
    assert problems(run_doctor(root, standin)) == {("FAIL", "request-failed")}


# ---------------------------------------------------------------- the service drop-ins


def test_docker_dropin_missing(root: Path, standin: StandIn) -> None:
    (root / model.DOCKER_DROPIN).unlink()
    assert problems(run_doctor(root, standin)) == {("FAIL", "dropin-missing")}


def test_docker_not_installed_is_not_checked(root: Path, standin: StandIn) -> None:
    (root / model.DOCKER_DROPIN).unlink()
    (root / "etc/docker").rmdir()
    assert problems(run_doctor(root, standin)) == set()


def test_dropin_incomplete(root: Path, standin: StandIn) -> None:
    edit(root / model.RUNNER_DROPIN, 'Environment="HTTPS_PROXY', '#Environment="HTTPS_PROXY')
    edit(root / model.RUNNER_DROPIN, 'Environment="https_proxy', '#Environment="https_proxy')
    assert problems(run_doctor(root, standin)) == {("FAIL", "dropin-incomplete")}


def test_dropin_unreadable(root: Path, standin: StandIn) -> None:
    (root / model.DOCKER_DROPIN).unlink()
    (root / model.DOCKER_DROPIN).mkdir()
    assert problems(run_doctor(root, standin)) == {("FAIL", "unreadable")}


def test_proxy_mismatch(root: Path, standin: StandIn) -> None:
    edit(root / model.DOCKER_DROPIN, "http://172.17.0.1:3128", "http://10.0.0.41:8080")
    assert problems(run_doctor(root, standin)) == {("FAIL", "proxy-mismatch")}


def test_proxy_without_scheme(root: Path, standin: StandIn) -> None:
    edit(root / model.DOCKER_DROPIN, "http://172.17.0.1:3128", "172.17.0.1:3128")
    assert problems(run_doctor(root, standin)) == {("WARN", "proxy-no-scheme")}


def test_proxy_unreadable(root: Path, standin: StandIn) -> None:
    edit(root / model.DOCKER_DROPIN, "HTTP_PROXY=http://172.17.0.1:3128", "HTTP_PROXY=http://[x")
    assert problems(run_doctor(root, standin)) == {("FAIL", "proxy-unreadable")}


def test_dropin_not_loaded_by_systemd(root: Path, standin: StandIn) -> None:
    host = FakeHost(loaded={"docker": {"HTTP_PROXY": "http://10.0.0.41:8080"}})
    found = run_doctor_on(root, standin, host)
    assert problems(found) == {("WARN", "dropin-not-loaded")}
    assert any("systemctl daemon-reload && systemctl restart docker" in f.fix for f in found)


# ---------------------------------------------------------------- config.toml


def _runner_env(root: Path, old: str, new: str, count: int = 1) -> None:
    edit(root / model.RUNNER_TOML, old, new, count)


def test_proxy_loopback_in_container_env(root: Path, standin: StandIn) -> None:
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        _runner_env(root, f'"{name}=http://172.17.0.1:3128"', f'"{name}=http://127.0.0.1:3128"')
    found = run_doctor(root, standin)
    assert problems(found) == {("FAIL", "proxy-loopback"), ("FAIL", "proxy-mismatch")}
    assert all("ci-host-01-dind" in f.text for f in found if f.code == "proxy-loopback")


def test_loopback_is_fine_for_a_shell_executor(root: Path, standin: StandIn) -> None:
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        _runner_env(root, f'"{name}=http://172.17.0.1:3128"', f'"{name}=http://127.0.0.1:3128"')
    _runner_env(root, 'executor = "docker"', 'executor = "shell"')
    assert problems(run_doctor(root, standin)) == {("FAIL", "proxy-mismatch")}


def test_env_upper_only(root: Path, standin: StandIn) -> None:
    for name in model.LOWER:
        text = (root / model.RUNNER_TOML).read_text()
        entry = re.search(rf'\n    "{name}=[^"]*",', text)
        assert entry is not None
        _runner_env(root, entry.group(0), "")
    found = run_doctor(root, standin)
    assert problems(found) == {("FAIL", "env-upper-only"), ("WARN", "env-upper-only")}
    http = next(f for f in found if f.level == "FAIL")
    assert "HTTP_PROXY" in http.text and "curl and git ignore" in http.text


def test_env_lower_only(root: Path, standin: StandIn) -> None:
    for name in model.UPPER:
        text = (root / model.RUNNER_TOML).read_text()
        entry = re.search(rf'\n    "{name}=[^"]*",', text)
        assert entry is not None
        _runner_env(root, entry.group(0), "")
    assert problems(run_doctor(root, standin)) == {("WARN", "env-lower-only")}


def test_env_case_differs(root: Path, standin: StandIn) -> None:
    _runner_env(root, '"NO_PROXY=localhost,', '"NO_PROXY=localhost,.other.example,')
    assert problems(run_doctor(root, standin)) == {("WARN", "env-case-differs")}


def test_runner_env_missing(root: Path, standin: StandIn) -> None:
    text = (root / model.RUNNER_TOML).read_text()
    text = re.sub(r'\n    "(http|https|no)_proxy=[^"]*",', "", text, flags=re.IGNORECASE)
    (root / model.RUNNER_TOML).write_text(text)
    found = run_doctor(root, standin)
    assert problems(found) == {("FAIL", "runner-env-missing")}
    assert {f.fix for f in found if f.level == "FAIL"} == {
        "pycntlm setup --gitlab-runner --runner ci-host-01-dind",
        "pycntlm setup --gitlab-runner --runner ci-host-01-small",
    }


def test_runner_git_hook_missing(root: Path, standin: StandIn) -> None:
    _runner_env(root, "  pre_get_sources_script = 'git config --global http.proxy", "  x = '")
    assert problems(run_doctor(root, standin)) == {("WARN", "runner-git-hook-missing")}


def test_runner_config_missing(root: Path, standin: StandIn) -> None:
    (root / model.RUNNER_TOML).unlink()
    assert problems(run_doctor(root, standin)) == {("FAIL", "runner-config-missing")}


def test_runner_config_invalid(root: Path, standin: StandIn) -> None:
    (root / model.RUNNER_TOML).write_text("[[runners]\n")
    assert problems(run_doctor(root, standin)) == {("FAIL", "runner-config-invalid")}


def test_runner_none(root: Path, standin: StandIn) -> None:
    (root / model.RUNNER_TOML).write_text("concurrent = 1\n")
    assert problems(run_doctor(root, standin)) == {("FAIL", "runner-none")}


def test_dind_without_docker_in_no_proxy(root: Path, standin: StandIn) -> None:
    _runner_env(root, ",docker:2375,docker:2376", "", count=2)
    found = run_doctor(root, standin)
    assert problems(found) == {("FAIL", "dind-no-proxy")}
    assert [f.text.split(":")[0] for f in found if f.code == "dind-no-proxy"] == [
        "runner 'ci-host-01-dind'"
    ]


def test_dind_without_docker_config_script(root: Path, standin: StandIn) -> None:
    _runner_env(root, "  pre_build_script = '''mkdir", "  x = '''mkdir")
    assert problems(run_doctor(root, standin)) == {("WARN", "dind-docker-config-missing")}


def test_root_docker_config_missing(root: Path, standin: StandIn) -> None:
    (root / model.ROOT_DOCKER_CONFIG).write_text('{"auths": {}}\n')
    assert problems(run_doctor(root, standin)) == {("WARN", "docker-config-missing")}


def test_root_docker_config_invalid(root: Path, standin: StandIn) -> None:
    (root / model.ROOT_DOCKER_CONFIG).write_text("{")
    assert problems(run_doctor(root, standin)) == {("FAIL", "docker-config-invalid")}


# ---------------------------------------------------------------- NO_PROXY lint


@pytest.mark.parametrize(
    ("entry", "expected", "said"),
    [
        ("*.corp.example", ("FAIL", "noproxy-prefix-wildcard"), "write 'corp.example'"),
        ("10.*", ("FAIL", "noproxy-glob"), "NoProxy line of cntlm.conf"),
        ("10.0.0.0/8", ("WARN", "noproxy-cidr"), "curl 7.86"),
        ("*", ("WARN", "noproxy-everything"), "everything direct"),
    ],
)
def test_no_proxy_entry(
    root: Path, standin: StandIn, entry: str, expected: tuple[str, str], said: str
) -> None:
    edit(root / model.DOCKER_DROPIN, "NO_PROXY=localhost,", f"NO_PROXY={entry},localhost,")
    found = run_doctor(root, standin)
    assert problems(found) == {expected}
    assert any(said in f.text + f.fix for f in found)


def test_no_proxy_spaces(root: Path, standin: StandIn) -> None:
    edit(
        root / model.DOCKER_DROPIN, "NO_PROXY=localhost,127.0.0.1", "NO_PROXY=localhost, 127.0.0.1"
    )
    found = run_doctor(root, standin)
    assert problems(found) == {("WARN", "noproxy-spaces")}
    assert any("'localhost,127.0.0.1," in f.fix for f in found)


# ---------------------------------------------------------------- the host (docker0, systemd)


class FakeHost(doctor.Host):
    """This machine has no Docker and no systemd: the tests say what they would report."""

    def __init__(
        self, docker0: str | None = "172.17.0.1", loaded: dict[str, dict[str, str]] | None = None
    ) -> None:
        self.docker0 = docker0
        self.loaded = loaded or {}

    def is_real_root(self, root: Path) -> bool:
        return True

    def docker0_ipv4(self) -> str | None:
        return self.docker0

    def systemd_running(self) -> bool:
        return True

    def loaded_environment(self, unit: str) -> dict[str, str] | None:
        default = {"HTTP_PROXY": "http://172.17.0.1:3128"}
        return self.loaded.get(unit, default)

    def which(self, command: str) -> str | None:
        return None


def run_doctor_on(root: Path, standin: StandIn, host: doctor.Host) -> list[Finding]:
    args = ["--root", str(root), "--listen", f"127.0.0.1:{standin.port}"]
    return doctor.collect(doctor.parse_args([*args, "--test-url", "http://127.0.0.1:9/"]), host)


def test_docker0_found_and_used(root: Path, standin: StandIn) -> None:
    found = run_doctor_on(root, standin, FakeHost())
    assert problems(found) == set()
    assert found[0] == Finding("OK", "docker0", "docker0 is 172.17.0.1.")


def test_docker0_missing(root: Path, standin: StandIn) -> None:
    found = run_doctor_on(root, standin, FakeHost(docker0=None))
    assert ("FAIL", "docker0-missing") in problems(found)


def test_listen_on_another_address_than_docker0(root: Path, standin: StandIn) -> None:
    found = run_doctor_on(root, standin, FakeHost(docker0="172.18.0.1"))
    assert ("FAIL", "listen-not-docker0") in problems(found)
    assert any(f.fix == "add `Listen 172.18.0.1:3128` (pycntlm setup does)" for f in found)


# ---------------------------------------------------------------- the real pycntlm


async def _doctor_through(
    root: Path, tmp_path: Path, parent: NtlmParent, origin: Origin, conf_text: str
) -> list[Finding]:
    async with running_proxy(conf_text, tmp_path) as proxy:
        args = ["--root", str(root), "--listen", f"127.0.0.1:{proxy.port}"]
        parsed = doctor.parse_args([*args, "--test-url", origin.url("/")])
        collect: Callable[[doctor.DoctorArgs], list[Finding]] = doctor.collect
        return await asyncio.to_thread(collect, parsed)


async def test_clean_bill_through_real_pycntlm_and_ntlm_parent(
    root: Path, tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    found = await _doctor_through(root, tmp_path, parent, origin, conf(parent.address))
    assert problems(found) == set()
    assert parent.stats.logons_ok >= 1


async def test_wrong_password_through_real_pycntlm_is_auth_rejected(
    root: Path, tmp_path: Path, parent: NtlmParent, origin: Origin
) -> None:
    text = conf(parent.address, creds_lines="Password wrong-password")
    found = await _doctor_through(root, tmp_path, parent, origin, text)
    assert problems(found) == {("FAIL", "auth-rejected")}


def test_runner_env_incomplete(root: Path, standin: StandIn) -> None:
    text = (root / model.RUNNER_TOML).read_text()
    text = re.sub(r'\n    "http_proxy=[^"]*",', "", text, count=1, flags=re.IGNORECASE)
    text = re.sub(r'\n    "HTTP_PROXY=[^"]*",', "", text, count=1)
    (root / model.RUNNER_TOML).write_text(text)
    found = run_doctor(root, standin)
    assert problems(found) == {("FAIL", "runner-env-incomplete")}
    assert "http:// requests" in next(f.text for f in found if f.level == "FAIL")
