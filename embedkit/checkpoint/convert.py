"""``convert``: safetensors <-> bin, dtype casts and re-sharding, verified by reading every tensor back."""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._io import atomic_dir, atomic_write
from ..errors import CheckpointError
from ..folder.layout import (
    MANIFEST,
    WEIGHTS,
    check_destination,
    check_folder,
    classify_file,
    find_weight_files,
    list_files,
    read_config,
    weight_index_shards,
)
from ..folder.loading import load_model
from ..folder.safe_load import load_state_dict
from ..models import resolve_model_path
from ..spec import load_spec
from ..verify import SAMPLE_TEXTS, compare
from .manifest import write_manifest

logger = logging.getLogger("embedkit")

TARGETS = ("safetensors", "bin")
_FOLDER_HINT = "pass the folder holding config.json + weights"


@dataclass
class ConvertReport:
    """What :func:`convert` wrote and how closely it matches the source."""

    path: Path
    format: str
    dtype: str | None
    tensors: int
    exact: bool
    max_abs_diff: float
    embedding_cosine_min: float | None
    bytes_before: int
    bytes_after: int
    files: list[str] = field(default_factory=list)
    formats: list[str] = field(default_factory=list)  # every weight format written (``format`` first)
    kept_formats: list[str] = field(default_factory=list)  # other formats the source held, re-written too
    dropped_formats: list[str] = field(default_factory=list)  # formats the source held, left out on request

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["path"] = str(self.path)
        return d


def parse_size(text: str | int | None) -> int | None:
    """``"2GB"`` / ``"500MB"`` / ``"10KB"`` / bytes -> bytes (``None`` passes through)."""
    if text is None or isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)\s*", str(text), flags=re.I)
    if not m:
        raise CheckpointError(f"cannot read the size {text!r}", hint="use e.g. 2GB, 500MB or a number of bytes")
    unit = m.group(2).upper().replace("I", "").rstrip("B")
    return int(float(m.group(1)) * 1024 ** " KMGT".index(unit or " ")) if unit else int(float(m.group(1)))


def weight_files_by_format(folder: Path) -> dict[str, list[Path]]:
    """The weight files of ``folder`` per format (``"safetensors"`` first, then ``"bin"``; shards listed by their
    index, each checked to stay inside the folder); formats the folder does not hold are absent."""
    found = find_weight_files(folder)
    files = [f for f in found if not f.name.endswith(".index.json")]
    for index in (f for f in found if f.name.endswith(".index.json")):
        files += [s for s in weight_index_shards(index) if s not in files]  # entries stay inside the folder
    by_format = {fmt: [f for f in files if f.suffix == suffix] for fmt, suffix in
                 (("safetensors", ".safetensors"), ("bin", ".bin"))}
    return {fmt: fs for fmt, fs in by_format.items() if fs}


def read_weights(folder: Path, *, trust_pickle: bool = False, fmt: str | None = None) -> tuple[dict[str, Any], str]:
    """Every tensor of a model folder (single or sharded; safetensors preferred unless ``fmt`` names the format
    to read) and the format read."""
    by_format = weight_files_by_format(folder)
    if fmt is None:
        fmt = next(iter(by_format), "safetensors")
    chosen = by_format.get(fmt, [])
    if not chosen:
        raise CheckpointError(f"{folder} holds no weight files" + (f" in {fmt} format" if by_format else ""),
                              hint="`embedkit inspect` shows what it holds")
    state: dict[str, Any] = {}
    for f in chosen:
        if not f.is_file():
            raise CheckpointError(f"weight shard {f} is missing", hint="copy the missing shard")
        state.update(load_state_dict(f, trust_pickle=trust_pickle))
    return state, fmt


def _shard(state: dict[str, Any], max_bytes: int | None) -> list[dict[str, Any]]:
    if not max_bytes:
        return [state]
    shards: list[dict[str, Any]] = [{}]
    size = 0
    for k, v in state.items():
        n = v.numel() * v.element_size()
        if shards[-1] and size + n > max_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += n
    return shards


def write_weights(folder: Path, state: dict[str, Any], to: str, max_shard_size: int | None = None) -> list[str]:
    """Write ``state`` as safetensors or bin (sharded with an index when ``max_shard_size`` is exceeded)."""
    import torch
    from safetensors.torch import save

    seen: set[int] = set()
    tensors: dict[str, Any] = {}
    for k, v in state.items():
        v = v.detach().cpu().contiguous()
        if v.data_ptr() in seen:  # tied / shared storage: safetensors wants distinct buffers
            v = v.clone()
        seen.add(v.data_ptr())
        tensors[k] = v
    shards = _shard(tensors, max_shard_size)
    stem, ext = ("model", "safetensors") if to == "safetensors" else ("pytorch_model", "bin")
    names = [f"{stem}.{ext}"] if len(shards) == 1 else [
        f"{stem}-{i + 1:05d}-of-{len(shards):05d}.{ext}" for i in range(len(shards))]
    for name, shard in zip(names, shards, strict=True):
        with atomic_write(folder / name) as fh:
            if to == "safetensors":
                fh.write(save(shard, metadata={"format": "pt"}))
            else:
                torch.save(shard, fh)
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in tensors.values())},
                 "weight_map": {k: names[i] for i, shard in enumerate(shards) for k in shard}}
        with atomic_write(folder / f"{stem}.{ext}.index.json", "w") as fh:
            fh.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
        names.append(f"{stem}.{ext}.index.json")
    return names


def _cast(state: dict[str, Any], dtype: Any) -> dict[str, Any]:
    if dtype is None:
        return dict(state)
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def _compare(expected: dict[str, Any], written: dict[str, Any]) -> None:
    import torch

    missing = sorted(set(expected) - set(written))
    if missing:
        raise CheckpointError(f"round-trip check failed: {len(missing)} tensors missing after writing, "
                              f"e.g. {missing[:3]}")
    for k, v in expected.items():
        w = written[k]
        if w.dtype != v.dtype or w.shape != v.shape or not torch.equal(w, v):
            raise CheckpointError(f"round-trip check failed: tensor {k!r} differs after writing")


def _embedding_cosine(src: Path, new: Path) -> float | None:
    """Minimum cosine between the source's and the converted model's embeddings on the built-in sample."""
    # lazy: pulls in torch; embedkit.checkpoint.convert stays importable without it (fast CLI start)
    from ..embedder import Embedder

    try:
        spec = load_spec(src, warn=False)
    except CheckpointError:
        return None  # no tokenizer: weights compared tensor by tensor only
    kwargs = {k: v for k, v in spec.to_dict().items() if k != "do_lower_case"}
    a = Embedder(src, device="cpu", show_progress=False, **kwargs).encode(list(SAMPLE_TEXTS))
    b = Embedder(new, device="cpu", show_progress=False, **kwargs).encode(list(SAMPLE_TEXTS))
    return compare(a, b).min_cosine


def check_weights_fit(folder: Path, *, trust_pickle: bool = False, state_dict: dict[str, Any] | None = None) -> None:
    """Refuse weights that the folder's ``config.json`` cannot load: the same loader as inference
    (:func:`embedkit.folder.loading.load_model`: config types, shapes, nothing missing, no NaN / Inf, no integer
    tensors where floats belong), so ``convert`` never writes a fresh manifest over a broken model. A folder without
    ``config.json`` (bare weights) has nothing to fit; its tensors are still read through the safe loader.

    ``state_dict``: the folder's tensors, already read (:func:`read_weights`): the model is built from them
    instead of reading the weight files a second time."""
    if (folder / "config.json").is_file():
        load_model(folder, trust_pickle=trust_pickle, device="cpu", state_dict=state_dict)


def convert(
    src: str | Path,
    *,
    to: str | None = None,
    dtype: Any = None,
    max_shard_size: str | int | None = None,
    output: str | Path | None = None,
    overwrite: bool = False,
    trust_pickle: bool = False,
    drop_other_formats: bool = False,
) -> ConvertReport:
    """Rewrite a model folder's weights in another format / dtype / sharding, verified, in place or to ``output``.

    The source must load with its ``config.json`` (:func:`check_weights_fit`) before anything is written. Every
    tensor is read back and compared with what was meant to be written (exact); for a dtype change the max abs
    diff to the source and the embedding cosine on a few texts are reported.

    A conversion never drops a weight format the folder holds unless asked: a folder with both
    ``model.safetensors`` and ``pytorch_model.bin`` gets both re-written in the new dtype / sharding (and
    ``to`` adds its format next to them). ``drop_other_formats=True`` keeps only ``to`` (default: the format
    read). The report lists ``kept_formats`` and ``dropped_formats``.

    Example:
        >>> convert("my-model", to="bin", output="my-model-bin")
        >>> convert("my-model", dtype="bf16")            # in place, atomically
    """
    # lazy: pulls in torch; embedkit.checkpoint.convert stays importable without it (fast CLI start)
    from ..dtypes import resolve_dtype

    folder = check_folder(resolve_model_path(src), what="model folder", missing_hint=_FOLDER_HINT,
                          file_hint=_FOLDER_HINT)
    if to is not None and to not in TARGETS:
        raise CheckpointError(f"unknown target format {to!r}", hint="use --to safetensors or --to bin")
    torch_dtype = resolve_dtype(dtype) if dtype is not None else None
    max_bytes = parse_size(max_shard_size)
    dst = Path(output) if output is not None else folder
    if output is not None:  # in place (no output) is allowed: atomic_dir swaps the new folder in whole
        check_destination(dst, overwrite=overwrite, src=folder, flag="--output")  # also: --output holding FOLDER
    if (folder / "config.json").is_file():
        read_config(folder)  # config errors first (the weights are read once, below, then fitted to it)
    original, found_fmt = read_weights(folder, trust_pickle=trust_pickle)
    check_weights_fit(folder, trust_pickle=trust_pickle, state_dict=original)  # no second read of the weights
    target = to or found_fmt
    present = list(weight_files_by_format(folder))
    others = [f for f in present if f != target]
    formats = [target] if drop_other_formats else [target, *others]
    converted = _cast(original, torch_dtype)
    files_before = list_files(folder)
    bytes_before = sum((folder / f).stat().st_size for f in files_before if classify_file(f) == WEIGHTS)

    with atomic_dir(dst, overwrite=True) as tmp:
        for rel in files_before:
            cls = classify_file(rel)
            if cls in (WEIGHTS, MANIFEST):
                continue
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(folder / rel, tmp / rel)
        if torch_dtype is not None and (tmp / "config.json").is_file():
            cfg = json.loads((tmp / "config.json").read_text(encoding="utf-8"))
            name = str(torch_dtype).replace("torch.", "")
            cfg["dtype"] = name
            if "torch_dtype" in cfg:
                cfg["torch_dtype"] = name
            with atomic_write(tmp / "config.json", "w") as fh:
                fh.write(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        written_names: list[str] = []
        for fmt in formats:
            written_names += write_weights(tmp, converted, fmt, max_bytes)
            written, _ = read_weights(tmp, fmt=fmt)  # every format written is read back and compared
            _compare(converted, written)
        diffs = [float((original[k].float() - written[k].float()).abs().max()) if original[k].is_floating_point()
                 and original[k].numel() else 0.0 for k in original]
        max_diff = max(diffs, default=0.0)
        cosine = _embedding_cosine(folder, tmp) if torch_dtype is not None else None
        write_manifest(tmp)
        files_after = list_files(tmp)
        bytes_after = sum((tmp / f).stat().st_size for f in written_names)
    exact = max_diff == 0.0 and all(original[k].dtype == written[k].dtype for k in original)
    return ConvertReport(path=dst, format=target, dtype=str(torch_dtype).replace("torch.", "") if torch_dtype else None,
                         tensors=len(original), exact=exact, max_abs_diff=max_diff, embedding_cosine_min=cosine,
                         bytes_before=bytes_before, bytes_after=bytes_after, files=files_after, formats=formats,
                         kept_formats=[] if drop_other_formats else others,
                         dropped_formats=others if drop_other_formats else [])
