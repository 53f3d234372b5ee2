"""Which backend runs a model folder, in which precision: the one place that decides, quality gate included.

:func:`create_backend` resolves ``backend`` / ``precision`` / ``dtype`` / ``device``, loads the backend and, for a
precision other than fp32, runs (or reuses, from the on-disk cache of :mod:`embedkit.precision`) the quality gate:
the built-in sample (:data:`embedkit.verify.SAMPLE_TEXTS`) encoded in fp32 and in the candidate precision, through
the same features stage (:mod:`embedkit.batching`) and pooling (:mod:`embedkit.pooling`) as
:class:`embedkit.Embedder`. A failed gate falls back to fp32 with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import batching
from ..dtypes import resolve_dtype
from ..errors import CheckpointError, SpecError
from ..folder.loading import load_tokenizer
from ..precision import DEFAULT_GATE, PrecisionInfo, cached_verdict, gate_key, judge, select_precision, store_verdict
from ..verify import SAMPLE_TEXTS
from . import Backend, NonFiniteOutputError, vectors
from .onnx_backend import OnnxBackend
from .torch_backend import TorchBackend, resolve_device

logger = logging.getLogger("embedkit")

BACKENDS = ("torch", "onnx")


def pad_multiple(precision: str) -> int:
    """Padded widths round up to 16 for bf16 / fp16 (AMX tiles; fewer kernel shapes); exact fp32 pads to the
    longest text, as the peers do."""
    return 16 if precision in ("bf16", "fp16") else 1


def sample_vectors(backend: Backend, tokenizer: Any, spec: Any, texts: Sequence[str], *, batch_size: int = 256,
                   max_tokens: int | None = None, multiple_of: int = 1) -> np.ndarray:
    """``(len(texts), dim)`` float32 vectors of ``texts`` prepared as :meth:`embedkit.Embedder.encode` prepares them
    (``spec.prepare``, the passage max length), token-length sorted batches, input order restored."""
    features = batching.tokenize(tokenizer, [spec.prepare(t) for t in texts], spec.passage_max_length)
    out = np.empty((len(texts), spec.truncate_dim or backend.hidden_size), dtype=np.float32)
    for rows, padded in batching.padded_batches(features, tokenizer, batch_size, max_tokens=max_tokens,
                                                multiple_of=multiple_of):
        out[rows] = vectors(backend, padded, spec, rows)
    return out


def measure_gate(backend: TorchBackend, tokenizer: Any, spec: Any, candidate: str, gate: tuple[float, float], *,
                 batch_size: int = 256, max_tokens: int | None = None) -> dict[str, Any]:
    """Encode :data:`SAMPLE_TEXTS` with ``backend`` (loaded in fp32), cast it to ``candidate`` and encode again;
    return :func:`embedkit.precision.judge`'s verdict. A non-finite candidate vector (e.g. fp16 overflow) fails.

    ``backend`` is left in ``candidate``: reload it in fp32 when the verdict failed."""
    texts = list(SAMPLE_TEXTS)
    options = dict(batch_size=batch_size, max_tokens=max_tokens, multiple_of=pad_multiple(candidate))
    reference = sample_vectors(backend, tokenizer, spec, texts, **options)
    backend.cast(candidate)
    try:
        return judge(reference, sample_vectors(backend, tokenizer, spec, texts, **options), gate)
    except NonFiniteOutputError:
        return {"passed": False, "mean_cosine": 0.0, "min_cosine": 0.0, "gate": list(gate), "texts": len(texts),
                "non_finite": True}


def _requested(precision: str | None, dtype: str | torch.dtype | None) -> str | None:
    """``dtype=`` is the older, torch-only spelling of ``precision=``; both given must agree."""
    if dtype is None:
        return precision
    named = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[resolve_dtype(dtype)]
    if precision not in (None, named):
        raise SpecError(f"dtype={dtype!r} and precision={precision!r} disagree", hint="pass only precision=")
    return named


def _onnx(path: Path, spec: Any, backend: str, info: PrecisionInfo, device: torch.device,
          trust_pickle: bool) -> Backend:
    """The ONNX backend (``backend='onnx'`` or ``precision='int8'``); int8 without a graph falls back to torch fp32."""
    onnx_precision = "int8" if info.precision == "int8" else "fp32"
    if backend == "onnx" and info.precision not in ("fp32", "int8"):
        raise SpecError(f"precision={info.precision!r} is not available for backend='onnx'",
                        hint="use 'fp32' or 'int8'")
    try:
        runner = OnnxBackend(path, precision=onnx_precision)
    except CheckpointError as exc:
        if backend == "onnx":
            raise
        logger.warning("precision='int8' needs the ONNX int8 graph (%s); using fp32", exc.message)
        info.precision, info.reason = "fp32", f"int8 unavailable: {exc.message}"
        return TorchBackend(path, device=device, trust_pickle=trust_pickle)
    runner.check_spec(spec)
    if onnx_precision == "int8":
        info.quality = (runner.info.get("int8") or {}) | {"source": "export gate"}
    return runner


def create_backend(path: str | Path, spec: Any, *, tokenizer: Any = None, backend: str = "torch",
                   precision: str | None = None, dtype: str | torch.dtype | None = None,
                   device: str | torch.device | None = None, gate: tuple[float, float] | None = DEFAULT_GATE,
                   trust_pickle: bool = False, batch_size: int = 256, max_batch_tokens: int | None = None
                   ) -> tuple[Backend, PrecisionInfo]:
    """Load the backend for the model folder ``path`` with its resolved ``spec``, in the precision asked for.

    Args:
        backend: ``"torch"`` or ``"onnx"``.
        precision: ``None`` (fp32), ``"auto"``, ``"fp32"``, ``"bf16"``, ``"fp16"`` or ``"int8"`` (the ONNX
            export's int8 graph; without one, torch fp32 with a warning).
        dtype: the older spelling of ``precision`` (must agree with it when both are given).
        gate: ``(min mean cosine, min cosine)`` vs fp32 for bf16 / fp16; ``None`` skips the gate.
        tokenizer: the folder's tokenizer (loaded when ``None`` and the gate needs it); ``batch_size`` /
            ``max_batch_tokens`` batch the gate's sample as the embedder will batch its texts.

    Returns ``(backend, PrecisionInfo)``; logs the choice once at INFO when a precision was asked for.

    Example:
        >>> backend, info = create_backend("minilm", load_spec("minilm"), precision="auto")
        >>> backend.output, info.summary
        ('hidden', 'fp32 (auto)')
    """
    path = Path(path)
    requested = _requested(precision, dtype)
    if backend not in BACKENDS:
        raise SpecError(f"unknown backend {backend!r}", hint="use 'torch' or 'onnx'")
    dev = resolve_device(device) if backend == "torch" else torch.device("cpu")
    choice = select_precision(requested, dev.type)
    info = PrecisionInfo(choice.precision, choice.reason, requested=requested)
    if backend == "onnx" or choice.precision == "int8":
        runner = _onnx(path, spec, backend, info, dev, trust_pickle)
    elif choice.precision == "fp32" or gate is None:
        runner = TorchBackend(path, device=dev, dtype=choice.precision, trust_pickle=trust_pickle)
    else:
        runner = _gated(path, spec, tokenizer, info, dev, gate, trust_pickle, batch_size, max_batch_tokens)
    info.log()
    return runner, info


def _gated(path: Path, spec: Any, tokenizer: Any, info: PrecisionInfo, dev: torch.device, gate: tuple[float, float],
           trust_pickle: bool, batch_size: int, max_batch_tokens: int | None) -> TorchBackend:
    """bf16 / fp16 behind the quality gate (measured once per model, spec, precision and machine; then cached)."""
    candidate = info.precision
    key = gate_key(path, spec.to_dict(), candidate, str(dev))
    verdict = cached_verdict(key)
    info.cached, info.candidate = verdict is not None, candidate
    if verdict is None:  # first use on this machine: measure against fp32 once
        runner = TorchBackend(path, device=dev, trust_pickle=trust_pickle)
        verdict = measure_gate(runner, tokenizer if tokenizer is not None else load_tokenizer(path), spec, candidate,
                               gate, batch_size=batch_size, max_tokens=max_batch_tokens)
        store_verdict(key, verdict)
        if not verdict["passed"]:
            runner = TorchBackend(path, device=dev, trust_pickle=trust_pickle)
    else:
        runner = TorchBackend(path, device=dev, dtype=candidate if verdict["passed"] else None,
                              trust_pickle=trust_pickle)
    info.quality = verdict
    if not verdict["passed"]:
        logger.warning("%s failed the quality gate for %s (mean cosine %.5f, min %.5f vs fp32; needs %s / %s): "
                       "using fp32", candidate, path.name, verdict["mean_cosine"], verdict["min_cosine"], *gate)
        info.precision = "fp32"
        info.reason = f"{candidate} failed the quality gate: {info.reason}"
    return runner


__all__ = ["create_backend", "measure_gate", "sample_vectors", "pad_multiple", "BACKENDS"]
