"""bge-m3 scores: dense, lexical (sparse) and late-interaction (ColBERT), their weighted mixes, as FlagEmbedding.

The batch functions are differentiable torch (a trainer uses them too); :func:`lexical_matching_score` and
:func:`colbert_score` score already encoded outputs on the host.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import DataError, SpecError
from .heads import M3Output
from .lexical import LexicalWeights

SCORE_KEYS = ("colbert", "sparse", "dense", "sparse+dense", "colbert+sparse+dense")
"""The keys of :meth:`M3Embedder.compute_score`'s result, in FlagEmbedding's order."""


def dense_scores(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``(Q, P)`` inner products of dense vectors (cosine when normalized)."""
    return q @ p.transpose(-2, -1)


def sparse_scores(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``(Q, P)`` lexical matching scores from ``(batch, vocab)`` sparse embeddings."""
    return q @ p.transpose(-2, -1)


def colbert_scores(q: torch.Tensor, p: torch.Tensor, q_mask: torch.Tensor) -> torch.Tensor:
    """``(Q, P)`` late-interaction scores: for each query token its best passage token, summed, divided by the
    query's token count (``q_mask[:, 1:]``), as FlagEmbedding's ``compute_colbert_score``.

    ``q`` / ``p`` are padded :func:`colbert_vectors` (``(B, seq - 1, dim)``); zero padding rows take part in the
    max, exactly as in FlagEmbedding.
    """
    token_scores = torch.einsum("qin,pjn->qipj", q, p)
    scores = token_scores.max(-1).values.sum(1)
    return scores / q_mask[:, 1:].sum(-1, keepdim=True)


def paired_colbert_scores(q: torch.Tensor, p: torch.Tensor, q_mask: torch.Tensor) -> torch.Tensor:
    """``(B,)``: the diagonal of :func:`colbert_scores` (query ``i`` with passage ``i``) without the ``(Q, P)`` work."""
    token_scores = torch.einsum("bin,bjn->bij", q, p)
    return token_scores.max(-1).values.sum(1) / q_mask[:, 1:].sum(-1)


def mixed_scores(q: M3Output, p: M3Output, q_mask: torch.Tensor, weights: tuple[float, float, float]
                 ) -> dict[str, torch.Tensor]:
    """``{key: (B,) float32}`` for :data:`SCORE_KEYS`: query ``i`` with passage ``i`` (dense, sparse and ColBERT
    outputs of both, the sparse ones ``(B, vocab)``), mixed with ``weights = (w_dense, w_sparse, w_colbert)``."""
    w_dense, w_sparse, w_colbert = weights
    dense = torch.einsum("bd,bd->b", q.dense, p.dense).float()
    sparse = torch.einsum("bv,bv->b", q.sparse, p.sparse).float()
    colbert = paired_colbert_scores(q.colbert, p.colbert, q_mask).float()
    return {
        "colbert": colbert, "sparse": sparse, "dense": dense,
        "sparse+dense": (sparse * w_sparse + dense * w_dense) / (w_sparse + w_dense),
        "colbert+sparse+dense": (colbert * w_colbert + sparse * w_sparse + dense * w_dense) / sum(weights),
    }


def lexical_matching_score(lexical_weights_1: LexicalWeights | Sequence[LexicalWeights],
                           lexical_weights_2: LexicalWeights | Sequence[LexicalWeights]) -> Any:
    """Sum over shared tokens of the product of their weights: a number for two dicts, an ``(n1, n2)`` array
    for two lists (FlagEmbedding's arithmetic: float32 weights, accumulated in order)."""
    def single(lw1: LexicalWeights, lw2: LexicalWeights) -> Any:
        score: Any = 0
        for token, weight in lw1.items():
            if token in lw2:
                score += weight * lw2[token]
        return score

    if isinstance(lexical_weights_1, dict) and isinstance(lexical_weights_2, dict):
        return single(lexical_weights_1, lexical_weights_2)
    if isinstance(lexical_weights_1, list) and isinstance(lexical_weights_2, list):
        return np.array([[single(a, b) for b in lexical_weights_2] for a in lexical_weights_1])
    raise DataError("lexical weights must both be dicts (one text each) or both be lists",
                    hint="pass encode(...)['lexical_weights'] for each side")


def colbert_score(q_reps: np.ndarray | torch.Tensor, p_reps: np.ndarray | torch.Tensor) -> float:
    """Late-interaction score of one query's and one passage's ColBERT vectors (``(tokens, dim)`` each): for each
    query token its best passage token, averaged over query tokens (FlagEmbedding's ``colbert_score``, as a
    float)."""
    q = q_reps if isinstance(q_reps, torch.Tensor) else torch.from_numpy(np.asarray(q_reps))
    p = p_reps if isinstance(p_reps, torch.Tensor) else torch.from_numpy(np.asarray(p_reps))
    if q.ndim != 2 or p.ndim != 2 or q.shape[0] == 0 or p.shape[0] == 0 or q.shape[1] != p.shape[1]:
        raise DataError(f"colbert_score needs two non-empty (tokens, dim) arrays of the same dim, got "
                        f"{tuple(q.shape)} and {tuple(p.shape)}",
                        hint="pass encode(...)['colbert_vecs'][i] of a query and of a passage")
    token_scores = torch.einsum("in,jn->ij", q, p)
    return float(token_scores.max(-1).values.sum() / q.shape[0])


def check_pairs(sentence_pairs: Any) -> tuple[list[tuple[str, str]], bool]:
    """``(pairs, was_a_single_pair)``; ``TypeError`` naming the first item that is not a (query, passage) pair."""
    if isinstance(sentence_pairs, (tuple, list)) and len(sentence_pairs) == 2 \
            and all(isinstance(s, str) for s in sentence_pairs):
        return [(sentence_pairs[0], sentence_pairs[1])], True
    if isinstance(sentence_pairs, (str, bytes)) or not isinstance(sentence_pairs, Iterable):
        raise TypeError(f"sentence_pairs must be a (query, passage) pair or a list of them, "
                        f"got {type(sentence_pairs).__name__}")
    pairs = list(sentence_pairs)
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
            raise TypeError(f"sentence_pairs[{i}] is not a (query, passage) pair of strings: {pair!r:.80}")
    return [(q, p) for q, p in pairs], False


def mode_weights(weights: Sequence[float] | None) -> tuple[float, float, float]:
    """``weights_for_different_modes`` checked: three numbers (dense, sparse, colbert) whose sums are not 0."""
    if weights is None:
        return (1.0, 1.0, 1.0)
    values = tuple(float(w) for w in weights)
    if len(values) != 3:
        raise SpecError(f"weights_for_different_modes needs 3 weights (dense, sparse, colbert), got {len(values)}",
                        hint="e.g. [0.4, 0.2, 0.4]")
    if values[0] + values[1] == 0 or sum(values) == 0:
        raise SpecError(f"weights_for_different_modes {list(values)} sum to 0: the mixed scores divide by it",
                        hint="e.g. [0.4, 0.2, 0.4]")
    return values  # type: ignore[return-value]


__all__ = ["SCORE_KEYS", "dense_scores", "sparse_scores", "colbert_scores", "paired_colbert_scores", "mixed_scores",
           "lexical_matching_score", "colbert_score", "check_pairs", "mode_weights"]
