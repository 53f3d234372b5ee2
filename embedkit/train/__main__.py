"""``python -m embedkit.train`` (and ``torchrun --nproc_per_node N -m embedkit.train``): ``embedkit finetune``.

An entry point, like ``embedkit/__main__.py``: it runs the one command line (:mod:`embedkit.cli`).
"""

import sys

from .arguments import help_requested

_help = help_requested(sys.argv[1:], prog="python -m embedkit.train")
if _help is not None:
    print(_help)
    sys.exit(0)

from ..cli import main  # noqa: E402 - after the help, which needs no torch start-up

sys.exit(main(["finetune", *sys.argv[1:]]))
