"""The `Listen` lines of a cntlm.conf, read and added to as text (sans-IO).

Owns: finding the Listen addresses a cntlm.conf gives, and adding `Listen IP:PORT` after the
last Listen line (or at the end), every other line kept as it is.
Must not: read or write files, or change any other keyword (config.py owns their meaning).
"""

from __future__ import annotations

from pycntlm.cliflags import config_lines, host_port


def listens(text: str, path: str) -> list[tuple[str | None, int]]:
    """(host or None, port) of each well-formed Listen line, in order."""
    found: list[tuple[str | None, int]] = []
    for _, keyword, value in config_lines(text, path):
        if keyword.lower() == "listen" and value is not None:
            parsed = host_port(value)
            if parsed is not None:
                found.append(parsed)
    return found


def has_listen(text: str, path: str, host: str, port: int) -> bool:
    """Whether a Listen line covers host:port: that address, docker0:port (pycntlm resolves the
    interface), a wildcard address, or a bare port with `Gateway yes` (all interfaces)."""
    gateway = any(
        keyword.lower() == "gateway" and (value or "").lower() in ("yes", "1", "true", "on")
        for _, keyword, value in config_lines(text, path)
    )
    wanted = {host.lower(), "docker0", "0.0.0.0", "::"}
    return any(
        p == port and (h.lower() in wanted if h is not None else gateway)
        for h, p in listens(text, path)
    )


def ensure_listen(text: str, path: str, host: str, port: int) -> str:
    """The text with a `Listen host:port` line; unchanged when it has one already."""
    if has_listen(text, path, host, port):
        return text
    shown = f"[{host}]" if ":" in host else host
    line = f"Listen\t\t{shown}:{port}\t# docker0: containers reach pycntlm here (pycntlm setup)"
    lines = text.split("\n")
    last = max(
        (n for n, keyword, _ in config_lines(text, path) if keyword.lower() == "listen"),
        default=None,
    )
    if last is None:
        body = text if text.endswith("\n") or not text else text + "\n"
        return body + line + "\n"
    lines.insert(last, line)
    return "\n".join(lines)
