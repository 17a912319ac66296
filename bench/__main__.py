"""`python -m bench`: the side-by-side benchmark (see bench/README.md)."""

import sys

from bench.run import cli

sys.exit(cli())
