"""Allow/Deny over IPv4 and IPv6 networks, first match wins, sans-IO.

Owns: parsing Allow/Deny network text, deciding per client address.
Must not: do I/O (no name resolution: networks and client addresses are IP literals).

Semantics (cntlm's, with its IPv6 gap closed):
- rules are checked in configured order and the first one whose network holds the client decides;
- no rules at all -> allow; rules exist but none matches -> allow too (cntlm's default), so a
  restrictive ACL must end with `Deny 0/0`;
- "0/0" is every IPv4 AND every IPv6 address (cntlm lets IPv6 clients past `Deny 0/0`; we do not);
  "0.0.0.0/0" is every IPv4 address only, "::/0" every IPv6 address only;
- an IPv4-mapped IPv6 client (::ffff:10.1.2.3, as seen on a dual-stack listener) is matched as
  the IPv4 address it carries; a client address that does not parse is denied.
Consequence worth knowing: `Allow 127.0.0.1` + `Deny 0/0` denies an IPv6 loopback client (::1).
"""

from __future__ import annotations

import ipaddress
from typing import TypeAlias

from pycntlm.config import AclRule

Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
AclNetwork: TypeAlias = Network | tuple[ipaddress.IPv4Network, ipaddress.IPv6Network]
"""What parse_network returns: one network, or (all IPv4, all IPv6) for "0/0"."""

ANY = (ipaddress.IPv4Network("0.0.0.0/0"), ipaddress.IPv6Network("::/0"))


def _strip_brackets(text: str) -> str:
    """ "[2001:db8::]/32", "[2001:db8::/32]" and "[::1]" -> the same text without brackets."""
    if not text.startswith("["):
        if "[" in text or "]" in text:
            raise ValueError(f"misplaced bracket in {text!r}")
        return text
    close = text.find("]")
    if close < 0 or text.count("]") != 1 or text.count("[") != 1:
        raise ValueError(f"unbalanced brackets in {text!r}")
    rest = text[close + 1 :]
    if rest and not rest.startswith("/"):
        raise ValueError(f"unexpected text after ']' in {text!r}")
    return text[1:close] + rest


def _parse_prefix(prefix: str, max_length: int, text: str) -> None:
    """Check a "/N" prefix length (or an IPv4 dotted netmask, which ipaddress handles)."""
    if max_length == 32 and prefix.count(".") == 3:
        return
    if not prefix.isdecimal() or not prefix.isascii():
        raise ValueError(f"bad prefix length {prefix!r} in {text!r}")
    if int(prefix) > max_length:
        raise ValueError(f"prefix length {prefix} out of range 0-{max_length} in {text!r}")


def parse_network(text: str) -> AclNetwork:
    """Validate one Allow/Deny value; raises ValueError with a short reason when invalid.

    Accepts an IPv4 or IPv6 address (a single host), address/prefix (host bits may be set, as in
    cntlm: "10.1.2.3/8" is 10.0.0.0/8), IPv6 with or without brackets, an IPv4 dotted netmask
    ("10.0.0.0/255.0.0.0"), and "0/0" for everything.
    """
    stripped = text.strip()
    if not stripped:
        raise ValueError("empty network")
    if stripped == "0/0":
        return ANY
    bare = _strip_brackets(stripped)
    address_text, slash, prefix = bare.partition("/")
    if "%" in address_text:
        raise ValueError(f"zone index not allowed in {text!r}")
    try:
        address = ipaddress.ip_address(address_text)
    except ValueError:
        hint = " (write the full address, e.g. 10.0.0.0/8)" if address_text.isdecimal() else ""
        raise ValueError(f"not an IP address: {address_text!r}{hint}") from None
    if not slash:
        return ipaddress.ip_network(address)
    _parse_prefix(prefix, address.max_prefixlen, text)
    try:
        return ipaddress.ip_network(f"{address}/{prefix}", strict=False)
    except ValueError as exc:
        raise ValueError(f"bad network {text!r}: {exc}") from None


def _networks(parsed: AclNetwork) -> tuple[Network, ...]:
    return parsed if isinstance(parsed, tuple) else (parsed,)


def parse_client(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A peer address as matched by the ACL (mapped IPv4 unwrapped, zone dropped), or None."""
    text = address.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.partition("%")[0]
    try:
        parsed = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped
    return parsed


class Acl:
    """Acl(rules).allows("10.1.2.3") -> bool. Rules are parsed once, here.

    Raises ValueError (from parse_network) if a rule's network does not parse; config.py is
    expected to have validated every rule with parse_network already.
    """

    def __init__(self, rules: tuple[AclRule, ...]) -> None:
        self._rules = tuple(rules)
        self._compiled: tuple[tuple[bool, tuple[Network, ...]], ...] = tuple(
            (rule.allow, _networks(parse_network(rule.network))) for rule in self._rules
        )

    @property
    def is_empty(self) -> bool:
        """True when no Allow/Deny rule is configured (every client is allowed)."""
        return not self._compiled

    @property
    def rules(self) -> tuple[AclRule, ...]:
        return self._rules

    def allows(self, address: str) -> bool:
        """First matching rule decides; no match -> allow; unparseable address -> deny."""
        client = parse_client(address)
        if client is None:
            return False
        for allow, networks in self._compiled:
            for network in networks:
                if client.version == network.version and client in network:
                    return allow
        return True

    def __repr__(self) -> str:
        return f"Acl({list(self._rules)!r})"
