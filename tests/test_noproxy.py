"""NoProxy: cntlm wildcard semantics, normalisation, cache, and properties."""

from __future__ import annotations

import fnmatch
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycntlm import noproxy
from pycntlm.noproxy import NoProxy

CNTLM_SAMPLE = ["localhost, 127.0.0.*, 10.*, 192.168.*, *.corp.example"]


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("localhost", True),
        ("LocalHost", True),
        ("localhost.", True),
        ("localhost2", False),
        ("mylocalhost", False),
        ("127.0.0.1", True),
        ("127.0.0.255", True),
        ("127.0.1.1", False),
        ("10.1.2.3", True),
        ("10", False),
        ("100.1.2.3", False),
        ("192.168.0.1", True),
        ("192.169.0.1", False),
        ("a.corp.example", True),
        ("a.b.corp.example", True),
        ("A.Corp.Example.", True),
        ("corp.example", False),
        ("xcorp.example", False),
        ("a.corp.example.com", False),
        ("example.com", False),
        ("", False),
    ],
)
def test_cntlm_sample_list(host: str, expected: bool) -> None:
    assert NoProxy(CNTLM_SAMPLE).matches(host) is expected


@pytest.mark.parametrize(
    ("patterns", "host", "expected"),
    [
        (["f?o"], "foo", True),
        (["f?o"], "fo", False),
        (["f?o"], "fooo", False),
        (["f?o"], "f.o", True),
        (["*"], "anything.at.all", True),
        (["*"], "", True),
        (["a*b*c"], "abc", True),
        (["a*b*c"], "a-b-b-c", True),
        (["a*b*c"], "a-c-b", False),
        (["*a"], "bab", False),
        (["*ab"], "aab", True),
        (["a*"], "a", True),
        (["**.x"], "y.x", True),
        (["*.*"], "nodots", False),
        (["??"], "ab", True),
        (["??"], "abc", False),
        # '[' and ']' are literal characters, not fnmatch classes.
        (["[ab]"], "a", False),
        (["x[ab]"], "x[ab]", True),
        (["x[ab]"], "xa", False),
        # Regex metacharacters are literal too.
        (["a+b"], "a+b", True),
        (["a+b"], "aab", False),
        (["a.b"], "axb", False),
        (["(x)|y"], "y", False),
        # Separators: commas, spaces, tabs, several at once; empty entries ignored.
        (["a,b c\tq,, ,d"], "c", True),
        (["a,b c\tq,, ,d"], "q", True),
        (["a,b c\tq,, ,d"], "b c", False),
        ([" , "], "", False),
        ([], "localhost", False),
        (["", ""], "", False),
        (["one", "two"], "two", True),
    ],
)
def test_wildcards_and_separators(patterns: list[str], host: str, expected: bool) -> None:
    assert NoProxy(patterns).matches(host) is expected


@pytest.mark.parametrize(
    ("patterns", "host", "expected"),
    [
        (["::1"], "::1", True),
        (["[::1]"], "::1", True),
        (["::1"], "[::1]", True),
        (["::1"], "0:0:0:0:0:0:0:1", True),
        (["0:0::1"], "::1", True),
        (["::1"], "::2", False),
        (["fe80::*"], "fe80::1", True),
        (["FE80::*"], "fe80::abcd", True),
        (["fd00:*"], "fe80::1", False),
        (["2001:db8::1"], "2001:DB8:0::1", True),
        (["[2001:db8::*]"], "2001:db8::42", True),
        (["example.com."], "example.com", True),
        (["example.com"], "Example.COM.", True),
        (["example.com"], "example.com..", False),
    ],
)
def test_ipv6_brackets_and_trailing_dot(patterns: list[str], host: str, expected: bool) -> None:
    assert NoProxy(patterns).matches(host) is expected


def test_entries_are_normalised_deduplicated_and_ordered() -> None:
    matcher = NoProxy(["B.example., [::1], a", "b.example", "0:0::1"])
    assert matcher.entries == ("b.example", "::1", "a")
    assert not matcher.is_empty
    assert NoProxy([" ,, "]).is_empty
    assert NoProxy([]).is_empty


def test_cache_is_bounded_and_keeps_answers_right() -> None:
    matcher = NoProxy(["*.corp.example"])
    for i in range(noproxy.CACHE_SIZE * 3):
        assert matcher.matches(f"h{i}.corp.example")
        assert not matcher.matches(f"h{i}.other.example")
    assert len(matcher._cache) <= noproxy.CACHE_SIZE
    # Hosts evicted long ago still get the right verdict.
    assert matcher.matches("h0.corp.example")
    assert not matcher.matches("h0.other.example")


def test_pathological_pattern_is_not_exponential() -> None:
    matcher = NoProxy(["*a*a*a*a*a*a*b", "*?*?*?*?*?*?*?*?*c"])
    host = "a" * 20_000
    started = time.perf_counter()
    assert not matcher.matches(host)
    assert time.perf_counter() - started < 0.5


# Hosts and patterns without separators, brackets or a trailing dot: normalisation is then
# just lower-casing, and fnmatch (no '[' in the alphabet) is an independent oracle.
_ALPHABET = "ab.-Z9"
_hosts = st.text(alphabet=_ALPHABET, max_size=12).filter(lambda s: not s.endswith("."))
_patterns = st.text(alphabet=_ALPHABET + "*?", min_size=1, max_size=10).filter(
    lambda s: not s.endswith(".")
)


@given(_patterns, _hosts)
def test_agrees_with_fnmatch_oracle(pattern: str, host: str) -> None:
    expected = fnmatch.fnmatchcase(host.lower(), pattern.lower())
    assert NoProxy([pattern]).matches(host) is expected


# Anything but separators (white space, comma) and wildcards.
_literal_hosts = st.text(
    alphabet=st.characters(
        blacklist_categories=("Zs", "Zl", "Zp", "Cc", "Cs"), blacklist_characters=",*?"
    ),
    min_size=1,
    max_size=40,
)


@given(_literal_hosts)
def test_a_literal_host_matches_itself(host: str) -> None:
    assert NoProxy([host]).matches(host)
    assert NoProxy([f"other, {host}"]).matches(host)


@given(st.text())
def test_star_matches_everything(host: str) -> None:
    assert NoProxy(["*"]).matches(host)


@given(st.lists(st.text(), max_size=4), st.text())
def test_arbitrary_strings_never_raise(patterns: list[str], host: str) -> None:
    assert NoProxy(patterns).matches(host) in (True, False)
