"""Lint proxy variables as clients other than pycntlm read them (sans-IO).

Owns: what is wrong with a NO_PROXY list (prefix wildcards, other wildcards, CIDR ranges, spaces,
Docker-in-Docker's endpoints), with a proxy URL (no scheme, loopback inside a container, not
pointing at pycntlm), and with a set of variables (one letter case only, cases disagreeing); each
as a Finding that names the tools concerned and the fix.
Must not: read files or touch the network; pycntlm's own NoProxy keyword is noproxy.py's.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Mapping

from pycntlm.gitlab.model import DIND_NO_PROXY, LOWER, UPPER, Finding, Level, split_list

_CIDR_RE = re.compile(r"[0-9A-Fa-f.:\[\]]+/\d{1,3}")


def lint_no_proxy(value: str, where: str) -> list[Finding]:
    """Findings for one NO_PROXY value; [] when every entry works in every common client."""
    found: list[Finding] = []
    stripped = value.strip()
    if " " in stripped or "\t" in stripped:
        found.append(
            Finding(
                "WARN",
                "noproxy-spaces",
                f"{where}: NO_PROXY {value!r} contains spaces. Go and curl trim them, but tools "
                "that split on commas only keep the blank (' example.com' then matches "
                "nothing), and a list separated by spaces alone is one long entry everywhere.",
                fix="separate the entries with commas and no spaces: "
                + repr(",".join(split_list(value))),
            )
        )
    for entry in split_list(value):
        found.extend(_lint_entry(entry, where))
    return found


def _lint_entry(entry: str, where: str) -> list[Finding]:
    if entry == "*":
        return [
            Finding(
                "WARN",
                "noproxy-everything",
                f"{where}: NO_PROXY '*' sends everything direct: no client uses the proxy.",
                fix="list only the hosts and domain suffixes that must bypass pycntlm",
            )
        ]
    if entry.startswith("*.") and "*" not in entry[2:]:
        suffix = entry[2:]
        return [
            Finding(
                "FAIL",
                "noproxy-prefix-wildcard",
                f"{where}: NO_PROXY entry {entry!r} is a prefix wildcard. NO_PROXY entries are "
                "domain suffixes, not patterns: Go programs (dockerd, gitlab-runner, the docker "
                "CLI) drop a leading '*.', but curl, git, wget and Python's urllib take it "
                f"literally, match nothing, and send {suffix} traffic to the proxy.",
                fix=f"write {suffix!r} (the domain and its sub-domains) or {'.' + suffix!r}",
            )
        ]
    if "*" in entry:
        return [
            Finding(
                "FAIL",
                "noproxy-glob",
                f"{where}: NO_PROXY entry {entry!r} uses '*' as a wildcard. No client matches "
                "patterns in NO_PROXY (only a lone '*', and a leading '*.' in Go): the entry "
                "matches nothing. (cntlm's and pycntlm's NoProxy keyword does take wildcards.)",
                fix="list domain suffixes or hosts instead, or put the pattern in the NoProxy "
                "line of cntlm.conf so that pycntlm connects to those hosts directly",
            )
        ]
    if _CIDR_RE.fullmatch(entry) and _is_network(entry):
        return [
            Finding(
                "WARN",
                "noproxy-cidr",
                f"{where}: NO_PROXY entry {entry!r} is a CIDR range. Go programs (dockerd, "
                "gitlab-runner, the docker CLI) and curl 7.86 or later match it, but wget, "
                "Python's urllib, and curl or git built on an older libcurl ignore it; and it "
                "only ever matches URLs written with an IP address, never host names.",
                fix="also list the host names or domain suffixes of those machines, or route "
                "the range with the NoProxy line of cntlm.conf (pycntlm then goes direct)",
            )
        ]
    return []


def _is_network(entry: str) -> bool:
    try:
        ipaddress.ip_network(entry.replace("[", "").replace("]", ""), strict=False)
    except ValueError:
        return False
    return True


def lint_dind(value: str, where: str) -> list[Finding]:
    """Docker-in-Docker: the job's docker client must reach the `docker` service directly."""
    entries = {entry.lower() for entry in split_list(value)}
    missing = [e for e in DIND_NO_PROXY if e not in entries]
    if "docker" in entries or not missing:
        return []
    return [
        Finding(
            "FAIL",
            "dind-no-proxy",
            f"{where}: Docker-in-Docker is in use but NO_PROXY lacks {','.join(missing)}: the "
            "docker client in the job sends its API calls for the dind service to the proxy, "
            "and docker build / push fail. GitLab's guide lists the entries with their ports.",
            fix=f"add {','.join(DIND_NO_PROXY)} to NO_PROXY (pycntlm setup --dind does)",
        )
    ]


def proxy_address(url: str) -> tuple[str, int] | None:
    """(host, port) of a proxy URL, with or without a scheme; None when unreadable."""
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urllib.parse.urlsplit(text)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host:
        return None
    return host, port if port is not None else 80


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def lint_proxy_url(
    name: str,
    value: str,
    where: str,
    expected: tuple[str, int] | None,
    in_container: bool,
) -> list[Finding]:
    """A proxy URL: readable, with a scheme, pointing at pycntlm, reachable from a container."""
    address = proxy_address(value)
    if address is None:
        return [
            Finding(
                "FAIL",
                "proxy-unreadable",
                f"{where}: {name}={value!r} is not a proxy URL.",
                fix="write it as http://HOST:PORT (pycntlm setup does)",
            )
        ]
    found: list[Finding] = []
    if "://" not in value:
        found.append(
            Finding(
                "WARN",
                "proxy-no-scheme",
                f"{where}: {name}={value!r} has no scheme. curl, git and Go programs read it as "
                "http://, but tools that parse it as a strict URL (Node.js's URL parser, used by "
                "npm and yarn, for one) reject it or take the host for the scheme.",
                fix=f"write http://{value.strip()}",
            )
        )
    if in_container and _is_loopback(address[0]):
        found.append(
            Finding(
                "FAIL",
                "proxy-loopback",
                f"{where}: {name} points at {address[0]}, the loopback address. Inside a "
                "container that is the container itself, not the host: every request through "
                "the proxy fails with 'connection refused'.",
                fix="point it at the docker0 address (usually http://172.17.0.1:3128) and make "
                "pycntlm listen there: pycntlm setup --listen 172.17.0.1:3128",
            )
        )
    if expected is not None and (address[0].lower(), address[1]) != (
        expected[0].lower(),
        expected[1],
    ):
        found.append(
            Finding(
                "FAIL",
                "proxy-mismatch",
                f"{where}: {name}={value!r}, but pycntlm listens on {expected[0]}:{expected[1]}: "
                "these requests do not go through pycntlm.",
                fix="run pycntlm setup to rewrite it",
            )
        )
    return found


def lint_cases(env: Mapping[str, str], where: str) -> list[Finding]:
    """Both letter cases of each proxy variable, with the same value."""
    found: list[Finding] = []
    for upper, lower in zip(UPPER, LOWER, strict=True):
        if upper in env and lower not in env:
            found.append(_upper_only(upper, lower, where))
        elif lower in env and upper not in env:
            found.append(
                Finding(
                    "WARN",
                    "env-lower-only",
                    f"{where}: {lower} is set but {upper} is not. curl, git and Go programs "
                    "read it, but there is no standard and some programs look only for the "
                    "upper-case name.",
                    fix=f"set {upper} too, to the same value (pycntlm setup sets both cases)",
                )
            )
        elif upper in env and env[upper] != env[lower]:
            found.append(
                Finding(
                    "WARN",
                    "env-case-differs",
                    f"{where}: {upper}={env[upper]!r} but {lower}={env[lower]!r}: which one "
                    "a tool uses depends on the tool.",
                    fix="give both the same value (pycntlm setup does)",
                )
            )
    return found


def _upper_only(upper: str, lower: str, where: str) -> Finding:
    if upper == "HTTP_PROXY":
        why = (
            "curl and git ignore upper-case HTTP_PROXY and wget reads only http_proxy, so "
            "their plain-http requests in the job do not go through pycntlm"
        )
        level: Level = "FAIL"
    else:
        why = f"wget and some other tools read only {lower}; Go programs and curl read both"
        level = "WARN"
    return Finding(
        level,
        "env-upper-only",
        f"{where}: {upper} is set but {lower} is not: {why}.",
        fix=f"set {lower} too, to the same value (pycntlm setup sets both cases)",
    )
