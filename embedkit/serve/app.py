"""The FastAPI application: OpenAI and text-embeddings-inference routes over the batching queue.

Build it with :func:`create_app` (models loaded in a background thread, ``/health`` answers 503 until they are) or
hand it models already loaded. Every route turns a request into the exact texts the model's spec prescribes
(:meth:`EmbedderSpec.prepare_query` / ``prepare_passage`` / ``prepare``), tokenizes them as
:meth:`Embedder.tokenize` does, and waits for :class:`~embedkit.serve.queue.BatchQueue` to run them through the
same pooling code as :meth:`Embedder.encode`: a served vector equals the in-process one. The reranking routes
(``/rerank``, ``/v1/rerank``) tokenize (query, passage) pairs as :meth:`Reranker.features` does and score them through
the same queue with the reranker's model: a served score equals ``Reranker.compute_score`` / ``rank``.

Example:
    >>> from embedkit.serve.app import create_app
    >>> from embedkit.serve.registry import ServeConfig
    >>> app = create_app(ServeConfig(models=["minilm"]))  # then: uvicorn.run(app, host="127.0.0.1")
"""

import asyncio
import base64
import html
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np

from .. import __version__
from .._optional import require
from ..errors import EmbedkitError
from .auth import authorized
from .metrics import Metrics
from .queue import Job, Post
from .registry import Registry, ServeConfig, ServedModel, UnknownModel, WrongKind, load_model
from .schemas import (
    CohereRerankRequest,
    EmbedRequest,
    EmbedSparseRequest,
    OpenAIEmbeddingRequest,
    RerankRequest,
    TokenizeRequest,
)

logger = logging.getLogger("embedkit")

OPENAI_PATHS = frozenset({"/v1/embeddings", "/embeddings"})
"""Routes whose errors take OpenAI's shape; every other route answers TEI's ``{"error", "error_type"}``."""

QUERY_PROMPTS = ("query",)
PASSAGE_PROMPTS = ("document", "passage", "corpus")


class Problem(Exception):
    """An HTTP error answered in the route's error shape (OpenAI or TEI).

    (This module has no ``from __future__ import annotations``: FastAPI reads the routes' annotations, and
    ``Request`` is imported inside :func:`create_app`, as an optional dependency.)"""

    def __init__(self, status: int, message: str, kind: str, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.headers = status, message, kind, param, headers or {}


_OPENAI_TYPES = {401: ("invalid_request_error", "invalid_api_key"), 404: ("invalid_request_error", "model_not_found"),
                 413: ("invalid_request_error", "payload_too_large"), 429: ("rate_limit_error", "rate_limit_exceeded"),
                 500: ("server_error", "internal_error"), 503: ("server_error", "service_unavailable")}


def error_body(path: str, status: int, message: str, kind: str, param: str | None = None) -> dict[str, Any]:
    """The error body of ``path``'s family: OpenAI's ``{"error": {message, type, param, code}}`` or TEI's
    ``{"error", "error_type"}``."""
    if path in OPENAI_PATHS:
        etype, code = _OPENAI_TYPES.get(status, ("invalid_request_error", kind))
        return {"error": {"message": message, "type": etype, "param": param, "code": code}}
    return {"error": message, "error_type": kind}


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Any:
    from starlette.responses import Response

    return Response(json.dumps(body, separators=(",", ":")), status_code=status, headers=headers,
                    media_type="application/json")


class _Guard:
    """Pure-ASGI middleware: the API key (401) and the payload limit (413, from ``Content-Length`` and by counting
    the body as it arrives), before any route reads a byte."""

    def __init__(self, app: Any, server: "Server") -> None:
        self.app, self.server = app, server

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        cfg = self.server.config
        if not authorized(cfg.api_key, path, headers.get("authorization")):
            self.server.metrics.failure("auth")
            return await self._reply(send, path, 401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                                     "auth", {"www-authenticate": "Bearer"})
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > cfg.payload_limit:
            self.server.metrics.failure("payload")
            return await self._reply(send, path, 413, f"the body is {int(length)} bytes, over the payload limit "
                                     f"of {cfg.payload_limit} (--payload-limit)", "payload")
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        # read the body here, counting bytes (a chunked body has no Content-Length), then hand it on whole
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            seen += len(message.get("body", b""))
            if seen > cfg.payload_limit:
                self.server.metrics.failure("payload")
                return await self._reply(send, path, 413, f"the body is over the payload limit of "
                                         f"{cfg.payload_limit} bytes (--payload-limit)", "payload")
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: http.disconnect when the client goes away

        await self.app(scope, replay, send)

    @staticmethod
    async def _reply(send: Callable, path: str, status: int, message: str, kind: str,
                     extra: dict[str, str] | None = None) -> None:
        body = json.dumps(error_body(path, status, message, kind)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class Server:
    """The server's state: config, models, permits, metrics, health."""

    def __init__(self, config: ServeConfig, models: list[ServedModel] | None = None,
                 loader: Callable[..., ServedModel] | None = None) -> None:
        from .queue import Permits

        self.config = config
        self.metrics = Metrics()
        self.registry = Registry()
        self.permits = Permits(config.max_concurrent_requests)
        self.loading = models is None
        self.load_error: str | None = None
        self.draining = False
        self.loader = loader or load_model
        self.started = time.time()
        for m in models or []:
            self.registry.add(m)

    def set_health(self, name: str, ok: bool) -> None:
        """Called by a queue after each batch: a backend failure makes ``/health`` 503 until a batch succeeds."""
        model = self.registry.models.get(name)
        if model is not None:
            model.healthy = ok

    def load(self) -> None:
        """Load every model of the config (in a background thread at startup)."""
        try:
            for path, name in zip(self.config.models, self.config.names(), strict=True):
                logger.info("loading %s as %r", path, name)
                self.registry.add(self.loader(path, name, self.config, self.metrics, self.set_health))
            logger.info("ready: %s", ", ".join(self.registry.models))
        except Exception as exc:  # noqa: BLE001 - reported by /health and the log
            self.load_error = exc.message if isinstance(exc, EmbedkitError) else f"{type(exc).__name__}: {exc}"
            logger.error("loading failed: %s", self.load_error, exc_info=not isinstance(exc, EmbedkitError))
        finally:
            self.loading = False

    def close(self) -> None:
        """Finish queued work and stop every model's threads."""
        for m in self.registry.models.values():
            m.close()

    def model(self, name: str | None, path: str, kind: str = "embedder") -> ServedModel:
        """The model a request names, or the HTTP error saying why not (503 loading / draining, 404 unknown)."""
        if self.loading:
            raise Problem(503, "the model is still loading; retry shortly (GET /health says when it is ready)",
                          "unhealthy", headers={"retry-after": "1"})
        if self.load_error:
            raise Problem(503, f"the model failed to load: {self.load_error}", "unhealthy")
        if self.draining:
            raise Problem(503, "the server is shutting down", "unhealthy")
        try:
            return self.registry.get(name, kind)
        except UnknownModel as exc:
            raise Problem(404, f"{exc.message} ({exc.hint})", "model_not_found", param="model") from None
        except WrongKind as exc:
            raise Problem(422, f"{exc.message} ({exc.hint})", "model_kind", param="model") from None


def _texts(inputs: Any, param: str) -> list[str]:
    items = [inputs] if isinstance(inputs, str) else list(inputs)
    if not items:
        raise Problem(422, f"'{param}' is empty: send at least one text", "empty", param=param)
    for i, t in enumerate(items):
        if t == "":
            raise Problem(422, f"'{param}[{i}]' is an empty string", "empty", param=param)
    return items


def _prompt(model: ServedModel, prompt_name: str | None) -> tuple[Callable[[str], str], int]:
    """``prompt_name`` -> (the text preparation, the max length): ``query`` -> the spec's query instruction and
    ``query_max_length``; ``document`` / ``passage`` -> the passage instruction; another name of the folder's
    prompts -> that prompt as instruction; ``None`` -> the text as it is (``Embedder.encode``)."""
    spec = model.engine.spec
    if prompt_name is None:
        return spec.prepare, spec.passage_max_length
    if prompt_name in QUERY_PROMPTS:
        return spec.prepare_query, spec.query_max_length
    if prompt_name in PASSAGE_PROMPTS:
        return spec.prepare_passage, spec.passage_max_length
    if prompt_name in model.prompts:
        instruction = model.prompts[prompt_name]
        return (lambda t: spec.prepare(t, instruction)), spec.passage_max_length
    names = sorted({"query", "document", *model.prompts})
    raise Problem(422, f"unknown prompt_name {prompt_name!r}; this model knows {', '.join(names)}", "validation",
                  param="prompt_name")


def _token_features(model: ServedModel, ids: list[list[int]], max_length: int, truncate: bool
                    ) -> dict[str, list[list[int]]]:
    """Features of inputs given as this model's token ids (the OpenAI route's ``[int]`` / ``[[int]]``)."""
    tok = model.engine.tokenizer
    vocab = len(tok)
    rows = []
    for i, seq in enumerate(ids):
        if not seq:
            raise Problem(422, f"'input[{i}]' is an empty list of token ids", "empty", param="input")
        bad = next((t for t in seq if t < 0 or t >= vocab), None)
        if bad is not None:
            raise Problem(422, f"'input[{i}]' holds token id {bad}, outside this model's vocabulary (0..{vocab - 1})",
                          "validation", param="input")
        if len(seq) > max_length:
            if not truncate:
                raise Problem(422, f"'input[{i}]' has {len(seq)} tokens, over the limit of {max_length}",
                              "validation", param="input")
            seq = seq[:max_length]
        rows.append(list(seq))
    out = {"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]}
    if "token_type_ids" in getattr(tok, "model_input_names", ()):
        out["token_type_ids"] = [[0] * len(r) for r in rows]
    return out


def create_app(config: ServeConfig, models: list[ServedModel] | None = None,
               loader: Callable[..., ServedModel] | None = None) -> Any:
    """The FastAPI app serving ``config.models`` (loaded in a background thread: ``/health`` is 503 until then), or
    ``models`` already loaded. ``loader(path, name, config, metrics, on_health)`` replaces the default loader
    (:func:`embedkit.serve.registry.load_model`: the folder's kind picks ``load_embedder`` or ``load_reranker``)."""
    fastapi = require("fastapi", "embedkit serve")
    from fastapi.exceptions import RequestValidationError
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, Response

    server = Server(config, models, loader)

    @asynccontextmanager
    async def lifespan(app: Any):
        if server.loading:
            threading.Thread(target=server.load, name="embedkit-load", daemon=True).start()
        yield
        server.draining = True  # uvicorn has finished the requests in flight; the queues are empty
        await asyncio.get_running_loop().run_in_executor(None, server.close)
        logger.info("stopped")

    app = fastapi.FastAPI(title="embedkit serve", version=__version__, lifespan=lifespan, docs_url=None,
                          redoc_url=None, description="Exact embeddings over OpenAI and text-embeddings-inference "
                          "routes. /docs is a plain offline page; /openapi.json is the schema.")
    app.state.server = server

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> Any:
        server.metrics.failure(exc.kind)
        return _json(error_body(request.url.path, exc.status, exc.message, exc.kind, exc.param), exc.status,
                     exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Any:
        server.metrics.failure("validation")
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body')}: {e.get('msg')}"
                            for e in errors[:5])
        return _json(error_body(request.url.path, 422, message or "invalid request", "validation", where or None),
                     422)

    async def run_job(request: Request, model: ServedModel, features: dict[str, list[list[int]]], post: Post,
                      started: float, tokenization: float) -> tuple[list[Any], dict[str, str]]:
        """Queue the features, wait for them (dropping them if the client leaves), return results + headers."""
        loop = asyncio.get_running_loop()
        job: Job = model.queue.submit(features, post, loop)
        watch = asyncio.ensure_future(_disconnected(request))
        try:
            done, _ = await asyncio.wait({job.future, watch}, return_when=asyncio.FIRST_COMPLETED)
            if job.future not in done:
                model.queue.cancel(job)
                server.metrics.request_cancelled.inc()
                raise Problem(499, "the client closed the connection", "cancelled")
            try:
                results = job.future.result()
            except EmbedkitError as exc:
                raise Problem(500, exc.message, "backend") from None
        finally:
            watch.cancel()
        total = time.perf_counter() - started
        server.metrics.observe_job(job, tokenization, total)
        tokens = sum(len(r) for r in features["input_ids"])
        headers = {"x-compute-time": f"{total * 1000:.3f}", "x-tokenization-time": f"{tokenization * 1000:.3f}",
                   "x-queue-time": f"{job.queue_time * 1000:.3f}", "x-inference-time": f"{job.inference * 1000:.3f}",
                   "x-compute-tokens": str(tokens)}
        return results, headers

    async def encode(request: Request, method: str, model_name: str | None, inputs: Any, prompt_name: str | None,
                     truncate: bool | None, post_of: Callable[[ServedModel], Post], param: str,
                     direction: str = "right") -> tuple[ServedModel, list[Any], dict[str, str], int]:
        """The common path of every embedding route: validate, take permits, tokenize, queue, wait."""
        started = time.perf_counter()
        server.metrics.request_count.labels(method=method).inc()
        model = server.model(model_name, request.url.path)
        if direction.lower() != "right":
            raise Problem(422, f"truncation_direction {direction!r} is not supported: embedkit models truncate on "
                          "the right, as the model was evaluated", "validation", param="truncation_direction")
        token_ids = isinstance(inputs, list) and bool(inputs) and not isinstance(inputs[0], str)
        if token_ids:
            ids = [inputs] if isinstance(inputs[0], int) else inputs
            n = len(ids)
        else:
            texts = _texts(inputs, param)
            n = len(texts)
        if n > config.max_client_batch_size:
            raise Problem(413, f"{n} inputs in one request, over the limit of {config.max_client_batch_size} "
                          "(--max-client-batch-size)", "validation", param=param)
        post = post_of(model)
        prepare, max_length = _prompt(model, prompt_name)
        cut = config.auto_truncate if truncate is None else truncate
        if n > server.permits.limit:
            raise Problem(413, f"{n} inputs is more than the server ever takes at once "
                          f"({server.permits.limit}, --max-concurrent-requests)", "validation", param=param)
        if not server.permits.try_acquire(n):
            raise Problem(429, f"the server is at its limit of {server.permits.limit} inputs in flight "
                          "(--max-concurrent-requests); retry after a moment", "overloaded",
                          headers={"retry-after": "1"})
        server.metrics.input_count.inc(n)
        try:
            t0 = time.perf_counter()
            if token_ids:
                features = _token_features(model, ids, max_length, cut)
            else:
                prepared = [prepare(t) for t in texts]
                features = await model.tokenizers.run(model.tokenizers.tokenize, prepared, max_length, cut)
                if not cut:
                    for i, row in enumerate(features["input_ids"]):
                        if len(row) > max_length:
                            raise Problem(422, f"'{param}[{i}]' has {len(row)} tokens, over the limit of "
                                          f"{max_length} (send truncate=true, or a shorter text)", "validation",
                                          param=param)
            tokenization = time.perf_counter() - t0
            results, headers = await run_job(request, model, features, post, started, tokenization)
        finally:
            server.permits.release(n)
        server.metrics.request_success.labels(method=method).inc()
        return model, results, headers, sum(len(r) for r in features["input_ids"])

    def dense_post(normalize: bool | None, dimensions: int | None, param: str = "dimensions"
                   ) -> Callable[[ServedModel], Post]:
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
            if getattr(engine.backend, "pooled", False) and (dims, norm) != (spec.truncate_dim, spec.normalize):
                raise Problem(422, "this model runs an ONNX graph with its spec baked in: dimensions and normalize "
                              "cannot change per request", "validation", param=param)
            return Post("dense", norm, dims)
        return make

    @app.post("/v1/embeddings", summary="OpenAI embeddings")
    @app.post("/embeddings", include_in_schema=False)
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
        return _json({"object": "list", "data": data, "model": model.name,
                      "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}, headers=headers)

    @app.post("/embed", summary="TEI embed")
    async def embed(body: EmbedRequest, request: Request) -> Any:
        """text-embeddings-inference's ``/embed``: ``[[float]]`` in input order."""
        _, vectors, headers, _ = await encode(
            request, "embed", body.model, body.inputs, body.prompt_name, body.truncate,
            dense_post(body.normalize, body.dimensions), "inputs", body.truncation_direction)
        return _json([v.tolist() for v in vectors], headers=headers)

    @app.post("/embed_sparse", summary="TEI embed_sparse (bge-m3 lexical weights)")
    async def embed_sparse(body: EmbedSparseRequest, request: Request) -> Any:
        """``[[{"index": token id, "value": weight}]]``: bge-m3's lexical weights (special tokens dropped),
        sorted by token id."""
        def post(model: ServedModel) -> Post:
            if not model.sparse:
                raise Problem(422, f"model {model.name!r} has no sparse head (sparse_linear.pt): /embed_sparse "
                              "serves bge-m3-style models", "validation", param="model")
            return Post("sparse")

        _, results, headers, _ = await encode(request, "embed_sparse", body.model, body.inputs, body.prompt_name,
                                              body.truncate, post, "inputs", body.truncation_direction)
        out = [[{"index": int(k), "value": float(v)} for k, v in sorted(r.items(), key=lambda kv: int(kv[0]))]
               for r in results]
        return _json(out, headers=headers)

    async def score_pairs(request: Request, method: str, model_name: str | None, query: str, docs: list[str],
                          truncate: bool | None, param: str, direction: str = "right"
                          ) -> tuple[ServedModel, np.ndarray, dict[str, str], int]:
        """The common path of both reranking routes: validate, take permits, tokenize the (query, passage) pairs
        as :meth:`Reranker.features` does, queue them (token budget by pair length), wait: the float32 logits in
        input order, as ``Reranker.compute_score`` computes them."""
        started = time.perf_counter()
        server.metrics.request_count.labels(method=method).inc()
        model = server.model(model_name, request.url.path, "reranker")
        if direction.lower() != "right":
            raise Problem(422, f"truncation_direction {direction!r} is not supported: embedkit models truncate on "
                          "the right, as the model was evaluated", "validation", param="truncation_direction")
        n = len(docs)
        if n == 0:
            raise Problem(422, f"'{param}' is empty: send at least one text to score", "empty", param=param)
        if n > config.max_client_batch_size:
            raise Problem(413, f"{n} {param} in one request, over the limit of {config.max_client_batch_size} "
                          "(--max-client-batch-size)", "validation", param=param)
        if n > server.permits.limit:
            raise Problem(413, f"{n} {param} is more than the server ever takes at once "
                          f"({server.permits.limit}, --max-concurrent-requests)", "validation", param=param)
        cut = config.auto_truncate if truncate is None else truncate
        spec = model.engine.spec
        queries = [spec.prepare_query(query)] * n

        def features_of(tok: Any) -> tuple[dict[str, list[list[int]]], list[int] | None]:
            from ..rerank.features import pair_features

            full = None if cut else [len(ids) for ids in tok(queries, docs, truncation=False)["input_ids"]]
            feats = pair_features(tok, queries, docs, truncation=spec.truncation, max_length=spec.max_length,
                                  query_max_length=spec.resolved_query_max_length)  # = Reranker.features
            return feats, full

        if not server.permits.try_acquire(n):
            raise Problem(429, f"the server is at its limit of {server.permits.limit} inputs in flight "
                          "(--max-concurrent-requests); retry after a moment", "overloaded",
                          headers={"retry-after": "1"})
        server.metrics.input_count.inc(n)
        try:
            t0 = time.perf_counter()
            features, full = await model.tokenizers.run(model.tokenizers.call, features_of)
            for i, length in enumerate(full or []):
                if length > spec.max_length:
                    raise Problem(422, f"'{param}[{i}]' with the query is {length} tokens, over the limit of "
                                  f"{spec.max_length} (send truncate=true, or a shorter text)", "validation",
                                  param=param)
            tokenization = time.perf_counter() - t0
            results, headers = await run_job(request, model, features, Post("score"), started, tokenization)
        finally:
            server.permits.release(n)
        server.metrics.request_success.labels(method=method).inc()
        return model, np.asarray(results, dtype=np.float32), headers, sum(len(r) for r in features["input_ids"])

    @app.post("/rerank", summary="TEI rerank")
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
        return _json(out, headers=headers)

    @app.post("/v1/rerank", summary="Cohere / infinity rerank")
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
        return _json({"object": "rerank", "id": f"rerank-{time.time_ns():x}", "results": results[:body.top_n],
                      "model": model.name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}},
                     headers=headers)

    @app.post("/tokenize", summary="TEI tokenize")
    async def tokenize(body: TokenizeRequest, request: Request) -> Any:
        """The tokens each input becomes (after the prompt): ``[[{"id", "text", "special", "start", "stop"}]]``."""
        model = server.model(body.model, request.url.path)
        texts = _texts(body.inputs, "inputs")
        if len(texts) > config.max_client_batch_size:
            raise Problem(413, f"{len(texts)} inputs in one request, over the limit of "
                          f"{config.max_client_batch_size} (--max-client-batch-size)", "validation", param="inputs")
        prepare, _ = _prompt(model, body.prompt_name)
        prepared = [prepare(t) for t in texts]

        def run(tok: Any) -> list[list[dict[str, Any]]]:
            special = set(tok.all_special_ids)
            enc = tok(prepared, add_special_tokens=body.add_special_tokens, return_offsets_mapping=True,
                      truncation=False)
            out = []
            for text, ids, offsets in zip(prepared, enc["input_ids"], enc["offset_mapping"], strict=True):
                tokens = tok.convert_ids_to_tokens(ids)
                out.append([{"id": i, "text": text[s:e] if e > s and i not in special else t, "special": i in special,
                             "start": s if e > s else None, "stop": e if e > s else None}
                            for i, t, (s, e) in zip(ids, tokens, offsets, strict=True)])
            return out

        return _json(await model.tokenizers.run(model.tokenizers.call, run))

    @app.get("/info", summary="model, spec, precision, limits")
    async def info() -> Any:
        """The served models (spec with provenance, precision, dimension), the limits, the version."""
        models = []
        for m in server.registry.models.values():
            e = m.engine
            if m.kind == "reranker":
                models.append({"name": m.name, "kind": m.kind, "path": str(m.path), "precision": e.precision_summary,
                               "backend": "torch", "max_input_length": e.spec.max_length, "spec": e.spec.to_dict(),
                               "provenance": dict(e.spec.provenance)})
                continue
            models.append({"name": m.name, "kind": m.kind, "path": str(m.path), "dim": e.dim,
                           "hidden_size": e.backend.hidden_size, "precision": e.precision_summary,
                           "backend": "onnx" if getattr(e.backend, "pooled", False) else "torch",
                           "sparse": m.sparse, "max_input_length": e.spec.passage_max_length,
                           "spec": e.spec.to_dict(), "provenance": dict(e.spec.provenance),
                           "prompts": {"query": e.spec.query_instruction, "document": e.spec.passage_instruction,
                                       **m.prompts}})
        first = models[0] if models else {}
        if first.get("kind") == "reranker":
            model_type = {"reranker": {"truncation": first["spec"]["truncation"],
                                       "activation": first["spec"]["activation"]}}
        else:
            model_type = {"embedding": {"pooling": first.get("spec", {}).get("pooling")}} if first else None
        return _json({"model_id": first.get("name"), "model_type": model_type, "models": models,
            "loading": server.loading, "load_error": server.load_error,
            "max_concurrent_requests": config.max_concurrent_requests, "max_batch_tokens": config.max_batch_tokens,
            "max_batch_requests": config.max_batch_requests, "max_client_batch_size": config.max_client_batch_size,
            "payload_limit": config.payload_limit, "auto_truncate": config.auto_truncate,
            "tokenization_workers": config.tokenization_workers, "auth": config.api_key is not None,
            "docs": "/docs is a plain offline page listing the routes; /openapi.json is the schema (no Swagger UI: "
                    "it loads its assets from a CDN)", "version": __version__})

    @app.get("/health", summary="200 when ready; 503 while loading or after a backend failure")
    async def health() -> Any:
        """200 ``{"status": "ok"}`` when every model is loaded and its last batch succeeded; 503 otherwise."""
        if server.loading:
            return _json({"status": "loading"}, 503, {"retry-after": "1"})
        if server.load_error:
            return _json({"status": "failed", "error": server.load_error}, 503)
        bad = [m.name for m in server.registry.models.values() if not m.healthy]
        if bad or server.draining:
            return _json({"status": "unhealthy" if bad else "draining", "models": bad}, 503)
        return _json({"status": "ok", "models": list(server.registry.models)})

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Any:
        body, ctype = server.metrics.render()
        return Response(body, media_type=ctype)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Any:
        rows = []
        for path, ops in app.openapi().get("paths", {}).items():
            for method, op in ops.items():
                rows.append(f"<tr><td>{method.upper()}</td><td><code>{html.escape(path)}</code></td>"
                            f"<td>{html.escape(op.get('summary', ''))}</td></tr>")
        return HTMLResponse("<!doctype html><meta charset='utf-8'><title>embedkit serve</title>"
                            f"<h1>embedkit serve {__version__}</h1><p>Schema: <a href='/openapi.json'>/openapi.json"
                            "</a>. Guide: docs/serve.md.</p><table>" + "".join(rows) + "</table>")

    app.add_middleware(_Guard, server=server)
    return app


def _activate(activation: str, logits: np.ndarray) -> np.ndarray:
    """The spec's activation on a request's float32 logits in input order, as ``Reranker.predict`` applies it
    (a ``(n, 1)`` float32 tensor, then flattened): the same values, bit for bit."""
    import torch

    fn = {"sigmoid": torch.sigmoid, "identity": lambda t: t, "tanh": torch.tanh}[activation]
    return np.asarray(fn(torch.from_numpy(logits)[:, None]).float().reshape(-1).numpy(), dtype=np.float32)


async def _disconnected(request: Any) -> None:
    """Return when the client closes the connection (the body was already read; the next ASGI message is
    ``http.disconnect``)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def app_from_env() -> Any:
    """uvicorn's factory for ``--workers N``: each worker process builds the app from ``EMBEDKIT_SERVE_CONFIG``."""
    return create_app(ServeConfig.from_json(os.environ["EMBEDKIT_SERVE_CONFIG"]))
