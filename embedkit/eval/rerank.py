"""Two-stage evaluation: retrieve with an embedder (exact search), rerank each query's top k with a cross-encoder,
and report the metrics of both stages side by side.

The reranked stage's ranking of a query is its top ``top_k`` retrieved documents ordered by the reranker's score
(:meth:`embedkit.Reranker.compute_score`, ties keep the retrieval order), followed by the rest of the retrieved
documents in retrieval order (those matter only for cut-offs ``k > top_k``: recall@100 with ``top_k=10`` is then
what a pipeline returning 100 documents, 10 of them reranked, would score).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SpecError
from .data import EvalData, load_eval_data
from .retrieval import DEFAULT_KS, EvalResult, compare_metrics, compute_metrics, markdown_report, retrieve

logger = logging.getLogger("embedkit")

DEFAULT_RERANK_TOP_K = 100


@dataclass
class TwoStageResult:
    """The metrics of retrieval alone (``retrieval``) and of retrieval + reranking (``reranked``) on the same data.

    ``reranked.extra`` holds ``reranker``, ``top_k``, ``pairs`` (pairs scored) and ``precision``.
    """

    retrieval: EvalResult
    reranked: EvalResult

    @property
    def stages(self) -> list[EvalResult]:
        """``[retrieval, reranked]``, the columns of the report and the bars of the plot."""
        return [self.retrieval, self.reranked]

    def delta(self) -> dict[str, dict[str, float]]:
        """``{metric: {"a": retrieval, "b": reranked, "delta": b - a}}``."""
        return compare_metrics(self.retrieval, self.reranked)

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``embedkit eval --rerank --json``: ``{"results": [retrieval, reranked], "delta": {...}}``."""
        return {"results": [r.to_dict() for r in self.stages], "delta": self.delta()}

    def markdown(self, title: str = "Two-stage evaluation") -> str:
        """A markdown table: one column per stage, one row per metric, and the delta."""
        return markdown_report(self.stages, title=title)


def rerank_run(reranker: Any, data: EvalData, run: dict[str, dict[str, float]], top_k: int, *,
               batch_size: int | None = None, show_progress: bool | None = None) -> tuple[dict[str, dict[str, float]],
                                                                                          int]:
    """``(reranked_run, pairs_scored)``: each query's first ``top_k`` documents of ``run`` (best first) reordered
    by ``reranker.compute_score`` (ties keep the run's order), then the rest of the run in its order.

    Every (query, document) pair of all queries is scored in one call, so the reranker's token-length sorted batches
    span queries. The returned scores are rank-based (``len - position``): the order is the ranking, with no ties
    left for the metric code to break.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise SpecError(f"top_k must be a positive integer, got {top_k!r}", param="top_k",
                        hint="e.g. top_k=100: rerank each query's 100 best retrieved documents")
    ranked = {q: list(docs) for q, docs in run.items()}
    pairs: list[tuple[str, str]] = []
    for q, docs in ranked.items():
        pairs += [(data.queries[q], data.corpus[d]) for d in docs[:top_k]]
    scores = reranker.compute_score(pairs, batch_size=batch_size, show_progress=show_progress) if pairs else []
    out: dict[str, dict[str, float]] = {}
    pos = 0
    for q, docs in ranked.items():
        head = docs[:top_k]
        mine = scores[pos:pos + len(head)]
        pos += len(head)
        order = sorted(range(len(head)), key=lambda i: -mine[i])  # stable: ties keep the retrieval order
        final = [head[i] for i in order] + docs[top_k:]
        out[q] = {d: float(len(final) - i) for i, d in enumerate(final)}
    return out, len(pairs)


def evaluate_two_stage(embedder: Any, reranker: Any, data: EvalData | str | Path, *, top_k: int = DEFAULT_RERANK_TOP_K,
                       split: str = "test", ks: tuple[int, ...] = DEFAULT_KS, batch_size: int | None = None,
                       rerank_batch_size: int | None = None, cache_dir: str | Path | None = "default",
                       show_progress: bool | None = None, name: str | None = None,
                       reranker_name: str | None = None) -> TwoStageResult:
    """Retrieve with ``embedder``, rerank each query's top ``top_k`` with ``reranker``, and score both stages.

    Retrieval is exact inner-product search over the corpus (as :func:`embedkit.eval.evaluate`, whose metrics the
    ``retrieval`` stage equals; corpus vectors cached the same way). The reranked stage orders each query's top
    ``top_k`` retrieved documents by the reranker's score (``compute_score``: the raw logit; the sigmoid would give
    the same order), the remaining retrieved documents after them in retrieval order. Both stages get the same
    metrics (nDCG, recall, MRR, MAP, precision at ``ks``, via pytrec_eval).

    Args:
        embedder: an :class:`embedkit.Embedder` or a model folder (or ``"minilm"``).
        reranker: an :class:`embedkit.Reranker` or a cross-encoder folder (loaded with its defaults).
        data: an :class:`~embedkit.eval.EvalData` or a BEIR / FlagEmbedding-layout folder (read with ``split``).
        top_k: documents per query handed to the reranker.
        ks: metric cut-offs.
        batch_size: texts per forward pass of the embedder (default: its own).
        rerank_batch_size: pairs per forward pass of the reranker (default: its own).
        cache_dir: corpus-embedding cache (``"default"``: ``$EMBEDKIT_CACHE``; ``None``: no cache).
        show_progress: progress bars of both models.
        name / reranker_name: labels of the stages (default: the folders).

    Returns:
        a :class:`TwoStageResult`: ``.retrieval`` and ``.reranked`` (each an :class:`EvalResult`), ``.delta()``.

    Example:
        >>> result = evaluate_two_stage("minilm", "bge-reranker-base", "my-benchmark", top_k=100)
        >>> result.retrieval.metrics["ndcg@10"], result.reranked.metrics["ndcg@10"]
    """
    # lazy: both pull in torch; embedkit.eval stays importable without it (fast CLI start)
    from ..embedder import Embedder
    from ..rerank.reranker import Reranker

    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise SpecError(f"top_k must be a positive integer, got {top_k!r}", param="top_k",
                        hint="e.g. top_k=100: rerank each query's 100 best retrieved documents")
    t0 = time.perf_counter()
    if not isinstance(data, EvalData):
        data = load_eval_data(data, split)
    ks = tuple(sorted(set(ks)))
    embedder = embedder if isinstance(embedder, Embedder) else Embedder(embedder, show_progress=show_progress)
    run, hit = retrieve(embedder, data, max(max(ks), top_k), batch_size=batch_size, cache_dir=cache_dir)
    cut = {q: dict(list(docs.items())[:max(ks)]) for q, docs in run.items()}
    label = name or (str(embedder.path) if embedder.path else "model")
    retrieval = EvalResult(model=label, data=data.summary(), metrics=compute_metrics(data.qrels, cut, ks), ks=ks,
                           seconds=time.perf_counter() - t0, cache_hit=hit, extra={"stage": "retrieval"})

    t1 = time.perf_counter()
    reranker = reranker if isinstance(reranker, Reranker) else Reranker(reranker, show_progress=show_progress)
    reranked_run, n_pairs = rerank_run(reranker, data, run, top_k, batch_size=rerank_batch_size,
                                       show_progress=show_progress)
    rlabel = reranker_name or str(reranker.path)
    seconds = time.perf_counter() - t1
    logger.info("reranked %d pairs (%d queries x top %d) in %.1f s", n_pairs, len(run), top_k, seconds)
    reranked = EvalResult(model=f"{label} + {rlabel} (top {top_k})", data=data.summary(),
                          metrics=compute_metrics(data.qrels, reranked_run, ks), ks=ks, seconds=seconds,
                          cache_hit=hit, extra={"stage": "rerank", "reranker": rlabel, "top_k": top_k,
                                                "pairs": n_pairs, "precision": reranker.precision})
    return TwoStageResult(retrieval=retrieval, reranked=reranked)


__all__ = ["TwoStageResult", "evaluate_two_stage", "rerank_run", "DEFAULT_RERANK_TOP_K"]
