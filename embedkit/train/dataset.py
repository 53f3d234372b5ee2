"""The training dataset (one query + a group of passages per item) and the data summary shown before training."""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch

from ..spec import EmbedderSpec
from .data import LoadResult, TrainExample, sample_group

logger = logging.getLogger("embedkit")


class GroupDataset(torch.utils.data.Dataset):
    """Each item: the formatted query and ``group_size`` formatted passages (positive first), plus teacher scores."""

    def __init__(self, examples: list[TrainExample], spec: EmbedderSpec, group_size: int, seed: int = 42) -> None:
        self.examples = examples
        self.spec = spec
        self.group_size = group_size
        self.seed = seed
        self._calls = [0] * len(examples)
        self.pool = list(dict.fromkeys(p for ex in examples for p in ex.pos + ex.neg))
        self._warned_random = False

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ex = self.examples[i]
        rng = random.Random(self.seed * 1_000_003 + i * 7919 + self._calls[i])
        self._calls[i] += 1
        passages, scores, used_random = sample_group(ex, self.group_size, rng, self.pool)
        if used_random and not self._warned_random:
            self._warned_random = True
            logger.warning("some rows have no negatives (e.g. %s): drawing random passages from other rows",
                           ex.source)
        query = self.spec.prepare_query(ex.query, ex.prompt)
        passages = [self.spec.prepare_passage(p) for p in passages]
        return {"query": query, "passages": passages, "scores": scores}


def summarize_data(data: LoadResult, tokenizer: Any, spec: EmbedderSpec, sample: int = 2000) -> dict[str, Any]:
    """Rows, skipped, negatives per row, and token-length percentiles vs the max lengths (how much is truncated)."""
    rng = random.Random(0)
    rows = data.examples
    picked = rows if len(rows) <= sample else rng.sample(rows, sample)
    q_lens = [len(ids) for ids in tokenizer([spec.prepare_query(r.query, r.prompt) for r in picked],
                                            add_special_tokens=True)["input_ids"]]
    passages = [spec.prepare_passage(p) for r in picked for p in (r.pos + r.neg)[:4]]
    p_lens = [len(ids) for ids in tokenizer(passages, add_special_tokens=True)["input_ids"]] if passages else [0]
    negs = [len(r.neg) for r in rows]

    def pct(lens: list[int]) -> dict[str, int]:
        return {f"p{q}": int(np.percentile(lens, q)) for q in (50, 90, 99)} | {"max": int(max(lens))}

    return {
        "files": [str(f) for f in data.files], "rows": len(rows), "skipped": len(data.skipped),
        "negatives_per_row": {"min": min(negs), "mean": round(float(np.mean(negs)), 2), "max": max(negs),
                              "rows_without": sum(1 for n in negs if n == 0)},
        "with_teacher_scores": sum(1 for r in rows if r.has_scores),
        "query_tokens": pct(q_lens), "query_max_length": spec.query_max_length,
        "queries_truncated_pct": round(100 * float(np.mean([n > spec.query_max_length for n in q_lens])), 1),
        "passage_tokens": pct(p_lens), "passage_max_length": spec.passage_max_length,
        "passages_truncated_pct": round(100 * float(np.mean([n > spec.passage_max_length for n in p_lens])), 1),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The data summary as a few readable lines (logged before training starts)."""
    neg, q, p = summary["negatives_per_row"], summary["query_tokens"], summary["passage_tokens"]
    return "\n".join([
        f"training data: {summary['rows']} rows ({summary['skipped']} skipped) from {', '.join(summary['files'])}",
        f"  negatives per row: min {neg['min']}, mean {neg['mean']}, max {neg['max']} "
        f"({neg['rows_without']} rows without: random passages from other rows are used)",
        f"  rows with teacher scores: {summary['with_teacher_scores']}",
        f"  query tokens p50/p90/p99/max {q['p50']}/{q['p90']}/{q['p99']}/{q['max']} vs max length "
        f"{summary['query_max_length']}: {summary['queries_truncated_pct']}% truncated",
        f"  passage tokens p50/p90/p99/max {p['p50']}/{p['p90']}/{p['p99']}/{p['max']} vs max length "
        f"{summary['passage_max_length']}: {summary['passages_truncated_pct']}% truncated",
    ])
