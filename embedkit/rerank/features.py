"""The two pair tokenizations a cross-encoder's peers use, token for token.

* ``flagembedding`` (FlagEmbedding's ``FlagReranker.compute_score``): the query and the passage are tokenized
  separately without special tokens, the query cut to ``query_max_length`` and the passage to ``max_length``; then
  they are joined with the special tokens, cutting only the passage (``truncation="only_second"``) to ``max_length``.
  With transformers < 5 the join is ``tokenizer.prepare_for_model(q_ids, p_ids, ...)`` on the ids. Transformers 5
  removed ``prepare_for_model``; FlagEmbedding >= 1.4 then decodes both id lists (special tokens kept, no clean-up)
  and tokenizes the decoded pair again (``FlagEmbedding.utils.tokenizer_compat.prepare_for_model_compat``). That
  round trip is not always the identity (an unknown character decodes to ``<unk>``, whose text re-tokenizes
  differently; an empty passage becomes no second sequence at all, one separator fewer), so embedkit does what the
  installed transformers makes FlagReranker do: the ids join on transformers 4, the round trip on 5.
* ``longest_first`` (sentence-transformers' ``CrossEncoder``): ``tokenizer(queries, passages,
  truncation="longest_first", max_length=max_length)``.

Both return unpadded features (:data:`embedkit.batching.Features`) for :func:`embedkit.batching.padded_batches`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .. import batching
from ..batching import FEATURE_KEYS, Features


def _keep(enc: Any) -> Features:
    return {k: list(v) for k, v in enc.items() if k in FEATURE_KEYS}


def longest_first_pairs(tokenizer: Any, queries: Sequence[str], passages: Sequence[str], max_length: int
                        ) -> Features:
    """CrossEncoder's pair tokenization: both texts in one call, the longer one cut first, to ``max_length``."""
    return batching.tokenize(tokenizer, list(queries), max_length, pairs=list(passages), truncation="longest_first")


def flagembedding_pairs(tokenizer: Any, queries: Sequence[str], passages: Sequence[str], max_length: int,
                        query_max_length: int, passage_max_length: int | None = None) -> Features:
    """FlagReranker's pair tokenization (see the module docstring), as the installed transformers makes it.

    ``passage_max_length``: cut the passage alone to it first (FlagEmbedding's reranker *training* data,
    ``--passage_max_len``); inference (FlagReranker) cuts it to ``max_length``."""
    if not queries:
        return {"input_ids": [], "attention_mask": []}
    q_ids = tokenizer(list(queries), add_special_tokens=False, max_length=query_max_length, truncation=True,
                      padding=False)["input_ids"]
    p_ids = tokenizer(list(passages), add_special_tokens=False, max_length=passage_max_length or max_length,
                      truncation=True,
                      padding=False)["input_ids"]
    prepare = getattr(tokenizer, "prepare_for_model", None)
    if callable(prepare):  # transformers < 5: the ids are joined as they are
        items = [prepare(q, p, truncation="only_second", max_length=max_length, padding=False)
                 for q, p in zip(q_ids, p_ids, strict=True)]
        return {k: [item[k] for item in items] for k in FEATURE_KEYS if k in items[0]}
    return _round_trip(tokenizer, q_ids, p_ids, max_length)


def _round_trip(tokenizer: Any, q_ids: list[list[int]], p_ids: list[list[int]], max_length: int) -> Features:
    """Transformers 5: decode the cut ids (special tokens kept, no clean-up) and tokenize the pair again, one call
    for all pairs. FlagEmbedding calls the tokenizer pair by pair, where an empty decoded passage means "no second
    text" (a single sequence): those rows are tokenized as single texts, as it gets them."""
    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    q_text = [decode(ids) for ids in q_ids]
    p_text = [decode(ids) for ids in p_ids]
    kwargs = dict(truncation="only_second", max_length=max_length, padding=False, add_special_tokens=True)
    paired = [i for i, p in enumerate(p_text) if p]
    single = [i for i, p in enumerate(p_text) if not p]
    rows: dict[int, dict[str, list[int]]] = {}
    if paired:
        enc = _keep(tokenizer([q_text[i] for i in paired], [p_text[i] for i in paired], **kwargs))
        for j, i in enumerate(paired):
            rows[i] = {k: v[j] for k, v in enc.items()}
    if single:
        enc = _keep(tokenizer([q_text[i] for i in single], **kwargs))
        for j, i in enumerate(single):
            rows[i] = {k: v[j] for k, v in enc.items()}
    keys = [k for k in FEATURE_KEYS if k in rows[0]]
    return {k: [rows[i][k] for i in range(len(q_ids))] for k in keys}


def pair_features(tokenizer: Any, queries: Sequence[str], passages: Sequence[str], *, truncation: str,
                  max_length: int, query_max_length: int | None = None,
                  passage_max_length: int | None = None) -> Features:
    """Tokenize pairs the way ``truncation`` (``"flagembedding"`` / ``"longest_first"``) says, without padding.

    ``passage_max_length`` (training only, ``flagembedding`` only): the passage's own limit before joining."""
    if truncation == "longest_first":
        return longest_first_pairs(tokenizer, queries, passages, max_length)
    if truncation == "flagembedding":
        qml = query_max_length if query_max_length is not None else max_length * 3 // 4
        return flagembedding_pairs(tokenizer, queries, passages, max_length, qml, passage_max_length)
    raise ValueError(f"unknown truncation {truncation!r}")


__all__ = ["pair_features", "flagembedding_pairs", "longest_first_pairs"]
