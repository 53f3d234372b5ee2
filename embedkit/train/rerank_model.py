"""The cross-encoder being trained (``finetune --reranker``): FlagEmbedding's reranker recipe.

Each query comes with 1 positive + ``group_size - 1`` negatives; the model scores every (query, passage) pair with one
logit, and the loss is the cross-entropy over each group's logits with the positive at index 0, plus (when the data
has ``pos_scores`` / ``neg_scores``) the distillation term ``-mean(sum(log_softmax(logits) * softmax(teacher)))``.
Starting from an embedding model, a fresh one-label head is added (and said).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._optional import require
from ..errors import CheckpointError
from ..folder.layout import read_config
from ..folder.loading import hf_config, load_model
from ..models import model_display_name
from ..rerank.spec import check_reranker_config, is_reranker_config
from .lora import lora_targets
from .loss import kd_loss
from .model import EncoderWrapper

logger = logging.getLogger("embedkit")


def group_loss(logits: torch.Tensor, group_size: int) -> torch.Tensor:
    """Cross-entropy over each group's logits, the positive at index 0.

    Args:
        logits: (B * group_size,) or (B, group_size) pair logits; rows ``i*G .. i*G + G - 1`` are query i's group.
    """
    grouped = logits.float().reshape(-1, group_size)
    target = torch.zeros(grouped.shape[0], dtype=torch.long, device=grouped.device)
    return F.cross_entropy(grouped, target)


def distill_loss(logits: torch.Tensor, teacher: torch.Tensor, group_size: int) -> torch.Tensor:
    """FlagEmbedding's reranker distillation: ``-mean(sum(log_softmax(logits) * softmax(teacher), -1))``."""
    return kd_loss(logits.float().reshape(-1, group_size), teacher.float().reshape(-1, group_size), "kl_div")


class RerankerTrainingModel(EncoderWrapper):
    """A ``*ForSequenceClassification`` model (one label) + the group loss (+ distillation)."""

    def __init__(self, encoder: nn.Module, *, group_size: int, kd_loss: str | None = "kl_div",
                 kd_weight: float = 1.0) -> None:
        super().__init__(encoder)
        self.group_size = group_size
        self.kd_loss = kd_loss
        self.kd_weight = kd_weight

    def score(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pair features -> one logit per pair (the model's forward, as inference runs it)."""
        return self.encoder(**features, return_dict=True).logits.reshape(-1)

    def compute_loss(self, logits: torch.Tensor, teacher_scores: torch.Tensor | None = None) -> torch.Tensor:
        """The group cross-entropy (+ ``kd_weight`` x distillation when teacher scores are given)."""
        loss = group_loss(logits, self.group_size)
        stats: dict[str, float] = {}
        if teacher_scores is not None and self.kd_loss:
            kd = distill_loss(logits, teacher_scores, self.group_size)
            loss = loss + self.kd_weight * kd
            stats["kd_loss"] = float(kd.detach())
        self.last_stats = stats
        return loss

    def forward(self, features: dict[str, torch.Tensor], teacher_scores: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        logits = self.score(features)
        return {"loss": self.compute_loss(logits, teacher_scores), "logits": logits}


def load_reranker_model(path: Path, *, trust_pickle: bool = False, seed: int | None = None) -> tuple[Any, bool]:
    """The model to train: ``(model, fresh_head)``.

    A one-label cross-encoder folder loads as it is (a multi-label head is refused). An embedding model (no
    ``*ForSequenceClassification`` in ``config.json``) loads safely as the base model and gets a fresh one-label
    head (``AutoModelForSequenceClassification`` with ``num_labels=1``), said in the log.
    """
    from transformers import AutoModelForSequenceClassification

    config = read_config(path)
    if is_reranker_config(config):
        check_reranker_config(path, config)
        return load_model(path, trust_pickle=trust_pickle, auto_class=AutoModelForSequenceClassification,
                          what="cross-encoder"), False
    base = load_model(path, trust_pickle=trust_pickle)
    hf = hf_config(path)
    hf.num_labels = 1
    if seed is not None:
        torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(hf)
    prefix = model.base_model_prefix
    body = getattr(model, prefix, None)
    if body is None:
        raise CheckpointError(f"{path}: {type(model).__name__} has no {prefix!r} base model to load the weights into")
    result = body.load_state_dict(base.state_dict(), strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("pooler.") and not k.endswith("position_ids")]
    unexpected = [k for k in result.unexpected_keys if not k.startswith("pooler.")]
    if missing or unexpected:
        raise CheckpointError(f"{path}: the embedding model's weights do not fit {type(model).__name__} "
                              f"({len(missing)} missing, {len(unexpected)} unexpected, e.g. "
                              f"{(missing or unexpected)[:3]})", hint="start from a BERT / XLM-R style encoder")
    head = sorted({n.split(".")[0] for n, _ in model.named_parameters() if not n.startswith(prefix + ".")})
    fresh_pooler = [k for k in result.missing_keys if k.startswith("pooler.")]
    logger.warning("%s is an embedding model (%s): added a fresh one-label classification head (%s%s, random "
                   "initialization) to train it as a reranker", model_display_name(path),
                   ", ".join(map(str, config.get("architectures") or [type(base).__name__])), ", ".join(head),
                   " + a fresh pooler" if fresh_pooler else "")
    return model, True


def apply_reranker_lora(model: Any, model_args: Any) -> Any:
    """LoRA for a sequence-classification model (peft ``SEQ_CLS``: the head stays fully trainable and is saved)."""
    peft = require("peft", "--lora")
    targets = lora_targets(model, model_args, attention_only=True)
    config = peft.LoraConfig(task_type=peft.TaskType.SEQ_CLS, r=model_args.lora_r, lora_alpha=model_args.lora_alpha,
                             lora_dropout=model_args.lora_dropout, target_modules=targets, bias="none")
    return peft.get_peft_model(model, config)
