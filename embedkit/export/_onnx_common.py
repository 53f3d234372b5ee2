"""What the embedder and the reranker ONNX exports share: the report, the TorchScript export of one graph, an
onnxruntime session, padded feeds of varied shapes, the int8 candidates tried behind a quality gate (quantized in a
scratch folder), copying the model's inference files and writing ``onnx/export.json``."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_write
from .._optional import require
from ..batching import pad_features, pad_token_id
from ..errors import EmbedkitError
from ..folder.layout import INFERENCE_CLASSES, check_model_folder, classify_file, list_files
from ..folder.onnx_files import EXPORT_INFO_FILE
from ..models import resolve_model_path

logger = logging.getLogger("embedkit")

DEFAULT_OPSET = 17

# int8 candidates, fastest first; the first that passes the gate is kept. Quantizing every MatMul (per-channel)
# gave mean cosine 0.987 / min 0.971 vs fp32 on 260 varied texts with all-MiniLM-L6-v2: the feed-forward output
# projections (fed by GELU activations with a long tail) are the sensitive ones; keeping just those in fp32 gave
# 0.9927 / 0.983 at about 1.5-1.9x the fp32 graph's speed.
_INT8_CANDIDATES = (
    ("per-channel int8, feed-forward output projections kept in fp32", {"exclude": ("output/dense",),
                                                                        "keep": ("attention",)}),
    ("per-channel int8, all output projections kept in fp32", {"exclude": ("output/dense",)}),
)


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and measured."""

    path: Path
    inputs: list[str]
    opset: int
    parity_max_abs_diff: float
    int8: dict[str, Any] | None = None
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__, path=str(self.path))


def start_export(model: str | Path, quantize: str | None) -> tuple[float, Path]:
    """The checks every export starts with (onnx and onnxruntime installed, a known ``quantize``, a model folder):
    the start time and the source folder."""
    require("onnx", "ONNX export")
    require("onnxruntime", "ONNX export")
    t0 = time.perf_counter()
    if quantize not in (None, "int8"):
        raise EmbedkitError(f"unknown quantization {quantize!r}", hint="use --quantize int8")
    return t0, check_model_folder(resolve_model_path(model))


def input_names(tokenizer: Any) -> list[str]:
    """The graph inputs ``tokenizer`` produces, in the graph's order."""
    return [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in tokenizer.model_input_names]


def export_graph(module: torch.nn.Module, sample: dict[str, torch.Tensor], path: Path, output: str, opset: int) -> None:
    import warnings

    names = list(sample)
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes[output] = {0: "batch", 1: "sequence"} if output == "last_hidden_state" else {0: "batch"}
    path.parent.mkdir(parents=True, exist_ok=True)
    # a fresh wrapper Module is in training mode, and the exporter restores that mode onto the whole tree
    # afterwards: without eval() here the encoder would come back with dropout switched on
    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings about Python control flow on shapes (checked below)
        torch.onnx.export(module, tuple(sample[n] for n in names), str(path), input_names=names,
                          output_names=[output], dynamic_axes=axes, opset_version=opset, dynamo=False,
                          do_constant_folding=True)


def open_session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def varied_feeds(features: Any, tokenizer: Any, n: int, names: list[str]) -> list[dict[str, np.ndarray]]:
    """Padded batches of varied shapes from ``n`` rows of unpadded ``features``: a batch of 1 (shortest), all rows
    together (longest padded), and odd-size batches."""
    pad_id, side = pad_token_id(tokenizer), getattr(tokenizer, "padding_side", "right")
    groups = [range(min(1, n)), range(n), range(1, min(8, n)), range(max(n - 5, 0), n)]  # [:1], [:], [1:8], [-5:]
    out = []
    for rows in groups:
        padded = pad_features(features, np.asarray(rows, dtype=np.int64), pad_id, side)
        out.append({name: padded[name].astype(np.int64) for name in names})
    return out


def _quantize_in_scratch(quantize: Any, fp32_path: Path, out_path: Path, **options: Any) -> None:
    """Run onnxruntime's ``quantize_dynamic`` so that every file it writes lands in a scratch folder.

    The quantizer writes a ``-inferred`` copy of its input next to the input, and onnxruntime's shape tools can
    save ``sym_shape_infer_temp.onnx`` plus a weights ``*.data`` file into the *working directory*: the input is
    linked (or copied) into a :class:`tempfile.TemporaryDirectory` beside ``out_path``, the quantizer reads and
    writes there, and only the finished graph is moved to ``out_path``. No ``chdir`` (process-global).
    """
    import tempfile

    import onnx

    external = {t.external_data[i].value for t in onnx.load(str(fp32_path), load_external_data=False).graph.initializer
                if t.data_location == onnx.TensorProto.EXTERNAL
                for i in range(len(t.external_data)) if t.external_data[i].key == "location"}
    with tempfile.TemporaryDirectory(prefix=".embedkit-quantize-", dir=out_path.parent) as scratch_dir:
        scratch = Path(scratch_dir)
        src, dst = scratch / fp32_path.name, scratch / "quantized.onnx"
        for name, target in [(fp32_path, src)] + [(fp32_path.parent / e, scratch / e) for e in sorted(external)]:
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(name, target)
            except OSError:
                shutil.copyfile(name, target)
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantizer logs every node through the root logger
        try:
            quantize(str(src), str(dst), use_external_data_format=False, **options)
        finally:
            root.setLevel(level)
        os.replace(dst, out_path)


Judge = Callable[[np.ndarray], tuple[dict[str, Any], bool]]
"""The int8 graph's output -> (the measured fields of its result, whether it passes the gate)."""


def try_int8_candidates(fp32_path: Path, out_path: Path, feed: dict[str, np.ndarray],
                        judge: Judge) -> tuple[list[dict[str, Any]], bool]:
    """Quantize ``fp32_path`` to ``out_path`` (dynamic int8, per-channel weights) with each of the candidates,
    fastest first, until ``judge`` (the int8 graph's output on ``feed`` -> measured fields, passed) passes one.
    Every candidate's result, the last the one kept when the second value is True; otherwise ``out_path`` is
    removed."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    nodes = [n.name for n in onnx.load(str(fp32_path), load_external_data=False).graph.node
             if n.op_type in ("MatMul", "Gemm")]
    tried: list[dict[str, Any]] = []
    seen: set[tuple[str, ...]] = set()
    for label, opts in _INT8_CANDIDATES:
        exclude = tuple(n for n in nodes if any(p in n for p in opts["exclude"])
                        and not any(k in n for k in opts.get("keep", ())))
        if exclude in seen:
            continue  # this architecture names its nodes otherwise: same as a candidate already tried
        seen.add(exclude)
        _quantize_in_scratch(quantize_dynamic, fp32_path, out_path, weight_type=QuantType.QInt8, per_channel=True,
                             nodes_to_exclude=list(exclude))
        measured, passed = judge(open_session(out_path).run(None, feed)[0])
        tried.append({"settings": label, "excluded_nodes": len(exclude), **measured})
        if passed:
            return tried, True
    out_path.unlink(missing_ok=True)
    return tried, False


def copy_inference_files(src: Path, tmp: Path) -> None:
    """The model's inference files (weights, config, tokenizer, sentence-transformers layout, card) into ``tmp``."""
    for rel in list_files(src):
        if classify_file(rel) in INFERENCE_CLASSES:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, tmp / rel)
    for rel in ("2_Normalize",):
        if (src / rel).is_dir():
            (tmp / rel).mkdir(exist_ok=True)


def write_export_info(tmp: Path, info: dict[str, Any]) -> None:
    """``onnx/export.json`` in the folder being written (atomically)."""
    with atomic_write(tmp / EXPORT_INFO_FILE, "w") as fh:
        fh.write(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
