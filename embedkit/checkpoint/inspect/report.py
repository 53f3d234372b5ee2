"""The :class:`InspectReport` of ``embedkit inspect``, its JSON form and the names its fields take."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

FULL_MODEL = "full_model"
SENTENCE_TRANSFORMERS_MODEL = "sentence_transformers_model"
TRAINING_CHECKPOINT = "training_checkpoint"
LORA_ADAPTER = "lora_adapter"
ONNX_EXPORT = "onnx_export"
DEEPSPEED_CHECKPOINT = "deepspeed_checkpoint"
UNKNOWN = "unknown"
EMPTY = "empty"

KINDS = (FULL_MODEL, SENTENCE_TRANSFORMERS_MODEL, TRAINING_CHECKPOINT, LORA_ADAPTER, ONNX_EXPORT,
         DEEPSPEED_CHECKPOINT, UNKNOWN, EMPTY)
"""Every value :attr:`InspectReport.kind` can take."""

KIND_DESCRIPTIONS = {
    FULL_MODEL: "a Hugging Face model folder (no sentence-transformers files)",
    SENTENCE_TRANSFORMERS_MODEL: "a model folder with a sentence-transformers layout",
    TRAINING_CHECKPOINT: "a training checkpoint (weights + optimizer / trainer state)",
    LORA_ADAPTER: "a LoRA / PEFT adapter (needs its base model)",
    ONNX_EXPORT: "an ONNX export",
    DEEPSPEED_CHECKPOINT: "a DeepSpeed checkpoint (weights only as ZeRO shards)",
    UNKNOWN: "not recognised as a model folder",
    EMPTY: "an empty folder",
}

MISSING_CONFIG = "config.json"
MISSING_WEIGHTS = "weights"
MISSING_TOKENIZER = "tokenizer"


@dataclass
class InspectReport:
    """Everything :func:`inspect_folder` found out about a folder; :meth:`to_dict` is the ``--json`` schema."""

    path: str
    kind: str
    files: list[dict[str, Any]] = field(default_factory=list)
    classes: dict[str, dict[str, int]] = field(default_factory=dict)
    total_bytes: int = 0
    inference_bytes: int = 0
    droppable_bytes: int = 0
    droppable: list[str] = field(default_factory=list)
    missing_for_inference: list[str] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=dict)
    spec: dict[str, dict[str, Any]] | None = None
    spec_error: str | None = None
    spec_assumed: list[str] = field(default_factory=list)
    lora: dict[str, Any] | None = None
    m3_heads: dict[str, bool] = field(default_factory=dict)
    checkpoints: list[str] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-able values (the stable ``embedkit inspect --json`` schema)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "path": self.path,
            "kind": self.kind,
            "files": [dict(f) for f in self.files],
            "classes": {k: dict(v) for k, v in self.classes.items()},
            "total_bytes": self.total_bytes,
            "inference_bytes": self.inference_bytes,
            "droppable_bytes": self.droppable_bytes,
            "droppable": list(self.droppable),
            "missing_for_inference": list(self.missing_for_inference),
            "model": dict(self.model),
            "spec": None if self.spec is None else {k: dict(v) for k, v in self.spec.items()},
            "spec_error": self.spec_error,
            "spec_assumed": list(self.spec_assumed),
            "lora": None if self.lora is None else dict(self.lora),
            "m3_heads": dict(self.m3_heads),
            "checkpoints": list(self.checkpoints),
            "next_steps": list(self.next_steps),
            "problems": list(self.problems),
        }



def shell_quote(path: str | Path) -> str:
    """``path`` quoted for the shell commands the report suggests."""
    return shlex.quote(str(path))
