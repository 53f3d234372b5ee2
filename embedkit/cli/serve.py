"""``embedkit serve``: serve models over HTTP (OpenAI and text-embeddings-inference routes), exact vectors."""

from __future__ import annotations

import logging
import os

import typer

from ..errors import EmbedkitError

logger = logging.getLogger("embedkit")


def serve(
    models: list[str] = typer.Argument(..., help="Model folders (or 'minilm'): embedders and rerankers; requests "
                                       "pick one by 'model'."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (0.0.0.0 exposes the server to the network)."),
    port: int = typer.Option(8080, min=0, max=65535, help="Port to listen on."),
    api_key: str | None = typer.Option(None, "--api-key", envvar="EMBEDKIT_API_KEY", show_envvar=True,
                                       help="Require 'Authorization: Bearer KEY' on every route but /health and "
                                       "/metrics."),
    precision: str = typer.Option("fp32", help="fp32 (default, exact) | auto | bf16 | fp16 | int8 (as encode)."),
    device: str | None = typer.Option(None, help="cpu | cuda | cuda:N (default: cuda when available)."),
    max_batch_tokens: int = typer.Option(16384, min=1, help="Padded tokens per batch (count x longest)."),
    max_batch_requests: int | None = typer.Option(None, min=1, help="Inputs per batch at most."),
    max_client_batch_size: int = typer.Option(32, min=1, help="Inputs per request at most (else 413)."),
    max_concurrent_requests: int = typer.Option(512, min=1, help="Inputs in flight at most (else 429 at once)."),
    payload_limit: int = typer.Option(2_000_000, min=1, help="Request body bytes at most (else 413)."),
    auto_truncate: bool = typer.Option(True, "--auto-truncate/--no-auto-truncate",
                                       help="Cut over-long inputs at the spec's max length (as Embedder does) "
                                       "unless a request says truncate=false."),
    served_model_name: list[str] = typer.Option([], "--served-model-name",
                                                help="Name for each model, in order (default: its folder name)."),
    workers: int = typer.Option(1, min=1, help="uvicorn worker processes (each loads the models)."),
    tokenization_workers: int = typer.Option(2, min=1, help="Tokenizer threads per model."),
) -> None:
    """Serve MODEL(s) over HTTP: POST /v1/embeddings (OpenAI), /embed, /embed_sparse, /tokenize (TEI); for a
    cross-encoder folder (*ForSequenceClassification) POST /rerank (TEI) and /v1/rerank (Cohere); GET /info,
    /health, /metrics, /docs.

    Example: embedkit serve minilm --port 8080

    Example: curl -s localhost:8080/embed -H 'content-type: application/json' -d '{"inputs": "hello"}'
    """
    from .._optional import require
    from ..serve.app import create_app
    from ..serve.registry import ServeConfig

    uvicorn = require("uvicorn", "embedkit serve")
    require("fastapi", "embedkit serve")
    require("prometheus_client", "embedkit serve")
    if api_key is not None and not api_key.strip():
        raise EmbedkitError("--api-key is empty", hint="pass a non-empty key, or leave the flag out")
    config = ServeConfig(models=list(models), host=host, port=port, api_key=api_key, precision=precision,
                         device=device, max_batch_tokens=max_batch_tokens, max_batch_requests=max_batch_requests,
                         max_client_batch_size=max_client_batch_size, max_concurrent_requests=max_concurrent_requests,
                         payload_limit=payload_limit, auto_truncate=auto_truncate,
                         served_model_names=list(served_model_name), workers=workers,
                         tokenization_workers=tokenization_workers)
    names = config.names()
    if len(served_model_name) > len(models):
        raise EmbedkitError(f"{len(served_model_name)} --served-model-name for {len(models)} model(s)",
                            hint="give at most one name per model, in the same order")
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        logger.warning("serving on %s without --api-key: anyone who can reach this address can use the server",
                       host)
    log_level = logging.getLevelName(logging.getLogger("embedkit").getEffectiveLevel()).lower()
    common = dict(host=host, port=port, log_level=log_level, timeout_graceful_shutdown=None)
    if workers > 1:
        os.environ["EMBEDKIT_SERVE_CONFIG"] = config.to_json()
        uvicorn.run("embedkit.serve.app:app_from_env", factory=True, workers=workers, **common)
        return
    app = create_app(config)
    server = app.state.server
    server.load()  # before listening: a model that cannot load is an error here, not a 503 forever
    if server.load_error:
        raise EmbedkitError(f"could not load the model(s): {server.load_error}",
                            hint="check the folder with `embedkit inspect MODEL`")
    logger.info("serving %s on http://%s:%d", ", ".join(names), host, port)
    _exit_zero_on_sigterm()
    uvicorn.run(app, **common)


def _exit_zero_on_sigterm() -> None:
    """SIGTERM ends the process with status 0: uvicorn drains the requests in flight, then re-raises the signal it
    captured with the previous handler back in place; that handler (this one) exits cleanly."""
    import signal

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)


def register(app: typer.Typer) -> None:
    """Add ``embedkit serve`` to ``app``."""
    app.command("serve")(serve)
