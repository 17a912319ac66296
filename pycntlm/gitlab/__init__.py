"""`pycntlm setup` and `pycntlm doctor`: Docker and GitLab Runner behind pycntlm.

Owns: the two entry points the CLI dispatches to; each returns an exit status (0 fine, 1
problems found or a step failed, 2 a usage or configuration error, printed as one line).
Must not: hold logic of its own (setup_cmd.py and doctor.py do).
"""

from __future__ import annotations

import sys

from pycntlm.errors import PycntlmError


def setup_main(argv: list[str]) -> int:
    """`pycntlm setup [...]`: write the set-up (see `pycntlm setup --help`)."""
    from pycntlm.gitlab.setup_cmd import parse_args, report

    try:
        return report(parse_args(argv), sys.stdout, sys.stderr)
    except PycntlmError as exc:
        print(f"pycntlm setup: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # argparse: --help, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else 2


def doctor_main(argv: list[str]) -> int:
    """`pycntlm doctor [...]`: check the set-up and explain each finding."""
    from pycntlm.gitlab.doctor import parse_args, run

    try:
        return run(parse_args(argv), sys.stdout)
    except PycntlmError as exc:
        print(f"pycntlm doctor: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
