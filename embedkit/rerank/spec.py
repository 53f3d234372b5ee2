"""The reranking recipe (:class:`RerankerSpec`) and how it is resolved for a cross-encoder folder.

A cross-encoder's scores depend on more than its weights: how a (query, passage) pair is cut to ``max_length``
(FlagEmbedding's ``FlagReranker`` and sentence-transformers' ``CrossEncoder`` disagree on long pairs), the query
instruction, and the activation applied on top of the logit. Resolution order, per field, never silent
(``spec.provenance`` records which rule decided each field):

1. arguments the user passes;
2. the spec embedkit recorded when it saved the folder (``config.json`` ``embedkit_reranker``: provenance
   ``saved by embedkit``);
3. the folder's own sentence-transformers files (a folder saved by ``CrossEncoder``:
   ``config_sentence_transformers.json`` ``model_type: CrossEncoder`` / ``activation_fn``, or ``config.json``
   ``sentence_transformers.activation_fn``);
4. a small table of known families, matched on the folder name (``bge-reranker`` -> FlagEmbedding's truncation,
   ``ms-marco`` / ``cross-encoder`` ... -> CrossEncoder's);
5. otherwise FlagEmbedding's conventions (embedkit's peer of record), with a warning naming what was assumed.
"""

from __future__ import annotations

from typing import Any

from .resolve import FAMILIES, load_reranker_spec, resolve_reranker_spec
from .spec_core import (
    ACTIVATIONS,
    ARGUMENT,
    DEFAULT,
    DEFAULT_MAX_LENGTH,
    SAVED,
    SAVED_KEY,
    TRUNCATIONS,
    RerankerSpec,
    check_reranker_config,
    config_num_labels,
    is_reranker_config,
    is_reranker_folder,
)


def describe_reranker(spec: RerankerSpec) -> list[tuple[str, Any, str]]:
    """``(field, value, rule)`` rows, for ``embedkit spec``; ``query_max_length`` shows the length in force."""
    rows = []
    for name in RerankerSpec.field_names():
        value = spec.resolved_query_max_length if name == "query_max_length" else getattr(spec, name)
        rows.append((name, value, spec.provenance.get(name, ARGUMENT)))
    return rows


__all__ = ["RerankerSpec", "SAVED", "SAVED_KEY", "TRUNCATIONS", "ACTIVATIONS", "resolve_reranker_spec",
           "load_reranker_spec",
           "describe_reranker", "check_reranker_config", "is_reranker_folder", "is_reranker_config",
           "config_num_labels", "ARGUMENT", "DEFAULT", "DEFAULT_MAX_LENGTH", "FAMILIES"]
