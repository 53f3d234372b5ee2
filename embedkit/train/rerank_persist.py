"""Saving a trained cross-encoder so that :class:`embedkit.Reranker`, sentence-transformers' ``CrossEncoder``,
FlagEmbedding's ``FlagReranker`` and TEI all load it with the same scores.

The folder: the Hugging Face ``*ForSequenceClassification`` files (config, weights, tokenizer; what FlagReranker and
TEI read), ``config.json`` ``sentence_transformers.activation_fn`` (what ``CrossEncoder`` reads; no embedder
``modules.json``, which would make sentence-transformers build an embedding model), ``config.json``
``embedkit_reranker`` (the :class:`~embedkit.rerank.spec.RerankerSpec` it was trained with: truncation, lengths),
a model card and the manifest; written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .._io import atomic_dir, atomic_write
from ..checkpoint.convert import read_weights
from ..checkpoint.manifest import write_manifest
from ..checkpoint.save import save_reranker as save_reranker_folder
from ..errors import EmbedkitError
from ..folder.layout import find_adapter_weights
from ..folder.safe_load import load_state_dict
from ..rerank.spec import RerankerSpec
from .lora import is_peft


def save_reranker(model: Any, folder: Path, spec: RerankerSpec, tokenizer: Any,
                  card: dict[str, Any] | None = None) -> Path:
    """Write a trained cross-encoder (or its LoRA adapter, for a peft model) to ``folder``, atomically: the one
    reranker save of :func:`embedkit.checkpoint.save.save_reranker` (config with the CrossEncoder activation and
    the recorded spec, tokenizer limit, model card, manifest)."""
    if is_peft(model):
        return save_reranker_adapter(model, folder, spec, tokenizer)
    save_reranker_folder(model, folder, spec, tokenizer=tokenizer, overwrite=True, card=card)
    return folder


def save_reranker_adapter(model: Any, folder: Path, spec: RerankerSpec, tokenizer: Any) -> Path:
    """A LoRA adapter folder (peft files, tokenizer, ``embedkit-reranker.json`` spec, manifest), atomically."""
    with atomic_dir(folder, overwrite=True) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        with atomic_write(tmp / "embedkit-reranker.json", "w") as fh:
            json.dump(spec.to_dict(), fh, indent=2)
        write_manifest(tmp, show_progress=False)
    return folder


def load_reranker_weights(model: Any, folder: Path) -> None:
    """Resume: load the weights (or adapter) :func:`save_reranker` wrote into ``model``."""
    if is_peft(model):
        from peft import set_peft_model_state_dict

        found = next(iter(find_adapter_weights(folder)), None)
        if found is None:
            raise EmbedkitError(f"{folder} holds no adapter weights to resume from")
        set_peft_model_state_dict(model, load_state_dict(found))
        return
    state, _ = read_weights(folder)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise EmbedkitError(f"cannot resume from {folder}: {len(missing)} missing / {len(unexpected)} unexpected "
                            f"tensors (e.g. {(missing or unexpected)[:3]})",
                            hint="resume from a checkpoint of the same model and the same --lora setting")
