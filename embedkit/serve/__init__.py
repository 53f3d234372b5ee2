"""``embedkit serve``: an HTTP server for exact embeddings (OpenAI and text-embeddings-inference routes) over a
token-budget batching queue. Needs the ``serve`` extra (fastapi, uvicorn, prometheus_client).

Layers: :mod:`.app` (the factory) -> :mod:`.routes_embed` / :mod:`.routes_rerank` / :mod:`.routes_info` (the
routes, over :mod:`.inputs`), :mod:`.middleware` (auth, payload limit), :mod:`.errors` (error shapes) ->
:mod:`.server` (state, admission, waiting on a job) -> :mod:`.queue` (tokenize on arrival, token-budget batches,
permits) -> :mod:`.runner` (the same :class:`~embedkit.Embedder` pooling code as in-process encoding, or the
:class:`~embedkit.Reranker`'s model).
"""

from .registry import ServeConfig

__all__ = ["ServeConfig"]
