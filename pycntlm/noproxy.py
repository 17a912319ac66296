"""NoProxy host patterns, sans-IO.

Owns: cntlm's wildcard matching of host names and IP literals (`*` any run of characters, dots
included; `?` one character; entries separated by commas and/or white space; case-insensitive;
the whole host must match). `[` and `]` are literal, not character classes.
Must not: resolve names or do any other I/O.

Normalisation, applied to the host and to every pattern entry alike: lower-cased, one pair of
surrounding brackets removed ("[::1]" -> "::1"), one trailing dot removed ("Example.com." ->
"example.com"), and an IPv6 literal without wildcards rewritten to its compressed form
("0:0::1" -> "::1").
"""

from __future__ import annotations

import contextlib
import ipaddress
import re

CACHE_SIZE = 1024
"""How many recent matches() verdicts are remembered (oldest dropped first)."""

_SEPARATORS = re.compile(r"[,\s]+")


def _normalise(text: str) -> str:
    """One host or pattern entry in the form that is compared."""
    text = text.strip().lower()
    if len(text) >= 2 and text[0] == "[" and text[-1] == "]":
        text = text[1:-1]
    if len(text) >= 2 and text[-1] == ".":
        text = text[:-1]
    if ":" in text and "*" not in text and "?" not in text:
        with contextlib.suppress(ValueError):
            text = ipaddress.IPv6Address(text).compressed
    return text


def _literal(segment: str) -> str:
    """A star-free piece of an entry as a regular expression: `?` is any one character."""
    return ".".join(re.escape(piece) for piece in segment.split("?"))


def _translate(entry: str) -> str:
    """A normalised wildcard entry as a regular expression, to be used with fullmatch().

    Each piece between two stars is matched at its earliest position inside an atomic group,
    which is always enough for `*`/`?` globs and keeps matching linear instead of letting the
    regex engine backtrack through every way of splitting the host (`*a*a*a*b` on "aaaa...").
    """
    segments = entry.split("*")
    if len(segments) == 1:
        return _literal(entry)
    first, *middle, last = segments
    inner = "".join(f"(?>.*?{_literal(segment)})" for segment in middle if segment)
    return f"{_literal(first)}{inner}.*{_literal(last)}"


def split_entries(patterns: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Every non-empty entry of every pattern, normalised, duplicates dropped, order kept."""
    entries: dict[str, None] = {}
    for pattern in patterns:
        for raw in _SEPARATORS.split(pattern):
            if raw:
                entry = _normalise(raw)
                if entry:
                    entries[entry] = None
    return tuple(entries)


class NoProxy:
    """NoProxy(["localhost", "127.0.0.*", "10.*", "*.corp.example"]).matches("a.corp.example")

    All entries are compiled once into one anchored regular expression; verdicts for the last
    CACHE_SIZE distinct hosts are cached, so matches() is a dict look-up for repeat hosts.
    """

    def __init__(self, patterns: tuple[str, ...] | list[str]) -> None:
        self._entries = split_entries(patterns)
        self._regex: re.Pattern[str] | None = None
        if self._entries:
            alternatives = "|".join(_translate(entry) for entry in self._entries)
            self._regex = re.compile(f"(?:{alternatives})", re.DOTALL)
        self._cache: dict[str, bool] = {}

    @property
    def entries(self) -> tuple[str, ...]:
        """The normalised entries, in configured order."""
        return self._entries

    @property
    def is_empty(self) -> bool:
        """True when there is no entry at all (nothing ever matches)."""
        return self._regex is None

    def matches(self, host: str) -> bool:
        """True when `host` (no port; IPv6 with or without brackets) matches any entry."""
        cached = self._cache.get(host)
        if cached is not None:
            return cached
        if self._regex is None:
            return False
        verdict = self._regex.fullmatch(_normalise(host)) is not None
        if len(self._cache) >= CACHE_SIZE:
            del self._cache[next(iter(self._cache))]
        self._cache[host] = verdict
        return verdict

    def __repr__(self) -> str:
        return f"NoProxy({list(self._entries)!r})"
