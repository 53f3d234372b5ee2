"""Exact inner-product search (faiss ``IndexFlatIP``), the one used by retrieval evaluation and hard-negative mining.

With L2-normalized vectors the inner product is the cosine similarity. faiss is an optional dependency (the
``eval`` extra); without it :func:`search` raises an :class:`~embedkit.errors.EmbedkitError` naming the extra.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ._optional import require


def search(query_vecs: np.ndarray, corpus_vecs: np.ndarray, top_k: int, *, batch_size: int | None = None,
           on_batch: Callable[[int], None] | None = None, feature: str = "exact search"
           ) -> tuple[np.ndarray, np.ndarray]:
    """The ``top_k`` corpus rows with the largest inner product for each query, best first.

    Args:
        query_vecs: ``(n_queries, dim)``.
        corpus_vecs: ``(n_corpus, dim)``.
        top_k: hits per query; at most ``n_corpus`` are returned.
        batch_size: queries per search call (default: all at once).
        on_batch: called with the number of queries of each finished batch (e.g. a progress bar's ``update``).
        feature: what is searching, named in the error when faiss is missing.

    Returns:
        ``(scores, indices)``, both of shape ``(n_queries, min(top_k, n_corpus))``.

    Example:
        >>> scores, idx = search(np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32), 1)
        >>> idx.ravel().tolist()
        [0, 1, 2]
    """
    faiss = require("faiss", feature)
    corpus = np.ascontiguousarray(corpus_vecs, dtype=np.float32)
    queries = np.ascontiguousarray(query_vecs, dtype=np.float32)
    index = faiss.IndexFlatIP(corpus.shape[1])
    index.add(corpus)
    k = min(top_k, corpus.shape[0])
    step = batch_size or max(1, len(queries))
    scores = np.empty((len(queries), k), dtype=np.float32)
    indices = np.empty((len(queries), k), dtype=np.int64)
    for s in range(0, len(queries), step):
        scores[s:s + step], indices[s:s + step] = index.search(queries[s:s + step], k)
        if on_batch is not None:
            on_batch(len(queries[s:s + step]))
    return scores, indices


__all__ = ["search"]
