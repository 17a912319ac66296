"""`pycntlm doctor`'s checks of the files: cntlm.conf, the drop-ins, config.toml, config.json.

Owns: reading each file under the root and turning what it says into Findings (with the
NO_PROXY and proxy-URL lints of noproxy_lint.py), and where pycntlm should be reached.
Must not: write anything, run commands or touch the network (doctor.py does the live checks).
"""

from __future__ import annotations

import ipaddress
import json
import tomllib
from pathlib import Path
from typing import Any

from pycntlm import config
from pycntlm.errors import ConfigError
from pycntlm.gitlab import files, model, noproxy_lint
from pycntlm.gitlab.model import Finding

Address = tuple[str, int]
_WILDCARDS = ("0.0.0.0", "::")


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read(path: Path) -> tuple[str | None, Finding | None]:
    try:
        return files.read_text(path), None
    except ConfigError as exc:
        return None, Finding("FAIL", "unreadable", str(exc), fix="check the file's permissions")


def check_cntlm_conf(path: Path, docker0: str | None) -> tuple[list[Finding], Address | None]:
    """The Listen lines: one that containers can reach (docker0's address, or any
    non-loopback address when docker0 is unknown). Returns it as the expected proxy address."""
    text, problem = _read(path)
    if problem is not None:
        return [problem], None
    if text is None:
        return [
            Finding(
                "FAIL",
                "cntlm-conf-missing",
                f"{path} does not exist: pycntlm has no configuration (parent proxy, "
                "credentials, Listen) to run with.",
                fix="create it (see etc/cntlm.conf in pycntlm), or name yours with --config",
            )
        ], None
    try:
        cfg = config.parse_file(text, str(path))
    except ConfigError as exc:
        return [
            Finding(
                "FAIL",
                "cntlm-conf-invalid",
                f"pycntlm refuses its configuration: {exc}",
                fix="correct that line (pycntlm -c FILE --check-config checks it)",
            )
        ], None
    reachable: list[Address] = []
    for listen in cfg.listen:
        host = listen.host or ("0.0.0.0" if cfg.gateway else "127.0.0.1")
        if host == "docker0" or (host in _WILDCARDS and docker0 is not None):
            host = docker0 or host
        if docker0 is not None and host != docker0:
            continue
        if not _loopback(host) and host not in _WILDCARDS and host != "docker0":
            reachable.append((host, listen.port))
    shown = ", ".join(str(la) for la in cfg.listen)
    if reachable:
        host, port = reachable[0]
        text_ok = f"{path}: pycntlm listens on {host}:{port}, where containers reach the host."
        return [Finding("OK", "listen-docker0", text_ok)], reachable[0]
    if any((la.host or "") in ("docker0", *_WILDCARDS) for la in cfg.listen):
        return [Finding("OK", "listen-docker0", f"{path}: Listen {shown}.")], None
    where = docker0 or "usually 172.17.0.1"
    return [
        Finding(
            "FAIL",
            "listen-not-docker0",
            f"{path}: pycntlm listens on {shown} only. Containers reach the host through "
            f"docker0 ({where}), not there, so jobs cannot use the proxy.",
            fix=f"add `Listen {docker0 or '172.17.0.1'}:3128` (pycntlm setup does)",
        )
    ], None


def check_dropin(root: Path, rel: str, unit: str, expected: Address | None) -> list[Finding]:
    """A service's http-proxy.conf: present, both proxy variables, pointing at pycntlm."""
    path = root / rel
    text, problem = _read(path)
    if problem is not None:
        return [problem]
    if text is None:
        return [
            Finding(
                "FAIL",
                "dropin-missing",
                f"{path} does not exist: {unit}.service gets no proxy variables, so "
                f"{_dropin_role(unit)} cannot reach the internet.",
                fix=f"pycntlm setup --{unit}, then systemctl daemon-reload and restart {unit}",
            )
        ]
    env = model.parse_dropin(text)
    where = f"{unit} drop-in"
    found: list[Finding] = []
    for name in ("HTTP_PROXY", "HTTPS_PROXY"):
        value = env.get(name, env.get(name.lower()))
        if value is None:
            found.append(
                Finding(
                    "FAIL",
                    "dropin-incomplete",
                    f"{path} sets no {name}: {unit} sends those requests without the proxy.",
                    fix=f"pycntlm setup --{unit} rewrites the file",
                )
            )
        else:
            found += noproxy_lint.lint_proxy_url(name, value, where, expected, False)
    no_proxy = env.get("NO_PROXY", env.get("no_proxy"))
    if no_proxy is not None:
        found += noproxy_lint.lint_no_proxy(no_proxy, where)
    if not found:
        found.append(Finding("OK", "dropin", f"{path}: {unit} uses pycntlm."))
    return found


def _dropin_role(unit: str) -> str:
    return "docker pull" if unit == "docker" else "the runner (job requests, artifacts)"


def check_runners(root: Path, expected: Address | None) -> tuple[list[Finding], bool]:
    """Every [[runners]] of config.toml; returns the findings and whether one uses dind."""
    path = root / model.RUNNER_TOML
    text, problem = _read(path)
    if problem is not None:
        return [problem], False
    if text is None:
        return [
            Finding(
                "FAIL",
                "runner-config-missing",
                f"{path} does not exist: no runner is registered here.",
                fix="gitlab-runner register, then pycntlm setup --gitlab-runner",
            )
        ], False
    try:
        runners = tomllib.loads(text).get("runners")
    except tomllib.TOMLDecodeError as exc:
        msg = f"{path} is not valid TOML ({exc}): gitlab-runner cannot load it either."
        return [Finding("FAIL", "runner-config-invalid", msg, fix="correct the file")], False
    if not isinstance(runners, list) or not runners:
        msg = f"{path} has no [[runners]]: no runner is registered here."
        return [Finding("FAIL", "runner-none", msg, fix="gitlab-runner register")], False
    found: list[Finding] = []
    dind = False
    for runner in runners:
        findings, uses_dind = _check_runner(runner if isinstance(runner, dict) else {}, expected)
        found += findings
        dind = dind or uses_dind
    return found, dind


def _check_runner(runner: dict[str, Any], expected: Address | None) -> tuple[list[Finding], bool]:
    name = str(runner.get("name", "?"))
    where = f"runner {name!r}"
    entries = runner.get("environment")
    env = {}
    for entry in entries if isinstance(entries, list) else []:
        key, sep, value = str(entry).partition("=")
        if sep:
            env[key.strip()] = value
    docker = runner.get("docker")
    docker = docker if isinstance(docker, dict) else {}
    build = str(runner.get(model.BUILD_HOOK, ""))
    dind = docker.get("privileged") is True or ".docker/config.json" in build
    unset = [v for v in ("http_proxy", "https_proxy") if v not in env and v.upper() not in env]
    fix = f"pycntlm setup --gitlab-runner --runner {name}"
    if len(unset) == 2:
        return [
            Finding(
                "FAIL",
                "runner-env-missing",
                f"{where}: its job containers get no proxy variables, so git clone, package "
                "managers and docker in jobs try to go direct and time out.",
                fix=fix,
            )
        ], dind
    found = [
        Finding(
            "FAIL",
            "runner-env-incomplete",
            f"{where}: sets no {var} or {var.upper()}, so {var.split('_')[0]}:// requests in "
            "its jobs do not use the proxy.",
            fix=fix,
        )
        for var in unset
    ]
    contained = runner.get("executor") != "shell" and docker.get("network_mode") != "host"
    found += noproxy_lint.lint_cases(env, where)
    for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        if key in env:
            found += noproxy_lint.lint_proxy_url(key, env[key], where, expected, contained)
    for no_proxy in dict.fromkeys(env[k] for k in ("no_proxy", "NO_PROXY") if k in env):
        found += noproxy_lint.lint_no_proxy(no_proxy, where)
    found += _hooks(runner, name, env, dind)
    if not found:
        found.append(Finding("OK", "runner", f"{where}: jobs get the proxy in both cases."))
    return found, dind


def _hooks(runner: dict[str, Any], name: str, env: dict[str, str], dind: bool) -> list[Finding]:
    """The git hook, and for dind: NO_PROXY's docker entries and the config.json script."""
    where = f"runner {name!r}"
    found: list[Finding] = []
    if dind:
        found += noproxy_lint.lint_dind(env.get("NO_PROXY", env.get("no_proxy", "")), where)
        if ".docker/config.json" not in str(runner.get(model.BUILD_HOOK, "")):
            found.append(_no_docker_config(name))
    hooks = (str(runner.get(model.GIT_HOOK, "")), str(runner.get(model.GIT_HOOK_LEGACY, "")))
    if not any("http.proxy" in hook for hook in hooks):
        found.append(
            Finding(
                "WARN",
                "runner-git-hook-missing",
                f"{where}: neither {model.GIT_HOOK} nor {model.GIT_HOOK_LEGACY} sets git's "
                "http.proxy, as GitLab's guide does; git then relies on http_proxy and "
                "https_proxy alone when it fetches the sources.",
                fix=f"pycntlm setup --gitlab-runner --runner {name}",
            )
        )
    return found


def _no_docker_config(name: str) -> Finding:
    return Finding(
        "WARN",
        "dind-docker-config-missing",
        f"runner {name!r}: runs Docker-in-Docker, but no {model.BUILD_HOOK} writes "
        "$HOME/.docker/config.json: containers the job's docker CLI starts (docker build "
        "RUN steps, docker run) get no proxy variables.",
        fix=f"pycntlm setup --gitlab-runner --dind --runner {name}",
    )


def check_root_docker_config(root: Path, expected: Address | None) -> list[Finding]:
    """root's ~/.docker/config.json: the docker CLI passes proxies.default to containers."""
    path = root / model.ROOT_DOCKER_CONFIG
    text, problem = _read(path)
    if problem is not None:
        return [problem]
    try:
        data = json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        msg = f"{path} is not valid JSON ({exc.msg}, line {exc.lineno}); docker ignores it."
        return [Finding("FAIL", "docker-config-invalid", msg, fix="correct the file")]
    default = data.get("proxies", {}).get("default") if isinstance(data, dict) else None
    if not isinstance(default, dict) or not default.get("httpProxy"):
        return [
            Finding(
                "WARN",
                "docker-config-missing",
                f"{path} has no proxies.default: containers that root's docker CLI starts on "
                "this host get no proxy variables (GitLab's guide sets it for dind).",
                fix="pycntlm setup --dind",
            )
        ]
    where = str(path)
    found: list[Finding] = []
    for key in ("httpProxy", "httpsProxy"):
        if isinstance(default.get(key), str):
            found += noproxy_lint.lint_proxy_url(key, default[key], where, expected, True)
    no_proxy = str(default.get("noProxy", ""))
    found += noproxy_lint.lint_no_proxy(no_proxy, where) + noproxy_lint.lint_dind(no_proxy, where)
    return found or [Finding("OK", "docker-config", f"{where}: proxies.default uses pycntlm.")]
