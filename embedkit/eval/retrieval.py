"""Retrieval evaluation: encode (query instruction for queries, passages as passages), exact inner-product search
with faiss, metrics with pytrec_eval (nDCG@k, recall@k, MRR@k, MAP@k, precision@k), corpus embeddings cached on disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._optional import require
from ..errors import EmbedkitError
from ..folder.fingerprint import model_fingerprint
from ..search import search
from ..textio import save_npy, writing
from .data import EvalData, load_eval_data

logger = logging.getLogger("embedkit")

DEFAULT_KS = (1, 3, 5, 10, 100)
METRICS = ("ndcg", "recall", "mrr", "map", "precision")


@dataclass
class EvalResult:
    """Metrics of one model on one benchmark (``metrics`` keys like ``"ndcg@10"``, values in [0, 1])."""

    model: str
    data: dict[str, Any]
    metrics: dict[str, float]
    ks: tuple[int, ...]
    seconds: float = 0.0
    cache_hit: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "data": self.data, "metrics": self.metrics, "ks": list(self.ks),
                "seconds": round(self.seconds, 3), "cache_hit": self.cache_hit, **self.extra}


def compute_metrics(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]],
                    ks: tuple[int, ...] = DEFAULT_KS) -> dict[str, float]:
    """nDCG@k, recall@k, MRR@k, MAP@k and precision@k averaged over the queries of ``qrels`` (pytrec_eval).

    ``run`` maps each query id to ``{doc id: score}``; a query with no retrieved documents scores 0.
    """
    pytrec_eval = require("pytrec_eval", "evaluation")
    ks = tuple(sorted(set(ks)))
    k_str = ",".join(map(str, ks))
    run = {q: run.get(q, {}) or {"__none__": 0.0} for q in qrels}
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {f"ndcg_cut.{k_str}", f"recall.{k_str}", f"P.{k_str}",
                                                       f"map_cut.{k_str}"})
    per_query = evaluator.evaluate(run)
    n = len(qrels)
    out: dict[str, float] = {}
    for k in ks:
        out[f"ndcg@{k}"] = sum(v[f"ndcg_cut_{k}"] for v in per_query.values()) / n
        out[f"recall@{k}"] = sum(v[f"recall_{k}"] for v in per_query.values()) / n
        out[f"map@{k}"] = sum(v[f"map_cut_{k}"] for v in per_query.values()) / n
        out[f"precision@{k}"] = sum(v[f"P_{k}"] for v in per_query.values()) / n
        # MRR@k: reciprocal rank of the first relevant hit within the top k (pytrec_eval's recip_rank on a cut run)
        cut = {q: dict(sorted(docs.items(), key=lambda x: (-x[1], x[0]))[:k]) for q, docs in run.items()}
        rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(cut)
        out[f"mrr@{k}"] = sum(v["recip_rank"] for v in rr.values()) / n
    return {k: round(float(v), 6) for k, v in sorted(out.items(), key=lambda kv: _metric_order(kv[0]))}


def _metric_order(name: str) -> tuple[int, int]:
    metric, k = name.split("@")
    return METRICS.index(metric), int(k)


# ---------------------------------------------------------------------- corpus embedding cache
def default_cache_dir() -> Path:
    """``$EMBEDKIT_CACHE`` or ``~/.cache/embedkit``, + ``/corpus-embeddings``."""
    base = os.environ.get("EMBEDKIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "embedkit")
    return Path(base) / "corpus-embeddings"


def cache_key(model_dir: Path, spec_dict: dict[str, Any], corpus_hash: str, dtype: str) -> str:
    """The key of a cached corpus embedding: (model fingerprint, spec, corpus hash, dtype)."""
    payload = json.dumps({"model": model_fingerprint(model_dir), "spec": spec_dict, "corpus": corpus_hash,
                          "dtype": dtype}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def encode_corpus_cached(embedder: Any, data: EvalData, cache_dir: Path | None, batch_size: int | None = None,
                         ) -> tuple[np.ndarray, bool]:
    """The corpus vectors, from the cache when the same model / spec / corpus was encoded before."""
    texts = list(data.corpus.values())
    if cache_dir is None or embedder.path is None:
        return embedder.encode_corpus(texts, batch_size=batch_size), False
    key = cache_key(embedder.path, embedder.spec.to_dict(), data.corpus_hash(), str(embedder.backend.dtype))
    path = Path(cache_dir) / f"{key}.npy"
    if path.is_file():
        try:
            vecs = np.load(path, allow_pickle=False)
            if vecs.shape == (len(texts), embedder.dim):
                return vecs, True
        except (OSError, ValueError):
            pass  # a damaged cache entry is recomputed
    vecs = embedder.encode_corpus(texts, batch_size=batch_size)

    save_npy(path, vecs)
    return vecs, False


# ---------------------------------------------------------------------- evaluate
def retrieve(embedder: Any, data: EvalData, top_k: int, *, batch_size: int | None = None,
             cache_dir: str | Path | None = "default") -> tuple[dict[str, dict[str, float]], bool]:
    """``(run, cache_hit)``: each query's ``top_k`` documents by exact inner product, ``{qid: {doc id: score}}``
    best first (the dicts keep that order), the corpus vectors from the cache when possible.

    Queries are encoded with the embedder's query instruction, documents as passages.
    """
    if cache_dir == "default":
        cache_dir = default_cache_dir()
    corpus_vecs, hit = encode_corpus_cached(embedder, data, Path(cache_dir) if cache_dir else None, batch_size)
    qids = list(data.queries)
    query_vecs = embedder.encode_queries([data.queries[q] for q in qids], batch_size=batch_size)
    scores, idx = search(query_vecs, corpus_vecs, top_k, feature="evaluation")
    doc_ids = list(data.corpus)
    run = {q: {doc_ids[j]: float(s) for s, j in zip(scores[i], idx[i], strict=True) if j >= 0}
           for i, q in enumerate(qids)}
    return run, hit


def evaluate(model: Any, data: EvalData | str | Path, *, split: str = "test", ks: tuple[int, ...] = DEFAULT_KS,
             batch_size: int | None = None, cache_dir: str | Path | None = "default",
             show_progress: bool | None = None, name: str | None = None) -> EvalResult:
    """Evaluate ``model`` (an :class:`embedkit.Embedder` or a model folder) on a retrieval benchmark.

    Example:
        >>> result = evaluate("minilm", "my-benchmark")
        >>> result.metrics["ndcg@10"]
    """
    # lazy: pulls in torch; embedkit.eval.retrieval stays importable without it (fast CLI start)
    from ..embedder import Embedder

    t0 = time.perf_counter()
    if not isinstance(data, EvalData):
        data = load_eval_data(data, split)
    embedder = model if isinstance(model, Embedder) else Embedder(model, show_progress=show_progress)
    run, hit = retrieve(embedder, data, max(ks), batch_size=batch_size, cache_dir=cache_dir)
    metrics = compute_metrics(data.qrels, run, ks)
    label = name or (str(embedder.path) if embedder.path else "model")
    return EvalResult(model=label, data=data.summary(), metrics=metrics, ks=tuple(sorted(set(ks))),
                      seconds=time.perf_counter() - t0, cache_hit=hit)


# ---------------------------------------------------------------------- reports
def compare_metrics(a: EvalResult, b: EvalResult) -> dict[str, dict[str, float]]:
    """``{metric: {"a", "b", "delta"}}`` for the metrics both results have."""
    return {m: {"a": a.metrics[m], "b": b.metrics[m], "delta": round(b.metrics[m] - a.metrics[m], 6)}
            for m in a.metrics if m in b.metrics}


def markdown_report(results: list[EvalResult], title: str = "Retrieval evaluation") -> str:
    """A markdown table: one column per model, one row per metric (with a delta column for two models)."""
    lines = [f"# {title}", ""]
    data = results[0].data
    lines += [f"Data: `{data['folder']}` (split `{data['split']}`): {data['queries']} queries, {data['corpus']} "
              f"documents, {data['qrels']} judgements.", ""]
    names = [f"`{r.model}`" for r in results]
    header = "| metric | " + " | ".join(names) + (" | delta |" if len(results) == 2 else " |")
    lines += [header, "|---" * (len(results) + 1 + (len(results) == 2)) + "|"]
    for metric in results[0].metrics:
        row = [f"{r.metrics.get(metric, float('nan')):.4f}" for r in results]
        if len(results) == 2:
            row.append(f"{results[1].metrics[metric] - results[0].metrics[metric]:+.4f}")
        lines.append(f"| {metric} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main_metrics(metrics: dict[str, float]) -> tuple[str, ...]:
    """nDCG / recall / MRR / MAP at 10 (or at the largest k evaluated when 10 was not)."""
    out = []
    for base in ("ndcg", "recall", "mrr", "map"):
        ks = sorted(int(m.split("@")[1]) for m in metrics if m.startswith(base + "@"))
        if ks:
            out.append(f"{base}@{10 if 10 in ks else ks[-1]}")
    return tuple(out)


def plot_comparison(results: list[EvalResult], png: str | Path, labels: list[str] | None = None,
                    metrics: tuple[str, ...] | None = None, title: str = "Retrieval quality") -> Path:
    """A grouped bar chart of the main metrics for each result, written atomically as PNG."""
    matplotlib = require("matplotlib", "plotting")
    matplotlib.use("Agg")
    plt = require("matplotlib.pyplot", "plotting")


    labels = labels or [r.model for r in results]
    metrics = tuple(m for m in (metrics or main_metrics(results[0].metrics)) if all(m in r.metrics for r in results))
    if not metrics:
        raise EmbedkitError("nothing to plot: the results share no metric")
    x = np.arange(len(metrics))
    width = 0.8 / max(1, len(results))
    fig, ax = plt.subplots(figsize=(7, 3.8), dpi=110)
    for i, (r, label) in enumerate(zip(results, labels, strict=True)):
        values = [r.metrics[m] for m in metrics]
        bars = ax.bar(x + i * width - 0.4 + width / 2, values, width, label=label)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(x, metrics)
    ax.set_ylim(0, min(1.0, max(r.metrics[m] for r in results for m in metrics) * 1.25 + 0.05))
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = Path(png)
    try:
        with writing(png, "plot") as fh:
            fig.savefig(fh, format="png")
    finally:
        plt.close(fig)
    return png
