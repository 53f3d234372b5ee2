"""Saving and resuming training runs: the encoder (or LoRA adapter) through :func:`embedkit.checkpoint.save`, the
weights back on resume, the pickle check of a resume folder, and what ``--overwrite_output_dir`` removes.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from transformers.trainer_pt_utils import safe_globals

from .._io import atomic_dir
from ..checkpoint.convert import read_weights
from ..checkpoint.manifest import write_manifest
from ..checkpoint.save import save
from ..errors import CheckpointError, EmbedkitError
from ..folder.safe_load import load_pickle, load_state_dict
from ..m3 import M3Heads
from ..spec import EmbedderSpec, write_sentence_transformers_files
from .lora import is_peft
from .model import EmbedderTrainingModel

logger = logging.getLogger("embedkit")

# what a run leaves under --output_dir
FINAL_MODEL_DIR = "model"
ADAPTER_DIR = "adapter"
MERGED_DIR = "merged"

_RESUME_PICKLE_SUFFIXES = (".pt", ".pth", ".bin")
_RESUME_NOT_LOADED = ("training_args.bin",)  # written by Trainer, never read back on resume


def save_trained(model: EmbedderTrainingModel, folder: Path, spec: EmbedderSpec, tokenizer: Any,
                 card: dict[str, Any] | None = None) -> None:
    """Save the encoder (or LoRA adapter) through :func:`embedkit.checkpoint.save` so it encodes as it was trained."""
    encoder = model.encoder
    if is_peft(encoder):
        save_adapter(encoder, folder, spec, tokenizer)
        return
    save(encoder, folder, spec=spec, tokenizer=tokenizer, overwrite=True, card=card,
         m3_heads=getattr(model, "heads", None))


def save_adapter(encoder: Any, folder: Path, spec: EmbedderSpec, tokenizer: Any) -> None:
    """A LoRA adapter folder (peft files + tokenizer + the spec as sentence-transformers files), atomically."""
    with atomic_dir(folder, overwrite=True) as tmp:
        encoder.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        write_sentence_transformers_files(tmp, spec, int(encoder.base_model.model.config.hidden_size))
        write_manifest(tmp)


def load_trained_weights(model: EmbedderTrainingModel, folder: Path) -> None:
    """Resume: load the encoder (or adapter) weights written by :func:`save_trained` from ``folder``."""
    if is_peft(model.encoder):
        from peft import set_peft_model_state_dict

        files = [folder / "adapter_model.safetensors", folder / "adapter_model.bin"]
        found = next((f for f in files if f.is_file()), None)
        if found is None:
            raise EmbedkitError(f"{folder} holds no adapter weights to resume from")
        set_peft_model_state_dict(model.encoder, load_state_dict(found))
        return
    state, _ = read_weights(folder)
    if getattr(model, "heads", None) is not None:
        saved = M3Heads.from_folder(folder, int(model.encoder.config.hidden_size))
        model.heads.load_state_dict(saved.state_dict())
    missing, unexpected = model.encoder.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("pooler.", "embeddings.position_ids"))]
    if missing or unexpected:
        raise EmbedkitError(f"cannot resume from {folder}: {len(missing)} missing / {len(unexpected)} unexpected "
                            f"tensors (e.g. {(missing or unexpected)[:3]})", hint="resume from a checkpoint of the "
                            "same model and the same --lora setting")


def check_resume_checkpoint(folder: str | Path, *, trust_pickle: bool = False) -> Path:
    """Refuse to resume from ``folder`` when one of its ``.pt`` / ``.pth`` / ``.bin`` files (optimizer, scheduler,
    scaler, RNG state, DeepSpeed shards...) needs more than ``torch.load(weights_only=True)``: such a file can run
    code when the Trainer (or DeepSpeed) loads it. ``trust_pickle`` skips the check. Returns the folder.

    Raises :class:`~embedkit.errors.CheckpointError` naming the file, or the folder when it does not exist.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"--resume_from_checkpoint {folder}: no such checkpoint folder",
                              hint="pass a checkpoint-N folder written by a previous run (under --output_dir)")
    if trust_pickle:
        return folder
    for path in sorted(folder.rglob("*")):
        if path.suffix in _RESUME_PICKLE_SUFFIXES and path.name not in _RESUME_NOT_LOADED and path.is_file():
            with safe_globals():  # the numpy types Trainer itself allows for RNG states
                load_pickle(path)  # CheckpointError naming the file when it needs full unpickling
    return folder


def remove_previous_run(out: Path) -> None:
    """``--overwrite_output_dir``: remove an earlier run's checkpoints and metrics so the two runs never mix (its
    final model folders are replaced atomically when this run saves)."""
    old = sorted(p for p in out.glob("checkpoint-*") if p.is_dir()) + [p for p in (out / "metrics.jsonl",)
                                                                        if p.is_file()]
    if old:
        logger.warning("--overwrite_output_dir: removing the earlier run's %s from %s",
                       ", ".join(p.name for p in old), out)
    for p in old:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
