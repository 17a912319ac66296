"""Acl: parsing Allow/Deny networks and first-match decisions for IPv4 and IPv6 clients."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycntlm.acl import ANY, Acl, parse_network
from pycntlm.config import AclRule


def allow(network: str) -> AclRule:
    return AclRule(allow=True, network=network)


def deny(network: str) -> AclRule:
    return AclRule(allow=False, network=network)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1", "127.0.0.1/32"),
        (" 127.0.0.1 ", "127.0.0.1/32"),
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("10.1.2.3/8", "10.0.0.0/8"),
        ("192.168.1.77/24", "192.168.1.0/24"),
        ("10.0.0.0/255.0.0.0", "10.0.0.0/8"),
        ("0.0.0.0/0", "0.0.0.0/0"),
        ("::1", "::1/128"),
        ("[::1]", "::1/128"),
        ("::/0", "::/0"),
        ("2001:db8::1/32", "2001:db8::/32"),
        ("[2001:db8::]/32", "2001:db8::/32"),
        ("[2001:db8::/32]", "2001:db8::/32"),
        ("::ffff:10.0.0.0/104", "::ffff:a00:0/104"),
    ],
)
def test_parse_network_single(text: str, expected: str) -> None:
    assert parse_network(text) == ipaddress.ip_network(expected)


def test_parse_network_zero_slash_zero_is_both_families() -> None:
    assert parse_network("0/0") == ANY
    assert parse_network(" 0/0 ") == (
        ipaddress.IPv4Network("0.0.0.0/0"),
        ipaddress.IPv6Network("::/0"),
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("localhost", "not an IP address"),
        ("10/8", "write the full address"),
        ("10", "write the full address"),
        ("10.0.0.256", "not an IP address"),
        ("10.0.0.0/33", "out of range 0-32"),
        ("::/129", "out of range 0-128"),
        ("10.0.0.0/x", "bad prefix length"),
        ("10.0.0.0/-1", "bad prefix length"),
        ("10.0.0.0/", "bad prefix length"),
        ("10.0.0.0/8/8", "bad prefix length"),
        ("10.0.0.0/255.0.255.0", "bad network"),
        ("[::1", "unbalanced"),
        ("[::1]]", "unbalanced"),
        ("[::1]x", "after ']'"),
        ("::1]", "misplaced"),
        ("fe80::1%eth0", "zone"),
        ("0/1", "write the full address"),
    ],
)
def test_parse_network_rejects_with_reason(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_network(text)


@given(st.text(max_size=30))
def test_parse_network_raises_only_value_error(text: str) -> None:
    try:
        parse_network(text)
    except ValueError as exc:
        assert str(exc)


TYPICAL = (allow("127.0.0.1"), allow("192.168.0.0/16"), deny("0/0"))


@pytest.mark.parametrize(
    ("rules", "client", "expected"),
    [
        # The cntlm sample: loopback and a LAN allowed, everything else denied.
        (TYPICAL, "127.0.0.1", True),
        (TYPICAL, "192.168.5.6", True),
        (TYPICAL, "10.0.0.1", False),
        (TYPICAL, "127.0.0.2", False),
        # Deny 0/0 covers IPv6 clients too (cntlm's gap, closed).
        (TYPICAL, "2001:db8::1", False),
        (TYPICAL, "::1", False),
        # IPv4-mapped IPv6 clients are matched as IPv4.
        (TYPICAL, "::ffff:127.0.0.1", True),
        (TYPICAL, "::ffff:192.168.1.1", True),
        (TYPICAL, "::ffff:10.0.0.1", False),
        (TYPICAL, "[::ffff:127.0.0.1]", True),
        # IPv4-only or IPv6-only "everything".
        ((deny("0.0.0.0/0"),), "10.0.0.1", False),
        ((deny("0.0.0.0/0"),), "2001:db8::1", True),
        ((deny("0.0.0.0/0"),), "::ffff:10.0.0.1", False),
        ((deny("::/0"),), "2001:db8::1", False),
        ((deny("::/0"),), "10.0.0.1", True),
        ((deny("::/0"),), "::ffff:10.0.0.1", True),
        # IPv6 rules.
        ((allow("::1"), deny("0/0")), "::1", True),
        ((allow("[::1]"), deny("0/0")), "[::1]", True),
        ((allow("fd00::/8"), deny("0/0")), "fd12:3456::1", True),
        ((allow("fd00::/8"), deny("0/0")), "fe80::1", False),
        ((allow("fe80::/10"), deny("0/0")), "fe80::1%eth0", True),
        # A host rule is exact.
        ((allow("10.0.0.1"), deny("0/0")), "10.0.0.2", False),
        # Host bits in the rule do not narrow it.
        ((allow("10.9.9.9/8"), deny("0/0")), "10.1.1.1", True),
    ],
)
def test_decisions(rules: tuple[AclRule, ...], client: str, expected: bool) -> None:
    assert Acl(rules).allows(client) is expected


def test_first_match_wins_order_matters() -> None:
    deny_first = Acl((deny("10.0.0.0/8"), allow("10.1.0.0/16")))
    allow_first = Acl((allow("10.1.0.0/16"), deny("10.0.0.0/8")))
    assert not deny_first.allows("10.1.2.3")
    assert allow_first.allows("10.1.2.3")
    assert not allow_first.allows("10.2.0.1")


def test_no_rules_allows_everyone() -> None:
    acl = Acl(())
    assert acl.is_empty
    assert acl.allows("10.0.0.1")
    assert acl.allows("2001:db8::1")


def test_rules_without_a_match_allow_like_cntlm() -> None:
    acl = Acl((deny("10.0.0.0/8"),))
    assert not acl.is_empty
    assert acl.allows("192.168.0.1")
    assert acl.allows("::1")
    assert not acl.allows("10.0.0.1")


@pytest.mark.parametrize("client", ["", "localhost", "10.0.0", "not-an-ip", "1.2.3.4:80", "[::1"])
def test_unparseable_client_is_denied_even_without_rules(client: str) -> None:
    assert not Acl(()).allows(client)
    assert not Acl((allow("0/0"),)).allows(client)


def test_invalid_rule_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="not an IP address"):
        Acl((allow("bogus"),))


def test_rules_are_kept() -> None:
    rules = (allow("127.0.0.1"), deny("0/0"))
    assert Acl(rules).rules == rules


@given(st.ip_addresses())
def test_allow_everything_then_deny_everything(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    assert Acl((allow("0/0"), deny("0/0"))).allows(str(address))
    assert not Acl((deny("0/0"), allow("0/0"))).allows(str(address))


@given(st.ip_addresses(v=4), st.integers(min_value=0, max_value=32))
def test_mapped_and_plain_ipv4_agree(address: ipaddress.IPv4Address, prefix: int) -> None:
    acl = Acl((allow(f"{address}/{prefix}"), deny("0/0")))
    mapped = f"::ffff:{address}"
    assert acl.allows(str(address))
    assert acl.allows(mapped)
    other = ipaddress.IPv4Address(int(address) ^ 0x80000000)
    assert acl.allows(str(other)) is (prefix == 0)
    assert acl.allows(f"::ffff:{other}") is (prefix == 0)
