"""The files of an embedkit ONNX export inside a model folder, and reading its ``onnx/export.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

ONNX_DIR = "onnx"
TRANSFORMER_FILE = "onnx/model.onnx"
EMBEDDER_FILE = "onnx/embedder.onnx"
EMBEDDER_INT8_FILE = "onnx/embedder_int8.onnx"
EXPORT_INFO_FILE = "onnx/export.json"
RERANKER_FILE = "onnx/reranker.onnx"
"""A cross-encoder's graph: token ids -> one score per pair (the logit, or its sigmoid when exported so)."""
RERANKER_INT8_FILE = "onnx/reranker_int8.onnx"


def read_export_info(folder: Path) -> dict[str, Any]:
    """``onnx/export.json`` of a folder; :class:`CheckpointError` when there is no export."""
    path = Path(folder) / EXPORT_INFO_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} has no ONNX export ({EXPORT_INFO_FILE} is missing)",
                              hint=f"run `embedkit export onnx {folder} OUT` and load OUT")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: invalid JSON ({exc.msg})", hint="re-export the model") from None
