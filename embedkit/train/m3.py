"""Unified bge-m3 fine-tuning: dense, sparse (lexical) and ColBERT trained together with FlagEmbedding's loss.

Scores are ``q·p / temperature`` for each mode; the ensemble is ``dense + 0.3·sparse + colbert``; the loss is
``(dense + ensemble + 0.1·sparse + colbert) / 4``, with cross-device negatives for the dense part only. With
``self_distill`` the three modes also learn toward ``softmax(ensemble)`` (KL) and the total is halved, as in
FlagEmbedding's ``m3`` modeling. The representations come from :func:`embedkit.m3.m3_outputs`, the same code as
inference.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..m3 import M3Heads, colbert_scores, m3_outputs, unused_token_ids
from ..spec import EmbedderSpec
from .loss import gather_with_grad, kd_loss
from .model import EmbedderTrainingModel


def _local(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B, B*G) in-batch scores -> each query's own group (B, G)."""
    b = scores.shape[0]
    idx = torch.arange(b, device=scores.device)[:, None] * group_size + torch.arange(group_size, device=scores.device)
    return scores.gather(1, idx)


class M3TrainingModel(EmbedderTrainingModel):
    """Encoder + bge-m3 heads; ``forward`` returns FlagEmbedding's unified loss."""

    def __init__(self, encoder: torch.nn.Module, heads: M3Heads, spec: EmbedderSpec, tokenizer: Any, *,
                 self_distill: bool = False, self_distill_start_step: int = -1, **kwargs: Any) -> None:
        super().__init__(encoder, spec, **kwargs)
        self.heads = heads
        self.vocab_size = int(encoder.config.vocab_size)
        self.unused = sorted(unused_token_ids(tokenizer))
        self.self_distill = self_distill
        self.self_distill_start_step = self_distill_start_step
        self.step = 0

    def _side(self, batch: dict[str, Any]) -> tuple[Any, torch.Tensor]:
        """All three representations of one collated side, back in input order (one chunk per side)."""
        if len(batch["chunks"]) != 1:
            raise ValueError("unified M3 training needs one chunk per side (GradCache is not supported with it)")
        feats = batch["chunks"][0]
        hidden = self.encoder(**feats, return_dict=True).last_hidden_state
        out = m3_outputs(hidden, feats["attention_mask"], self.heads, input_ids=feats["input_ids"],
                         pooling_method=self.spec.pooling, normalize=self.spec.normalize, dense=True, sparse=True,
                         colbert=True, vocab_size=self.vocab_size, unused_token_ids=self.unused)
        order = batch["order"]
        out.dense, out.sparse, out.colbert = out.dense[order], out.sparse[order], out.colbert[order]
        return out, feats["attention_mask"][order]

    def _ce(self, scores: torch.Tensor, teacher: torch.Tensor | None, in_batch: bool) -> torch.Tensor:
        """Cross-entropy on the positives (+ KD toward the teacher's group distribution), FlagEmbedding-style."""
        g = self.group_size
        if in_batch:
            target = torch.arange(scores.shape[0], device=scores.device) * g
            loss = F.cross_entropy(scores, target)
            local = _local(scores, g)
        else:
            local = scores
            loss = F.cross_entropy(scores, torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device))
        if teacher is not None and self.kd_loss:
            loss = loss + kd_loss(local, teacher, self.kd_loss)
        return loss

    def forward(self, query: dict[str, Any], passage: dict[str, Any],
                teacher_scores: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        q, q_mask = self._side(query)
        p, _ = self._side(passage)
        t, g = self.temperature, self.group_size
        in_batch = self.in_batch_negatives or self.negatives_cross_device
        b = q.dense.shape[0]
        group = torch.arange(b, device=q.dense.device)[:, None] * g + torch.arange(g, device=q.dense.device)

        def mode_scores(qv: torch.Tensor, pv: torch.Tensor, fn: Any) -> torch.Tensor:
            full = fn(qv, pv) / t  # (B, B*G)
            return full if in_batch else full.gather(1, group)

        # dense (cross-device negatives for dense only)
        if self.negatives_cross_device:
            qd, pd = gather_with_grad(q.dense.float()), gather_with_grad(p.dense.float())
            dense_all = qd @ pd.T / t
            dense_loss = F.cross_entropy(dense_all, torch.arange(qd.shape[0], device=qd.device) * g)
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
            dense = dense_all[b * rank: b * (rank + 1), p.dense.shape[0] * rank: p.dense.shape[0] * (rank + 1)]
            if teacher_scores is not None and self.kd_loss:
                dense_loss = dense_loss + kd_loss(_local(dense, g), teacher_scores, self.kd_loss)
        else:
            dense = mode_scores(q.dense.float(), p.dense.float(), lambda a, c: a @ c.T)
            dense_loss = self._ce(dense, teacher_scores, in_batch)
        sparse = mode_scores(q.sparse.float(), p.sparse.float(), lambda a, c: a @ c.T)
        colbert = mode_scores(q.colbert.float(), p.colbert.float(), lambda a, c: colbert_scores(a, c, q_mask))
        sparse_loss = self._ce(sparse, teacher_scores, in_batch)
        colbert_loss = self._ce(colbert, teacher_scores, in_batch)
        ensemble = dense + 0.3 * sparse + colbert
        ensemble_loss = self._ce(ensemble, teacher_scores, in_batch)
        loss = (dense_loss + ensemble_loss + 0.1 * sparse_loss + colbert_loss) / 4
        stats = {"dense_loss": float(dense_loss.detach()), "sparse_loss": float(sparse_loss.detach()),
                 "colbert_loss": float(colbert_loss.detach()), "ensemble_loss": float(ensemble_loss.detach()),
                 "queries_in_loss": float(b), "passages_in_loss": float(p.dense.shape[0])}
        if self.self_distill and self.training and self.step > self.self_distill_start_step:
            target = torch.softmax(ensemble.detach(), dim=-1)
            distill = (kd_loss(dense, target, "kl_div_probs") + 0.1 * kd_loss(sparse, target, "kl_div_probs")
                       + kd_loss(colbert, target, "kl_div_probs")) / 3
            loss = (loss + distill) / 2
            stats["self_distill_loss"] = float(distill.detach())
        if self.training:
            self.step += 1
        self.last_stats = stats
        return {"loss": loss, "q_reps": q.dense, "p_reps": p.dense}
