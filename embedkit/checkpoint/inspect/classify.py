"""What a folder holds and what it is: every file with its class and size, the parts present (weights, adapter,
ZeRO shards, tokenizer...), the folder's kind, what inference lacks and what can be dropped."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ...folder import layout
from ...models import resolve_model_path
from . import report as kinds
from .report import InspectReport

_CHECKPOINT_DIR_RE = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class Holdings:
    """The parts a folder holds, from its file names and classes (nothing is read)."""

    rels: list[str]
    by_class: dict[str, list[str]] = field(default_factory=dict)
    weight_files: list[str] = field(default_factory=list)
    has_weights: bool = False
    has_zero: bool = False
    has_training: bool = False
    has_adapter_cfg: bool = False
    has_adapter_weights: bool = False
    onnx_models: list[str] = field(default_factory=list)
    has_st: bool = False
    has_tokenizer: bool = False
    has_config: bool = False


def check_folder(path: str | Path) -> Path:
    """``path`` (or the ``minilm`` alias) as an existing folder, resolved; :class:`CheckpointError` otherwise."""
    return layout.check_folder(
        resolve_model_path(path),
        missing_hint="pass the path of a local model folder, training checkpoint or adapter folder "
        "(embedkit works offline: hub ids are never downloaded), or 'minilm' for the bundled model",
        file_hint="pass the folder that holds it (e.g. the folder with config.json and the weights)",
    ).resolve()


def list_classified_files(report: InspectReport, folder: Path) -> Holdings:
    """Fill ``files``, ``classes``, ``total_bytes`` and ``inference_bytes`` of ``report``; return what it holds."""
    rels = layout.list_files(folder)
    by_class: dict[str, list[str]] = {}
    for rel in rels:
        cls = layout.classify_file(rel)
        size = (folder / rel).stat().st_size
        report.files.append({"path": rel, "class": cls, "size": size})
        by_class.setdefault(cls, []).append(rel)
        entry = report.classes.setdefault(cls, {"count": 0, "bytes": 0})
        entry["count"] += 1
        entry["bytes"] += size
    report.total_bytes = sum(f["size"] for f in report.files)
    report.inference_bytes = sum(f["size"] for f in report.files if f["class"] in layout.INFERENCE_CLASSES)
    return holdings(folder, rels, by_class)


def holdings(folder: Path, rels: list[str], by_class: dict[str, list[str]]) -> Holdings:
    """What the classified files ``rels`` of ``folder`` amount to."""
    weight_files = by_class.get(layout.WEIGHTS, [])
    has_weights = bool(weight_files)
    has_zero = any(f != "zero_to_fp32.py" and f != "latest" for f in by_class.get(layout.ZERO_SHARDS, []))
    return Holdings(
        rels=rels, by_class=by_class, weight_files=weight_files, has_weights=has_weights, has_zero=has_zero,
        has_training=bool(by_class.get(layout.TRAINING_STATE) or by_class.get(layout.RNG_STATE))
        or (has_zero and has_weights),
        has_adapter_cfg=layout.ADAPTER_CONFIG in rels,
        has_adapter_weights=any(f.startswith("adapter_model") for f in by_class.get(layout.LORA_ADAPTER, [])),
        onnx_models=[f for f in by_class.get(layout.ONNX, []) if f.endswith(".onnx")],
        has_st="modules.json" in rels,
        has_tokenizer=bool(layout.find_tokenizer_files(folder)),
        has_config="config.json" in rels,
    )


def mark_droppable(report: InspectReport, held: Holdings) -> None:
    """Fill ``droppable`` / ``droppable_bytes``: training-only files (ZeRO shards only next to full weights) and,
    when full weights exist, the files of intermediate ``checkpoint-N/`` sub-folders."""
    nested_checkpoints = tuple(f"{name}/" for name in report.checkpoints)
    for f in report.files:
        cls = f["class"]
        if (cls in layout.TRAINING_ONLY_CLASSES and (cls != layout.ZERO_SHARDS or held.has_weights)) or (
                held.has_weights and f["path"].startswith(nested_checkpoints)):
            report.droppable.append(f["path"])
            report.droppable_bytes += f["size"]


def folder_kind(held: Holdings) -> str:
    """One of :data:`~.report.KINDS`, from what the folder holds."""
    if not held.rels:
        return kinds.EMPTY
    if held.has_training and (held.has_weights or held.has_adapter_weights):
        return kinds.TRAINING_CHECKPOINT
    if held.has_zero and not held.has_weights and not held.has_adapter_weights:
        return kinds.DEEPSPEED_CHECKPOINT
    if held.has_adapter_cfg and not held.has_weights:
        return kinds.LORA_ADAPTER
    if held.has_weights:
        return kinds.SENTENCE_TRANSFORMERS_MODEL if held.has_st else kinds.FULL_MODEL
    if held.onnx_models:
        return kinds.ONNX_EXPORT
    return kinds.UNKNOWN


def missing_for_inference(held: Holdings, *, config_error: str | None, weights_error: str | None) -> list[str]:
    """What inference lacks (config, weights: full or ONNX, tokenizer); nothing for an empty folder."""
    if not held.rels:
        return []
    missing = []
    weights_ok = (held.has_weights and not weights_error) or bool(held.onnx_models)
    if not held.has_config or config_error:
        missing.append(kinds.MISSING_CONFIG)
    if not weights_ok:
        missing.append(kinds.MISSING_WEIGHTS)
    if not held.has_tokenizer:
        missing.append(kinds.MISSING_TOKENIZER)
    return missing


def checkpoint_subfolders(folder: Path) -> list[str]:
    """Names of the ``checkpoint-N`` sub-folders of a Trainer ``output_dir``, oldest first."""
    found = []
    for p in folder.iterdir():
        m = _CHECKPOINT_DIR_RE.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p.name))
    return [name for _, name in sorted(found)]
