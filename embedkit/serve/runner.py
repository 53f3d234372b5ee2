"""What runs one padded batch of a model: :class:`Runner` (an ``Embedder`` / ``M3Embedder``, the same steps as its
``encode``) and :class:`RerankRunner` (a ``Reranker``, as ``compute_score``), and :class:`Post`, what a request asks
of its results after pooling. :class:`~embedkit.serve.queue.BatchQueue` calls ``runner.run`` from its inference
thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import pooling
from ..embedder import NonFiniteOutputError


@dataclass(frozen=True)
class Post:
    """What a request asks of its vectors after pooling: ``dense`` with ``normalize`` and ``dims`` (Matryoshka),
    ``sparse`` (bge-m3 lexical weights), or ``score`` (a reranker's raw logit, :class:`RerankRunner`)."""

    kind: str = "dense"
    normalize: bool = True
    dims: int | None = None


class Runner:
    """Runs one padded batch of a model through the same steps as the model's ``encode`` does."""

    def __init__(self, embedder: Any) -> None:
        self.embedder = embedder
        self.spec = embedder.spec
        self.pooled = embedder.backend.output == "pooled"
        self.sparse = hasattr(embedder, "heads") and getattr(embedder.heads, "sparse_linear", None) is not None

    def run(self, padded: dict[str, np.ndarray], posts: Sequence[Post], rows: np.ndarray) -> list[Any]:
        """One result per row: a float32 vector (dense), a ``{token_id: weight}`` dict (sparse), or a
        :class:`~embedkit.embedder.NonFiniteOutputError` for a row whose output holds a NaN or an infinity (only
        that row's request fails; nothing non-finite is ever returned)."""
        spec = self.spec
        if self.pooled:  # the ONNX graph ends in embedkit.pooling.embed, traced with this spec
            vecs = np.asarray(self.embedder.backend.forward(padded))
            return [v if np.isfinite(v).all() else _non_finite("vector", rows[j]) for j, v in enumerate(vecs)]
        hidden, mask = self.embedder.backend.forward(padded)
        out: list[Any] = [None] * len(posts)
        with torch.inference_mode():
            dense_keys = {(p.normalize, p.dims) for p in posts if p.kind == "dense"}
            if dense_keys:
                pooled = pooling.pool(hidden, mask, spec.pooling).float()
                for normalize, dims in dense_keys:  # finalize over the whole batch, as Embedder does
                    vecs = pooling.finalize(pooled, normalize=normalize, truncate_dim=dims)
                    want = [j for j, p in enumerate(posts) if p.kind == "dense" and (p.normalize, p.dims) ==
                            (normalize, dims)]
                    arr = vecs.cpu().numpy()
                    finite = np.isfinite(arr).all(axis=1)
                    for j in want:
                        out[j] = arr[j] if finite[j] else _non_finite("vector", rows[j])
            if any(p.kind == "sparse" for p in posts):
                from ..m3 import process_token_weights, sparse_token_weights

                weights = sparse_token_weights(hidden, self.embedder.heads.sparse_linear)
                want = [j for j, p in enumerate(posts) if p.kind == "sparse"]
                real = padded["attention_mask"] > 0
                w = weights.float().cpu().numpy()
                for j in want:
                    if not np.isfinite(w[j][real[j]]).all():
                        out[j] = _non_finite("lexical weight", rows[j])
                        continue
                    out[j] = process_token_weights(w[j][real[j]], padded["input_ids"][j][real[j]].tolist(),
                                                   self.embedder.unused_token_ids)
        return out


class RerankRunner:
    """Runs one padded batch of (query, passage) pair features through a :class:`~embedkit.Reranker`'s model, as
    ``Reranker.compute_score`` does: ``model(**features).logits[:, 0].float()`` on the reranker's device.

    Built on the reranker's public attributes (``model``, ``device``, ``tokenizer``, ``spec``); the activation
    (sigmoid or raw) is applied per request by the route, on the request's logits in input order, as ``predict`` /
    ``compute_score`` apply it."""

    def __init__(self, reranker: Any) -> None:
        self.reranker = reranker

    def run(self, padded: dict[str, np.ndarray], posts: Sequence[Post], rows: np.ndarray) -> list[Any]:
        """One float32 logit per row, or a :class:`~embedkit.embedder.NonFiniteOutputError` for a non-finite one."""
        r = self.reranker
        tensors = {k: torch.from_numpy(v).to(r.device) for k, v in padded.items()}
        with torch.inference_mode():
            scores = r.model(**tensors).logits[:, 0].float().cpu().numpy()
        return [s if np.isfinite(s) else _non_finite("score", rows[j]) for j, s in enumerate(scores)]


def _non_finite(what: str, index: int) -> NonFiniteOutputError:
    return NonFiniteOutputError(f"the model produced a non-finite {what} (NaN or infinity) for input {index}; "
                                "nothing is returned for this request",
                                hint="check the model's weights (embedkit inspect) or serve with --precision fp32")
