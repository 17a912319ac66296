"""NoProxy host patterns, sans-IO.

Owns: cntlm's wildcard matching (`*`, `?`, comma/space separated lists, case-insensitive).
Must not: resolve names.
"""

from __future__ import annotations


class NoProxy:
    """NoProxy(["localhost", "127.0.0.*", "10.*", "*.corp.example"]).matches("a.corp.example")"""

    def __init__(self, patterns: tuple[str, ...] | list[str]) -> None:
        raise NotImplementedError

    def matches(self, host: str) -> bool:
        raise NotImplementedError
