"""Backends run the transformer forward pass; pooling lives in :mod:`embedkit.pooling`, never here.

Every backend declares what its ``forward`` returns in ``output``, and callers branch on that, never on probing
attributes:

* ``"hidden"`` (:class:`HiddenBackend`, the PyTorch backend): ``forward(features) -> (last_hidden_state,
  attention_mask)`` as tensors; the caller pools (:func:`embedkit.pooling.embed`) and may run heads on them (bge-m3).
* ``"pooled"`` (:class:`PooledBackend`, the ONNX backend): ``forward(features) -> (batch, dim)`` float32 final vectors;
  pooling, truncation and normalization are baked into the graph.
* ``"scores"`` (:class:`ScoresBackend`, a cross-encoder's ONNX graph): ``forward(features) -> (batch,)`` float32
  scores, one per (query, passage) pair; :class:`embedkit.Reranker` runs it.

:func:`vectors` turns either into final vectors; :func:`embedkit.backends.factory.create_backend` picks a backend and
its precision (with the quality gate).
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch

from .. import pooling
from .finite import NonFiniteOutputError, check_finite

OutputKind = Literal["hidden", "pooled", "scores"]
OUTPUT_KINDS: tuple[str, ...] = ("hidden", "pooled", "scores")

PROTOCOL_ATTRIBUTES: tuple[str, ...] = ("output", "hidden_size", "input_names", "device", "dtype")
"""What every backend instance has (besides ``forward``)."""


class _Described(Protocol):
    """What every backend declares besides ``output`` and ``forward`` (:data:`PROTOCOL_ATTRIBUTES`)."""

    hidden_size: int
    input_names: tuple[str, ...]
    device: Any
    dtype: Any


@runtime_checkable
class HiddenBackend(_Described, Protocol):
    """A backend that returns the last hidden state (PyTorch): what bge-m3's heads and training need."""

    output: Literal["hidden"]
    device: torch.device
    dtype: torch.dtype
    model: torch.nn.Module

    def forward(self, features: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the model on padded ``features``; return ``(last_hidden_state, attention_mask)`` as tensors."""
        ...


@runtime_checkable
class PooledBackend(_Described, Protocol):
    """A backend that returns final sentence vectors (an exported graph that ends in the pooling)."""

    output: Literal["pooled"]

    def forward(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """Run the graph on padded ``features``; return ``(batch, dim)`` float32 vectors."""
        ...


@runtime_checkable
class ScoresBackend(_Described, Protocol):
    """A backend that returns one score per (query, passage) pair (a cross-encoder's exported graph)."""

    output: Literal["scores"]

    def forward(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """Run the graph on padded pair ``features``; return ``(batch,)`` float32 scores."""
        ...


Backend = HiddenBackend | PooledBackend
"""What :class:`embedkit.Embedder` runs: branch on ``backend.output``."""


def vectors(backend: Backend, padded: dict[str, np.ndarray], spec: Any, rows: np.ndarray) -> np.ndarray:
    """Final float32 vectors of one padded batch (``spec``: pooling, normalize, truncate_dim), whatever the backend's
    ``output``; raises :class:`NonFiniteOutputError` naming the first input row (``rows``) with a NaN / infinity."""
    if backend.output == "pooled":  # the graph ends in embedkit.pooling.embed, traced with this spec
        vecs = np.asarray(backend.forward(padded))
        check_finite(vecs, rows, "vector")
        return vecs
    hidden, mask = backend.forward(padded)
    pooled = pooling.embed(hidden, mask, spec.pooling, spec.normalize, spec.truncate_dim)
    check_finite(pooled, rows, "vector")
    return pooled.float().cpu().numpy()


__all__ = ["Backend", "HiddenBackend", "PooledBackend", "ScoresBackend", "OutputKind", "OUTPUT_KINDS",
           "PROTOCOL_ATTRIBUTES", "vectors", "NonFiniteOutputError", "check_finite"]
