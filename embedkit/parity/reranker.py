"""Parity of a cross-encoder (``*ForSequenceClassification``): the same (query, passage) pairs scored by embedkit
(PyTorch, ONNX fp32 / int8), FlagEmbedding's ``FlagReranker`` and sentence-transformers' ``CrossEncoder``, each peer
compared with embedkit run in that peer's own truncation mode."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..folder.layout import check_model_folder
from ..folder.onnx_files import RERANKER_FILE, RERANKER_INT8_FILE
from ..models import resolve_model_path
from .report import EngineCheck, ParityReport, in_engine_order, restrict_engines, run_engines


def reranker_pairs(texts: list[str] | None = None) -> list[tuple[str, str]]:
    """The pairs a reranker's parity runs on: :func:`embedkit.rerank.reranker.gate_pairs` (built-in hostile texts:
    empty, CJK, emoji, past max_length...), or each of the first four of ``texts`` against every one of them."""
    from ..rerank.reranker import gate_pairs

    if not texts:
        return gate_pairs()
    return [(q, p) for q in texts[:4] for p in texts]


def _logits(reranker: Any, pairs: list[tuple[str, str]]) -> np.ndarray:
    return np.asarray(reranker.compute_score(pairs), dtype=np.float32).reshape(-1)


def _scores_cell(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    from ..rerank.reranker import _spearman

    return {"max_abs_diff": float(np.abs(a - b).max()) if len(a) else 0.0, "spearman": round(_spearman(a, b), 6)}


def _flag_reranker_scores(folder: Path, spec: Any, pairs: list[tuple[str, str]]) -> np.ndarray:
    from FlagEmbedding import FlagReranker

    qml = spec.query_max_length if spec.truncation == "flagembedding" else None
    kwargs: dict[str, Any] = {"query_max_length": qml} if qml is not None else {}
    if spec.query_instruction is not None:
        kwargs |= {"query_instruction_for_rerank": spec.query_instruction,
                   "query_instruction_format": spec.query_instruction_format}
    with contextlib.redirect_stderr(io.StringIO()):
        model = FlagReranker(str(folder), use_fp16=False, devices="cpu", max_length=spec.max_length, **kwargs)
        scores = model.compute_score(pairs, normalize=False)
    return np.asarray(scores if isinstance(scores, list) else [scores], dtype=np.float32)


def _cross_encoder_scores(folder: Path, spec: Any, pairs: list[tuple[str, str]]) -> np.ndarray:
    import torch
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(folder), device="cpu", max_length=spec.max_length, local_files_only=True)
    prepared = [(spec.prepare_query(q), p) for q, p in pairs]  # CrossEncoder applies no query instruction
    return np.asarray(model.predict(prepared, activation_fn=torch.nn.Identity(), show_progress_bar=False),
                      dtype=np.float32).reshape(-1)


Candidates = dict[str, tuple[Callable[[], np.ndarray], str]]
"""Engine name -> (build its scores, the truncation mode it is matched in)."""


def _add_peers(candidates: Candidates, skipped: dict[str, str], folder: Path, spec: Any,
               pairs: list[tuple[str, str]]) -> None:
    """Add the engines other than the PyTorch reference that this folder and environment have (ONNX fp32 / int8,
    FlagReranker, CrossEncoder) to ``candidates``; say why each missing one is missing in ``skipped``."""
    import importlib.util

    from ..rerank.reranker import Reranker

    info_sigmoid = False
    if (folder / RERANKER_FILE).is_file():
        with contextlib.suppress(ValueError, OSError):
            info_sigmoid = bool(json.loads((folder / "onnx" / "export.json").read_text("utf-8")).get("sigmoid"))
    if info_sigmoid:
        skipped["embedkit-onnx"] = "the ONNX graph ends in a sigmoid (exported with --sigmoid): no logits to compare"
    elif (folder / RERANKER_FILE).is_file():
        candidates["embedkit-onnx"] = (lambda: np.asarray(Reranker(folder, backend="onnx", show_progress=False)
                                       .compute_score(pairs), dtype=np.float32), spec.truncation)
        if (folder / RERANKER_INT8_FILE).is_file():
            candidates["embedkit-onnx-int8"] = (
                lambda: np.asarray(Reranker(folder, backend="onnx", precision="int8", show_progress=False)
                .compute_score(pairs), dtype=np.float32), spec.truncation)
    else:
        skipped["embedkit-onnx"] = "no ONNX export in the folder (embedkit export onnx)"
    if importlib.util.find_spec("FlagEmbedding") is None:
        skipped["flagembedding"] = "not installed"
    else:
        candidates["flagembedding"] = (lambda: _flag_reranker_scores(folder, spec, pairs), "flagembedding")
    if importlib.util.find_spec("sentence_transformers") is None:
        skipped["sentence-transformers"] = "not installed"
    else:
        candidates["sentence-transformers"] = (lambda: _cross_encoder_scores(folder, spec, pairs), "longest_first")


def _check_one(name: str, got: np.ndarray, ref: np.ndarray, mode: str, embedkit_in: Callable[[str], np.ndarray], *,
               tolerance: float, gate: tuple[float, float]) -> EngineCheck:
    """The verdict on one engine's scores ``got`` against embedkit's ``ref`` in truncation ``mode``; a failed fp32
    engine is checked against the other truncation mode too (``embedkit_in``) for the diagnosis."""
    from ..rerank.reranker import judge_scores

    cell = _scores_cell(ref, got)
    if name.endswith("int8"):
        verdict = judge_scores(ref, got, gate)
        passed, tol = verdict["passed"], f"max |sigmoid diff| <= {gate[0]}, Spearman >= {gate[1]}"
    else:
        passed, tol = cell["max_abs_diff"] <= tolerance, f"max abs diff of logits <= {tolerance:g}"
    check = EngineCheck(name, cell["max_abs_diff"], float("nan"), passed, f"{tol} (truncation={mode})")
    if not passed and not name.endswith("int8"):
        other = "longest_first" if mode == "flagembedding" else "flagembedding"
        if float(np.abs(embedkit_in(other) - got).max()) <= tolerance:
            check.diagnosis = [f"{name} matches embedkit with truncation={other!r} (it was matched in {mode!r})"]
        else:
            check.diagnosis = ["no truncation mode explains it (different weights, tokenizer, max_length or "
                               "query instruction?)"]
    return check


def check_reranker_parity(model: str | Path, texts: list[str] | None = None, *, tolerance: float = 1e-5,
                          gate: tuple[float, float] | None = None,
                          engines: tuple[str, ...] | None = None) -> ParityReport:
    """Score the same pairs (:func:`reranker_pairs`) with every available way of loading a cross-encoder and
    compare the logits with embedkit (PyTorch).

    Engines: ``embedkit-torch`` (the folder's spec), ``embedkit-onnx`` / ``embedkit-onnx-int8`` (its export),
    ``flagembedding`` (``FlagReranker.compute_score``) and ``sentence-transformers`` (``CrossEncoder.predict``
    with the identity activation). The two peers truncate long pairs differently, so each is compared with embedkit
    run in its own truncation mode (``flagembedding`` / ``longest_first``; the spec's other fields unchanged);
    a peer that misses is checked against the other mode too and the diagnosis says when that explains it. fp32
    engines pass at max abs diff <= ``tolerance``; int8 by :func:`embedkit.rerank.reranker.judge_scores` with
    ``gate`` (default :data:`~embedkit.rerank.reranker.DEFAULT_RERANK_GATE`).

    Example:
        >>> check_reranker_parity("my-reranker-onnx").ok
        True
    """
    from ..rerank.reranker import DEFAULT_RERANK_GATE, Reranker

    folder = check_model_folder(resolve_model_path(model))
    gate = gate or DEFAULT_RERANK_GATE
    pairs = reranker_pairs(texts)
    reference = Reranker(folder, device="cpu", show_progress=False)
    spec = reference.spec

    def embedkit_in(truncation: str) -> np.ndarray:
        """embedkit's PyTorch logits with the spec's truncation switched to ``truncation``."""
        if truncation == spec.truncation:
            return _logits(reference, pairs)
        other = dataclasses.replace(spec, truncation=truncation, query_max_length=None)
        saved, reference.spec = reference.spec, other
        try:
            return _logits(reference, pairs)
        finally:
            reference.spec = saved

    candidates: Candidates = {
        "embedkit-torch": (lambda: embedkit_in(spec.truncation), spec.truncation)}
    skipped: dict[str, str] = {}
    _add_peers(candidates, skipped, folder, spec, pairs)
    candidates = restrict_engines(candidates, skipped, engines)

    checks: list[EngineCheck] = []
    scores: dict[str, np.ndarray] = run_engines(
        {name: (lambda build=build: np.asarray(build(), dtype=np.float32).reshape(-1))
         for name, (build, _) in candidates.items()}, checks)
    matrix = {a: {b: _scores_cell(va, vb) for b, vb in scores.items()} for a, va in scores.items()}
    references = {spec.truncation: scores.get("embedkit-torch")}
    for name, got in scores.items():
        if name == "embedkit-torch":
            continue
        mode = candidates[name][1]
        if mode not in references:
            references[mode] = embedkit_in(mode)
        ref = references[mode]
        checks.append(_check_one(name, got, ref, mode, embedkit_in, tolerance=tolerance, gate=gate))
    order = list(scores)
    return ParityReport(model=str(folder), engines=order, texts=len(pairs), matrix=matrix,
                        checks=in_engine_order(checks, order), skipped=skipped, kind="reranker")
