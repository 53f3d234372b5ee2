"""embedkit: encode, fine-tune, evaluate, convert and verify BGE-style text-embedding models, offline.

Example:
    >>> from embedkit import Embedder
    >>> m = Embedder("minilm")                 # or any local model folder
    >>> m.encode_queries(["what is bge?"]).shape
    (1, 384)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import CheckpointError, DataError, EmbedkitError, SpecError
from .spec import EmbedderSpec

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .embedder import Embedder
    from .m3 import M3Embedder
    from .rerank import Reranker


def __getattr__(name: str) -> Any:
    # Embedder / M3Embedder / Reranker pull in torch + transformers: import on first use (`embedkit --help` stays fast)
    if name == "Embedder":
        from .embedder import Embedder

        return Embedder
    if name == "M3Embedder":
        from .m3 import M3Embedder

        return M3Embedder
    if name == "Reranker":
        from .rerank.reranker import Reranker

        return Reranker
    raise AttributeError(f"module 'embedkit' has no attribute {name!r}")


def load(model: str, **kwargs: Any) -> Embedder:
    """Load a local model folder (or ``"minilm"``) as an :class:`Embedder`; keyword arguments as for it."""
    from .embedder import Embedder

    return Embedder(model, **kwargs)


__all__ = ["Embedder", "M3Embedder", "Reranker", "EmbedderSpec", "load", "EmbedkitError", "SpecError",
           "CheckpointError", "DataError"]
