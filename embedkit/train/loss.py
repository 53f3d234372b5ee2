"""Contrastive (InfoNCE) and distillation losses, and the cross-device gather that keeps local gradients."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """``all_gather`` across processes; the local shard keeps its autograd graph (others are constants).

    Returns ``t`` unchanged when torch.distributed is not initialized or has one process.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    t = t.contiguous()
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t)
    parts[dist.get_rank()] = t
    return torch.cat(parts, dim=0)


def contrastive_loss(q: torch.Tensor, p: torch.Tensor, group_size: int, temperature: float = 0.02,
                     in_batch_negatives: bool = True) -> torch.Tensor:
    """InfoNCE on ``q·p / temperature``; passages come in groups of ``group_size`` (positive first).

    Args:
        q: (B, d) query vectors.
        p: (B * group_size, d) passage vectors: for query i, rows ``i*G`` (positive) to ``i*G + G - 1`` (negatives).
        in_batch_negatives: score each query against every passage of the batch (else only its own group).
    """
    if in_batch_negatives:
        scores = q @ p.T / temperature  # (B, B*G)
        target = torch.arange(q.shape[0], device=q.device) * group_size
    else:
        scores = torch.einsum("bd,bgd->bg", q, p.view(q.shape[0], group_size, -1)) / temperature  # (B, G)
        target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(scores, target)


def group_scores(q: torch.Tensor, p: torch.Tensor, group_size: int, temperature: float) -> torch.Tensor:
    """Each query's scores against its own group: (B, G)."""
    return torch.einsum("bd,bgd->bg", q, p.view(q.shape[0], group_size, -1)) / temperature


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "kl_div") -> torch.Tensor:
    """Distillation: cross-entropy of the student's distribution against softmax(teacher scores).

    ``kl_div`` (FlagEmbedding's default) equals KL(teacher || student) up to the teacher's constant entropy;
    ``kl_div_probs`` takes the teacher's probabilities directly (bge-m3 self-distillation).
    """
    if kind == "kl_div":
        target = torch.softmax(teacher.float(), dim=-1)
    elif kind == "kl_div_probs":
        target = teacher.float()
    else:
        raise ValueError(f"unknown kd loss {kind!r}: use 'kl_div'")
    return -(target * torch.log_softmax(student.float(), dim=-1)).sum(dim=-1).mean()
