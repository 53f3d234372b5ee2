"""ONNX export of a cross-encoder (``*ForSequenceClassification``, one label): one graph, ``onnx/reranker.onnx``:
token ids -> one score per pair (the logit, or its sigmoid with ``sigmoid=True``, recorded in ``onnx/export.json``),
verified against PyTorch on hostile pairs, int8 gated on score agreement (:func:`export_reranker_onnx`).
:func:`embedkit.export.onnx.export_onnx` dispatches a reranker folder here.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_dir
from ..checkpoint.manifest import write_manifest
from ..errors import CheckpointError
from ..folder.fingerprint import sha256_file, weights_fingerprint
from ..folder.layout import check_destination, list_files
from ..folder.onnx_files import RERANKER_FILE, RERANKER_INT8_FILE
from . import _onnx_common as common
from ._onnx_common import DEFAULT_OPSET, ExportReport, logger


class ScoreGraph(torch.nn.Module):
    """Token ids of (query, passage) pairs -> ``score``: the classification head's one logit, or its sigmoid."""

    def __init__(self, model: torch.nn.Module, sigmoid: bool = False) -> None:
        super().__init__()
        self.model = model
        self.sigmoid = sigmoid

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits[:, 0]
        return torch.sigmoid(logits) if self.sigmoid else logits


def _pair_feeds(reranker: Any, pairs: list[tuple[str, str]], names: list[str]) -> list[dict[str, np.ndarray]]:
    """Padded pair batches of varied shapes: one pair, all pairs (longest padded), and odd-size slices."""
    return common.varied_feeds(reranker.features(pairs), reranker.tokenizer, len(pairs), names)


def _torch_scores(model: torch.nn.Module, feed: dict[str, np.ndarray], sigmoid: bool) -> np.ndarray:
    with torch.no_grad():
        logits = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits[:, 0].float()
    return (torch.sigmoid(logits) if sigmoid else logits).numpy()


def _as_logits(scores: np.ndarray, sigmoid: bool) -> np.ndarray:
    """The logits behind ``scores`` (the gate compares logits; a sigmoid graph's output is inverted for it)."""
    if not sigmoid:
        return np.asarray(scores, dtype=np.float64)
    p = np.clip(np.asarray(scores, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def quantize_reranker_int8(fp32_path: Path, out_path: Path, reference: np.ndarray, feed: dict[str, np.ndarray], *,
                           sigmoid: bool, gate: tuple[float, float]) -> dict[str, Any]:
    """Dynamic int8 quantization of a reranker graph, candidates as for embedders (fastest first); keep the first
    whose scores agree with fp32 (:func:`embedkit.rerank.reranker.judge_scores`: max |sigmoid diff| <= ``gate[0]``,
    Spearman >= ``gate[1]``)."""
    from ..rerank.reranker import judge_scores

    def judge(scores: np.ndarray) -> tuple[dict[str, Any], bool]:
        verdict = judge_scores(_as_logits(reference, sigmoid), _as_logits(np.asarray(scores).reshape(-1), sigmoid),
                               gate)
        measured = {"max_abs_diff": verdict["max_abs_diff"], "spearman": verdict["spearman"], "pairs": verdict["pairs"]}
        return measured, bool(verdict["passed"])

    tried, kept = common.try_int8_candidates(fp32_path, out_path, feed, judge)
    return {"kept": True, **tried[-1], "tried": tried, "gate": list(gate)} if kept else {
        "kept": False, "tried": tried, "gate": list(gate)}


def export_reranker_onnx(model: str | Path, dst: str | Path, *, opset: int = DEFAULT_OPSET,
                         quantize: str | None = None, sigmoid: bool = False,
                         gate: tuple[float, float] = (0.01, 0.99), overwrite: bool = False,
                         trust_pickle: bool = False) -> ExportReport:
    """Export a one-label cross-encoder to ``dst/onnx/reranker.onnx``: token ids -> one score per pair.

    ``dst`` gets the model's inference files (its ``config.json`` keeps the reranking recipe), the graph,
    ``onnx/export.json`` (``kind: reranker``, ``sigmoid``, spec, source weight hashes, file hashes, measured parity)
    and, with ``quantize="int8"`` when it passes ``gate`` (max |sigmoid diff|, min Spearman vs fp32 on
    :func:`embedkit.rerank.reranker.gate_pairs`), ``onnx/reranker_int8.onnx``. The graph returns the logit, or its
    sigmoid with ``sigmoid=True`` (for serving; :class:`~embedkit.Reranker` needs the logit graph).
    :class:`CheckpointError` when the graph differs from PyTorch by more than 1e-4 on any shape.

    Example:
        >>> export_reranker_onnx("my-reranker", "my-reranker-onnx", quantize="int8")
    """
    from ..rerank.reranker import Reranker, gate_pairs

    t0, src = common.start_export(model, quantize)
    dst = check_destination(dst, overwrite=overwrite, src=src)
    reranker = Reranker(src, device="cpu", show_progress=False, trust_pickle=trust_pickle)
    net = reranker.model.float().eval()
    names = common.input_names(reranker.tokenizer)
    pairs = gate_pairs()
    feeds = _pair_feeds(reranker, pairs, names)
    sample = {n: torch.from_numpy(v) for n, v in _pair_feeds(reranker, pairs[:2], names)[1].items()}

    with atomic_dir(dst, overwrite=overwrite) as tmp:
        common.copy_inference_files(src, tmp)
        common.export_graph(ScoreGraph(net, sigmoid), sample, tmp / RERANKER_FILE, "score", opset)
        session = common.open_session(tmp / RERANKER_FILE)
        worst = 0.0
        for feed in feeds:
            got = np.asarray(session.run(None, feed)[0]).reshape(-1)
            worst = max(worst, float(np.abs(got - _torch_scores(net, feed, sigmoid)).max()) if len(got) else 0.0)
        if worst > 1e-4:
            raise CheckpointError(f"the exported reranker graph differs from PyTorch (max abs diff {worst:.2e})",
                                  hint="please report this model type as an embedkit bug")
        int8 = None
        if quantize == "int8":
            int8 = quantize_reranker_int8(tmp / RERANKER_FILE, tmp / RERANKER_INT8_FILE,
                                          session.run(None, feeds[1])[0], feeds[1], sigmoid=sigmoid, gate=gate)
        files = [f for f in (RERANKER_FILE, RERANKER_INT8_FILE) if (tmp / f).is_file()]
        info = {
            "format": "embedkit-onnx/1", "kind": "reranker", "source": str(src), "opset": opset,
            "exporter": "torch.onnx (torchscript)", "inputs": names, "outputs": {RERANKER_FILE: "score"},
            "sigmoid": sigmoid, "score": "sigmoid(logit)" if sigmoid else "logit", "spec": reranker.spec.to_dict(),
            "source_weights": weights_fingerprint(src), "files": {f: sha256_file(tmp / f) for f in files},
            "parity": {"max_abs_diff_vs_torch": worst, "pairs": len(pairs)}, "int8": int8,
        }
        common.write_export_info(tmp, info)
        write_manifest(tmp)
        all_files = list_files(tmp)
    if int8 is not None and not int8["kept"]:
        best = min(int8["tried"], key=lambda r: r["max_abs_diff"])
        logger.warning("int8 kept out: best max |sigmoid diff| %.4f (Spearman %.4f) misses the gate %s / %s; the fp32 "
                       "graph is the export", best["max_abs_diff"], best["spearman"], *gate)
    return ExportReport(path=dst, inputs=names, opset=opset, parity_max_abs_diff=worst, int8=int8, files=all_files,
                        seconds=time.perf_counter() - t0)
