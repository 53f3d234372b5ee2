"""The model being trained: an encoder + the one :class:`EmbedderSpec` + the loss; and GradCache."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .. import pooling
from ..spec import EmbedderSpec
from .loss import contrastive_loss, gather_with_grad, group_scores, kd_loss


class EncoderWrapper(nn.Module):
    """A training model around a ``transformers`` model (``self.encoder``): what the Trainer calls on the model it is
    given (gradient checkpointing, ``config``) and the last step's loss parts (``last_stats``)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.config = getattr(encoder, "config", None)
        self.last_stats: dict[str, float] = {}

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        self.encoder.gradient_checkpointing_enable(**kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.encoder.gradient_checkpointing_disable()


class EmbedderTrainingModel(EncoderWrapper):
    """Encodes queries and passages exactly as :class:`embedkit.Embedder` does (same pooling code) and returns the
    InfoNCE loss (+ distillation when teacher scores come with the batch).
    """

    def __init__(self, encoder: nn.Module, spec: EmbedderSpec, *, group_size: int, temperature: float = 0.02,
                 in_batch_negatives: bool = True, negatives_cross_device: bool = False,
                 kd_loss: str | None = "kl_div", kd_weight: float = 1.0) -> None:
        super().__init__(encoder)
        self.spec = spec
        self.group_size = group_size
        self.temperature = temperature
        self.in_batch_negatives = in_batch_negatives
        self.negatives_cross_device = negatives_cross_device
        self.kd_loss = kd_loss
        self.kd_weight = kd_weight

    def encode(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Token features -> sentence vectors, through :func:`embedkit.pooling.embed` (the inference code)."""
        out = self.encoder(**features, return_dict=True)
        return pooling.embed(out.last_hidden_state, features["attention_mask"], self.spec.pooling,
                             self.spec.normalize, self.spec.truncate_dim)

    def compute_loss(self, q: torch.Tensor, p: torch.Tensor, teacher_scores: torch.Tensor | None = None
                     ) -> torch.Tensor:
        """Loss from sentence vectors (used directly by GradCache)."""
        q, p = q.float(), p.float()
        if self.negatives_cross_device:
            q_all, p_all = gather_with_grad(q), gather_with_grad(p)
        else:
            q_all, p_all = q, p
        loss = contrastive_loss(q_all, p_all, self.group_size, self.temperature,
                                self.in_batch_negatives or self.negatives_cross_device)
        stats = {"queries_in_loss": float(q_all.shape[0]), "passages_in_loss": float(p_all.shape[0])}
        if teacher_scores is not None and self.kd_loss:
            kd = kd_loss(group_scores(q, p, self.group_size, self.temperature), teacher_scores, self.kd_loss)
            loss = loss + self.kd_weight * kd
            stats["kd_loss"] = float(kd.detach())
        self.last_stats = stats
        return loss

    def encode_batch(self, batch: dict[str, Any]) -> torch.Tensor:
        """Encode a collated side (``{"chunks": [features, ...], "order": index}``) back into input order.

        Chunks hold length-sorted sequences, each padded only to its own longest (see :class:`GroupCollator`).
        """
        reps = torch.cat([self.encode(chunk) for chunk in batch["chunks"]])
        return reps[batch["order"]]

    def forward(self, query: dict[str, Any], passage: dict[str, Any],
                teacher_scores: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        q = self.encode_batch(query)
        p = self.encode_batch(passage)
        return {"loss": self.compute_loss(q, p, teacher_scores), "q_reps": q, "p_reps": p}


# ---------------------------------------------------------------------- GradCache


class _RngState:
    """CPU (and CUDA) RNG state, so a chunk's re-forward sees the same dropout masks."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() \
            else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


def grad_cache_step(model: EmbedderTrainingModel, inputs: dict[str, Any],
                    backward: Callable[[torch.Tensor], None] | None = None, loss_scale: float = 1.0,
                    autocast: Callable[[], Any] | None = None) -> torch.Tensor:
    """One GradCache step: the full-batch gradient in the memory of one chunk (the collator's chunk size).

    1. forward every chunk without a graph and keep the vectors (and each chunk's RNG state);
    2. compute the loss on those vectors and back-propagate to the vectors only;
    3. re-forward each chunk with a graph (same RNG state) and back-propagate its cached vector gradients.

    Gradients accumulate into the parameters' ``.grad``; returns the (scaled) loss, detached.
    """
    import contextlib

    backward = backward or (lambda t: t.backward())
    autocast = autocast or contextlib.nullcontext
    leaves: dict[str, torch.Tensor] = {}
    states: dict[str, list[_RngState]] = {}
    for name in ("query", "passage"):
        reps, states[name] = [], []
        for chunk in inputs[name]["chunks"]:
            states[name].append(_RngState())
            with torch.no_grad(), autocast():
                reps.append(model.encode(chunk))
        leaves[name] = torch.cat(reps).detach().requires_grad_()
    final_state = _RngState()
    with autocast():
        q = leaves["query"][inputs["query"]["order"]]
        p = leaves["passage"][inputs["passage"]["order"]]
        loss = model.compute_loss(q, p, inputs.get("teacher_scores")) * loss_scale
    loss.backward()  # gradients w.r.t. the cached vectors only
    for name in ("query", "passage"):
        chunks = inputs[name]["chunks"]
        grads = leaves[name].grad.split([c["input_ids"].shape[0] for c in chunks])
        for chunk, state, grad in zip(chunks, states[name], grads, strict=True):
            state.restore()
            with autocast():
                rep = model.encode(chunk)
            backward((rep.float() * grad).sum())
    final_state.restore()
    return loss.detach()
