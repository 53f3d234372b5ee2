"""The reranking routes: text-embeddings-inference's ``POST /rerank`` and Cohere's (infinity's, Jina's)
``POST /v1/rerank``, over one common path (:func:`score_pairs`: tokenize (query, passage) pairs as
:meth:`Reranker.features` does and score them through the queue with the reranker's model: a served score equals
``Reranker.compute_score`` / ``rank``).

(No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations; see
:mod:`embedkit.serve.routes_embed`.)
"""

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from starlette.requests import Request

from .errors import Problem, json_response
from .queue import Post
from .registry import ServedModel
from .schemas import CohereRerankRequest, RerankRequest
from .server import check_direction


def _pair_features(spec: Any, queries: list[str], docs: list[str], cut: bool) -> Callable[[Any], Any]:
    """``fn(tokenizer)`` -> (the pairs' features as ``Reranker.features`` builds them, and the full length of each
    pair when ``cut`` is off, else ``None``): run in the model's tokenizer pool."""
    def features_of(tok: Any) -> tuple[dict[str, list[list[int]]], list[int] | None]:
        from ..rerank.features import pair_features

        full = None if cut else [len(ids) for ids in tok(queries, docs, truncation=False)["input_ids"]]
        feats = pair_features(tok, queries, docs, truncation=spec.truncation, max_length=spec.max_length,
                              query_max_length=spec.resolved_query_max_length)  # = Reranker.features
        return feats, full

    return features_of


async def score_pairs(request: Request, method: str, model_name: str | None, query: str, docs: list[str],
                      truncate: bool | None, param: str, direction: str = "right"
                      ) -> tuple[ServedModel, np.ndarray, dict[str, str], int]:
    """The common path of both reranking routes: validate, take permits, tokenize the (query, passage) pairs
    as :meth:`Reranker.features` does, queue them (token budget by pair length), wait: the float32 logits in
    input order, as ``Reranker.compute_score`` computes them."""
    server = request.app.state.server
    started = time.perf_counter()
    server.metrics.request_count.labels(method=method).inc()
    model = server.model(model_name, request.url.path, "reranker")
    check_direction(direction)
    n = len(docs)
    if n == 0:
        raise Problem(422, f"'{param}' is empty: send at least one text to score", "empty", param=param)
    server.check_client_batch(n, param, param)
    cut = server.config.auto_truncate if truncate is None else truncate
    spec = model.engine.spec
    features_of = _pair_features(spec, [spec.prepare_query(query)] * n, docs, cut)
    server.acquire(n, param, param)
    try:
        t0 = time.perf_counter()
        features, full = await model.tokenizers.run(model.tokenizers.call, features_of)
        for i, length in enumerate(full or []):
            if length > spec.max_length:
                raise Problem(422, f"'{param}[{i}]' with the query is {length} tokens, over the limit of "
                              f"{spec.max_length} (send truncate=true, or a shorter text)", "validation",
                              param=param)
        tokenization = time.perf_counter() - t0
        results, headers = await server.run_job(request, model, features, Post("score"), started, tokenization)
    finally:
        server.permits.release(n)
    server.metrics.request_success.labels(method=method).inc()
    return model, np.asarray(results, dtype=np.float32), headers, sum(len(r) for r in features["input_ids"])


async def rerank(body: RerankRequest, request: Request) -> Any:
    """text-embeddings-inference's ``/rerank``: ``[{"index", "score"(, "text")}]`` best first. ``score`` is
    ``Reranker.compute_score(pairs, normalize=not raw_scores)`` (the sigmoid unless ``raw_scores``)."""
    _, logits, headers, _ = await score_pairs(request, "rerank", body.model, body.query, body.texts,
                                              body.truncate, "texts", body.truncation_direction)
    values = logits.astype(np.float64)
    if not body.raw_scores:  # compute_score(normalize=True): FlagEmbedding's sigmoid of the float32 logit
        values = 1.0 / (1.0 + np.exp(-values))
    out = [{"index": i, "score": float(v)} | ({"text": body.texts[i]} if body.return_text else {})
           for i, v in enumerate(values)]
    out.sort(key=lambda r: r["score"], reverse=True)  # ties keep input order
    return json_response(out, headers=headers)


async def rerank_v1(body: CohereRerankRequest, request: Request) -> Any:
    """Cohere's (and infinity's, Jina's) ``/v1/rerank``: ``{"object": "rerank", "results": [{"index",
    "relevance_score"(, "document": {"text"})}], "model", "usage"}`` best first, the first ``top_n``;
    ``relevance_score`` is ``Reranker.rank(query, documents, top_k=top_n)``'s ``score`` (the spec's
    activation, sigmoid for one label)."""
    if body.top_n is not None and body.top_n <= 0:
        raise Problem(422, f"top_n={body.top_n}: ask for a positive number of results (or leave it out)",
                      "validation", param="top_n")
    model, logits, headers, tokens = await score_pairs(request, "rerank", body.model, body.query,
                                                       body.documents, None, "documents")
    scores = _activate(model.engine.spec.activation, logits)
    results = [{"index": i, "relevance_score": s} | ({"document": {"text": body.documents[i]}}
                                                      if body.return_documents else {})
               for i, s in enumerate(scores.tolist())]
    results.sort(key=lambda r: r["relevance_score"], reverse=True)  # ties keep input order, as rank()
    return json_response({"object": "rerank", "id": f"rerank-{time.time_ns():x}", "results": results[:body.top_n],
                          "model": model.name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}},
                         headers=headers)


def _activate(activation: str, logits: np.ndarray) -> np.ndarray:
    """The spec's activation on a request's float32 logits in input order, as ``Reranker.predict`` applies it
    (a ``(n, 1)`` float32 tensor, then flattened): the same values, bit for bit."""
    import torch

    fn = {"sigmoid": torch.sigmoid, "identity": lambda t: t, "tanh": torch.tanh}[activation]
    return np.asarray(fn(torch.from_numpy(logits)[:, None]).float().reshape(-1).numpy(), dtype=np.float32)


def register(app: Any) -> None:
    """Add the reranking routes to ``app``."""
    app.post("/rerank", summary="TEI rerank")(rerank)
    app.post("/v1/rerank", summary="Cohere / infinity rerank")(rerank_v1)
