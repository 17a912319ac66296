"""The embedded default: a verifying NTLM parent, an origin server and pycntlm, on loopback."""
