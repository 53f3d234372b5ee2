"""The steps :func:`embedkit.checkpoint.save.save` and :func:`embedkit.checkpoint.save_reranker.save_reranker`
share: checking the inputs and the destination, the Hugging Face files (weights in the asked format, config,
tokenizer), JSON patches, the model card's facts, and the final checks (folder, weights, manifest)."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._io import atomic_write, refuse_overwriting_inputs
from ..errors import CheckpointError
from ..folder.layout import check_destination, check_model_folder, find_weight_files, read_json_file
from ..folder.loading import load_tokenizer
from ..folder.safe_load import load_state_dict, read_safetensors_header
from ..models import model_display_name, resolve_model_path
from ..rerank.spec import RerankerSpec
from ..spec import EmbedderSpec
from .manifest import write_manifest

FORMATS = ("safetensors", "bin", "both")


@dataclass
class SaveResult:
    """What :func:`save` wrote."""

    path: Path
    spec: EmbedderSpec | RerankerSpec
    files: list[str]
    sentence_transformers: bool
    warnings: list[str] = field(default_factory=list)


def check_format(format: str) -> None:
    """:class:`CheckpointError` unless ``format`` is one of :data:`FORMATS`."""
    if format not in FORMATS:
        raise CheckpointError(f"unknown format {format!r}", hint=f"use one of {', '.join(FORMATS)}")


def torch_dtype(dtype: Any) -> Any:
    """``dtype`` (``"fp16"``, a torch dtype, ...) as a torch dtype; None stays None."""
    # lazy: pulls in torch; embedkit.checkpoint.save stays importable without it (fast CLI start)
    from ..dtypes import resolve_dtype

    return None if dtype is None else resolve_dtype(dtype)


def cast(model: Any, dtype: Any, src: Path | None) -> Any:
    """``model`` in ``dtype`` (a torch dtype or None: unchanged); a caller's model object is copied, never cast in
    place (one loaded from a source folder is ours to cast)."""
    if dtype is not None and model.dtype != dtype:
        model = (model if src is not None else copy.deepcopy(model)).to(dtype)
    return model


def check_inputs(dst: str | Path, tokenizer: Any, *, overwrite: bool, src: Path | None) -> None:
    """``dst`` may be written: it does not exist (unless ``overwrite``) and neither holds nor is held by the source
    folder ``src`` or a tokenizer folder; a model object (``src`` None) needs its ``tokenizer``."""
    if src is not None:
        check_destination(dst, overwrite=overwrite, src=src)
        tok_dir = resolve_model_path(tokenizer) if isinstance(tokenizer, (str, Path)) else None
        refuse_overwriting_inputs(dst, model_dirs=[src, tok_dir], flag="DST")  # also: DST holding SRC, tokenizer
        return
    if isinstance(tokenizer, (str, Path)):
        refuse_overwriting_inputs(dst, model_dirs=[resolve_model_path(tokenizer)], flag="DST")
    check_destination(dst, overwrite=overwrite)
    if tokenizer is None:
        raise CheckpointError("saving a model object needs its tokenizer", hint="pass tokenizer=...")


def tokenizer_from(tokenizer: Any) -> Any:
    """A tokenizer object as is; a folder's tokenizer loaded."""
    if isinstance(tokenizer, (str, Path)):
        return load_tokenizer(resolve_model_path(tokenizer),
                              hint="pass --tokenizer BASE_MODEL_DIR (training checkpoints often lack it)")
    return tokenizer


def write_bin(state_dict: dict[str, Any], path: Path) -> None:
    """Write a real ``pytorch_model.bin`` (transformers 5 ignores ``safe_serialization=False``), atomically."""
    import torch

    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    with atomic_write(path) as fh:
        torch.save(tensors, fh)


def write_model_files(tmp: Path, model: Any, tokenizer: Any, format: str) -> dict[str, Any]:
    """The Hugging Face files (config, weights in ``format``, tokenizer) into ``tmp``; return the state dict."""
    model.save_pretrained(str(tmp))
    state_dict = model.state_dict()
    if format in ("bin", "both"):
        write_bin(state_dict, tmp / "pytorch_model.bin")
    if format == "bin":
        for f in find_weight_files(tmp):
            if ".safetensors" in f.name:
                f.unlink()
    tokenizer.save_pretrained(str(tmp))
    return state_dict


def patch_json(path: Path, update: dict[str, Any]) -> None:
    """Update the JSON object in ``path`` with ``update`` (atomically)."""
    data = read_json_file(path, expect=dict)
    data.update(update)
    with atomic_write(path, "w") as fh:
        fh.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def card_facts(model: Any, config_dict: dict[str, Any], card: dict[str, Any] | None) -> dict[str, Any]:
    """The model card's facts about ``model``: base model (``card["base_model"]``, else the config's
    ``_name_or_path``), architecture, dtype, parameter count, and ``card``'s training / metrics."""
    card = card or {}
    base_model = card.get("base_model") or config_dict.get("_name_or_path") or None
    return {"base_model": model_display_name(base_model) if base_model else None,
            "architecture": (config_dict.get("architectures") or [type(model).__name__])[0],
            "dtype": str(model.dtype).replace("torch.", ""),
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "training": card.get("training"), "metrics": card.get("metrics")}


def write_card(tmp: Path, text: str) -> None:
    """The ``README.md`` model card (atomically)."""
    with atomic_write(tmp / "README.md", "w") as fh:
        fh.write(text)


def _verify_weights(folder: Path, state_dict: dict[str, Any]) -> None:
    """The written weight files hold every tensor of ``state_dict``, with the same shapes."""
    expected = {k: tuple(v.shape) for k, v in state_dict.items()}
    found: dict[str, tuple[int, ...]] = {}
    for f in find_weight_files(folder):
        if f.suffix == ".safetensors":
            found.update({k: tuple(v["shape"]) for k, v in read_safetensors_header(f).items()})
        elif f.suffix == ".bin":
            found.update({k: tuple(v.shape) for k, v in load_state_dict(f).items()})
    missing = [k for k in expected if k not in found]
    wrong = [k for k in expected if k in found and found[k] != expected[k]]
    if missing or wrong:
        raise CheckpointError(f"verification of the written weights failed: missing {missing[:3]}, "
                              f"wrong shapes {wrong[:3]}", hint="please report this as an embedkit bug")


def finish_folder(tmp: Path, state_dict: dict[str, Any], *, sign_key: str | Path | None) -> list[str]:
    """The last steps in the folder being written: it is a model folder, its weights are ``state_dict``'s, the
    manifest (signed with ``sign_key``); the folder's files."""
    check_model_folder(tmp)
    _verify_weights(tmp, state_dict)
    write_manifest(tmp, sign_key=sign_key)
    return sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
