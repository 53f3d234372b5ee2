"""The embedding routes: OpenAI's ``POST /v1/embeddings`` (and ``/embeddings``) and text-embeddings-inference's
``POST /embed`` / ``/embed_sparse``, over one common path (:func:`encode`: validate, take permits, tokenize as
:meth:`Embedder.tokenize` does, queue, wait).

(No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations, and ``Request`` is an
optional dependency, so :func:`embedkit.serve.app.create_app` imports this module only once it has checked the
``serve`` extra.)
"""

import base64
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from starlette.requests import Request

from .errors import Problem, json_response
from .inputs import Inputs, prompt_of, token_features
from .queue import Post
from .registry import ServedModel
from .schemas import EmbedRequest, EmbedSparseRequest, OpenAIEmbeddingRequest
from .server import check_direction


async def _features(model: ServedModel, inputs: Inputs, prepare: Callable[[str], str], max_length: int, cut: bool,
                    param: str) -> dict[str, list[list[int]]]:
    """The inputs' features: token ids checked against the vocabulary, or the prepared texts tokenized in the pool
    (422 naming the index of a text over ``max_length`` when ``cut`` is off)."""
    if inputs.token_ids:
        return token_features(model, inputs.items, max_length, cut)
    prepared = [prepare(t) for t in inputs.items]
    features = await model.tokenizers.run(model.tokenizers.tokenize, prepared, max_length, cut)
    if not cut:
        for i, row in enumerate(features["input_ids"]):
            if len(row) > max_length:
                raise Problem(422, f"'{param}[{i}]' has {len(row)} tokens, over the limit of "
                              f"{max_length} (send truncate=true, or a shorter text)", "validation",
                              param=param)
    return features


async def encode(request: Request, method: str, model_name: str | None, inputs: Any, prompt_name: str | None,
                 truncate: bool | None, post_of: Callable[[ServedModel], Post], param: str,
                 direction: str = "right") -> tuple[ServedModel, list[Any], dict[str, str], int]:
    """The common path of every embedding route: validate, take permits, tokenize, queue, wait."""
    server = request.app.state.server
    config = server.config
    started = time.perf_counter()
    server.metrics.request_count.labels(method=method).inc()
    model = server.model(model_name, request.url.path)
    check_direction(direction)
    items = Inputs(inputs, param)
    n = len(items.items)
    server.check_client_batch(n, "inputs", param)
    post = post_of(model)
    prepare, max_length = prompt_of(model, prompt_name)
    cut = config.auto_truncate if truncate is None else truncate
    server.acquire(n, "inputs", param)
    try:
        t0 = time.perf_counter()
        features = await _features(model, items, prepare, max_length, cut, param)
        tokenization = time.perf_counter() - t0
        results, headers = await server.run_job(request, model, features, post, started, tokenization)
    finally:
        server.permits.release(n)
    server.metrics.request_success.labels(method=method).inc()
    return model, results, headers, sum(len(r) for r in features["input_ids"])


def dense_post(normalize: bool | None, dimensions: int | None, param: str = "dimensions"
               ) -> Callable[[ServedModel], Post]:
    """What a dense route asks of a model's vectors (422 for dimensions outside ``1..dim``, or a change an ONNX
    graph with its spec baked in cannot make)."""
    def make(model: ServedModel) -> Post:
        engine = model.engine
        spec = engine.spec
        if dimensions is not None and (dimensions <= 0 or dimensions > engine.dim):
            raise Problem(422, f"dimensions={dimensions}: this model's vectors have {engine.dim} dimensions; "
                          f"ask for 1..{engine.dim}", "validation", param=param)
        dims = dimensions if dimensions is not None else spec.truncate_dim
        if dims is not None and dims == engine.backend.hidden_size:
            dims = None
        norm = spec.normalize if normalize is None else normalize
        if engine.backend.output == "pooled" and (dims, norm) != (spec.truncate_dim, spec.normalize):
            raise Problem(422, "this model runs an ONNX graph with its spec baked in: dimensions and normalize "
                          "cannot change per request", "validation", param=param)
        return Post("dense", norm, dims)
    return make


async def openai_embeddings(body: OpenAIEmbeddingRequest, request: Request) -> Any:
    """OpenAI's embeddings API: ``input`` (text(s) or token ids), ``model``, ``encoding_format``,
    ``dimensions``."""
    model, vectors, headers, tokens = await encode(
        request, "openai", body.model, body.input, body.prompt_name, None, dense_post(None, body.dimensions),
        "input")
    if body.encoding_format == "base64":
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode("ascii")}
                for i, v in enumerate(vectors)]
    else:
        data = [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)]
    return json_response({"object": "list", "data": data, "model": model.name,
                          "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}, headers=headers)


async def embed(body: EmbedRequest, request: Request) -> Any:
    """text-embeddings-inference's ``/embed``: ``[[float]]`` in input order."""
    _, vectors, headers, _ = await encode(
        request, "embed", body.model, body.inputs, body.prompt_name, body.truncate,
        dense_post(body.normalize, body.dimensions), "inputs", body.truncation_direction)
    return json_response([v.tolist() for v in vectors], headers=headers)


def _sparse_post(model: ServedModel) -> Post:
    if not model.sparse:
        raise Problem(422, f"model {model.name!r} has no sparse head (sparse_linear.pt): /embed_sparse "
                      "serves bge-m3-style models", "validation", param="model")
    return Post("sparse")


async def embed_sparse(body: EmbedSparseRequest, request: Request) -> Any:
    """``[[{"index": token id, "value": weight}]]``: bge-m3's lexical weights (special tokens dropped),
    sorted by token id."""
    _, results, headers, _ = await encode(request, "embed_sparse", body.model, body.inputs, body.prompt_name,
                                          body.truncate, _sparse_post, "inputs", body.truncation_direction)
    out = [[{"index": int(k), "value": float(v)} for k, v in sorted(r.items(), key=lambda kv: int(kv[0]))]
           for r in results]
    return json_response(out, headers=headers)


def register(app: Any) -> None:
    """Add the embedding routes to ``app`` (in this order: it is the order of the OpenAPI schema)."""
    app.post("/embeddings", include_in_schema=False)(openai_embeddings)
    app.post("/v1/embeddings", summary="OpenAI embeddings")(openai_embeddings)
    app.post("/embed", summary="TEI embed")(embed)
    app.post("/embed_sparse", summary="TEI embed_sparse (bge-m3 lexical weights)")(embed_sparse)
