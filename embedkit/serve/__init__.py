"""``embedkit serve``: an HTTP server for exact embeddings (OpenAI and text-embeddings-inference routes) over a
token-budget batching queue. Needs the ``serve`` extra (fastapi, uvicorn, prometheus_client).

Layers: :mod:`.app` (routes, errors, auth, limits) -> :mod:`.queue` (tokenize on arrival, token-budget batches,
permits) -> the same :class:`~embedkit.Embedder` pooling code as in-process encoding.
"""

from .registry import ServeConfig

__all__ = ["ServeConfig"]
