"""``Reranker``: FlagReranker- and CrossEncoder-exact scores of (query, passage) pairs, driven by a
:class:`~embedkit.rerank.spec.RerankerSpec`."""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import batching
from ..dtypes import resolve_dtype
from ..embedder import NonFiniteOutputError, check_finite
from ..errors import CheckpointError, SpecError
from ..folder.layout import check_model_folder, read_config
from ..folder.loading import load_model, load_tokenizer
from ..models import resolve_model_path
from ..precision import PrecisionChoice, cached_verdict, gate_key, select_precision, store_verdict
from ..spec import model_token_limit
from ..verify import SAMPLE_TEXTS
from .features import pair_features
from .spec import ACTIVATIONS, RerankerSpec, resolve_reranker_spec

logger = logging.getLogger("embedkit")

DEFAULT_RERANK_GATE = (0.01, 0.99)
"""The quality gate of a non-fp32 precision vs fp32: (largest |sigmoid(score) difference|, smallest Spearman rank
correlation of the scores) on :func:`gate_pairs`."""


class PairError(SpecError, TypeError):
    """A pair given to :class:`Reranker` is not two strings (also a ``TypeError``, as :class:`~embedkit.Embedder`
    raises for a non-string text)."""


def gate_pairs() -> list[tuple[str, str]]:
    """The quality gate's sample: each of the first built-in texts as a query against every built-in text
    (:data:`embedkit.verify.SAMPLE_TEXTS`: empty, whitespace, CJK, emoji, long...)."""
    texts = list(SAMPLE_TEXTS)
    return [(q, p) for q in texts[4:8] for p in texts]


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2:
        return 1.0
    ra = np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(np.float64)
    rb = np.argsort(np.argsort(b, kind="stable"), kind="stable").astype(np.float64)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denom) if denom else 1.0


def judge_scores(reference: np.ndarray, candidate: np.ndarray,
                 gate: tuple[float, float] = DEFAULT_RERANK_GATE) -> dict[str, Any]:
    """Compare candidate logits with fp32 reference logits: ``{"passed", "max_abs_diff" (of the sigmoids),
    "spearman", "gate", "pairs"}``."""
    ref = 1.0 / (1.0 + np.exp(-np.asarray(reference, dtype=np.float64)))
    cand = 1.0 / (1.0 + np.exp(-np.asarray(candidate, dtype=np.float64)))
    diff = float(np.max(np.abs(ref - cand))) if len(ref) else 0.0
    rho = _spearman(np.asarray(reference), np.asarray(candidate))
    return {"passed": diff <= gate[0] and rho >= gate[1], "max_abs_diff": round(diff, 6),
            "spearman": round(rho, 6), "gate": list(gate), "pairs": int(len(ref))}


def _check_pairs(pairs: Any) -> tuple[list[tuple[str, str]], bool]:
    """``(pairs, was_single_pair)``; :class:`PairError` naming the first bad pair or text."""
    if isinstance(pairs, (tuple, list)) and len(pairs) == 2 and isinstance(pairs[0], str):
        if not isinstance(pairs[1], str):
            raise PairError(f"pair[1] is {type(pairs[1]).__name__}, expected str",
                            hint="a pair is (query, passage), two strings")
        return [(pairs[0], pairs[1])], True
    if isinstance(pairs, (str, bytes, bytearray, dict)) or pairs is None or not isinstance(pairs, Iterable):
        raise PairError(f"pairs must be a (query, passage) pair or a list of them, got {type(pairs).__name__}",
                        hint='e.g. [("what is a panda?", "The giant panda is a bear.")]')
    out: list[tuple[str, str]] = []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            what = f"{len(pair)} items" if isinstance(pair, (tuple, list)) else type(pair).__name__
            raise PairError(f"pairs[{i}] is {what}, expected a (query, passage) pair",
                            hint="each pair is two strings: (query, passage)")
        for j, text in enumerate(pair):
            if not isinstance(text, str):
                raise PairError(f"pairs[{i}][{j}] is {type(text).__name__}, expected str",
                                hint="convert or drop it before scoring")
        out.append((pair[0], pair[1]))
    return out, False


def _activation(activation_fn: Any, default: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``None`` -> the spec's; a name (``sigmoid`` / ``identity`` / ``tanh``); or any callable on a float tensor
    (e.g. ``torch.nn.Identity()``, as CrossEncoder takes it)."""
    name = default if activation_fn is None else activation_fn
    if isinstance(name, str):
        if name not in ACTIVATIONS:
            raise SpecError(f"unknown activation_fn {name!r}", param="activation_fn",
                            hint=f"use one of {', '.join(ACTIVATIONS)}, or pass a callable on a torch tensor")
        return {"sigmoid": torch.sigmoid, "identity": lambda t: t, "tanh": torch.tanh}[name]
    if callable(name):
        return name
    raise SpecError(f"activation_fn must be a name or a callable, got {type(name).__name__}", param="activation_fn")


class Reranker:
    """Score (query, passage) pairs with a local cross-encoder, exactly as FlagEmbedding's ``FlagReranker`` or
    sentence-transformers' ``CrossEncoder`` would.

    pairs -> query instruction -> pair tokenization (``spec.truncation``: ``flagembedding`` or ``longest_first``)
    -> token-length sorted batches -> forward -> logit -> input order.

    Every argument left as ``None`` is resolved from the folder (:func:`embedkit.rerank.spec.resolve_reranker_spec`);
    ``reranker.spec.provenance`` tells which rule set each field.

    Args:
        model: a local cross-encoder folder (``*ForSequenceClassification`` with one label). Never downloaded.
        max_length: token limit of a pair (default 512, as FlagReranker, capped at the model's limit).
        query_max_length: ``flagembedding`` truncation: the query's own limit (default 3/4 of ``max_length``).
        batch_size: pairs per forward pass (the cap when ``max_batch_tokens`` is set).
        query_instruction / query_instruction_format: put before each query (format default ``"{}{}"``).
        precision: ``"fp32"`` (default: exact), ``"auto"`` (fp16 on CUDA, bf16 on CPUs with bf16 units, else fp32),
            ``"bf16"`` or ``"fp16"``. Non-fp32 passes a quality gate on score agreement with fp32 on first use
            (cached on disk) and falls back to fp32 with a warning when it fails. ``"int8"``: the ONNX export's int8
            graph (``embedkit export onnx --quantize int8``; gated at export); without one, fp32 with a warning.
        device: ``"cpu"``, ``"cuda"``...; default CUDA when available.
        truncation: ``"flagembedding"`` (FlagReranker) or ``"longest_first"`` (CrossEncoder); default from the folder.
        max_batch_tokens: fill batches by padded token count instead of by count.
        show_progress: progress bar; default on when stderr is a terminal and there is more than one batch.
        precision_gate: ``(max |sigmoid difference|, min Spearman)`` vs fp32 for that gate.
        trust_pickle: allow ``.bin`` weights that need full unpickling (only for a source you trust).
        backend: ``"torch"`` (default) or ``"onnx"`` (the folder's ``onnx/reranker.onnx`` from
            ``embedkit export onnx``, on CPU; precision ``fp32`` or ``int8``).

    Example:
        >>> r = Reranker("bge-reranker-base")
        >>> r.compute_score([("what is a panda?", "The giant panda is a bear.")])
        [5.26...]
    """

    def __init__(
        self,
        model: str | Path,
        max_length: int | None = None,
        query_max_length: int | None = None,
        batch_size: int = 128,
        query_instruction: str | None = None,
        query_instruction_format: str | None = None,
        precision: str | None = None,
        device: str | torch.device | None = None,
        truncation: str | None = None,
        *,
        max_batch_tokens: int | None = None,
        show_progress: bool | None = None,
        precision_gate: tuple[float, float] | None = DEFAULT_RERANK_GATE,
        trust_pickle: bool = False,
        backend: str = "torch",
    ) -> None:
        if backend not in ("torch", "onnx"):
            raise SpecError(f"unknown backend {backend!r}", param="backend", hint="use 'torch' or 'onnx'")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise SpecError(f"batch_size must be a positive integer, got {batch_size!r}", param="batch_size",
                            hint="e.g. batch_size=64")
        if max_batch_tokens is not None and (isinstance(max_batch_tokens, bool) or not isinstance(max_batch_tokens, int)
                                             or max_batch_tokens <= 0):
            raise SpecError(f"max_batch_tokens must be a positive integer, got {max_batch_tokens!r}",
                            param="max_batch_tokens")
        self.path = check_model_folder(resolve_model_path(model))
        config = read_config(self.path)
        self.spec: RerankerSpec = resolve_reranker_spec(
            self.path, dict(truncation=truncation, max_length=max_length, query_max_length=query_max_length,
                            query_instruction=query_instruction, query_instruction_format=query_instruction_format),
            config=config)
        self.model_max_length = model_token_limit(self.path, config)
        self.tokenizer = load_tokenizer(self.path)
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.show_progress = show_progress
        self.trust_pickle = trust_pickle
        self.quality: dict[str, Any] | None = None
        self.backend_name = backend
        self.onnx: Any = None  # the ONNX scores backend, when it runs the model
        self.device = self._resolve_device(device) if backend == "torch" else torch.device("cpu")
        self._choose_precision(precision, precision_gate)

    # ------------------------------------------------------------------ loading
    @staticmethod
    def _resolve_device(device: Any) -> torch.device:
        if device is None:
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise SpecError(f"invalid device {device!r}: {exc}", param="device",
                            hint="use 'cpu', 'cuda' or 'cuda:N'") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise SpecError(f"device {device!r} asked for, but CUDA is not available here", param="device",
                            hint="use device='cpu'")
        return dev

    def _load(self) -> None:
        """Load the classification model in fp32 on the device (safe loading, local files only)."""
        from transformers import AutoModelForSequenceClassification

        try:
            model = load_model(self.path, trust_pickle=self.trust_pickle,
                               auto_class=AutoModelForSequenceClassification, ignorable_missing=(), what="reranker")
        except CheckpointError as exc:
            if "unpickling" in exc.message or "missing" not in exc.message:
                raise
            raise CheckpointError(exc.message, hint="a reranker needs its trained classification head: pass a "
                                  "cross-encoder folder (e.g. bge-reranker-base), or train one with "
                                  "`embedkit finetune --reranker`") from None
        self.model = model.to(self.device).eval()

    def _set_dtype(self, precision: str) -> None:
        self.model.to(resolve_dtype(precision))

    def _choose_precision(self, precision: str | None, gate: tuple[float, float] | None) -> None:
        """Pick the precision; run (or reuse) the score-agreement gate for anything but fp32."""
        self.precision_requested = precision
        choice = select_precision(precision, self.device.type)
        self.precision, self.precision_reason = choice.precision, choice.reason
        if self.backend_name == "onnx" or choice.precision == "int8":
            if self._load_onnx(choice.precision):
                return
            choice = PrecisionChoice("fp32", self.precision_reason)  # no int8 graph: torch fp32 (warned)
        self._load()
        self._gate_cached, self._gate_candidate = False, None
        if choice.precision == "fp32" or gate is None:
            if choice.precision != "fp32":
                self._set_dtype(choice.precision)
            return
        self.precision, self._gate_candidate = "fp32", choice.precision
        spec = self.spec.to_dict() | {"kind": "reranker", "gate": list(gate)}
        key = gate_key(self.path, spec, choice.precision, str(self.device))
        verdict = cached_verdict(key)
        self._gate_cached = verdict is not None
        if verdict is None:  # first use on this machine: measure against fp32 once
            sample = gate_pairs()
            reference = self._logits(sample, self.batch_size, False)
            self._set_dtype(choice.precision)
            self.precision = choice.precision  # padding multiple of the candidate
            try:
                verdict = judge_scores(reference, self._logits(sample, self.batch_size, False), gate)
            except NonFiniteOutputError:  # e.g. fp16 overflow: the precision fails its gate
                verdict = {"passed": False, "max_abs_diff": float("inf"), "spearman": 0.0, "gate": list(gate),
                           "pairs": len(sample), "non_finite": True}
            store_verdict(key, verdict)
        self.quality = verdict
        if verdict["passed"]:
            self._set_dtype(choice.precision)
            self.precision = choice.precision
            logger.info("precision: %s (%s), quality gate passed: max |sigmoid diff| %.5f, Spearman %.5f%s",
                        self.precision, self.precision_reason, verdict["max_abs_diff"], verdict["spearman"],
                        " (cached)" if self._gate_cached else "")
            return
        self._set_dtype("fp32")
        self.precision = "fp32"
        logger.warning("%s failed the quality gate for %s (max |sigmoid diff| %s, Spearman %s vs fp32; needs <= %s / "
                       ">= %s): using fp32", choice.precision, self.path.name, verdict["max_abs_diff"],
                       verdict["spearman"], *gate)
        self.precision_reason = f"{choice.precision} failed the quality gate: {self.precision_reason}"

    def _load_onnx(self, precision: str) -> bool:
        """Run the folder's ONNX export (``backend='onnx'`` or ``precision='int8'``); ``False`` when int8 was asked
        of the torch backend and there is no int8 graph (then fp32 torch, with a warning)."""
        from ..backends.onnx_backend import OnnxScoreBackend

        if self.backend_name == "onnx" and precision not in ("fp32", "int8"):
            raise SpecError(f"precision={precision!r} is not available for backend='onnx'", param="precision",
                            hint="use 'fp32' or 'int8'")
        try:
            runner = OnnxScoreBackend(self.path, precision="int8" if precision == "int8" else "fp32")
        except CheckpointError as exc:
            if self.backend_name == "onnx":
                raise
            logger.warning("precision='int8' needs the ONNX int8 graph (%s); using fp32", exc.message)
            self.precision, self.precision_reason = "fp32", f"int8 unavailable: {exc.message}"
            return False
        if runner.activation != "identity":
            raise SpecError(f"the ONNX graph in {self.path} ends in a sigmoid (exported with --sigmoid); Reranker "
                            "needs the logits (compute_score(normalize=False), predict's activation)",
                            param="backend", hint="re-export without --sigmoid, or use backend='torch'")
        self.onnx, self.model = runner, None
        if precision == "int8":
            self.quality = (runner.info.get("int8") or {}) | {"source": "export gate", "passed": True}
            self._gate_candidate = "int8"
        self._gate_cached = False
        return True

    @property
    def precision_summary(self) -> str:
        """E.g. ``"fp32"``, ``"bf16 (auto, gate passed)"``, ``"fp32 (bf16 failed the gate)"``."""
        notes = ["auto"] if self.precision_requested == "auto" else []
        if self.quality is not None:
            notes.append("gate passed" if self.quality["passed"] else f"{self._gate_candidate} failed the gate")
        return f"{self.precision} ({', '.join(notes)})" if notes else self.precision

    def __repr__(self) -> str:
        onnx = ", backend='onnx'" if self.onnx is not None else ""
        return f"Reranker({str(self.path)!r}, spec={self.spec!r}, device={str(self.device)!r}{onnx})"

    # ------------------------------------------------------------------ public API
    def compute_score(self, pairs: Any, normalize: bool = False, *, batch_size: int | None = None,
                      show_progress: bool | None = None) -> list[float] | float:
        """FlagReranker's ``compute_score``: the raw logit of each pair (``normalize=True``: its sigmoid).

        Returns a list of floats in input order, ``[]`` for ``[]``, and a float for a single ``(query, passage)``
        pair (FlagEmbedding 1.4 returns a one-item list there; earlier versions a float).
        """
        items, single = _check_pairs(pairs)
        scores = self._logits(items, batch_size or self.batch_size, show_progress)
        values = scores.astype(np.float64)
        if normalize:  # FlagEmbedding's sigmoid: float(1 / (1 + np.exp(-x))) on the float32 logit
            values = 1.0 / (1.0 + np.exp(-values))
        out = [float(v) for v in values]
        return out[0] if single else out

    def predict(self, pairs: Any, activation_fn: Any = None, *, batch_size: int | None = None,
                show_progress: bool | None = None) -> np.ndarray | np.float32:
        """CrossEncoder's ``predict``: ``activation_fn(logit)`` of each pair as float32.

        ``activation_fn``: ``None`` (the spec's ``activation``: sigmoid unless the folder says otherwise), a name
        (``"sigmoid"``, ``"identity"``, ``"tanh"``) or a callable on a float32 torch tensor. Returns an ``(n,)``
        array (empty for ``[]``), a float32 scalar for a single pair.
        """
        items, single = _check_pairs(pairs)
        act = _activation(activation_fn, self.spec.activation)
        logits = torch.from_numpy(self._logits(items, batch_size or self.batch_size, show_progress))
        # (n, 1) as CrossEncoder hands it to the activation, then squeezed
        out = np.asarray(act(logits[:, None]).float().reshape(-1).numpy(), dtype=np.float32)
        return out[0] if single else out

    def rank(self, query: str, documents: Iterable[str], top_k: int | None = None, return_documents: bool = False,
             *, activation_fn: Any = None, batch_size: int | None = None, show_progress: bool | None = None
             ) -> list[dict[str, Any]]:
        """CrossEncoder's ``rank``: ``[{"corpus_id", "score"(, "text")}]`` best first (ties keep input order),
        the first ``top_k`` (all when ``None``); scores as :meth:`predict` gives them."""
        if not isinstance(query, str):
            raise PairError(f"query is {type(query).__name__}, expected str", hint="rank one query string at a time")
        if isinstance(documents, (str, bytes)) or not isinstance(documents, Iterable):
            raise PairError(f"documents must be a list of str, got {type(documents).__name__}")
        docs = list(documents)
        for i, d in enumerate(docs):
            if not isinstance(d, str):
                raise PairError(f"documents[{i}] is {type(d).__name__}, expected str",
                                hint="convert or drop it before ranking")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0):
            raise SpecError(f"top_k must be a positive integer or None, got {top_k!r}", param="top_k")
        scores = self.predict([(query, d) for d in docs], activation_fn, batch_size=batch_size,
                              show_progress=show_progress) if docs else np.empty(0, np.float32)
        results: list[dict[str, Any]] = []
        for i, s in enumerate(scores.tolist()):
            results.append({"corpus_id": i, "score": s} | ({"text": docs[i]} if return_documents else {}))
        results.sort(key=lambda r: r["score"], reverse=True)
        return results[:top_k]

    # ------------------------------------------------------------------ core
    def features(self, pairs: list[tuple[str, str]]) -> batching.Features:
        """The unpadded model inputs of ``pairs``: query instruction, then the spec's pair tokenization."""
        spec = self.spec
        return pair_features(self.tokenizer, [spec.prepare_query(q) for q, _ in pairs], [p for _, p in pairs],
                             truncation=spec.truncation, max_length=spec.max_length,
                             query_max_length=spec.resolved_query_max_length)

    def _progress(self, total: int, batch_size: int, show_progress: bool | None):
        from tqdm.auto import tqdm

        show = show_progress if show_progress is not None else self.show_progress
        if show is None:
            show = sys.stderr.isatty() and total > batch_size
        return tqdm(total=total, desc="Reranking", unit="pair", disable=not show, leave=False)

    def _logits(self, pairs: list[tuple[str, str]], batch_size: int, show_progress: bool | None) -> np.ndarray:
        """float32 logits (label 0) of ``pairs`` in input order; :class:`NonFiniteOutputError` naming a bad row."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise SpecError(f"batch_size must be a positive integer, got {batch_size!r}", param="batch_size")
        out = np.empty(len(pairs), dtype=np.float32)
        if not pairs:
            return out
        features = self.features(pairs)
        multiple = 16 if self.precision in ("bf16", "fp16") else 1
        with self._progress(len(pairs), batch_size, show_progress) as bar:
            for rows, padded in batching.padded_batches(features, self.tokenizer, batch_size,
                                                        max_tokens=self.max_batch_tokens, multiple_of=multiple):
                if self.onnx is not None:  # a "scores" backend: the graph returns one logit per pair
                    scores = torch.from_numpy(self.onnx.forward(padded))
                else:
                    tensors = {k: torch.from_numpy(v).to(self.device) for k, v in padded.items()}
                    with torch.inference_mode():
                        logits = self.model(**tensors).logits
                    scores = logits[:, 0].float()
                check_finite(scores, rows, "score")
                out[rows] = scores.cpu().numpy()
                bar.update(len(rows))
        return out


__all__ = ["Reranker", "PairError", "judge_scores", "gate_pairs", "DEFAULT_RERANK_GATE"]
