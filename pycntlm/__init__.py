"""pycntlm: an authenticating local forward proxy, a drop-in replacement for cntlm."""

__version__ = "0.1.0"
