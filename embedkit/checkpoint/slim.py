"""``slim``: a training checkpoint -> an inference-only package (weights, config, tokenizer, spec, card)."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._io import atomic_dir
from ..errors import CheckpointError
from ..folder.layout import (
    ADAPTER_CONFIG,
    MANIFEST,
    MODEL_CARD,
    SENTENCE_TRANSFORMERS,
    TOKENIZER,
    TRAINING_ONLY_CLASSES,
    ZERO_SHARDS,
    check_destination,
    check_model_folder,
    classify_file,
    find_tokenizer_files,
    find_weight_files,
    list_files,
)
from ..folder.loading import load_model
from ..models import resolve_model_path
from ..spec import resolve_spec
from .card import model_card
from .manifest import write_manifest
from .save import _write_st_layout

logger = logging.getLogger("embedkit")


@dataclass
class SlimReport:
    """What :func:`slim` kept and dropped."""

    path: Path
    kept: list[str]
    dropped: list[str]
    bytes_before: int
    bytes_after: int
    consolidated_zero: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def bytes_saved(self) -> int:
        return self.bytes_before - self.bytes_after

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__, path=str(self.path), bytes_saved=self.bytes_saved)
        return d


def consolidate_zero(checkpoint: Path, out_file: Path) -> None:
    """Merge DeepSpeed ZeRO shards into one ``model.safetensors`` with DeepSpeed's own consolidation code."""
    try:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    except ImportError:
        raise CheckpointError(
            f"{checkpoint} holds its weights only as DeepSpeed ZeRO shards (global_step*/), and consolidating them "
            "needs the deepspeed package, which is not installed",
            hint="pip install deepspeed, then run embedkit slim again",
        ) from None
    from safetensors.torch import save_file

    state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint))
    save_file({k: v.contiguous() for k, v in state.items()}, str(out_file), metadata={"format": "pt"})


def slim(checkpoint: str | Path, dst: str | Path, *, tokenizer: str | Path | None = None, overwrite: bool = False,
         trust_pickle: bool = False) -> SlimReport:
    """Copy what inference needs from ``checkpoint`` into ``dst``; drop optimizer, scheduler, RNG, trainer state and
    ZeRO shards. Writes the sentence-transformers layout and model card when missing, then a manifest.

    Example:
        >>> report = slim("output/checkpoint-15478", "my-model")
        >>> report.bytes_saved
    """
    src = resolve_model_path(checkpoint)
    if not src.is_dir():
        check_model_folder(src)  # raises the precise not-a-folder error
    check_destination(dst, overwrite=overwrite, src=src)
    files = list_files(src)
    if not files:
        raise CheckpointError(f"{src} is empty", hint="pass the training checkpoint folder (checkpoint-N/)")
    has_weights = bool(find_weight_files(src))
    has_zero = any(classify_file(f) == ZERO_SHARDS for f in files)
    if not has_weights and not has_zero:
        adapter = (src / ADAPTER_CONFIG).is_file()
        raise CheckpointError(
            f"{src} holds no model weights" + (" (it is a LoRA adapter)" if adapter else ""),
            hint="merge the adapter first: `embedkit merge BASE ADAPTER OUT`" if adapter
            else "`embedkit inspect` shows what the folder holds",
        )
    tok_src = resolve_model_path(tokenizer) if tokenizer is not None else None
    if tok_src is None and not find_tokenizer_files(src):
        raise CheckpointError(f"{src} has no tokenizer files (training checkpoints often lack them)",
                              hint="pass --tokenizer BASE_MODEL_DIR to take them from the base model")
    keep, drop = [], []
    for f in files:
        cls = classify_file(f)
        if cls in TRAINING_ONLY_CLASSES or cls == MANIFEST or (tok_src is not None and cls == TOKENIZER):
            drop.append(f)
        else:
            keep.append(f)
    bytes_before = sum((src / f).stat().st_size for f in files)
    warnings: list[str] = []
    dst = Path(dst)
    with atomic_dir(dst, overwrite=overwrite) as tmp:
        for f in keep:
            (tmp / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / f, tmp / f)
        if tok_src is not None:
            for f in list_files(tok_src):
                if classify_file(f) == TOKENIZER:
                    shutil.copy2(tok_src / f, tmp / f)
        if not has_weights:
            consolidate_zero(src, tmp / "model.safetensors")
        model = load_model(tmp, trust_pickle=trust_pickle)  # weights fit the config, nothing random, no pickle
        kinds = {classify_file(f) for f in keep}
        if SENTENCE_TRANSFORMERS not in kinds or MODEL_CARD not in kinds:
            spec = resolve_spec(src, config=model.config.to_dict(), hidden_size=int(model.config.hidden_size))
            if SENTENCE_TRANSFORMERS not in kinds:
                _write_st_layout(tmp, spec, int(model.config.hidden_size), warnings)
            if MODEL_CARD not in kinds:
                (tmp / "README.md").write_text(
                    model_card(spec, name=dst.name, source=str(src),
                               architecture=(model.config.architectures or [type(model).__name__])[0],
                               dtype=str(model.dtype).replace("torch.", ""),
                               num_parameters=sum(p.numel() for p in model.parameters()), notes=warnings),
                    encoding="utf-8")
        check_model_folder(tmp)
        write_manifest(tmp)
        kept = list_files(tmp)
        bytes_after = sum((tmp / f).stat().st_size for f in kept)
    for w in warnings:
        logger.warning("%s", w)
    return SlimReport(path=dst, kept=kept, dropped=drop, bytes_before=bytes_before, bytes_after=bytes_after,
                      consolidated_zero=not has_weights, warnings=warnings)
