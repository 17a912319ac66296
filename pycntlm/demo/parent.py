"""A real parent proxy that demands and verifies NTLM (pyspnego acceptor), for the demo and tests.

Owns: being a strict corporate proxy on loopback. Must not: listen anywhere but where it is told.
"""
