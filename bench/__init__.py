"""Side-by-side benchmark harness: pycntlm vs cntlm vs px vs direct (see README.md)."""
