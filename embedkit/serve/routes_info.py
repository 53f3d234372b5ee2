"""The routes about the served models and the server: ``POST /tokenize``, ``GET /info``, ``/health``, ``/metrics``
and ``/docs`` (a plain offline page: no Swagger UI, whose assets come from a CDN).

(No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations; see
:mod:`embedkit.serve.routes_embed`.)
"""

import html
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from .. import __version__
from .errors import json_response
from .inputs import prompt_of, texts_of
from .registry import ServedModel
from .schemas import TokenizeRequest


async def tokenize(body: TokenizeRequest, request: Request) -> Any:
    """The tokens each input becomes (after the prompt): ``[[{"id", "text", "special", "start", "stop"}]]``."""
    server = request.app.state.server
    model = server.model(body.model, request.url.path)
    texts = texts_of(body.inputs, "inputs")
    server.check_client_batch(len(texts), "inputs", "inputs")
    prepare, _ = prompt_of(model, body.prompt_name)
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

    return json_response(await model.tokenizers.run(model.tokenizers.call, run))


def _model_info(m: ServedModel) -> dict[str, Any]:
    """One served model as ``/info`` lists it."""
    e = m.engine
    if m.kind == "reranker":
        return {"name": m.name, "kind": m.kind, "path": str(m.path), "precision": e.precision_summary,
                "backend": "torch", "max_input_length": e.spec.max_length, "spec": e.spec.to_dict(),
                "provenance": dict(e.spec.provenance)}
    return {"name": m.name, "kind": m.kind, "path": str(m.path), "dim": e.dim,
            "hidden_size": e.backend.hidden_size, "precision": e.precision_summary,
            "backend": "onnx" if e.backend.output == "pooled" else "torch",
            "sparse": m.sparse, "max_input_length": e.spec.passage_max_length,
            "spec": e.spec.to_dict(), "provenance": dict(e.spec.provenance),
            "prompts": {"query": e.spec.query_instruction, "document": e.spec.passage_instruction,
                        **m.prompts}}


async def info(request: Request) -> Any:
    """The served models (spec with provenance, precision, dimension), the limits, the version."""
    server = request.app.state.server
    config = server.config
    models = [_model_info(m) for m in server.registry.models.values()]
    first = models[0] if models else {}
    if first.get("kind") == "reranker":
        model_type = {"reranker": {"truncation": first["spec"]["truncation"],
                                   "activation": first["spec"]["activation"]}}
    else:
        model_type = {"embedding": {"pooling": first.get("spec", {}).get("pooling")}} if first else None
    return json_response({"model_id": first.get("name"), "model_type": model_type, "models": models,
        "loading": server.loading, "load_error": server.load_error,
        "max_concurrent_requests": config.max_concurrent_requests, "max_batch_tokens": config.max_batch_tokens,
        "max_batch_requests": config.max_batch_requests, "max_client_batch_size": config.max_client_batch_size,
        "payload_limit": config.payload_limit, "auto_truncate": config.auto_truncate,
        "tokenization_workers": config.tokenization_workers, "auth": config.api_key is not None,
        "docs": "/docs is a plain offline page listing the routes; /openapi.json is the schema (no Swagger UI: "
                "it loads its assets from a CDN)", "version": __version__})


async def health(request: Request) -> Any:
    """200 ``{"status": "ok"}`` when every model is loaded and its last batch succeeded; 503 otherwise."""
    server = request.app.state.server
    if server.loading:
        return json_response({"status": "loading"}, 503, {"retry-after": "1"})
    if server.load_error:
        return json_response({"status": "failed", "error": server.load_error}, 503)
    bad = [m.name for m in server.registry.models.values() if not m.healthy]
    if bad or server.draining:
        return json_response({"status": "unhealthy" if bad else "draining", "models": bad}, 503)
    return json_response({"status": "ok", "models": list(server.registry.models)})


async def metrics(request: Request) -> Any:  # no docstring: FastAPI would make it the schema's description
    body, ctype = request.app.state.server.metrics.render()
    return Response(body, media_type=ctype)


async def docs(request: Request) -> Any:
    """A plain page listing the routes (from the OpenAPI schema)."""
    rows = []
    for path, ops in request.app.openapi().get("paths", {}).items():
        for method, op in ops.items():
            rows.append(f"<tr><td>{method.upper()}</td><td><code>{html.escape(path)}</code></td>"
                        f"<td>{html.escape(op.get('summary', ''))}</td></tr>")
    return HTMLResponse("<!doctype html><meta charset='utf-8'><title>embedkit serve</title>"
                        f"<h1>embedkit serve {__version__}</h1><p>Schema: <a href='/openapi.json'>/openapi.json"
                        "</a>. Guide: docs/serve.md.</p><table>" + "".join(rows) + "</table>")


def register(app: Any) -> None:
    """Add the tokenize, info, health, metrics and docs routes to ``app``."""
    app.post("/tokenize", summary="TEI tokenize")(tokenize)
    app.get("/info", summary="model, spec, precision, limits")(info)
    app.get("/health", summary="200 when ready; 503 while loading or after a backend failure")(health)
    app.get("/metrics", summary="Prometheus metrics")(metrics)
    app.get("/docs", include_in_schema=False)(docs)
