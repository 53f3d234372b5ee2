"""Reranker training data: the embedder's groups (same jsonl, same sampling through :class:`GroupDataset`) tokenized
as (query, passage) pairs with the reranker's own pair tokenization (:mod:`embedkit.rerank.features`), so training
sees exactly the tokens inference will."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..batching import padded_batches
from ..rerank.features import pair_features
from ..rerank.spec import RerankerSpec


@dataclass
class PairTexts:
    """What :class:`~embedkit.train.dataset.GroupDataset` and ``summarize_data`` ask of a spec, for a reranker:
    the query instruction (a row's ``prompt`` replaces the spec's), passages unchanged, and the lengths."""

    spec: RerankerSpec
    passage_max_length: int | None = None

    def prepare_query(self, query: str, instruction: str | None = None) -> str:
        if instruction is None:
            return self.spec.prepare_query(query)
        return self.spec.query_instruction_format.replace("\\n", "\n").format(instruction, query)

    def prepare_passage(self, passage: str) -> str:
        return passage

    @property
    def query_max_length(self) -> int:
        return self.spec.resolved_query_max_length or self.spec.max_length

    @property
    def passage_max_length_in_force(self) -> int:
        return self.passage_max_length or self.spec.max_length


class _SummarySpec:
    """The ``query_max_length`` / ``passage_max_length`` view ``summarize_data`` reads."""

    def __init__(self, texts: PairTexts) -> None:
        self._texts = texts
        self.query_max_length = texts.query_max_length
        self.passage_max_length = texts.passage_max_length_in_force

    def prepare_query(self, query: str, instruction: str | None = None) -> str:
        return self._texts.prepare_query(query, instruction)

    def prepare_passage(self, passage: str) -> str:
        return passage


def summary_spec(texts: PairTexts) -> Any:
    """An object ``summarize_data`` can use for a reranker (its lengths: the query's and the passage's limits)."""
    return _SummarySpec(texts)


@dataclass
class PairCollator:
    """A batch of groups -> one padded block of B x G pair features (query i's group at rows ``i*G .. i*G+G-1``,
    positive first), tokenized by :func:`embedkit.rerank.features.pair_features` with the spec's truncation.

    ``passage_max_length`` (``--passage_max_len``, FlagEmbedding's): passages are cut to it before the pair is joined
    (``flagembedding`` truncation only); inference cuts them to ``max_length`` only.
    """

    tokenizer: Any
    spec: RerankerSpec
    passage_max_length: int | None = None

    def features(self, queries: list[str], passages: list[str]) -> dict[str, list[list[int]]]:
        """Unpadded pair features, exactly as :class:`embedkit.Reranker` builds them."""
        return pair_features(self.tokenizer, queries, passages, truncation=self.spec.truncation,
                             max_length=self.spec.max_length, query_max_length=self.spec.resolved_query_max_length,
                             passage_max_length=self.passage_max_length)

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        queries = [it["query"] for it in items for _ in it["passages"]]
        passages = [p for it in items for p in it["passages"]]
        features = self.features(queries, passages)
        _, padded = next(padded_batches(features, self.tokenizer, len(queries), sort=False))
        batch: dict[str, Any] = {"features": {k: torch.from_numpy(v) for k, v in padded.items()}}
        if all(it["scores"] is not None for it in items):
            batch["teacher_scores"] = torch.tensor([it["scores"] for it in items], dtype=torch.float32)
        return batch
