"""Where a model folder's weights, tokenizer and adapter files are, its JSON files read (checked, cached), and
whether the folder can be loaded for inference. What class each file is: :mod:`embedkit.folder.classify`
(re-exported here)."""

from __future__ import annotations

import copy
import json
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from .._io import refuse_overwriting_inputs
from ..errors import CheckpointError
from .classify import (  # re-exported: the file classes were defined here
    CONFIG,
    FILE_CLASSES,
    INFERENCE_CLASSES,
    LOGS,
    LORA_ADAPTER,
    M3_HEADS,
    MANIFEST,
    MANIFEST_NAME,
    MODEL_CARD,
    ONNX,
    OTHER,
    RNG_STATE,
    SENTENCE_TRANSFORMERS,
    SIGNATURE_NAME,
    TOKENIZER,
    TRAINING_ONLY_CLASSES,
    TRAINING_STATE,
    WEIGHTS,
    ZERO_SHARDS,
    classify_file,
    list_files,
)

ADAPTER_CONFIG = "adapter_config.json"
"""The config file of a LoRA / PEFT adapter folder (peft's ``save_pretrained``)."""
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
"""The weight files of a LoRA / PEFT adapter folder, in the order peft prefers them."""

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


def weight_files_with_shards(folder: Path) -> list[Path]:
    """Every file whose bytes are the weights: :func:`find_weight_files` with each ``*.index.json`` followed by the
    shards it names. Use this to fingerprint or hash weights (a changed shard must change the fingerprint)."""
    out: list[Path] = []
    for f in find_weight_files(folder):
        out.append(f)
        if f.name.endswith(".index.json"):
            out.extend(s for s in weight_index_shards(f) if s not in out)
    return out


def find_tokenizer_files(folder: Path) -> list[Path]:
    """The files a tokenizer can be built from."""
    return [folder / n for n in TOKENIZER_FILES if (folder / n).is_file()]


def find_adapter_weights(folder: Path) -> list[Path]:
    """The LoRA / PEFT adapter weight files of ``folder`` (:data:`ADAPTER_WEIGHTS` present), preferred first."""
    return [folder / n for n in ADAPTER_WEIGHTS if (folder / n).is_file()]


def check_folder(path: str | Path, *, what: str = "folder", detail: str = "", missing_hint: str,
                 file_hint: str) -> Path:
    """``path`` (``~`` expanded) when it is an existing folder; else :class:`CheckpointError`: ``no WHAT at 'PATH'
    (tried ABSOLUTE)DETAIL`` with ``missing_hint``, or ``PATH is a file, not a WHAT`` with ``file_hint``.

    Example:
        >>> check_folder("minilm-typo", what="model folder", missing_hint="check the path", file_hint="...")
        Traceback (most recent call last):
        embedkit.errors.CheckpointError: no model folder at 'minilm-typo' (tried /home/me/minilm-typo)
    """
    folder = Path(path).expanduser()
    if not folder.exists():
        raise CheckpointError(f"no {what} at {str(path)!r} (tried {folder.resolve()}){detail}", hint=missing_hint)
    if not folder.is_dir():
        article = "an" if what[:1] in "aeiou" else "a"
        raise CheckpointError(f"{folder} is a file, not {article} {what}", hint=file_hint)
    return folder


# ---------------------------------------------------------------------- reading the folder's JSON files
_POSITIVE_INT_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
                      "max_position_embeddings", "num_key_value_heads", "d_model", "head_dim")
_NON_NEGATIVE_INT_KEYS = ("type_vocab_size", "pad_token_id", "bos_token_id", "eos_token_id")
_NUMBER_KEYS = ("layer_norm_eps", "hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range",
                "rms_norm_eps", "rope_theta")


def read_json_file(path: str | Path, *, expect: type | None = None) -> Any:
    """Parse one JSON file of a model folder; :class:`CheckpointError` naming it for anything unreadable.

    Invalid UTF-8, invalid JSON, an unreadable path and (with ``expect=dict`` / ``list``) a value of another
    JSON type all raise, so no ``UnicodeDecodeError`` / ``AttributeError`` escapes to the caller.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})",
                              hint="the file is damaged: copy it again from the model's source") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror})", hint="check the path and permissions") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
                              hint="fix the file, or copy it again from the model's source") from None
    except RecursionError:
        raise CheckpointError(f"{path}: JSON nested too deeply", hint="the file is damaged: copy it again") from None
    return _expected(path, value, expect)


def _expected(path: Path, value: Any, expect: type | None) -> Any:
    if expect is not None and not isinstance(value, expect):
        want = {dict: "a JSON object", list: "a JSON list"}.get(expect, expect.__name__)
        raise CheckpointError(f"{path}: expected {want}, found {type(value).__name__}",
                              hint="fix the file, or copy it again from the model's source")
    return value


_JSON_CACHE: OrderedDict[tuple[str, Path], tuple[tuple[int, ...], Any]] = OrderedDict()
_JSON_CACHE_LOCK = threading.Lock()
_JSON_CACHE_SIZE = 64
_RACY_NS = 2_000_000_000
"""A file changed less than this (ns) before it is read is not cached: a rewrite of the same size within the same
clock tick would keep its version and go unnoticed (git's "racy" files)."""


def file_version(path: str | Path) -> tuple[Path, tuple[int, ...]] | None:
    """``(resolved path, (device, inode, size, mtime, ctime))`` of a file, to cache what is parsed from it; ``None``
    when it cannot be cached: missing, unreadable, or changed so recently that a same-size rewrite within the same
    clock tick would keep the same version."""
    path = Path(path)
    try:
        st = path.stat()
        key = path.resolve()
    except (OSError, RuntimeError):
        return None
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) <= _RACY_NS:
        return None
    return key, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def cached_parse(cache: OrderedDict[tuple[str, Path], tuple[tuple[int, ...], Any]], path: str | Path,
                 parse: Callable[[], Any], tag: str = "") -> Any:
    """``parse()`` of the file at ``path``, remembered in ``cache`` per ``tag`` and :func:`file_version` (the most
    recent :data:`_JSON_CACHE_SIZE`); a fresh deep copy each call (callers may modify it). Errors are not cached."""
    version = file_version(path)
    key = (tag, version[0]) if version is not None else None
    if version is not None:
        with _JSON_CACHE_LOCK:
            hit = cache.get(key)
            if hit is not None and hit[0] == version[1]:
                cache.move_to_end(key)
                return copy.deepcopy(hit[1])
    value = parse()
    if version is not None:
        with _JSON_CACHE_LOCK:
            cache[key] = (version[1], copy.deepcopy(value))
            while len(cache) > _JSON_CACHE_SIZE:
                cache.popitem(last=False)
    return value


def read_json_cached(path: str | Path, *, expect: type | None = None) -> Any:
    """:func:`read_json_file`, parsed once per version of the file (:func:`file_version`): ``config.json`` and
    ``tokenizer_config.json`` are wanted by the folder check, the spec, the token limit and the loader of one
    ``Embedder(path)``; this reads them once. Returns a fresh copy; each call raises the same precise errors."""
    return _expected(Path(path), cached_parse(_JSON_CACHE, path, lambda: read_json_file(path)), expect)


def read_config(folder: str | Path) -> dict[str, Any]:
    """``config.json`` of ``folder`` as a dict, with the types of the keys every loader relies on checked.

    Sizes (``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``, ...) must be positive integers, token
    ids non-negative integers or null, ``model_type`` a string, ``architectures`` a list of strings, and
    ``num_attention_heads`` must divide ``hidden_size`` (unless ``head_dim`` is given). Raises
    :class:`CheckpointError` naming the file and the key.

    Example:
        >>> read_config("minilm")["hidden_size"]
        384
    """
    path = Path(folder) / "config.json"
    config = read_json_cached(path, expect=dict)

    def bad(key: str, want: str) -> CheckpointError:
        return CheckpointError(f"{path}: {key!r} must be {want}, found {config[key]!r}",
                               hint="fix config.json (it must be the transformers config these weights were "
                               "saved with), or copy it again from the base model")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    for key in _POSITIVE_INT_KEYS:
        if key in config and config[key] is not None and not (is_int(config[key]) and config[key] > 0):
            raise bad(key, "a positive integer")
    for key in _NON_NEGATIVE_INT_KEYS:
        if key in config and config[key] is not None and not (is_int(config[key]) and config[key] >= 0):
            raise bad(key, "a non-negative integer or null")
    for key in _NUMBER_KEYS:
        v = config.get(key)
        if key in config and v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool)):
            raise bad(key, "a number")
    if "model_type" in config and not isinstance(config["model_type"], str):
        raise bad("model_type", "a string")
    arch = config.get("architectures")
    if arch is not None and not (isinstance(arch, list) and all(isinstance(a, str) for a in arch)):
        raise bad("architectures", "a list of strings")
    hidden, heads = config.get("hidden_size"), config.get("num_attention_heads")
    if is_int(hidden) and is_int(heads) and config.get("head_dim") is None and hidden % heads:
        raise CheckpointError(
            f"{path}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}",
            hint="fix config.json (it must be the transformers config these weights were saved with)")
    return config


def inside_folder(folder: str | Path, entry: Any, source: str | Path, what: str) -> Path:
    """``folder / entry`` for a relative path that stays inside ``folder`` (checked on the names, symlinks not
    followed, so Hugging Face cache snapshots still work); :class:`CheckpointError` naming ``source`` and the
    entry for an absolute path, a ``..`` that climbs out, or a value that is not a string."""
    if not isinstance(entry, str):
        raise CheckpointError(f"{source}: {what} must be a path string, found {entry!r}",
                              hint="fix or delete the file")
    pure = PurePosixPath(entry.replace("\\", "/"))
    parts = os.path.normpath(pure.as_posix()).split("/") if entry else ["."]
    if pure.is_absolute() or re.match(r"^[A-Za-z]:", entry) or parts[0] == ".." or "\x00" in entry:
        raise CheckpointError(f"{source}: {what} {entry!r} points outside the model folder",
                              hint="every path in a model folder's files must be relative and stay inside it: "
                              "fix or delete the file (it may be hostile)")
    return Path(folder) / pure


def weight_index_shards(index_path: str | Path) -> list[Path]:
    """The shard files a ``*.index.json`` names (sorted, each checked to stay inside the folder)."""
    index_path = Path(index_path)
    index = read_json_file(index_path, expect=dict)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index_path}: no 'weight_map' object", hint="copy the index file again")
    shards = {inside_folder(index_path.parent, v, index_path, f"weight_map entry {k!r}") for k, v in weight_map.items()}
    return sorted(shards)


def check_st_modules(folder: str | Path) -> None:
    """Check ``modules.json``: a list of modules whose paths stay inside ``folder`` and whose ``config.json``
    (when present) is a readable JSON object. :class:`CheckpointError` naming the file and entry otherwise."""
    folder = Path(folder)
    path = folder / "modules.json"
    if not path.is_file():
        return
    for i, mod in enumerate(read_json_cached(path, expect=list)):
        if not isinstance(mod, dict):
            raise CheckpointError(f"{path}: entry {i} is not a JSON object", hint="fix or delete the file")
        sub = inside_folder(folder, mod.get("path") or "", path, f"entry {i} path")
        if sub != folder and (sub / "config.json").is_file():
            read_json_cached(sub / "config.json", expect=dict)


def check_model_folder(path: str | Path) -> Path:
    """Check that ``path`` is a local folder with config, weights and tokenizer; return it resolved.

    Raises :class:`CheckpointError` naming the path tried and, for an incomplete folder, every missing part;
    also for a ``config.json`` with wrong key types (:func:`read_config`) and for ``modules.json`` entries that
    leave the folder or name unreadable configs (:func:`check_st_modules`).
    embedkit works offline: a hub id such as ``BAAI/bge-small-en-v1.5`` is never downloaded.
    """
    folder = check_folder(
        path, what="model folder",
        detail="; embedkit works offline and loads local folders only, it never downloads from a hub",
        missing_hint="pass the path of a folder holding config.json, the weights and the tokenizer "
        "(download it once elsewhere, e.g. `huggingface-cli download NAME --local-dir DIR`), "
        "or the alias 'minilm' for the bundled all-MiniLM-L6-v2",
        file_hint="pass the folder that holds config.json, the weights and the tokenizer files",
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
    read_config(folder)
    check_st_modules(folder)
    return folder.resolve()


def check_destination(dst: str | Path, *, overwrite: bool = False, src: str | Path | None = None,
                      flag: str = "destination") -> Path:
    """Refuse a destination that exists (unless ``overwrite``), that is or lies inside ``src``, or that contains
    ``src`` (replacing it would delete the source); return it as a Path."""
    dst = Path(dst)
    if src is not None:
        src_r, dst_r = Path(src).resolve(), dst.resolve()
        if dst_r == src_r or src_r in dst_r.parents:
            raise CheckpointError(
                f"destination {dst} is inside the source {src}",
                hint="choose a destination outside the source folder",
            )
        refuse_overwriting_inputs(dst, model_dirs=[src], flag=flag)  # dst containing src, hard links
    if dst.exists() and not overwrite:
        raise CheckpointError(f"destination {dst} already exists",
                              hint="pass --overwrite (API: overwrite=True) to replace it, or choose another path")
    return dst


__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "CONFIG", "FILE_CLASSES", "INFERENCE_CLASSES", "LOGS", "LORA_ADAPTER",
           "M3_HEADS", "MANIFEST", "MANIFEST_NAME", "MODEL_CARD", "ONNX", "OTHER", "RNG_STATE",
           "SENTENCE_TRANSFORMERS", "SIGNATURE_NAME", "TOKENIZER", "TOKENIZER_FILES", "TRAINING_ONLY_CLASSES",
           "TRAINING_STATE", "WEIGHTS", "WEIGHT_FILES", "ZERO_SHARDS", "cached_parse", "check_destination",
           "check_folder", "check_model_folder", "check_st_modules", "classify_file", "file_version",
           "find_adapter_weights", "find_tokenizer_files", "find_weight_files", "inside_folder", "list_files",
           "read_config", "read_json_cached", "read_json_file", "weight_files_with_shards", "weight_index_shards"]
