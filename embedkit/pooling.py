"""Pooling, truncation and normalization: pure torch functions, traceable to ONNX.

These are the only implementations in embedkit; every backend, the exporter and the server call them.
"""

from __future__ import annotations

import torch

from .errors import SpecError


def cls_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The first token's hidden state (``[CLS]`` / ``<s>``). Assumes right padding, as BERT-style models use."""
    return hidden[:, 0]


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the hidden states of the non-padding tokens (summed in float32 for half-precision inputs)."""
    if hidden.dtype in (torch.float16, torch.bfloat16):
        hidden = hidden.float()
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1e-9)
    return summed / counts


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The hidden state of the last non-padding token; correct for left and right padding alike."""
    seq_len = attention_mask.shape[1]
    positions = torch.arange(seq_len, device=attention_mask.device, dtype=torch.int32).unsqueeze(0)
    last = (positions * (attention_mask > 0).to(torch.int32)).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


POOLERS = {"cls": cls_pool, "mean": mean_pool, "last_token": last_token_pool}


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, method: str) -> torch.Tensor:
    """Pool ``hidden`` (batch, seq, dim) into (batch, dim) with ``method`` (``cls`` | ``mean`` | ``last_token``)."""
    try:
        fn = POOLERS[method]
    except KeyError:
        raise SpecError(f"unknown pooling {method!r}", hint=f"use one of {', '.join(POOLERS)}") from None
    return fn(hidden, attention_mask)


def finalize(
    pooled: torch.Tensor, normalize: bool = True, truncate_dim: int | None = None
) -> torch.Tensor:
    """Matryoshka truncation, then L2 normalization (the order FlagEmbedding uses)."""
    if truncate_dim is not None:
        pooled = pooled[:, :truncate_dim]
    if normalize:
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
    return pooled


def embed(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    method: str,
    normalize: bool = True,
    truncate_dim: int | None = None,
) -> torch.Tensor:
    """hidden states -> final sentence vectors: :func:`pool` then :func:`finalize`, always in float32 (a bf16 / fp16
    model's pooled vector is upcast before truncation and normalization)."""
    return finalize(pool(hidden, attention_mask, method).float(), normalize=normalize, truncate_dim=truncate_dim)
