"""bge-m3's lexical weights on the host: which tokens get none, and ``{token_id: weight}`` per text."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

DROPPED_SPECIAL_TOKENS = ("cls_token", "eos_token", "pad_token", "unk_token")
"""Special tokens that never get a lexical weight (FlagEmbedding's ``unused_tokens``)."""

LexicalWeights = dict[str, Any]
"""``{token_id_as_str: weight}`` (weights are ``numpy.float32``, as FlagEmbedding returns them)."""


def unused_token_ids(tokenizer: Any) -> set[int]:
    """Ids of the tokenizer's cls / eos / pad / unk tokens (those it defines): they get no lexical weight."""
    found = set()
    special = tokenizer.special_tokens_map
    for name in DROPPED_SPECIAL_TOKENS:
        if name in special:
            found.add(int(tokenizer.convert_tokens_to_ids(special[name])))
    return found


def process_token_weights(token_weights: np.ndarray, input_ids: Sequence[int], unused: set[int]) -> LexicalWeights:
    """``{str(token_id): max weight}`` for the tokens with a weight > 0, special tokens dropped.

    FlagEmbedding's ``_process_token_weights``, value for value: weights stay ``numpy.float32``, keys are in the
    order of each id's first positive weight.
    """
    result: LexicalWeights = {}
    for w, idx in zip(token_weights, input_ids, strict=True):
        if idx not in unused and w > 0:
            key = str(idx)
            if w > result.get(key, 0):
                result[key] = w
    return result


__all__ = ["DROPPED_SPECIAL_TOKENS", "LexicalWeights", "unused_token_ids", "process_token_weights"]
