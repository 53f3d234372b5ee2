"""What the files of a model folder are, and whether the folder can be loaded for inference."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import CheckpointError

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
    "tokenizer.model",
    "vocab.json",
)


def find_weight_files(folder: Path) -> list[Path]:
    """The files holding model weights (single or sharded safetensors / bin)."""
    found = [folder / n for n in WEIGHT_FILES if (folder / n).is_file()]
    if not found:
        found = sorted(p for p in folder.glob("model-*-of-*.safetensors"))
    return found


def find_tokenizer_files(folder: Path) -> list[Path]:
    """The files a tokenizer can be built from."""
    return [folder / n for n in TOKENIZER_FILES if (folder / n).is_file()]


def check_model_folder(path: str | Path) -> Path:
    """Check that ``path`` is a local folder with config, weights and tokenizer; return it resolved.

    Raises :class:`CheckpointError` naming the path tried and, for an incomplete folder, every missing part.
    embedkit works offline: a hub id such as ``BAAI/bge-small-en-v1.5`` is never downloaded.
    """
    folder = Path(path).expanduser()
    if not folder.exists():
        raise CheckpointError(
            f"no model folder at {str(path)!r} (tried {folder.resolve()}); embedkit works offline and loads "
            "local folders only, it never downloads from a hub",
            hint="pass the path of a folder holding config.json, the weights and the tokenizer "
            "(download it once elsewhere, e.g. `huggingface-cli download NAME --local-dir DIR`), "
            "or the alias 'minilm' for the bundled all-MiniLM-L6-v2",
        )
    if not folder.is_dir():
        raise CheckpointError(
            f"{folder} is a file, not a model folder",
            hint="pass the folder that holds config.json, the weights and the tokenizer files",
        )
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not find_weight_files(folder):
        missing.append("weights (" + " / ".join(WEIGHT_FILES[::2]) + ")")
    if not find_tokenizer_files(folder):
        missing.append("tokenizer (" + " / ".join(TOKENIZER_FILES[:3]) + " ...)")
    if missing:
        raise CheckpointError(
            f"{folder} is not a complete model folder: missing {'; '.join(missing)}",
            hint="point to the folder written by save_pretrained / `embedkit save` (a training checkpoint may "
            "lack the tokenizer: copy it from the base model)",
        )
    return folder.resolve()


def check_destination(dst: str | Path, *, overwrite: bool = False, src: str | Path | None = None) -> Path:
    """Refuse a destination that exists (unless ``overwrite``) or that lies inside ``src``; return it as a Path."""
    dst = Path(dst)
    if src is not None:
        src_r, dst_r = Path(src).resolve(), dst.resolve()
        if dst_r == src_r or src_r in dst_r.parents:
            raise CheckpointError(
                f"destination {dst} is inside the source {src}",
                hint="choose a destination outside the source folder",
            )
    if dst.exists() and not overwrite:
        raise CheckpointError(f"destination {dst} already exists",
                              hint="pass --overwrite (API: overwrite=True) to replace it, or choose another path")
    return dst


# ---------------------------------------------------------------------- file classes
WEIGHTS = "weights"
CONFIG = "config"
TOKENIZER = "tokenizer"
SENTENCE_TRANSFORMERS = "sentence_transformers"
TRAINING_STATE = "training_state"
RNG_STATE = "rng_state"
ZERO_SHARDS = "zero_shards"
LORA_ADAPTER = "lora_adapter"
M3_HEADS = "m3_heads"
ONNX = "onnx"
MANIFEST = "manifest"
MODEL_CARD = "model_card"
LOGS = "logs"
OTHER = "other"

FILE_CLASSES = (WEIGHTS, CONFIG, TOKENIZER, SENTENCE_TRANSFORMERS, TRAINING_STATE, RNG_STATE, ZERO_SHARDS,
                LORA_ADAPTER, M3_HEADS, ONNX, MANIFEST, MODEL_CARD, LOGS, OTHER)
INFERENCE_CLASSES = (WEIGHTS, CONFIG, TOKENIZER, SENTENCE_TRANSFORMERS, M3_HEADS, MODEL_CARD)
"""What an inference package keeps (``slim``); the manifest is rewritten, ONNX exports are kept when present."""
TRAINING_ONLY_CLASSES = (TRAINING_STATE, RNG_STATE, ZERO_SHARDS, LOGS)

_TOKENIZER_NAMES = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                    "merges.txt", "sentencepiece.bpe.model", "spiece.model", "tokenizer.model", "added_tokens.json",
                    "chat_template.jinja", "chat_template.json"}
_ST_NAMES = {"modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"}
_TRAINING_NAMES = {"trainer_state.json", "training_args.bin", "optimizer.pt", "optimizer.bin", "scheduler.pt",
                   "scaler.pt", "all_results.json", "train_results.json", "eval_results.json"}
_WEIGHT_RE = re.compile(r"^(model|pytorch_model)(-\d+-of-\d+)?\.(safetensors|bin)(\.index\.json)?$")
_ST_MODULE_DIR_RE = re.compile(r"^\d+_(Pooling|Normalize|Dense|Transformer)$")


def classify_file(relpath: str | Path) -> str:
    """The class of one file, from its path relative to the model folder (one of :data:`FILE_CLASSES`).

    Example:
        >>> classify_file("global_step5/zero_pp_rank_0_mp_rank_00_optim_states.pt")
        'zero_shards'
    """
    parts = Path(relpath).parts
    name = parts[-1]
    top = parts[0] if len(parts) > 1 else ""
    if re.match(r"^global_step\d+$", top) or name in ("zero_to_fp32.py", "latest"):
        return ZERO_SHARDS
    if top in ("runs", "logs", "wandb", "tensorboard"):
        return LOGS
    if top == "onnx" or name.endswith((".onnx", ".onnx_data", ".onnx.data")):
        return ONNX
    if _ST_MODULE_DIR_RE.match(top):
        return SENTENCE_TRANSFORMERS
    if len(parts) > 1:
        return OTHER
    if _WEIGHT_RE.match(name):
        return WEIGHTS
    if name in ("config.json", "generation_config.json"):
        return CONFIG
    if name in _TOKENIZER_NAMES:
        return TOKENIZER
    if name in _ST_NAMES:
        return SENTENCE_TRANSFORMERS
    if name in _TRAINING_NAMES:
        return TRAINING_STATE
    if re.match(r"^rng_state(_\d+)?\.pth$", name):
        return RNG_STATE
    if name.startswith("adapter_") and name.endswith((".json", ".safetensors", ".bin")):
        return LORA_ADAPTER
    if name in ("colbert_linear.pt", "sparse_linear.pt", "colbert_linear.safetensors", "sparse_linear.safetensors"):
        return M3_HEADS
    if name in ("embedkit-manifest.json", "embedkit-manifest.sig"):
        return MANIFEST
    if name == "README.md":
        return MODEL_CARD
    if name.endswith((".log", "metrics.jsonl")) or name.startswith("events.out.tfevents"):
        return LOGS
    return OTHER


def list_files(folder: str | Path) -> list[str]:
    """Every file under ``folder`` as sorted POSIX relative paths (embedkit's own temporary files excluded)."""
    folder = Path(folder)
    out = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            out.append(rel.as_posix())
    return sorted(out)
