"""`pycntlm setup`: golden files, idempotence, --dry-run, backups, the generated scripts run.

Everything happens under --root (tmp_path); systemctl is never run. Golden files live in
tests/golden/gitlab/; PYCNTLM_UPDATE_GOLDEN=1 rewrites them (review the diff before committing).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest
import tomlkit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pycntlm.gitlab import model, runners_toml, setup_main

GOLDEN = Path(__file__).parent / "golden" / "gitlab"
LISTEN = "172.17.0.1:3128"
FULL = ["--listen", LISTEN, "--dind", "--gitlab-host", "gitlab.corp.example"]
FULL += ["--no-proxy", ".corp.example"]
OUTPUTS = {
    model.CNTLM_CONF: "cntlm.after.conf",
    model.DOCKER_DROPIN: "docker-http-proxy.conf",
    model.RUNNER_DROPIN: "gitlab-runner-http-proxy.conf",
    model.RUNNER_TOML: "config.after.toml",
    model.ROOT_DOCKER_CONFIG: "root-docker-config.json",
}


def make_root(base: Path) -> Path:
    """A host as a user has it: cntlm.conf, Docker's /etc/docker, a registered runner."""
    root = base / "root"
    (root / "etc/gitlab-runner").mkdir(parents=True)
    (root / "etc/docker").mkdir()
    shutil.copy(GOLDEN / "cntlm.before.conf", root / model.CNTLM_CONF)
    toml = root / model.RUNNER_TOML
    shutil.copy(GOLDEN / "config.before.toml", toml)
    toml.chmod(0o600)  # it holds the runner tokens
    return root


def setup(root: Path, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = setup_main(["--root", str(root), *args])
    out, err = capsys.readouterr()
    return status, out.replace(str(root), "ROOT"), err


def snapshot(root: Path) -> dict[str, tuple[bytes, float]]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("PYCNTLM_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"differs from golden file {path}"


def test_every_generated_file_matches_its_golden_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_root(tmp_path)
    status, out, _ = setup(root, *FULL, capsys=capsys)
    assert status == 0
    for rel, golden in OUTPUTS.items():
        check_golden(golden, (root / rel).read_text())
    check_golden("setup-output.txt", _no_timestamps(out))


def test_dry_run_prints_every_diff_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_root(tmp_path)
    before = snapshot(root)
    status, out, _ = setup(root, *FULL, "--dry-run", capsys=capsys)
    assert status == 0
    assert snapshot(root) == before
    check_golden("dry-run.txt", out)
    # The diff is the real change: applying it gives the golden files.
    for rel in OUTPUTS:
        assert f"+++ b/{rel}" in out


def test_second_run_changes_nothing_and_makes_no_backup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_root(tmp_path)
    assert setup(root, *FULL, capsys=capsys)[0] == 0
    after_first = snapshot(root)
    status, out, _ = setup(root, *FULL, capsys=capsys)
    assert status == 0
    assert "nothing to change" in out
    assert snapshot(root) == after_first  # same bytes, same mtimes, no new backup
    status, out, _ = setup(root, *FULL, "--dry-run", capsys=capsys)
    assert "nothing to change" in out and "+++" not in out


def test_backups_hold_the_old_text_and_keep_the_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_root(tmp_path)
    assert setup(root, *FULL, capsys=capsys)[0] == 0
    toml = root / model.RUNNER_TOML
    (backup,) = toml.parent.glob("config.toml.pycntlm-backup-*")
    assert backup.read_text() == (GOLDEN / "config.before.toml").read_text()
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert stat.S_IMODE(toml.stat().st_mode) == 0o600
    (conf_backup,) = (root / "etc").glob("cntlm.conf.pycntlm-backup-*")
    assert conf_backup.read_text() == (GOLDEN / "cntlm.before.conf").read_text()
    # Files that did not exist get no backup; a new config.json is private.
    assert not list((root / "etc/systemd").rglob("*pycntlm-backup*"))
    assert stat.S_IMODE((root / model.ROOT_DOCKER_CONFIG).stat().st_mode) == 0o600
    # A second change on the same second gets its own backup name.
    assert setup(root, "--listen", "172.18.0.1:3128", capsys=capsys)[0] == 0
    assert len(list(toml.parent.glob("config.toml.pycntlm-backup-*"))) == 2


def test_user_entries_and_other_keys_are_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_root(tmp_path)
    assert setup(root, *FULL, capsys=capsys)[0] == 0
    before = tomllib.loads((GOLDEN / "config.before.toml").read_text())
    after = tomllib.loads((root / model.RUNNER_TOML).read_text())
    first, second = after["runners"]
    assert first["environment"][:2] == ["LANG=C.UTF-8", "MAVEN_OPTS=-Xmx1g"]
    assert second["environment"][:2] == ["TZ=Europe/London", "NPM_CONFIG_CACHE=/cache/npm"]
    for runner in (first, second):
        env = dict(e.split("=", 1) for e in runner["environment"])
        for name in (*model.UPPER, *model.LOWER):
            assert name in env
        assert env["HTTPS_PROXY"] == env["http_proxy"] == "http://172.17.0.1:3128"
        assert env["NO_PROXY"] == (
            "localhost,127.0.0.1,gitlab.corp.example,.corp.example,docker:2375,docker:2376"
        )
    # Everything we do not own is as it was (the datetime tokens included).
    for old, new in zip(before["runners"], after["runners"], strict=True):
        owned = {"environment", model.GIT_HOOK, model.GIT_HOOK_LEGACY, model.BUILD_HOOK}
        assert {k: v for k, v in old.items() if k not in owned} == {
            k: v for k, v in new.items() if k not in owned
        }
    assert {k: v for k, v in before.items() if k != "runners"} == {
        k: v for k, v in after.items() if k != "runners"
    }
    # The runner that already used pre_clone_script keeps that name, and its own line.
    assert model.GIT_HOOK not in second
    assert second[model.GIT_HOOK_LEGACY].startswith('echo "runner: $CI_RUNNER_DESCRIPTION"\n')
    assert first[model.GIT_HOOK] == model.GIT_HOOK_LINE


def test_runner_option_edits_only_that_runner(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_root(tmp_path)
    status, _, _ = setup(root, "--listen", LISTEN, "--runner", "ci-host-01-small", capsys=capsys)
    assert status == 0
    first, second = tomllib.loads((root / model.RUNNER_TOML).read_text())["runners"]
    old_env = ["LANG=C.UTF-8", "HTTPS_PROXY=http://10.0.0.41:8080", "MAVEN_OPTS=-Xmx1g"]
    assert first["environment"] == old_env
    assert "http_proxy=http://172.17.0.1:3128" in second["environment"]
    status, _, err = setup(root, "--listen", LISTEN, "--runner", "nope", capsys=capsys)
    assert status == 2
    assert "no runner named 'nope'" in err and "'ci-host-01-dind'" in err


def test_pieces_default_to_docker_and_gitlab_runner_without_dind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_root(tmp_path)
    assert setup(root, "--listen", LISTEN, capsys=capsys)[0] == 0
    assert (root / model.DOCKER_DROPIN).exists() and (root / model.RUNNER_DROPIN).exists()
    assert not (root / model.ROOT_DOCKER_CONFIG).exists()
    text = (root / model.RUNNER_TOML).read_text()
    assert model.BUILD_HOOK not in text and "docker:2375" not in text
    other = make_root(tmp_path / "docker-only")
    assert setup(other, "--listen", LISTEN, "--docker", capsys=capsys)[0] == 0
    assert (other / model.DOCKER_DROPIN).exists()
    assert not (other / model.RUNNER_DROPIN).exists()
    assert (other / model.RUNNER_TOML).read_text() == (GOLDEN / "config.before.toml").read_text()


def test_pre_clone_script_option_forces_the_old_hook_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_root(tmp_path)
    assert setup(root, "--listen", LISTEN, "--pre-clone-script", capsys=capsys)[0] == 0
    for runner in tomllib.loads((root / model.RUNNER_TOML).read_text())["runners"]:
        assert model.GIT_HOOK_LINE in runner[model.GIT_HOOK_LEGACY]
        assert model.GIT_HOOK not in runner


def _script(root: Path, key: str) -> str:
    runner = tomllib.loads((root / model.RUNNER_TOML).read_text())["runners"][0]
    return str(runner[key])


def _job_env(home: Path, **values: str) -> dict[str, str]:
    env = {"PATH": os.environ["PATH"], "HOME": str(home), **values}
    env["GIT_CONFIG_GLOBAL"] = str(home / ".gitconfig")
    return env


def test_pre_build_script_writes_the_docker_config_when_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_root(tmp_path)
    assert setup(root, *FULL, capsys=capsys)[0] == 0
    home = tmp_path / "home"
    home.mkdir()
    values = {
        "HTTP_PROXY": "http://172.17.0.1:3128",
        "HTTPS_PROXY": 'http://odd"quote\\back%s$HOME`x`:3128',  # must survive JSON and sh
        "NO_PROXY": "localhost,docker:2375,docker:2376",
    }
    script = _script(root, model.BUILD_HOOK)
    subprocess.run(["sh", "-c", script], env=_job_env(home, **values), check=True, timeout=10)
    data = json.loads((home / ".docker/config.json").read_text())
    assert data == {
        "proxies": {
            "default": {
                "httpProxy": values["HTTP_PROXY"],
                "httpsProxy": values["HTTPS_PROXY"],
                "noProxy": values["NO_PROXY"],
            }
        }
    }


def test_git_hook_sets_http_proxy_when_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_root(tmp_path)
    assert setup(root, *FULL, capsys=capsys)[0] == 0
    for key, index in ((model.GIT_HOOK, 0), (model.GIT_HOOK_LEGACY, 1)):
        home = tmp_path / f"home-{index}"
        home.mkdir()
        env = _job_env(home, HTTP_PROXY="http://172.17.0.1:3128", CI_RUNNER_DESCRIPTION="x")
        runner = tomllib.loads((root / model.RUNNER_TOML).read_text())["runners"][index]
        subprocess.run(["sh", "-c", runner[key]], env=env, check=True, timeout=10)
        got = subprocess.run(
            ["git", "config", "--global", "http.proxy"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert got.stdout.strip() == "http://172.17.0.1:3128"


_env_entry = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}=[ -~]{0,20}", fullmatch=True)


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    user=st.lists(_env_entry, max_size=6),
    extra=st.lists(st.from_regex(r"[a-z0-9.-]{1,12}", fullmatch=True), max_size=3),
    single_line=st.booleans(),
)
def test_environment_edit_keeps_user_entries_and_is_idempotent(
    user: list[str], extra: list[str], single_line: bool
) -> None:
    array = tomlkit.array()
    array.extend(user)
    array.multiline(not single_line)
    doc = tomlkit.document()
    runner = tomlkit.table()
    runner["name"] = "r"
    runner["environment"] = array
    aot = tomlkit.aot()
    aot.append(runner)
    doc["runners"] = aot
    text = tomlkit.dumps(doc)
    s = model.Settings("172.17.0.1", 3128, model.build_no_proxy(extra, None, True), True)
    once = runners_toml.edit(text, s, runners_toml.Options(), "config.toml")
    assert runners_toml.edit(once, s, runners_toml.Options(), "config.toml") == once
    env = tomllib.loads(once)["runners"][0]["environment"]
    kept = [e for e in user if model.env_name(e).lower() not in model.OWNED_NAMES]
    assert env == kept + model.container_env(s)


@settings(max_examples=25, deadline=None)
@given(value=st.text(st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]), max_size=30))
def test_docker_config_script_survives_any_printable_value(value: str) -> None:
    home = Path(subprocess.run(["mktemp", "-d"], capture_output=True, text=True).stdout.strip())
    try:
        env = _job_env(home, HTTP_PROXY=value, HTTPS_PROXY=value[::-1], NO_PROXY=value)
        subprocess.run(["sh", "-c", model.docker_config_script()], env=env, check=True)
        default = json.loads((home / ".docker/config.json").read_text())["proxies"]["default"]
        assert default == {"httpProxy": value, "httpsProxy": value[::-1], "noProxy": value}
    finally:
        shutil.rmtree(home)


def test_cntlm_conf_listen_is_kept_when_present_and_explained_when_absent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_root(tmp_path)
    conf = root / model.CNTLM_CONF
    conf.write_text("Username u\nListen docker0:3128  # pycntlm binds the interface\n")
    assert setup(root, "--listen", LISTEN, capsys=capsys)[0] == 0
    assert conf.read_text() == "Username u\nListen docker0:3128  # pycntlm binds the interface\n"
    conf.unlink()
    status, out, _ = setup(root, "--listen", LISTEN, capsys=capsys)
    assert status == 0
    assert "add `Listen 172.17.0.1:3128`" in out
    assert not conf.exists()


def test_missing_config_toml_is_a_note_and_the_rest_is_done(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_root(tmp_path)
    (root / model.RUNNER_TOML).unlink()
    status, out, _ = setup(root, "--listen", LISTEN, capsys=capsys)
    assert status == 0
    assert "register the runner" in out
    assert (root / model.RUNNER_DROPIN).exists()


def test_systemctl_steps_are_printed_and_never_run_under_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "systemctl-ran"
    fake = bin_dir / "systemctl"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {marker}\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    root = make_root(tmp_path)
    status, out, _ = setup(root, "--listen", LISTEN, "--apply", capsys=capsys)
    assert status == 0
    assert "not running systemctl under --root" in out
    for step in ("restart cntlm", "daemon-reload", "restart docker", "restart gitlab-runner"):
        assert f"systemctl {step}" in out
    assert not marker.exists()


def test_user_errors_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_root(tmp_path)
    cases = [
        (["--listen", LISTEN, "--dry-run", "--apply"], "exclude each other"),
        (["--listen", "nonsense"], "--listen needs IP:PORT"),
        (["--listen", LISTEN, "--no-proxy", 'a"b'], "NO_PROXY entry"),
    ]
    for args, message in cases:
        status, _, err = setup(root, *args, capsys=capsys)
        assert status == 2
        assert message in err and len(err.strip().splitlines()) == 1
    (root / model.RUNNER_TOML).write_text("[[runners]\n")
    status, _, err = setup(root, "--listen", LISTEN, capsys=capsys)
    assert status == 2 and "not valid TOML" in err


def test_setup_warns_about_what_doctor_would_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_root(tmp_path)
    args = ["--listen", "127.0.0.1:3128", "--no-proxy", "*.corp.example,10.0.0.0/8"]
    status, _, err = setup(root, *args, capsys=capsys)
    assert status == 0
    for code in ("noproxy-prefix-wildcard", "noproxy-cidr", "proxy-loopback"):
        assert code in err


def _no_timestamps(text: str) -> str:
    import re

    return re.sub(r"pycntlm-backup-\d{8}T\d{6}(-\d+)?", "pycntlm-backup-TIMESTAMP", text)


def test_listen_defaults_to_docker0_and_its_absence_is_explained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pycntlm.gitlab import system

    root = make_root(tmp_path)
    docker0 = system.docker0_ipv4()  # asks `ip`, read-only
    status, out, err = setup(root, "--dry-run", capsys=capsys)
    if docker0 is None:
        assert status == 2
        assert "docker0 has no IPv4 address" in err and "--listen IP:PORT" in err
    else:
        assert status == 0
        assert f"proxy http://{docker0}:3128 (docker0)" in out


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert setup_main(["--help"]) == 0
    assert "--gitlab-host HOST" in capsys.readouterr().out
