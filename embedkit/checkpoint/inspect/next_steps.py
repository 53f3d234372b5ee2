"""What to run next on an inspected folder: fixes first (config, tokenizer, weights), then the main action
(``slim``, ``merge``, ...), then the spec and the manifest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..._format import format_bytes
from ..._io import stale_siblings
from ...folder import layout
from ...models import resolve_model_path
from .report import (
    DEEPSPEED_CHECKPOINT,
    EMPTY,
    FULL_MODEL,
    LORA_ADAPTER,
    MISSING_CONFIG,
    MISSING_TOKENIZER,
    MISSING_WEIGHTS,
    ONNX_EXPORT,
    SENTENCE_TRANSFORMERS_MODEL,
    TRAINING_CHECKPOINT,
    UNKNOWN,
    InspectReport,
)
from .report import shell_quote as _q

BASE_PLACEHOLDER = "BASE_MODEL_FOLDER"


def _card_base_model(folder: Path) -> str | None:
    """``base_model:`` from the front matter of the folder's ``README.md`` model card (written by ``save``)."""
    path = folder / "README.md"
    try:
        text = path.read_text(encoding="utf-8")[:20000] if path.is_file() else ""
    except (OSError, UnicodeDecodeError):
        return None
    if not text.startswith("---"):
        return None
    for line in text.splitlines()[1:]:
        if line.strip() == "---":
            break
        if line.startswith("base_model:"):
            value = line.split(":", 1)[1].strip()
            try:
                value = json.loads(value) if value.startswith('"') else value.strip("'")
            except json.JSONDecodeError:
                return None
            return value if isinstance(value, str) and value else None
    return None


def recorded_base_folder(folder: Path, config: dict[str, Any] | None, lora: dict[str, Any] | None) -> Path | None:
    """The base model folder the checkpoint records (adapter_config.json's ``base_model_name_or_path``, config.json's
    ``_name_or_path``, the model card's ``base_model``) when it is an existing local folder holding a tokenizer
    (relative paths: from the working directory, as the commands will run); ``None`` when none is known."""
    names = [(lora or {}).get("base_model_name_or_path"), (config or {}).get("_name_or_path"),
             _card_base_model(folder)]
    for name in names:
        if not isinstance(name, str) or not name.strip() or "\x00" in name:
            continue
        try:
            path = resolve_model_path(name)
            if path.is_dir() and path.resolve() != folder.resolve() and layout.find_tokenizer_files(path):
                return path
        except OSError:
            continue
    return None


def next_steps(report: InspectReport, folder: Path, *, has_st: bool, has_weights: bool,
               has_adapter_weights: bool, config: dict[str, Any] | None = None) -> list[str]:
    """Concrete commands, fixes first (missing config / tokenizer), then the main action, then spec / manifest,
    then a note on stale temporary siblings of killed embedkit writes.

    The commands succeed when run in order: without a tokenizer in the folder, ``slim`` / ``save`` get
    ``--tokenizer BASE`` (the recorded base model folder, or the placeholder ``BASE_MODEL_FOLDER`` with a sentence
    saying to replace it)."""
    if report.kind == EMPTY:
        return ["the folder is empty: point to a folder written by save_pretrained / `embedkit save`, "
                "a training checkpoint or an adapter folder"] + _stale_siblings_step(folder)
    steps: list[str] = []
    if report.checkpoints and report.kind == UNKNOWN:
        latest = _q(folder / report.checkpoints[-1])
        steps.append(f"this looks like a training output folder: inspect its latest checkpoint with "
                     f"`embedkit inspect {latest}`")
    adapter_only = bool(report.lora) and not has_weights
    fixes, tok = _fixes(report, folder, config, adapter_only=adapter_only)
    steps += _main_action(report, folder, tok, has_weights=has_weights, has_adapter_weights=has_adapter_weights,
                          adapter_only=adapter_only)
    return fixes + steps + _follow_ups(report, folder, tok, has_st=has_st) + _stale_siblings_step(folder)


def _fixes(report: InspectReport, folder: Path, config: dict[str, Any] | None, *,
           adapter_only: bool) -> tuple[list[str], str]:
    """What the folder lacks (fix first, so the main action's output is complete), and the ``--tokenizer``
    argument ``slim`` / ``save`` need to find a tokenizer (``""`` when the folder has one)."""
    d = _q(folder)
    kind = report.kind
    fixes: list[str] = []
    missing = report.missing_for_inference
    needs_base_files = kind not in (LORA_ADAPTER, UNKNOWN) and not adapter_only
    if needs_base_files and MISSING_CONFIG in missing:
        err = report.model.get("config_error")
        fixes.append(f"fix config.json ({err}) or copy it from the base model" if err
                     else f"config.json is missing: copy it from the base model into {d}")
    tok = ""
    if needs_base_files and MISSING_TOKENIZER in missing:
        found = recorded_base_folder(folder, config, report.lora)
        tok = f" --tokenizer {_q(found) if found else BASE_PLACEHOLDER}"
        if found:
            fixes.append(f"no tokenizer files (common in training checkpoints): the commands below take them from "
                         f"the recorded base model {_q(found)} (`--tokenizer`)")
        else:
            fixes.append(f"no tokenizer files (common in training checkpoints) and no base model folder recorded: "
                         f"replace {BASE_PLACEHOLDER} below with the folder of the model training started from "
                         f"(or copy its tokenizer.json, tokenizer_config.json, special_tokens_map.json, "
                         f"vocab.txt ... into {d} and drop `--tokenizer`)")
    if needs_base_files and MISSING_WEIGHTS in missing and kind not in (DEEPSPEED_CHECKPOINT, UNKNOWN):
        err = report.model.get("weights_error")
        fixes.append(f"the weights are unreadable ({err}): copy or re-save them" if err
                     else "no model weights (model.safetensors / pytorch_model.bin) found")
    return fixes, tok


def _main_action(report: InspectReport, folder: Path, tok: str, *, has_weights: bool, has_adapter_weights: bool,
                 adapter_only: bool) -> list[str]:
    """The one command that turns the folder into what it should be (slim, merge...), if any."""
    d = _q(folder)
    kind = report.kind
    base = (report.lora or {}).get("base_model_name_or_path")
    base_arg = _q(base) if isinstance(base, str) and base else "BASE"
    if kind == DEEPSPEED_CHECKPOINT:
        return [f"embedkit slim {d} {_q(str(folder) + '-slim')}{tok} "
                "(needs `pip install deepspeed` to consolidate ZeRO shards)"]
    if adapter_only and (kind == LORA_ADAPTER or has_adapter_weights):
        how = "" if base_arg != "BASE" else f" (BASE: the base model folder; {layout.ADAPTER_CONFIG} does not name it)"
        return [f"embedkit merge {base_arg} {d} {_q(str(folder) + '-merged')}{how}"]
    if kind == TRAINING_CHECKPOINT:
        return [f"embedkit slim {d} {_q(str(folder) + '-slim')}{tok} "
                f"(keeps what inference needs, drops {format_bytes(report.droppable_bytes)} of training state)"]
    if report.lora and has_weights:
        return [f"{layout.ADAPTER_CONFIG} sits next to full weights: if the adapter is not merged yet, "
                f"run `embedkit merge {base_arg} {d} {_q(str(folder) + '-merged')}`"]
    if kind == UNKNOWN and not report.checkpoints:
        return ["no weights, adapter, ZeRO shards or ONNX model found: is this the right folder? "
                "(a model folder holds config.json, model.safetensors and the tokenizer)"]
    return []


def _follow_ups(report: InspectReport, folder: Path, tok: str, *, has_st: bool) -> list[str]:
    """After the main action: record the pooling / the sentence-transformers layout, then write a manifest."""
    d = _q(folder)
    kind = report.kind
    steps = []
    if kind in (FULL_MODEL, SENTENCE_TRANSFORMERS_MODEL, TRAINING_CHECKPOINT) and report.spec is not None:
        if "pooling" in report.spec_assumed or "normalize" in report.spec_assumed:
            steps.append(f"no pooling recorded: run `embedkit save {d} {_q(str(folder) + '-st')}{tok} --pooling cls` "
                         "(or mean / last_token: whatever the model was trained with) so every loader agrees")
        elif not has_st:
            steps.append(f"embedkit save {d} {_q(str(folder) + '-st')}{tok} (adds the sentence-transformers layout: "
                         "modules.json, 1_Pooling/... that sentence-transformers, TEI and infinity read)")
    if kind in (FULL_MODEL, SENTENCE_TRANSFORMERS_MODEL, ONNX_EXPORT) and not report.missing_for_inference \
            and layout.MANIFEST_NAME not in {f["path"] for f in report.files}:
        steps.append(f"embedkit manifest {d} (records every file's sha256 and size)")
    return steps


def _stale_siblings_step(folder: Path) -> list[str]:
    """A note on temporary siblings left next to the folder by killed embedkit writes."""
    stale = stale_siblings(folder)
    if not stale:
        return []
    return [f"{len(stale)} stale temporary sibling(s) of killed embedkit writes next to this "
            f"folder ({', '.join(p.name for p in stale[:3])}): the next save / convert to "
            f"{_q(folder)} removes them, or delete them by hand"]
