"""Tokenizing a batch of training groups through the one features stage (:mod:`embedkit.batching`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..batching import padded_batches, tokenize


@dataclass
class GroupCollator:
    """Tokenizes a batch of groups: queries at the query max length, passages at the passage max length.

    Each side is sorted by token length and cut into chunks of ``chunk_size`` sequences, each padded only to its own
    longest (the inference batching of :mod:`embedkit.batching`): less padding than one padded block, and the
    chunks GradCache needs. ``order`` maps the concatenated chunk outputs back to input order.
    """

    tokenizer: Any
    query_max_length: int
    passage_max_length: int
    chunk_size: int = 32

    def _side(self, texts: list[str], max_length: int) -> dict[str, Any]:
        features = tokenize(self.tokenizer, texts, max_length)
        chunks, rows = [], []
        for batch_rows, padded in padded_batches(features, self.tokenizer, self.chunk_size):
            chunks.append({k: torch.from_numpy(v) for k, v in padded.items()})
            rows.append(batch_rows)
        order = np.concatenate(rows) if rows else np.empty(0, dtype=np.int64)
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return {"chunks": chunks, "order": torch.from_numpy(inverse)}

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {
            "query": self._side([it["query"] for it in items], self.query_max_length),
            "passage": self._side([p for it in items for p in it["passages"]], self.passage_max_length),
        }
        if all(it["scores"] is not None for it in items):
            batch["teacher_scores"] = torch.tensor([it["scores"] for it in items], dtype=torch.float32)
        return batch
