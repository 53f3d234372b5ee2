"""What each file of a model folder is: one of :data:`FILE_CLASSES` from its relative path
(:func:`classify_file`), and every file of a folder (:func:`list_files`)."""

from __future__ import annotations

import re
from pathlib import Path

from .m3_heads import HEAD_NAMES, HEAD_SUFFIXES

MANIFEST_NAME = "embedkit-manifest.json"
SIGNATURE_NAME = "embedkit-manifest.sig"

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
_M3_HEAD_FILES = {f"{name}{suffix}" for name in HEAD_NAMES for suffix in HEAD_SUFFIXES}
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
    if name in _M3_HEAD_FILES:
        return M3_HEADS
    if name in (MANIFEST_NAME, SIGNATURE_NAME):
        return MANIFEST
    if name == "README.md":
        return MODEL_CARD
    if name.endswith((".log", "metrics.jsonl")) or name.startswith("events.out.tfevents"):
        return LOGS
    return OTHER


def list_files(folder: str | Path) -> list[str]:
    """Every file under ``folder`` as sorted POSIX relative paths, dot-files included (a copy or an in-place
    conversion must not drop ``.gitattributes`` and the like); embedkit's own temporary files excluded."""
    folder = Path(folder)
    out = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if p.is_file() and not any(_EMBEDKIT_TEMP.fullmatch(part) for part in rel.parts):
            out.append(rel.as_posix())
    return sorted(out)


_EMBEDKIT_TEMP = re.compile(r"\..+\.(tmp|old)-\d+-[0-9a-f]+|\..+\.tmp-embedkit")
"""Names of embedkit's temporary siblings and files (``atomic_dir`` / ``atomic_write``)."""
