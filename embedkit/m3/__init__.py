"""bge-m3: dense, sparse (lexical weights) and multi-vector (ColBERT) outputs, and their scores.

The numbers are FlagEmbedding's ``BGEM3FlagModel`` ones (``_dense_embedding``, ``_sparse_embedding``,
``_colbert_embedding``, ``_process_token_weights``, ``_process_colbert_vecs``, ``compute_score``...); the tests compare
them side by side with FlagEmbedding. Two layers:

* pure, differentiable torch functions from the encoder's last hidden state and the two heads (:class:`M3Heads`) to
  the three representations and their scores (:func:`m3_outputs`, :func:`dense_scores`, :func:`sparse_scores`,
  :func:`colbert_scores`...): inference uses them, and so can a trainer (unified fine-tuning);
* :class:`M3Embedder`, an :class:`~embedkit.Embedder` (same spec resolution, tokenization, token-length sorted
  batches, input-order restoration, backends) whose ``encode*`` return the three outputs.

Modules: :mod:`.heads` (the heads and the representations), :mod:`.scores`, :mod:`.lexical` (lexical weights on the
host), :mod:`.files` (``.npz`` / JSON-lines output), :mod:`.embedder` (:class:`M3Embedder`).

Example:
    >>> from embedkit import M3Embedder
    >>> m = M3Embedder("bge-m3", return_sparse=True, return_colbert=True)
    >>> out = m.encode(["what is bge-m3?", "BGE-M3 is a multilingual embedding model."])
    >>> out["dense_vecs"].shape, len(out["lexical_weights"]), out["colbert_vecs"][0].shape
    ((2, 1024), 2, (9, 1024))
    >>> m.compute_score([("what is bge-m3?", "BGE-M3 is a multilingual embedding model.")])["colbert+sparse+dense"]
    [0.62...]
"""

from __future__ import annotations

from .embedder import M3Embedder, M3Outputs
from .files import (
    colbert_to_ragged,
    csr_to_lexical_weights,
    lexical_weights_to_csr,
    m3_arrays,
    save_lexical_jsonl,
    save_m3_npz,
)
from .heads import M3Heads, M3Output, colbert_vectors, m3_outputs, sparse_embedding, sparse_token_weights
from .lexical import DROPPED_SPECIAL_TOKENS, LexicalWeights, process_token_weights, unused_token_ids
from .scores import (
    SCORE_KEYS,
    colbert_score,
    colbert_scores,
    dense_scores,
    lexical_matching_score,
    mixed_scores,
    paired_colbert_scores,
    sparse_scores,
)

__all__ = ["M3Embedder", "M3Heads", "M3Output", "m3_outputs", "sparse_token_weights", "sparse_embedding",
           "colbert_vectors", "dense_scores", "sparse_scores", "colbert_scores", "paired_colbert_scores",
           "process_token_weights", "unused_token_ids", "lexical_weights_to_csr", "csr_to_lexical_weights",
           "colbert_to_ragged", "m3_arrays", "save_m3_npz", "save_lexical_jsonl", "SCORE_KEYS",
           "DROPPED_SPECIAL_TOKENS", "LexicalWeights", "M3Outputs", "mixed_scores", "lexical_matching_score",
           "colbert_score"]
