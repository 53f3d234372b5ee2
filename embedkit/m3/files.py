"""bge-m3 outputs as files: lexical weights as CSR rows and JSON lines, ColBERT vectors as one ragged array, and
the ``.npz`` that ``embedkit encode --m3`` writes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..textio import writing
from .lexical import LexicalWeights


def lexical_weights_to_csr(lexical_weights: Sequence[LexicalWeights]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(indptr int64 (n+1,), indices int64 token ids, data float32)``: CSR rows, token ids sorted in each row.

    ``scipy.sparse.csr_matrix((data, indices, indptr), shape=(n, vocab_size))`` reads it.
    """
    indptr = np.zeros(len(lexical_weights) + 1, dtype=np.int64)
    indices: list[int] = []
    data: list[float] = []
    for i, weights in enumerate(lexical_weights):
        items = sorted((int(k), v) for k, v in weights.items())
        indices.extend(k for k, _ in items)
        data.extend(v for _, v in items)
        indptr[i + 1] = len(indices)
    return indptr, np.asarray(indices, dtype=np.int64), np.asarray(data, dtype=np.float32)


def csr_to_lexical_weights(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray) -> list[LexicalWeights]:
    """The inverse of :func:`lexical_weights_to_csr` (``numpy.float32`` weights, keys sorted by token id)."""
    data = np.asarray(data, dtype=np.float32)
    return [{str(int(indices[j])): data[j] for j in range(indptr[i], indptr[i + 1])} for i in range(len(indptr) - 1)]


def colbert_to_ragged(colbert_vecs: Sequence[np.ndarray], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``(vectors float32 (total_tokens, dim), offsets int64 (n+1,))``: text ``i`` is
    ``vectors[offsets[i]:offsets[i+1]]``."""
    offsets = np.zeros(len(colbert_vecs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(v) for v in colbert_vecs], dtype=np.int64)
    if not colbert_vecs:
        return np.zeros((0, dim), dtype=np.float32), offsets
    return np.concatenate([np.asarray(v, dtype=np.float32).reshape(-1, dim) for v in colbert_vecs]), offsets


def m3_arrays(result: dict[str, Any], colbert_dim: int | None = None) -> dict[str, np.ndarray]:
    """The outputs of :meth:`M3Embedder.encode` (for a list) as flat arrays, for ``.npz`` files.

    ``dense`` ``(n, d)`` float32; ``sparse_indptr`` / ``sparse_indices`` (token ids) int64 and ``sparse_data``
    float32 (CSR, see :func:`lexical_weights_to_csr`); ``colbert_vecs`` ``(total_tokens, d)`` float32 and
    ``colbert_offsets`` ``(n + 1,)`` int64 (see :func:`colbert_to_ragged`). Absent outputs give no arrays.
    """
    arrays: dict[str, np.ndarray] = {}
    if result.get("dense_vecs") is not None:
        arrays["dense"] = np.asarray(result["dense_vecs"], dtype=np.float32)
    if result.get("lexical_weights") is not None:
        indptr, indices, data = lexical_weights_to_csr(result["lexical_weights"])
        arrays.update(sparse_indptr=indptr, sparse_indices=indices, sparse_data=data)
    if result.get("colbert_vecs") is not None:
        vecs = result["colbert_vecs"]
        dim = colbert_dim if colbert_dim is not None else (vecs[0].shape[-1] if vecs else 0)
        arrays["colbert_vecs"], arrays["colbert_offsets"] = colbert_to_ragged(vecs, dim)
    return arrays


def save_m3_npz(path: str | Path, result: dict[str, Any], colbert_dim: int | None = None) -> Path:
    """Write :func:`m3_arrays` of ``result`` to ``path`` (``.npz``, uncompressed) atomically; return the path."""
    path = Path(path)
    with writing(path) as fh:
        np.savez(fh, **m3_arrays(result, colbert_dim))
    return path


def save_lexical_jsonl(path: str | Path, lexical_weights: Sequence[LexicalWeights]) -> Path:
    """One ``{"token_id": weight}`` JSON object per text (input order), written atomically; return the path."""
    path = Path(path)
    with writing(path, mode="w") as fh:
        for weights in lexical_weights:
            fh.write(json.dumps({k: float(v) for k, v in weights.items()}) + "\n")
    return path


__all__ = ["lexical_weights_to_csr", "csr_to_lexical_weights", "colbert_to_ragged", "m3_arrays", "save_m3_npz",
           "save_lexical_jsonl"]
