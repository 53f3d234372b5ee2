"""``python -m embedkit.train.reranker`` (and ``torchrun ... -m embedkit.train.reranker``): ``embedkit finetune
--reranker``, so a FlagEmbedding reranker command runs with only its module name changed.

An entry point, like ``embedkit/train/__main__.py``.
"""

import sys

from ..arguments import help_requested

_help = help_requested(sys.argv[1:], prog="python -m embedkit.train.reranker")
if _help is not None:
    print(_help)
    sys.exit(0)

from ...cli import main  # noqa: E402 - after the help, which needs no torch start-up

_argv = sys.argv[1:]
sys.exit(main(["finetune", *([] if "--reranker" in _argv else ["--reranker"]), *_argv]))
