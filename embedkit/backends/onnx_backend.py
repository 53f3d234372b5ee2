"""The ONNX backend: ``onnx/embedder.onnx`` (or ``embedder_int8.onnx``) through onnxruntime.

The graph was traced from :func:`embedkit.pooling.embed` with the model's spec, so it returns final vectors
(``output = "pooled"``); :class:`embedkit.Embedder` does tokenization, batching and ordering exactly as for PyTorch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from .._optional import require
from ..errors import CheckpointError, SpecError
from ..folder.fingerprint import sha256_file, weights_fingerprint
from ..folder.onnx_files import (
    EMBEDDER_FILE,
    EMBEDDER_INT8_FILE,
    RERANKER_FILE,
    RERANKER_INT8_FILE,
    read_export_info,
)

PRECISIONS = ("fp32", "int8")


def _int8_missing_reason(info: dict[str, Any]) -> str:
    """Why an export has no int8 graph: not requested, or the best candidate and the gate it failed."""
    int8 = info.get("int8")
    if not int8:
        return " (int8 was not requested at export)"
    tried = int8.get("tried") or []
    if tried and "max_abs_diff" in tried[0]:  # a reranker's gate: score agreement
        best = min(tried, key=lambda t: t["max_abs_diff"])
        return (f" (it failed the quality gate: best max |sigmoid diff| {best['max_abs_diff']:.4f}, Spearman "
                f"{best['spearman']:.4f})")
    if tried and "mean_cosine" in tried[0]:
        return (f" (it failed the quality gate: best mean cosine {max(t['mean_cosine'] for t in tried):.4f} < "
                f"{int8.get('min_cosine_gate')})")
    return " (it failed the quality gate)"


def open_session(folder: Path, info: dict[str, Any], rel: str, threads: int | None) -> Any:
    """An onnxruntime CPU session of ``folder/rel``, after checking the graph file against its export record and
    the folder's weights against the ones it was exported from (a clear error for either mismatch)."""
    ort = require("onnxruntime", "backend='onnx'")
    path = folder / rel
    recorded = info.get("files", {}).get(rel)
    if recorded and sha256_file(path) != recorded:
        raise CheckpointError(f"{path} does not match its export record (changed or damaged since export)",
                              hint=f"re-export: `embedkit export onnx {info.get('source', 'MODEL')} OUT`")
    current = weights_fingerprint(folder)
    source = info.get("source_weights", {})
    if current and source and current != source:
        raise CheckpointError(f"the ONNX export in {folder} was made from other weights than the folder holds now",
                              hint="re-export the current model: `embedkit export onnx MODEL OUT`")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def open_export(folder: Path, precision: str, threads: int | None, *, reranker: bool) -> tuple[dict[str, Any], Any]:
    """``(export info, session)`` of the embedder's (or the reranker's) graph of ``precision`` in ``folder``: a clear
    error for an unknown precision, the other kind of export, or a missing graph (saying why int8 is missing)."""
    require("onnxruntime", "backend='onnx'")
    if precision not in PRECISIONS:
        raise SpecError(f"unknown precision {precision!r} for the ONNX backend", hint="use 'fp32' or 'int8'")
    info = read_export_info(folder)
    if reranker and info.get("kind") != "reranker":
        raise CheckpointError(f"the ONNX export in {folder} is an embedder's, not a reranker's",
                              hint="re-export the cross-encoder: `embedkit export onnx MODEL OUT`")
    files = (RERANKER_FILE, RERANKER_INT8_FILE) if reranker else (EMBEDDER_FILE, EMBEDDER_INT8_FILE)
    rel = files[precision == "int8"]
    if not (folder / rel).is_file():
        why = _int8_missing_reason(info) if precision == "int8" else ""
        raise CheckpointError(f"{folder} has no {rel}{why}",
                              hint="use precision='fp32', or re-export with `embedkit export onnx --quantize int8`")
    return info, open_session(folder, info, rel, threads)


class OnnxBackend:
    """Runs an embedkit ONNX export; refuses an export that does not match the folder's weights or spec."""

    output: Literal["pooled"] = "pooled"

    def __init__(self, model_dir: str | Path, precision: str = "fp32", threads: int | None = None) -> None:
        self.info, self.session = open_export(Path(model_dir), precision, threads, reranker=False)
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.hidden_size = int(self.info["dim"])
        self.precision = precision
        self.device = "cpu"
        self.dtype = f"onnx-{precision}"

    def check_spec(self, spec: Any) -> None:
        """The parts of the spec baked into the graph must equal the ones asked for."""
        baked = self.info.get("spec", {})
        for name in ("pooling", "normalize", "truncate_dim"):
            if name in baked and baked[name] != getattr(spec, name):
                raise SpecError(f"the ONNX graph was exported with {name}={baked[name]!r}, but {name}="
                                f"{getattr(spec, name)!r} was asked for",
                                hint="drop the argument, or re-export with the spec you want "
                                "(`embedkit save ... --pooling ...` then `embedkit export onnx`)")

    def forward(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """Padded features -> final vectors (float32)."""
        feed = {n: features[n].astype(np.int64, copy=False) for n in self.input_names}
        return self.session.run(None, feed)[0]


class OnnxScoreBackend:
    """Runs a cross-encoder's embedkit ONNX export (``onnx/reranker.onnx`` or ``reranker_int8.onnx``): padded pair
    features -> one float32 score per pair (``output = "scores"``). Refuses an export made from other weights, or a
    graph changed since export.

    ``activation``: ``"identity"`` (the graph returns logits) or ``"sigmoid"`` (exported with ``sigmoid=True``).
    """

    output: Literal["scores"] = "scores"

    def __init__(self, model_dir: str | Path, precision: str = "fp32", threads: int | None = None) -> None:
        self.info, self.session = open_export(Path(model_dir), precision, threads, reranker=True)
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.hidden_size = 1
        self.activation = "sigmoid" if self.info.get("sigmoid") else "identity"
        self.precision = precision
        self.device = "cpu"
        self.dtype = f"onnx-{precision}"

    def forward(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """Padded pair features -> ``(batch,)`` float32 scores."""
        feed = {n: features[n].astype(np.int64, copy=False) for n in self.input_names}
        return np.asarray(self.session.run(None, feed)[0], dtype=np.float32).reshape(-1)
