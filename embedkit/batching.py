"""The features stage: cutting over-long texts before tokenizing, token-length sorted batching, padding."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

FEATURE_KEYS = ("input_ids", "attention_mask", "token_type_ids")
"""The tokenizer outputs a model takes; everything else a tokenizer returns (offsets, lengths...) is dropped."""

Features = dict[str, list[list[int]]]
"""Unpadded token ids per text: ``{"input_ids": [[...], ...], "attention_mask": [...], ("token_type_ids")}``."""


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


def chars_per_token(tokenizer: Any) -> tuple[int, int]:
    """``(chars, guard)`` for the character budget of :func:`cut_to_budget`.

    ``chars``: a generous bound on the characters one token covers (the longest vocabulary string, at least 16,
    plus 8 for whitespace and characters that make no token); ``guard``: one more than the longest added token, so
    a cut inside an added token (``[MASK]``, ``<s>``...) is never trusted.
    """
    try:
        longest = max((len(t) for t in tokenizer.get_vocab()), default=0)
        added = max((len(t) for t in tokenizer.get_added_vocab()), default=0)
    except (AttributeError, NotImplementedError, TypeError):
        longest, added = 0, 32
    return max(16, longest) + 8, added + 1


def _safe_prefix(tokenizer: Any, text: str, cut: int, kept: int, guard: int) -> str:
    """The shortest ``text[:cut * 2**k]`` whose first ``kept`` tokens are exactly those of ``text``, else ``text``.

    Tokens are trusted when they come from a word (pre-tokenizer split) before the prefix's last word, which the cut
    may have shortened, and end at least ``guard`` characters before the cut: tokenizers work word by word after
    local normalization, so those tokens are the same in the whole text.
    """
    while cut < len(text):
        prefix = text[:cut]
        enc = tokenizer(prefix, add_special_tokens=False, truncation=False, padding=False, verbose=False,
                        return_offsets_mapping=True)
        word_ids = enc.word_ids()
        words = [w for w in word_ids if w is not None]
        if words:
            last = max(words)
            safe = 0
            for w, (_, end) in zip(word_ids, enc["offset_mapping"], strict=True):
                if w is None or w >= last or end > cut - guard:
                    break
                safe += 1
                if safe >= kept:
                    return prefix
        cut *= 2
    return text


def cut_to_budget(tokenizer: Any, texts: list[str], max_length: int, budget: tuple[int, int]) -> list[str]:
    """Cut texts longer than ``max_length * chars`` characters before tokenizing them (as text-embeddings-inference
    does), so a 50 MB line costs what its first few thousand characters cost; ``budget`` is
    :func:`chars_per_token`.

    Never changes a result: a cut is kept only when the first ``max_length`` tokens (special tokens included) of the
    prefix are provably those of the whole text (see :func:`_safe_prefix`); otherwise the prefix doubles. Slow
    (Python) tokenizers and left truncation get the texts unchanged.
    """
    chars, guard = budget
    limit = max_length * chars
    if (all(len(t) <= limit for t in texts) or not getattr(tokenizer, "is_fast", False)
            or getattr(tokenizer, "truncation_side", "right") != "right"):
        return texts
    kept = max(0, max_length - tokenizer.num_special_tokens_to_add(pair=False))
    return [_safe_prefix(tokenizer, t, limit, kept, guard) if len(t) > limit else t for t in texts]


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int, *, pairs: Sequence[str] | None = None,
             truncation: bool | str = True, budget: tuple[int, int] | None = None) -> Features:
    """The features stage's first half: tokenize without padding, truncating at ``max_length`` (as FlagEmbedding).

    ``pairs``: second texts for cross-encoder inputs (``truncation="longest_first"`` as sentence-transformers'
    CrossEncoder). ``budget`` (:func:`chars_per_token`): texts far longer than ``max_length`` tokens can be are cut
    to a character budget first (:func:`cut_to_budget`: the same tokens, a fraction of the time); single texts only.
    """
    if not texts:
        return {"input_ids": [], "attention_mask": []}
    texts = list(texts)
    if budget is not None and pairs is None:
        texts = cut_to_budget(tokenizer, texts, max_length, budget)
    if pairs is None:
        enc = tokenizer(texts, truncation=truncation, max_length=max_length, padding=False)
    else:
        enc = tokenizer(texts, list(pairs), truncation=truncation, max_length=max_length, padding=False)
    return {k: v for k, v in enc.items() if k in FEATURE_KEYS}


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's padding id (0 when it has none, as the peers do)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def low_padding_groups(order: np.ndarray, lengths: Sequence[int], *, max_waste: float = 0.3,
                       min_rows: int = 16) -> list[np.ndarray]:
    """Split a longest-first ``order`` into consecutive groups whose padding stays small.

    A new group starts at the first text that would be more than ``max_waste`` padding in the current group (its
    length below ``(1 - max_waste) * longest``), once the group holds ``min_rows`` texts (fewer rows per forward
    pass cost more in per-pass overhead than the padding saves). A CPU forward pass costs about its padded tokens, so
    a server's batch of mixed lengths runs faster as a few tight groups than as one wide one.
    """
    groups: list[np.ndarray] = []
    start, width = 0, 0
    for pos, row in enumerate(order):
        length = max(1, int(lengths[row]))
        if pos - start >= min_rows and length < (1 - max_waste) * width:
            groups.append(order[start:pos])
            start = pos
        if pos == start:
            width = length
    if len(order):
        groups.append(order[start:])
    return groups


def padded_batches(features: Features, tokenizer: Any, batch_size: int, *, sort: bool = True,
                   max_tokens: int | None = None, multiple_of: int = 1
                   ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """The features stage's second half: ``(rows, padded arrays)`` per batch.

    ``sort``: token-length sorted, longest first (inference); ``False`` keeps input order (FlagEmbedding's
    ``compute_score`` pads in input order). ``max_tokens``: a token budget per batch (:func:`token_budget_batches`)
    instead of a fixed count. ``multiple_of`` rounds padded widths up (fewer kernel shapes in bf16 / fp16). Padding
    id and side come from the tokenizer.
    """
    lengths = [len(ids) for ids in features["input_ids"]]
    order = length_sorted_order(lengths) if sort else np.arange(len(lengths))
    side = getattr(tokenizer, "padding_side", "right")
    chunks = (token_budget_batches(order, lengths, max_tokens, batch_size) if max_tokens
              else batches(order, batch_size))
    pad_id = pad_token_id(tokenizer)
    for rows in chunks:
        yield rows, pad_features(features, rows, pad_id, side, multiple_of)
