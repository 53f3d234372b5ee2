"""Cross-encoder rerankers: :class:`Reranker` (FlagReranker- / CrossEncoder-exact scores) and its
:class:`RerankerSpec` (pair truncation, lengths, query instruction, activation), resolved from the folder."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .spec import RerankerSpec, describe_reranker, is_reranker_folder, load_reranker_spec

if TYPE_CHECKING:
    from .reranker import Reranker


def __getattr__(name: str) -> Any:
    # Reranker pulls in torch + transformers: import on first use so `embedkit spec` / `--help` stay fast.
    if name == "Reranker":
        from .reranker import Reranker

        return Reranker
    raise AttributeError(f"module 'embedkit.rerank' has no attribute {name!r}")


__all__ = ["Reranker", "RerankerSpec", "load_reranker_spec", "describe_reranker", "is_reranker_folder"]
