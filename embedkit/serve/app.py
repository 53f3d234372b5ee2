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

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

from .. import __version__
from .._optional import require
from .errors import OPENAI_PATHS, Problem, add_error_handlers, error_body
from .inputs import PASSAGE_PROMPTS, QUERY_PROMPTS
from .middleware import Guard
from .registry import ServeConfig, ServedModel
from .server import Server

__all__ = ["OPENAI_PATHS", "PASSAGE_PROMPTS", "QUERY_PROMPTS", "Problem", "Server", "app_from_env", "create_app",
           "error_body"]

logger = logging.getLogger("embedkit")

def create_app(config: ServeConfig, models: list[ServedModel] | None = None,
               loader: Callable[..., ServedModel] | None = None) -> Any:
    """The FastAPI app serving ``config.models`` (loaded in a background thread: ``/health`` is 503 until then), or
    ``models`` already loaded. ``loader(path, name, config, metrics, on_health)`` replaces the default loader
    (:func:`embedkit.serve.registry.load_model`: the folder's kind picks ``load_embedder`` or ``load_reranker``)."""
    fastapi = require("fastapi", "embedkit serve")
    # the route modules import starlette at module level (FastAPI reads their annotations): only once it is there
    from . import routes_embed, routes_info, routes_rerank

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
    add_error_handlers(app)
    routes_embed.register(app)
    routes_rerank.register(app)
    routes_info.register(app)
    app.add_middleware(Guard, server=server)
    return app


def app_from_env() -> Any:
    """uvicorn's factory for ``--workers N``: each worker process builds the app from ``EMBEDKIT_SERVE_CONFIG``."""
    return create_app(ServeConfig.from_json(os.environ["EMBEDKIT_SERVE_CONFIG"]))
