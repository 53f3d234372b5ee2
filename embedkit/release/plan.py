"""The release plan: what ``embedkit release SRC DST`` will keep, drop, merge, convert and export, and why.

:func:`plan_release` reads SRC with :func:`embedkit.checkpoint.inspect_folder` and refuses, before anything is
written, every release it would have to guess: an adapter without a local base, ZeRO shards without a way to
consolidate them, a missing tokenizer without a base to take it from, and a spec decided by the BGE fallback.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoint import inspect_folder
from ..checkpoint.inspect import recorded_base_folder
from ..errors import CheckpointError, SpecError
from ..folder.layout import ZERO_SHARDS, check_destination
from ..models import resolve_model_path

SPEC_FIELDS = ("pooling", "normalize", "query_instruction", "passage_instruction", "query_max_length",
               "passage_max_length", "truncate_dim")
DTYPES = ("fp32", "fp16", "bf16")
FORMATS = ("safetensors", "bin", "both")


@dataclass
class ReleaseOptions:
    """Everything ``embedkit release`` can be told (``None``: decide from the folder)."""

    base: str | None = None
    pooling: str | None = None
    normalize: bool | None = None
    query_instruction: str | None = None
    passage_instruction: str | None = None
    query_max_length: int | None = None
    passage_max_length: int | None = None
    truncate_dim: int | None = None
    accept_assumed_spec: bool = False
    onnx: bool | None = None
    int8: bool = False
    dtype: str | None = None
    format: str = "safetensors"
    sign: str | None = None
    eval_data: str | None = None
    eval_split: str = "test"
    baseline: str | None = None
    overwrite: bool = False
    trust_pickle: bool = False

    def spec_overrides(self) -> dict[str, Any]:
        """The spec fields the user gave (passed to :func:`embedkit.checkpoint.save`)."""
        return {k: getattr(self, k) for k in SPEC_FIELDS if getattr(self, k) is not None}


@dataclass
class Step:
    """One step of the plan: its name, what it does and why."""

    name: str
    action: str
    why: str


@dataclass
class ReleasePlan:
    """What the release will do; :meth:`lines` is what the CLI prints first."""

    src: Path
    dst: Path
    kind: str
    options: ReleaseOptions
    base: Path | None = None
    steps: list[Step] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)  # path -> why
    merged: list[str] = field(default_factory=list)
    tokenizer_from_base: bool = False
    consolidate_zero: bool = False
    onnx: bool = False
    spec: dict[str, dict[str, Any]] = field(default_factory=dict)
    src_bytes: int = 0
    src_inference_bytes: int = 0

    def step(self, name: str) -> Step | None:
        return next((s for s in self.steps if s.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {"src": str(self.src), "dst": str(self.dst), "kind": self.kind,
                "base": str(self.base) if self.base else None, "steps": [asdict(s) for s in self.steps],
                "kept": self.kept, "dropped": self.dropped, "merged": self.merged,
                "tokenizer_from_base": self.tokenizer_from_base, "consolidate_zero": self.consolidate_zero,
                "onnx": self.onnx, "spec": self.spec, "src_bytes": self.src_bytes,
                "src_inference_bytes": self.src_inference_bytes}

    def lines(self) -> list[str]:
        """The plan as text: the steps with their reasons, then kept / dropped / merged files."""
        out = [f"release plan: {self.src} ({self.kind}) -> {self.dst}"]
        out += [f"  {i}. {s.name}: {s.action} ({s.why})" for i, s in enumerate(self.steps, 1)]
        if self.merged:
            out.append(f"  merged: {', '.join(self.merged)}")
        if self.kept:
            out.append(f"  kept: {', '.join(self.kept)}")
        for path, why in self.dropped.items():
            out.append(f"  dropped: {path} ({why})")
        return out


_DROP_REASONS = {
    "training_state": "training state (optimizer / scheduler / trainer), not needed for inference",
    "rng_state": "RNG state, not needed for inference",
    ZERO_SHARDS: "DeepSpeed ZeRO shard; the full weights are kept",
    "manifest": "rewritten for the release",
}


def _base_folder(options: ReleaseOptions, src: Path, report: Any) -> Path | None:
    """``--base`` (a local folder) or the base the checkpoint records (local folders only)."""
    if options.base is not None:
        base = resolve_model_path(options.base)
        if not base.is_dir():
            raise CheckpointError(f"--base {options.base} is not a local model folder",
                                  hint="pass the folder of the base model the run started from (offline: no hub "
                                  "ids)", param="base")
        return base
    config = None
    with contextlib.suppress(OSError, ValueError):
        loaded = json.loads((src / "config.json").read_text(encoding="utf-8"))
        config = loaded if isinstance(loaded, dict) else None
    return recorded_base_folder(src, config, report.lora)


def _zero_refusal(src: Path, shards: list[str]) -> CheckpointError:
    shown = ", ".join(shards[:4]) + (f" (+{len(shards) - 4} more)" if len(shards) > 4 else "")
    return CheckpointError(
        f"{src} holds its weights only as DeepSpeed ZeRO shards ({shown}) and the deepspeed package, which "
        "consolidates them, is not installed",
        hint=f"consolidate them first: `python {src / 'zero_to_fp32.py'} {src} {src} --safe_serialization` (the "
        "script DeepSpeed writes into the checkpoint), or pip install deepspeed; then run embedkit release again")


def _check_spec(plan: ReleasePlan, report: Any, options: ReleaseOptions, base: Path | None) -> None:
    """Refuse a spec the BGE fallback decided unless ``--pooling`` or ``--accept-assumed-spec`` was given."""
    spec, assumed = report.spec or {}, list(report.spec_assumed)
    if report.lora is not None:  # the adapter's spec (finetune --lora writes it), else the base's
        if not (plan.src / "modules.json").is_file() and base is not None:
            base_report = inspect_folder(base)
            spec, assumed = base_report.spec or {}, list(base_report.spec_assumed)
    plan.spec = {k: dict(v) for k, v in spec.items()}
    for name, value in options.spec_overrides().items():
        plan.spec[name] = {"value": value, "rule": "argument"}
    assumed = [a for a in assumed if a not in options.spec_overrides()]
    if assumed and options.pooling is None and not options.accept_assumed_spec:
        raise SpecError(
            f"{plan.src}: nothing records the embedding recipe's {', '.join(assumed)}; the release would have to "
            "guess them (the BGE convention: CLS pooling, normalized), and a wrong guess ships wrong vectors",
            hint="pass --pooling cls|mean|last_token (and --normalize/--no-normalize) as the model was trained, or "
            "--accept-assumed-spec to release with the BGE convention", param="pooling")


def plan_release(src: str | Path, dst: str | Path, options: ReleaseOptions | None = None) -> ReleasePlan:
    """Inspect ``src`` and decide every step of the release into ``dst``; nothing is written.

    Raises :class:`CheckpointError` / :class:`SpecError` for every release that would need a guess.

    Example:
        >>> plan = plan_release("out/checkpoint-15478", "releases/bge-small-ft", ReleaseOptions(pooling="cls"))
        >>> [s.name for s in plan.steps]
        ['slim', 'save', 'onnx', 'parity', 'manifest']
    """
    options = options or ReleaseOptions()
    if options.dtype is not None and options.dtype not in DTYPES:
        raise CheckpointError(f"unknown --dtype {options.dtype!r}", hint=f"use one of {', '.join(DTYPES)}",
                              param="dtype")
    if options.format not in FORMATS:
        raise CheckpointError(f"unknown --format {options.format!r}", hint=f"use one of {', '.join(FORMATS)}",
                              param="format")
    folder = resolve_model_path(src)
    report = inspect_folder(folder)
    folder = Path(report.path)
    dst = check_destination(dst, overwrite=options.overwrite, src=folder)
    plan = ReleasePlan(src=folder, dst=dst, kind=report.kind, options=options, src_bytes=report.total_bytes,
                       src_inference_bytes=report.inference_bytes)
    base = _base_folder(options, folder, report)
    classes = {f["path"]: f["class"] for f in report.files}

    if report.lora is not None:
        if base is None:
            recorded = report.lora.get("base_model_name_or_path")
            raise CheckpointError(
                f"{folder} is a LoRA adapter and its recorded base ({recorded!r}) is not a local model folder",
                hint="pass --base BASE_MODEL_FOLDER (the model the adapter was trained on)", param="base")
        plan.base = base
        plan.merged = ["adapter_config.json", *report.lora.get("adapter_files", [])]
        plan.steps.append(Step("merge", f"merge the LoRA adapter onto {base}",
                               "an adapter alone does not load in sentence-transformers, TEI or ONNX"))
        for path, cls in classes.items():
            if path in plan.merged:
                continue
            if cls in ("tokenizer", "sentence_transformers", "config", "model_card"):
                plan.kept.append(path)
            else:
                plan.dropped[path] = _DROP_REASONS.get(cls, f"{cls}: not part of the merged model")
    else:
        shards = [p for p, c in classes.items() if c == ZERO_SHARDS]
        if not report.model.get("weight_files"):
            if not shards:
                raise CheckpointError(f"{folder} holds no model weights ({report.kind})",
                                      hint=f"`embedkit inspect {folder}` shows what the folder holds")
            if importlib.util.find_spec("deepspeed") is None:
                raise _zero_refusal(folder, shards)
            plan.consolidate_zero = True
            plan.steps.append(Step("consolidate", "merge the ZeRO shards into model.safetensors (deepspeed)",
                                   "the folder has no full weights"))
        plan.tokenizer_from_base = "tokenizer" in report.missing_for_inference
        if plan.tokenizer_from_base and base is None:
            raise CheckpointError(f"{folder} has no tokenizer files and records no local base model to take them "
                                  "from", hint="pass --base BASE_MODEL_FOLDER", param="base")
        plan.base = base if plan.tokenizer_from_base else None
        for path, cls in classes.items():
            if path in report.droppable or cls == "manifest" or (plan.consolidate_zero and cls == ZERO_SHARDS):
                plan.dropped[path] = _DROP_REASONS.get(cls, f"{cls}: not needed for inference")
            else:
                plan.kept.append(path)
        why = "drop training state" if plan.dropped else "copy what inference needs"
        tok = f"; tokenizer from {base}" if plan.tokenizer_from_base else ""
        plan.steps.append(Step("slim", f"{why}{tok}", f"{len(plan.dropped)} file(s) not needed for inference"))
    _check_spec(plan, report, options, plan.base)
    _plan_outputs(plan, options)
    return plan


def _plan_outputs(plan: ReleasePlan, options: ReleaseOptions) -> None:
    """save (+ conversion), ONNX, parity, eval, manifest."""
    conv = [x for x in (options.dtype and f"dtype {options.dtype}", options.format != "safetensors"
                        and f"format {options.format}") if x]
    overrides = options.spec_overrides()
    spec_why = ("spec from arguments: " + ", ".join(f"{k}={v!r}" for k, v in overrides.items()) if overrides
                else "spec " + ("assumed (--accept-assumed-spec)" if options.accept_assumed_spec else "recorded"))
    plan.steps.append(Step("save", "write the Hugging Face + sentence-transformers layout" +
                           (f", converted to {' and '.join(conv)}" if conv else ""), spec_why))
    onnx_available = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))
    plan.onnx = onnx_available if options.onnx is None else options.onnx
    if options.int8 and not plan.onnx:
        raise CheckpointError("--int8 quantizes the ONNX export, which is off", hint="drop --no-onnx or --int8",
                              param="int8")
    if plan.onnx:
        plan.steps.append(Step("onnx", "export onnx/model.onnx and onnx/embedder.onnx" +
                               (" + int8 behind the quality gate" if options.int8 else ""),
                               "ONNX Runtime / TensorRT / TEI serving"))
    plan.steps.append(Step("parity", "encode the same texts with every available loader",
                           "the release fails if any fp32 engine disagrees with embedkit"))
    if options.eval_data:
        plan.steps.append(Step("eval", f"retrieval metrics on {options.eval_data}" +
                               (f" (baseline {options.baseline})" if options.baseline else ""), "--eval"))
    plan.steps.append(Step("manifest", "sha256 of every file" + (" + ed25519 signature" if options.sign else ""),
                           "`embedkit verify` proves the folder is what was released"))


__all__ = ["ReleaseOptions", "ReleasePlan", "Step", "plan_release", "SPEC_FIELDS", "DTYPES", "FORMATS"]
