"""Allow/Deny over IPv4 and IPv6 networks, first match wins, sans-IO.

Owns: parsing Allow/Deny network text, deciding per client address.
Must not: do I/O.
"""

from __future__ import annotations

from pycntlm.config import AclRule


def parse_network(text: str) -> object:
    """Validate one Allow/Deny value; raises ValueError with a short reason when invalid."""
    raise NotImplementedError


class Acl:
    def __init__(self, rules: tuple[AclRule, ...]) -> None:
        raise NotImplementedError

    def allows(self, address: str) -> bool:
        raise NotImplementedError
