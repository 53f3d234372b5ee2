"""Parity: the same texts through every way of loading a model, compared; disagreements diagnosed.

:mod:`embedkit.parity.embedder` checks an embedder (vectors, with a diagnosis of which spec change explains a
mismatch), :mod:`embedkit.parity.reranker` a cross-encoder (logits, each peer in its own truncation mode),
:mod:`embedkit.parity.report` holds the report both return. Every name is importable from ``embedkit.parity``.
"""

from .embedder import (
    RECIPE_TIMEOUT,
    Encoder,
    check_parity,
    diagnose,
    logger,
    run_recipe,
)
from .report import EngineCheck, ParityReport
from .reranker import check_reranker_parity, reranker_pairs

__all__ = ["RECIPE_TIMEOUT", "EngineCheck", "Encoder", "ParityReport", "check_parity", "check_reranker_parity",
           "diagnose", "logger", "reranker_pairs", "run_recipe"]
