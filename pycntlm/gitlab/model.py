"""What `pycntlm setup` writes for Docker and GitLab Runner, as pure values (sans-IO).

Owns: the proxy settings (listen address, NO_PROXY list, dind), the file paths under a root, and
the text of every generated piece: systemd drop-ins, the job-container `environment` entries, the
shell scripts for config.toml hooks, root's Docker config.json; parsing drop-ins back; Finding.
Must not: read or write files, run commands or touch the network.
"""

from __future__ import annotations

import json
import re
import shlex
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from pycntlm.cliflags import host_port
from pycntlm.errors import ConfigError

DEFAULT_PORT = 3128
BASE_NO_PROXY = ("localhost", "127.0.0.1")
DIND_NO_PROXY = ("docker:2375", "docker:2376")
UPPER = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
LOWER = ("http_proxy", "https_proxy", "no_proxy")
OWNED_NAMES = frozenset(name.lower() for name in UPPER)

# Paths relative to the root (normally "/").
CNTLM_CONF = "etc/cntlm.conf"
DOCKER_DROPIN = "etc/systemd/system/docker.service.d/http-proxy.conf"
RUNNER_DROPIN = "etc/systemd/system/gitlab-runner.service.d/http-proxy.conf"
RUNNER_TOML = "etc/gitlab-runner/config.toml"
ROOT_DOCKER_CONFIG = "root/.docker/config.json"

GIT_HOOK = "pre_get_sources_script"
GIT_HOOK_LEGACY = "pre_clone_script"  # the name before GitLab Runner 15.9/16.0
BUILD_HOOK = "pre_build_script"
# git reads only http.proxy, for http:// and https:// remotes alike ("https.proxy" is no git key).
GIT_HOOK_LINE = 'git config --global http.proxy "$HTTP_PROXY"'

# A NO_PROXY entry we are willing to write into systemd, TOML and shell text.
_ENTRY_RE = re.compile(r"[A-Za-z0-9._:*/\[\]-]+")
_SPLIT_RE = re.compile(r"[,\s]+")

Level = Literal["OK", "WARN", "FAIL"]


@dataclass(frozen=True)
class Finding:
    """One line of `pycntlm doctor`: a level, a stable code, the explanation, and the fix."""

    level: Level
    code: str
    text: str
    fix: str = ""


_TAGS = {"OK": "[ OK ]", "WARN": "[WARN]", "FAIL": "[FAIL]"}


def format_finding(finding: Finding) -> str:
    """`[FAIL] code: explanation`, then an indented `fix:` line when there is a fix."""
    line = f"{_TAGS[finding.level]} {finding.code}: {finding.text}"
    return f"{line}\n       fix: {finding.fix}" if finding.fix else line


@dataclass(frozen=True)
class Settings:
    """Where pycntlm listens for containers, and what goes straight past it."""

    host: str
    port: int
    no_proxy: tuple[str, ...]
    dind: bool = False

    @property
    def proxy_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def no_proxy_text(self) -> str:
        return ",".join(self.no_proxy)


def parse_listen(text: str) -> tuple[str, int]:
    """ "IP:PORT" or "[v6]:PORT" -> (host, port); ConfigError when malformed."""
    parsed = host_port(text.strip())
    if parsed is None or parsed[0] is None:
        raise ConfigError(f"--listen needs IP:PORT or [IPv6]:PORT, got {text!r}")
    return parsed[0], parsed[1]


def split_list(text: str) -> list[str]:
    """A NO_PROXY-style list as written by a user: commas and/or white space separate."""
    return [entry for entry in _SPLIT_RE.split(text) if entry]


def gitlab_hostname(text: str) -> str:
    """`gitlab.corp.example`, `gitlab.corp.example:8443` or a URL -> the host name."""
    if "://" in text:
        host = urllib.parse.urlsplit(text).hostname
        if not host:
            raise ConfigError(f"--gitlab-host: no host name in {text!r}")
        return host
    return text.strip().rstrip("/")


def build_no_proxy(extra: Iterable[str], gitlab_host: str | None, dind: bool) -> tuple[str, ...]:
    """The NO_PROXY list: loopback, the GitLab host, the user's entries, dind's two endpoints;
    without duplicates (case-insensitive), in that order. Unsafe characters are refused."""
    entries = [*BASE_NO_PROXY]
    if gitlab_host:
        entries.append(gitlab_hostname(gitlab_host))
    entries.extend(extra)
    if dind:
        entries.extend(DIND_NO_PROXY)
    seen: set[str] = set()
    result: list[str] = []
    for entry in entries:
        if not _ENTRY_RE.fullmatch(entry):
            raise ConfigError(
                f"NO_PROXY entry {entry!r} has characters that do not belong in a host name, "
                "IP address, domain suffix or CIDR range"
            )
        if entry.lower() not in seen:
            seen.add(entry.lower())
            result.append(entry)
    return tuple(result)


def service_env(settings: Settings, lower: bool) -> list[tuple[str, str]]:
    """The variables of a service drop-in: upper-case, and the lower-case set when asked."""
    values = (settings.proxy_url, settings.proxy_url, settings.no_proxy_text)
    pairs = list(zip(UPPER, values, strict=True))
    if lower:
        pairs += list(zip(LOWER, values, strict=True))
    return pairs


def render_dropin(unit: str, settings: Settings, lower: bool) -> str:
    """The systemd drop-in http-proxy.conf for `unit` (docker or gitlab-runner)."""
    lines = [
        f"# Written by `pycntlm setup`: {unit}.service reaches the network through pycntlm",
        f"# on {settings.proxy_url}. `pycntlm doctor` checks it; `pycntlm setup` rewrites it.",
        "[Service]",
    ]
    lines += [f'Environment="{name}={value}"' for name, value in service_env(settings, lower)]
    return "\n".join(lines) + "\n"


def parse_dropin(text: str) -> dict[str, str]:
    """The variables a drop-in's `Environment=` lines set (in [Service]; an empty assignment
    clears the list, as systemd does). Quoting is read like a shell would: close enough for
    the values proxies use."""
    env: dict[str, str] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line
            continue
        key, sep, value = line.partition("=")
        if section != "[Service]" or not sep or key.strip() != "Environment":
            continue
        if not value.strip():
            env.clear()
            continue
        try:
            words = shlex.split(value)
        except ValueError:
            continue
        for word in words:
            name, eq, val = word.partition("=")
            if eq:
                env[name] = val
    return env


def container_env(settings: Settings) -> list[str]:
    """The six `environment` entries of a [[runners]] table, lower-case first."""
    values = (settings.proxy_url, settings.proxy_url, settings.no_proxy_text)
    pairs = list(zip(LOWER, values, strict=True)) + list(zip(UPPER, values, strict=True))
    return [f"{name}={value}" for name, value in pairs]


def env_name(entry: str) -> str:
    """The variable name of an `environment` entry "NAME=value"."""
    return entry.partition("=")[0].strip()


def docker_config_script() -> str:
    """The pre_build_script line that writes $HOME/.docker/config.json in a job container from
    the job's HTTP_PROXY / HTTPS_PROXY / NO_PROXY. The JSON is a printf format made by
    json.dumps; each value is JSON-escaped at run time by sed (backslash and double quote)."""
    template = {"proxies": {"default": {"httpProxy": "%s", "httpsProxy": "%s", "noProxy": "%s"}}}
    fmt = json.dumps(template, separators=(",", ":")) + "\\n"
    sed = shlex.quote(r's/[\\"]/\\&/g')
    args = " ".join(f'"$(printf %s "${name}" | sed {sed})"' for name in UPPER)
    target = '"$HOME/.docker/config.json"'
    return f'mkdir -p "$HOME/.docker" && printf {shlex.quote(fmt)} {args} > {target}'


def merged_script(existing: str | None, line: str) -> str:
    """A hook script that runs `line`: the user's script kept, ours added on a line of its own
    unless one of its lines already is ours."""
    if existing is None or not existing.strip():
        return line
    if line in (part.strip() for part in existing.split("\n")):
        return existing
    if existing.endswith("\n"):
        return existing + line + "\n"
    return existing + "\n" + line


def root_docker_config(existing: str | None, settings: Settings, path: str) -> str:
    """root's ~/.docker/config.json with proxies.default set; other keys are kept. An existing
    file whose proxies already match is returned unchanged (byte for byte)."""
    data: object = {}
    if existing is not None and existing.strip():
        try:
            data = json.loads(existing)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"not valid JSON ({exc.msg}, line {exc.lineno})", path) from None
    if not isinstance(data, dict):
        raise ConfigError("not a JSON object", path)
    proxies = data.setdefault("proxies", {})
    default = proxies.setdefault("default", {}) if isinstance(proxies, dict) else None
    if not isinstance(default, dict):
        raise ConfigError('"proxies" / "default" is not a JSON object', path)
    wanted = {
        "httpProxy": settings.proxy_url,
        "httpsProxy": settings.proxy_url,
        "noProxy": settings.no_proxy_text,
    }
    if existing is not None and all(default.get(k) == v for k, v in wanted.items()):
        return existing
    default.update(wanted)
    return json.dumps(data, indent="\t") + "\n"
