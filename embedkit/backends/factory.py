"""Which backend runs a model folder, in which precision: the one place that decides, quality gate included.

:func:`create_backend` resolves ``backend`` / ``precision`` / ``dtype`` / ``device``, loads the backend and, for a
precision other than fp32, runs (or reuses, from the on-disk cache of :mod:`embedkit.precision`) the quality gate:
the built-in sample (:data:`embedkit.verify.SAMPLE_TEXTS`) encoded in fp32 and in the candidate precision, through
the same features stage (:mod:`embedkit.batching`) and pooling (:mod:`embedkit.pooling`) as
:class:`embedkit.Embedder`. A failed gate falls back to fp32 with a warning.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import batching
from ..dtypes import resolve_dtype
from ..errors import CheckpointError, SpecError
from ..folder.loading import load_tokenizer
from ..folder.onnx_files import EMBEDDER_INT8_FILE
from ..precision import (
    AUTO_MARGIN,
    DEFAULT_GATE,
    NATIVE_BF16,
    PrecisionInfo,
    cached_verdict,
    cpu_flags,
    gate_key,
    host_id,
    judge,
    pick_fastest,
    select_precision,
    store_verdict,
)
from ..verify import SAMPLE_TEXTS
from . import Backend, NonFiniteOutputError, vectors
from .int8_torch import TorchInt8Backend
from .onnx_backend import OnnxBackend
from .torch_backend import TorchBackend, resolve_device

logger = logging.getLogger("embedkit")

BACKENDS = ("torch", "onnx")
AUTO_WORKLOAD = (64, 3, 32)  # auto's timing: a batch of 64 sample texts cut to 32 tokens, 3 alternating rounds


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
    return _judge_backend(reference, backend, tokenizer, spec, gate, options)


def _judge_backend(reference: np.ndarray, backend: Backend, tokenizer: Any, spec: Any, gate: tuple[float, float],
                   options: dict[str, Any]) -> dict[str, Any]:
    """The gate's verdict for ``backend``'s sample vectors vs the fp32 ``reference`` (non-finite output fails)."""
    try:
        return judge(reference, sample_vectors(backend, tokenizer, spec, list(SAMPLE_TEXTS), **options), gate)
    except NonFiniteOutputError:
        return {"passed": False, "mean_cosine": 0.0, "min_cosine": 0.0, "gate": list(gate),
                "texts": len(SAMPLE_TEXTS), "non_finite": True}


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
    if choice.precision == "int8-torch" and (backend == "onnx" or dev.type != "cpu"):
        raise SpecError(f"precision='int8-torch' runs on the torch backend on CPU, not {backend} on {dev}",
                        hint="use device='cpu' (and backend='torch'), or another precision")
    if requested == "auto" and backend == "torch" and dev.type == "cpu" and gate is not None:
        tok = tokenizer if tokenizer is not None else load_tokenizer(path)
        runner = _auto(path, spec, tok, info, gate, trust_pickle, batch_size, max_batch_tokens)
    elif backend == "onnx" or choice.precision == "int8":
        runner = _onnx(path, spec, backend, info, dev, trust_pickle)
    elif choice.precision == "int8-torch" and gate is None:
        runner = TorchInt8Backend(path, trust_pickle=trust_pickle)
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
    if verdict is None and candidate == "int8-torch":  # quantize a copy: fp32 stays at hand if it fails
        runner = TorchBackend(path, device=dev, trust_pickle=trust_pickle)
        tok = tokenizer if tokenizer is not None else load_tokenizer(path)
        options = dict(batch_size=batch_size, max_tokens=max_batch_tokens, multiple_of=pad_multiple(candidate))
        quantized = TorchInt8Backend.from_backend(runner)
        verdict = _judge_backend(sample_vectors(runner, tok, spec, list(SAMPLE_TEXTS), **options), quantized, tok,
                                 spec, gate, options)
        store_verdict(key, verdict)
        runner = quantized if verdict["passed"] else runner
    elif verdict is None:  # first use on this machine: measure against fp32 once
        runner = TorchBackend(path, device=dev, trust_pickle=trust_pickle)
        verdict = measure_gate(runner, tokenizer if tokenizer is not None else load_tokenizer(path), spec, candidate,
                               gate, batch_size=batch_size, max_tokens=max_batch_tokens)
        store_verdict(key, verdict)
        if not verdict["passed"]:
            runner = TorchBackend(path, device=dev, trust_pickle=trust_pickle)
    elif candidate == "int8-torch" and verdict["passed"]:
        runner = TorchInt8Backend(path, trust_pickle=trust_pickle)
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


# ---------------------------------------------------------------------- auto: measured once per host and model
def _workload(tokenizer: Any, spec: Any, multiple_of: int = 1) -> dict[str, np.ndarray]:
    """One padded batch of ``AUTO_WORKLOAD[0]`` texts: :data:`SAMPLE_TEXTS` repeated (the timing workload)."""
    n = AUTO_WORKLOAD[0]
    texts = (list(SAMPLE_TEXTS) * (n // len(SAMPLE_TEXTS) + 1))[:n]
    features = batching.tokenize(tokenizer, [spec.prepare(t) for t in texts],
                                 min(spec.passage_max_length or AUTO_WORKLOAD[2], AUTO_WORKLOAD[2]))
    (_, padded), = batching.padded_batches(features, tokenizer, n, multiple_of=multiple_of)
    return padded


def _time(runners: dict[str, Backend], tokenizer: Any, spec: Any) -> dict[str, float]:
    """texts/s of each runner on the workload (padded as the embedder pads for its precision): one warm-up, then
    ``AUTO_WORKLOAD[1]`` rounds, runners alternating (a shared machine's noise hits all alike); the median round."""
    padded = {name: _workload(tokenizer, spec, pad_multiple(name)) for name in runners}
    rows = np.arange(AUTO_WORKLOAD[0])
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    for name, runner in runners.items():
        vectors(runner, padded[name], spec, rows)
    for r in range(AUTO_WORKLOAD[1]):
        for name, runner in (runners.items() if r % 2 == 0 else reversed(runners.items())):
            t0 = time.perf_counter()
            vectors(runner, padded[name], spec, rows)
            seconds[name].append(time.perf_counter() - t0)
    return {name: round(len(rows) / statistics.median(s), 1) for name, s in seconds.items()}


def _auto_candidates(path: Path, flags: set[str], trust_pickle: bool = False
                     ) -> dict[str, Callable[[TorchBackend], Backend] | str]:
    """What ``auto`` tries besides fp32: a builder from the fp32 backend, or why the candidate is skipped."""
    native = sorted(flags & set(NATIVE_BF16))
    out: dict[str, Callable[[TorchBackend], Backend] | str] = {"int8-torch": TorchInt8Backend.from_backend}
    if (path / EMBEDDER_INT8_FILE).is_file():
        out["int8"] = lambda _fp32: OnnxBackend(path, precision="int8")
    if native:
        out["bf16"] = lambda _fp32: TorchBackend(path, device="cpu", dtype="bf16", trust_pickle=trust_pickle)
    else:
        out["bf16"] = "no native bf16 on this CPU: needs avx512_bf16 or amx_bf16, emulated bf16 is far slower"
    return out


def measure_auto(path: Path, spec: Any, tokenizer: Any, gate: tuple[float, float], *, trust_pickle: bool = False,
                 batch_size: int = 256, max_tokens: int | None = None, host: dict[str, Any] | None = None,
                 flags: set[str] | None = None) -> tuple[dict[str, Any], dict[str, Backend]]:
    """Measure ``auto``'s candidates on this host: each one's quality gate vs fp32 and its texts/s on a fixed small
    workload (:data:`AUTO_WORKLOAD`), then pick the fastest that passed (:func:`embedkit.precision.pick_fastest`).

    Returns ``(verdict, runners)``: the verdict to cache (``{"kind": "auto", "chosen", "candidates", "host", ...}``)
    and the loaded backends by name (so the chosen one need not load again)."""
    fp32 = TorchBackend(path, device="cpu", trust_pickle=trust_pickle)
    runners: dict[str, Backend] = {"fp32": fp32}
    candidates: dict[str, dict[str, Any]] = {"fp32": {"passed": True, "exact": True}}
    reference: dict[int, np.ndarray] = {}
    for name, build in _auto_candidates(path, cpu_flags() if flags is None else flags, trust_pickle).items():
        if isinstance(build, str):
            candidates[name] = {"skipped": build}
            continue
        try:
            runner = build(fp32)
            if name == "int8":
                runner.check_spec(spec)
        except Exception as exc:  # noqa: BLE001 - a candidate that cannot load is skipped, with the reason
            candidates[name] = {"skipped": f"{type(exc).__name__}: {exc}"}
            continue
        options = dict(batch_size=batch_size, max_tokens=max_tokens, multiple_of=pad_multiple(name))
        ref = reference.get(options["multiple_of"])
        if ref is None:
            ref = reference[options["multiple_of"]] = sample_vectors(fp32, tokenizer, spec, list(SAMPLE_TEXTS),
                                                                     **options)
        candidates[name] = _judge_backend(ref, runner, tokenizer, spec, gate, options)
        if candidates[name]["passed"]:  # only what may be chosen is timed (nothing passed: nothing to time)
            runners[name] = runner
    speeds = _time(runners, tokenizer, spec) if len(runners) > 1 else {}
    for name, speed in speeds.items():
        candidates[name]["texts_per_s"] = speed
    chosen = pick_fastest(candidates, AUTO_MARGIN)
    verdict = {"kind": "auto", "chosen": chosen, "candidates": candidates, "host": host or host_id(),
               "margin": AUTO_MARGIN, "gate": list(gate), "workload": dict(zip(("texts", "rounds", "max_length"),
                                                                          AUTO_WORKLOAD, strict=True)),
               "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    return verdict, runners


def _load_chosen(path: Path, chosen: str, trust_pickle: bool) -> Backend:
    """The backend ``auto`` chose, loaded on its own (a cached verdict: nothing measured)."""
    if chosen == "int8-torch":
        return TorchInt8Backend(path, trust_pickle=trust_pickle)
    if chosen == "int8":
        return OnnxBackend(path, precision="int8")
    return TorchBackend(path, device="cpu", dtype=None if chosen == "fp32" else chosen, trust_pickle=trust_pickle)


def _auto(path: Path, spec: Any, tokenizer: Any, info: PrecisionInfo, gate: tuple[float, float], trust_pickle: bool,
          batch_size: int, max_batch_tokens: int | None) -> Backend:
    """``auto`` on CPU: the cached measurement for (model, spec, host), or measure now and cache it."""
    host = host_id()
    key = gate_key(path, spec.to_dict(), "auto", "cpu", host=host)
    verdict = cached_verdict(key)
    info.cached = verdict is not None
    if verdict is None or verdict.get("kind") != "auto":
        verdict, runners = measure_auto(path, spec, tokenizer, gate, trust_pickle=trust_pickle,
                                        batch_size=batch_size, max_tokens=max_batch_tokens, host=host)
        store_verdict(key, verdict)
        runner = runners[verdict["chosen"]]
    else:
        runner = _load_chosen(path, verdict["chosen"], trust_pickle)
    chosen = verdict["chosen"]
    info.precision, info.auto = chosen, verdict
    info.candidate = chosen if chosen != "fp32" else None
    info.quality = verdict["candidates"][chosen] if chosen != "fp32" else None
    info.reason = "auto: the fastest precision that passed the quality gate on this host"
    return runner


__all__ = ["create_backend", "measure_gate", "measure_auto", "sample_vectors", "pad_multiple", "BACKENDS",
           "AUTO_WORKLOAD"]
