"""LoRA through peft (an optional dependency): default target modules per architecture, wrapping, detection."""

from __future__ import annotations

from typing import Any

from .._optional import available, require
from ..errors import EmbedkitError
from .arguments import ModelArguments

# peft target modules per architecture (attention + feed-forward projections)
LORA_TARGETS = {
    "bert": ["query", "key", "value", "dense"],
    "roberta": ["query", "key", "value", "dense"],
    "xlm-roberta": ["query", "key", "value", "dense"],
    "mpnet": ["q", "k", "v", "o", "intermediate.dense", "output.dense"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


def lora_targets(model: Any, model_args: Any, *, attention_only: bool = False) -> list[str]:
    """``--lora_target_modules`` (comma-separated), else the default modules of ``model``'s architecture
    (:data:`LORA_TARGETS`; ``attention_only`` leaves out the ``dense`` output projections, e.g. for a classifier whose
    head is also named ``dense``)."""
    if model_args.lora_target_modules:
        return [t.strip() for t in model_args.lora_target_modules.split(",") if t.strip()]
    model_type = getattr(model.config, "model_type", "")
    if model_type not in LORA_TARGETS:
        raise EmbedkitError(f"no default LoRA target modules for model type {model_type!r}",
                            hint="pass --lora_target_modules name1,name2 (module names of the attention layers)")
    targets = LORA_TARGETS[model_type]
    return ([t for t in targets if t != "dense"] or targets) if attention_only else targets


def apply_lora(encoder: Any, model_args: ModelArguments) -> Any:
    """Wrap ``encoder`` in a peft LoRA model (target modules chosen per architecture unless given)."""
    peft = require("peft", "--lora")
    targets = lora_targets(encoder, model_args)
    config = peft.LoraConfig(r=model_args.lora_r, lora_alpha=model_args.lora_alpha,
                             lora_dropout=model_args.lora_dropout, target_modules=targets, bias="none")
    return peft.get_peft_model(encoder, config)


def is_peft(model: Any) -> bool:
    """Whether ``model`` is a peft model (``False`` when peft is not installed)."""
    return available("peft") and isinstance(model, require("peft").PeftModel)

