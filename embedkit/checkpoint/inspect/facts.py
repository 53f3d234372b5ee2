"""The model facts ``embedkit inspect`` reports: ``config.json``, weight statistics (safetensors headers; ``.bin``
through the safe loader), the LoRA adapter, the bge-m3 heads, and what the inference loaders refuse."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from ...errors import CheckpointError, EmbedkitError
from ...folder import layout
from ...folder.loading import load_model, load_tokenizer
from ...folder.m3_heads import load_head
from ...folder.safe_load import load_state_dict, read_safetensors_header
from .report import shell_quote as _q

# safetensors dtype codes -> torch names
_ST_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
}

_CONFIG_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "max_position_embeddings")


def config_facts(folder: Path, weight_files: list[str], has_config: bool) -> tuple[dict[str, Any] | None,
                                                                                   dict[str, Any]]:
    """``(config or None, the report's model facts from it)``; ``model["config_error"]`` says why it is unusable.
    Read with the loaders' own reader (JSON object, key types)."""
    model: dict[str, Any] = {
        "architectures": None, "model_type": None, "hidden_size": None, "num_hidden_layers": None,
        "vocab_size": None, "max_position_embeddings": None, "config_dtype": None, "config_error": None,
        "weight_files": list(weight_files),
    }
    if not has_config:
        return None, model
    try:
        config = layout.read_config(folder)
    except CheckpointError as exc:
        model["config_error"] = exc.message.replace(f"{folder}{'/'}", "")
        return None, model
    arch = config.get("architectures")
    model["architectures"] = [str(a) for a in arch] if isinstance(arch, list) else None
    for key in _CONFIG_KEYS:
        model[key] = config.get(key)
    if model["hidden_size"] is None:
        model["hidden_size"] = config.get("d_model")
    model["config_dtype"] = config.get("torch_dtype", config.get("dtype"))
    return config, model


def _read_json_file(path: Path) -> tuple[Any, str | None]:
    """``(value, None)`` or ``(None, error message)``; never raises."""
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except json.JSONDecodeError as exc:
        return None, f"{path.name}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
    except UnicodeDecodeError as exc:
        return None, f"{path.name}: not UTF-8 text ({exc.reason})"
    except OSError as exc:
        return None, f"{path.name}: cannot read ({exc.strerror})"



def _safetensors_stats(paths: list[Path]) -> tuple[int, int, set[str]]:
    """``(elements, tensors, dtypes)`` summed over safetensors headers (no tensor data is read)."""
    elements = tensors = 0
    dtypes: set[str] = set()
    for p in paths:
        for info in read_safetensors_header(p).values():
            shape = info.get("shape") or []
            elements += math.prod(int(d) for d in shape)
            tensors += 1
            code = str(info.get("dtype"))
            dtypes.add(_ST_DTYPES.get(code, code.lower()))
    return elements, tensors, dtypes


def _state_dict_stats(paths: list[Path]) -> tuple[int, int, set[str]]:
    """``(elements, tensors, dtypes)`` of pickle-based state dicts, loaded with ``weights_only``."""
    elements = tensors = 0
    dtypes: set[str] = set()
    for p in paths:
        sd = load_state_dict(p)
        for value in sd.values():
            numel = getattr(value, "numel", None)
            if numel is None:
                continue
            elements += int(numel())
            tensors += 1
            dtypes.add(str(value.dtype).removeprefix("torch."))
        del sd
    return elements, tensors, dtypes


def _shards_from_index(folder: Path, index_name: str) -> tuple[list[Path], str | None]:
    try:
        shards = layout.weight_index_shards(folder / index_name)  # entries must stay inside the folder
    except CheckpointError as exc:
        return [], exc.message
    missing = [s.relative_to(folder).as_posix() for s in shards if not s.is_file()]
    if missing:
        return [], f"{index_name} lists shard(s) that are missing: {', '.join(missing)}"
    return shards, None


def weight_stats(folder: Path, weight_files: list[str]) -> dict[str, Any]:
    """Parameter count, dtypes and format of the full weights, preferring safetensors over ``.bin``."""
    out: dict[str, Any] = {"parameters": None, "tensors": None, "dtypes": [], "weight_format": None,
                           "weights_error": None}
    names = set(weight_files)
    plan: list[tuple[str, list[Path] | None, str | None]] = []
    for fmt, single, index, shard_re in (
        ("safetensors", "model.safetensors", "model.safetensors.index.json", r"^model-\d+-of-\d+\.safetensors$"),
        ("bin", "pytorch_model.bin", "pytorch_model.bin.index.json", r"^pytorch_model-\d+-of-\d+\.bin$"),
    ):
        if single in names:
            plan.append((fmt, [folder / single], None))
        elif index in names:
            shards, err = _shards_from_index(folder, index)
            plan.append((fmt, shards or None, err))
        else:
            shards = sorted(folder / n for n in names if re.match(shard_re, n))
            if shards:
                plan.append((fmt, shards, None))
    if not plan:
        return out
    fmt, paths, err = plan[0]
    out["weight_format"] = fmt
    if err or not paths:
        out["weights_error"] = err
        return out
    try:
        elements, tensors, dtypes = (_safetensors_stats if fmt == "safetensors" else _state_dict_stats)(paths)
    except EmbedkitError as exc:
        out["weights_error"] = exc.message
        return out
    except (OSError, ValueError, RuntimeError) as exc:  # torch / filesystem errors not already wrapped
        out["weights_error"] = f"{type(exc).__name__}: {exc}"
        return out
    out.update(parameters=elements, tensors=tensors, dtypes=sorted(dtypes))
    return out


def lora_info(folder: Path, files: list[str]) -> dict[str, Any]:
    """The report's ``lora`` entry from ``adapter_config.json`` and the adapter files (``error``: why unreadable)."""
    cfg, err = _read_json_file(folder / layout.ADAPTER_CONFIG)
    if err is None and not isinstance(cfg, dict):
        cfg, err = None, f"{layout.ADAPTER_CONFIG}: expected a JSON object"
    cfg = cfg or {}
    target = cfg.get("target_modules")
    if isinstance(target, str):
        target = [target]
    elif isinstance(target, list):
        target = sorted(str(t) for t in target)
    adapter_files = [f for f in files if layout.classify_file(f) == layout.LORA_ADAPTER and f != layout.ADAPTER_CONFIG]
    info: dict[str, Any] = {
        "base_model_name_or_path": cfg.get("base_model_name_or_path"),
        "peft_type": cfg.get("peft_type"),
        "r": cfg.get("r"),
        "lora_alpha": cfg.get("lora_alpha"),
        "target_modules": target,
        "adapter_files": adapter_files,
        "parameters": None,
        "error": err,
    }
    st = [folder / f for f in adapter_files if f.endswith(".safetensors")]
    if st:
        try:
            info["parameters"] = _safetensors_stats(st)[0]
        except EmbedkitError as exc:
            info["error"] = info["error"] or exc.message
    return info


def m3_head_problems(folder: Path, present: dict[str, bool], files: set[str], hidden_size: Any) -> list[str]:
    """What stops the bge-m3 heads from working: one head only, ``.safetensors`` only (FlagEmbedding reads ``.pt``),
    or a head that is unreadable or does not fit the model's hidden size."""
    if not any(present.values()):
        return []
    problems = []
    missing = [h for h, ok in present.items() if not ok]
    if missing:
        problems.append(f"bge-m3: {missing[0]} is missing (only {', '.join(h for h in present if present[h])}): "
                        "embedkit's M3Embedder gives only the outputs of the heads present, and FlagEmbedding's "
                        "BGEM3FlagModel silently uses random heads unless colbert_linear.pt and sparse_linear.pt "
                        "both exist (copy the missing one from the base bge-m3)")
    elif not all(f"{h}.pt" in files for h in present):
        problems.append("bge-m3: heads stored only as .safetensors; FlagEmbedding's BGEM3FlagModel reads "
                        f"colbert_linear.pt / sparse_linear.pt (run `embedkit save {_q(folder)} "
                        f"{_q(str(folder) + '-m3')}`, which writes both forms)")
    size = hidden_size if isinstance(hidden_size, int) and not isinstance(hidden_size, bool) else None
    for head, ok in present.items():
        if ok:
            try:
                load_head(folder, head, hidden_size=size, out_features=1 if head == "sparse_linear" else None)
            except EmbedkitError as exc:
                problems.append(f"bge-m3: {exc.message}")
    return problems


def load_problems(folder: Path, *, has_st: bool, has_tokenizer: bool, load_weights: bool) -> list[str]:
    """What the inference loaders refuse, found by running them (the same code ``encode`` runs): ``modules.json``
    entries, the tokenizer, and the weights against ``config.json`` (names, shapes, dtypes, NaN / Inf). Loading
    the weights reads every tensor once, on the CPU."""
    problems = []
    checks = []
    if has_st:
        checks.append(lambda: layout.check_st_modules(folder))
    if has_tokenizer:
        checks.append(lambda: load_tokenizer(folder))
    if load_weights:
        checks.append(lambda: load_model(folder, device="cpu"))
    for check in checks:
        try:
            check()
        except EmbedkitError as exc:
            problems.append(exc.message)
    return problems


