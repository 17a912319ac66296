"""`python -m pycntlm`: the same as the `pycntlm` command."""

import sys

from pycntlm.cli import main

sys.exit(main())
