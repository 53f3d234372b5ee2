"""Token-length sorted batching, padding, and restoring the input order."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


def length_sorted_order(lengths: Sequence[int]) -> np.ndarray:
    """Indices that sort texts by token length, longest first (stable, so ties keep input order).

    Longest first means the first batch is the largest one: an out-of-memory error shows up at once.
    """
    return np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")


def batches(order: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Consecutive chunks of ``order`` with at most ``batch_size`` indices each."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def pad(
    sequences: Sequence[Sequence[int]],
    pad_value: int,
    padding_side: str = "right",
    dtype: type = np.int64,
    multiple_of: int = 1,
) -> np.ndarray:
    """Pad integer sequences to the longest one (rounded up to ``multiple_of``): a (len(sequences), width) array."""
    width = max((len(s) for s in sequences), default=0)
    if multiple_of > 1 and width % multiple_of:
        width += multiple_of - width % multiple_of
    out = np.full((len(sequences), width), pad_value, dtype=dtype)
    for i, seq in enumerate(sequences):
        n = len(seq)
        if n == 0:
            continue
        if padding_side == "left":
            out[i, width - n:] = seq
        else:
            out[i, :n] = seq
    return out


def pad_features(
    features: dict[str, Sequence[Sequence[int]]],
    rows: np.ndarray,
    pad_token_id: int,
    padding_side: str = "right",
    multiple_of: int = 1,
) -> dict[str, np.ndarray]:
    """Pad the tokenizer outputs (``input_ids``, ``attention_mask``, ``token_type_ids``) of ``rows`` into arrays.

    ``multiple_of`` rounds the padded width up (fewer distinct shapes: oneDNN / AMX kernels are built per shape).
    """
    out: dict[str, np.ndarray] = {}
    for key, seqs in features.items():
        value = pad_token_id if key == "input_ids" else 0
        out[key] = pad([seqs[i] for i in rows], value, padding_side, multiple_of=multiple_of)
    return out


def token_budget_batches(order: np.ndarray, lengths: Sequence[int], max_tokens: int,
                         max_batch_size: int | None = None) -> Iterator[np.ndarray]:
    """Batches of ``order`` (longest first) whose padded size ``len(batch) * longest`` stays within ``max_tokens``.

    Short texts ride in big batches, long ones in small (text-embeddings-inference's token budget);
    ``max_batch_size`` caps the count. A single text longer than the budget gets a batch of its own.
    """
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    cap = max_batch_size or len(order) or 1
    start = 0
    n = len(order)
    while start < n:
        longest = max(1, int(lengths[order[start]]))  # order is longest first: the batch's padded width
        size = max(1, min(cap, max_tokens // longest))
        yield order[start:start + size]
        start += size
