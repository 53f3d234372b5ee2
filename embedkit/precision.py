"""Precision: which dtype to run a model in, why, and whether it is good enough (a cached quality gate).

``auto`` picks bf16 on CPUs with bf16 matrix units (``amx_bf16`` or ``avx512_bf16`` in the CPU flags), fp16 on CUDA,
fp32 otherwise. Any precision other than fp32 must pass a quality gate the first time it is used for a
(model, spec, precision, machine): vectors on the varied built-in sample (:data:`embedkit.verify.SAMPLE_TEXTS`)
are compared with fp32, and below the thresholds (mean cosine 0.999, min 0.995 by default) embedkit falls back to
fp32 with a warning. The verdict is cached on disk (``$EMBEDKIT_CACHE/precision-gate.json``) so the check costs once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ._io import atomic_write
from .errors import SpecError
from .folder.fingerprint import model_fingerprint
from .verify import compare

logger = logging.getLogger("embedkit")

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
DEFAULT_GATE = (0.999, 0.995)  # (mean cosine, min cosine) vs fp32


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU feature flags (from ``/proc/cpuinfo`` text; empty when unknown)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


@dataclass(frozen=True)
class PrecisionChoice:
    """What was picked and why (``Embedder.precision`` / ``Embedder.precision_reason``)."""

    precision: str
    reason: str


def select_precision(requested: str | None, device_type: str = "cpu", flags: set[str] | None = None
                     ) -> PrecisionChoice:
    """Resolve ``requested`` (``auto`` / an explicit precision / ``None`` = fp32) for a device.

    Example:
        >>> select_precision("auto", "cpu", {"amx_bf16"}).precision
        'bf16'
    """
    if requested is None:
        return PrecisionChoice("fp32", "default (exact: matches sentence-transformers / FlagEmbedding)")
    if requested not in PRECISIONS:
        raise SpecError(f"unknown precision {requested!r}", hint=f"use one of {', '.join(PRECISIONS)}")
    if requested != "auto":
        return PrecisionChoice(requested, "asked for")
    if device_type == "cuda":
        return PrecisionChoice("fp16", "auto: CUDA device")
    flags = cpu_flags() if flags is None else flags
    bf16 = sorted(flags & {"amx_bf16", "avx512_bf16"})
    if bf16:
        return PrecisionChoice("bf16", f"auto: the CPU has bf16 matrix units ({', '.join(bf16)})")
    return PrecisionChoice("fp32", "auto: no bf16 units on this CPU (bf16 would be slower than fp32)")


@dataclass
class PrecisionInfo:
    """The precision a backend runs in, as :func:`embedkit.backends.factory.create_backend` settled it.

    Attributes:
        precision / reason: what runs and why (``Embedder.precision`` / ``Embedder.precision_reason``).
        requested: what was asked for (``None``: the fp32 default).
        quality: the quality gate's verdict (``{"passed", "mean_cosine", "min_cosine", ...}``), the ONNX export's
            int8 gate record for ``int8``, or ``None`` when nothing was measured.
        cached: the verdict came from the on-disk cache.
        candidate: the precision the gate measured (``bf16`` / ``fp16``), also when it failed and fp32 runs.
    """

    precision: str
    reason: str
    requested: str | None = None
    quality: dict[str, Any] | None = field(default=None)
    cached: bool = False
    candidate: str | None = None

    def gate_note(self) -> str:
        """``, quality gate passed: mean cosine 0.99991, min 0.99962 (cached)`` (empty without a gate)."""
        q = self.quality or {}
        if self.precision == "int8" and "mean_cosine" in q:
            return (f", the export's int8 gate passed: mean cosine {q['mean_cosine']:.5f}, "
                    f"min {q['min_cosine']:.5f}")
        if "passed" not in q:
            return ""
        verdict = "passed" if q["passed"] else f"failed for {self.candidate}"
        return (f", quality gate {verdict}: mean cosine {q['mean_cosine']:.5f}, min {q['min_cosine']:.5f}"
                + (" (cached)" if self.cached else ""))

    @property
    def summary(self) -> str:
        """E.g. ``"bf16 (auto, gate passed)"``, ``"fp32 (auto, bf16 failed the gate)"``, ``"fp32"``."""
        q = self.quality or {}
        notes = ["auto"] if self.requested == "auto" else []
        if self.precision == "int8" and q.get("kept"):
            notes.append("export gate passed")
        elif "passed" in q:
            notes.append("gate passed" if q["passed"] else f"{self.candidate} failed the gate")
        return f"{self.precision} ({', '.join(notes)})" if notes else self.precision

    def log(self) -> None:
        """Say once, at INFO, what was picked and the gate's verdict, when a precision was asked for."""
        if self.requested is not None:
            logger.info("precision: %s (%s)%s", self.precision, self.reason, self.gate_note())


# ---------------------------------------------------------------------- the gate
def cache_path() -> Path:
    """Where verdicts are cached: ``$EMBEDKIT_CACHE/precision-gate.json`` (default ``~/.cache/embedkit``)."""
    base = os.environ.get("EMBEDKIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "embedkit")
    return Path(base) / "precision-gate.json"


def gate_key(model_dir: Path | None, spec: dict[str, Any], precision: str, device: str) -> str | None:
    """(model, spec, precision, machine) -> a cache key; ``None`` for an in-memory model (never cached)."""
    if model_dir is None:
        return None
    machine = {"cpu": platform.processor() or platform.machine(), "flags": sorted(cpu_flags() & {
        "amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2", "f16c"}), "torch": torch.__version__,
        "device": device}
    payload = json.dumps({"model": model_fingerprint(model_dir), "spec": spec, "precision": precision,
                          "machine": machine}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def cached_verdict(key: str | None) -> dict[str, Any] | None:
    """The verdict stored under ``key`` (``None``: none yet, or no key)."""
    if key is None:
        return None
    try:
        return json.loads(cache_path().read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError):
        return None


def store_verdict(key: str | None, verdict: dict[str, Any]) -> None:
    """Store ``verdict`` under ``key`` (atomically; a cache that cannot be written is only logged)."""
    if key is None:
        return
    path = cache_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        data = {}
    data[key] = verdict
    try:
        with atomic_write(path, "w") as fh:
            fh.write(json.dumps(data, indent=1, sort_keys=True))
    except OSError as exc:  # a read-only home must not break encoding
        logger.debug("cannot cache the precision verdict in %s: %s", path, exc)


def judge(reference, candidate, gate: tuple[float, float] = DEFAULT_GATE) -> dict[str, Any]:  # noqa: ANN001
    """Compare candidate vectors with fp32 reference vectors: ``{"passed", "mean_cosine", "min_cosine"}``."""
    c = compare(reference, candidate)
    mean, low = c.mean_cosine, c.min_cosine
    return {"passed": mean >= gate[0] and low >= gate[1], "mean_cosine": round(mean, 6), "min_cosine": round(low, 6),
            "gate": list(gate), "texts": c.rows}


# ---------------------------------------------------------------------- what `embedkit spec` shows
GATE_NOTE = "non-fp32 runs a cached quality gate vs fp32"


def describe_precision(requested: str | None, device_type: str | None = None, flags: set[str] | None = None
                       ) -> tuple[str, str, str]:
    """The precision ``requested`` would run in on this machine, as a ``(field, value, rule)`` row like those of
    :func:`embedkit.spec.describe` (``embedkit spec`` prints it after the spec's rows).

    Args:
        requested: ``auto``, an explicit precision, or ``None`` (fp32), as :func:`select_precision` takes it.
        device_type: ``"cpu"`` or ``"cuda"``; default: ``"cuda"`` when torch sees a CUDA device, as an
            :class:`~embedkit.Embedder` without ``device=`` would run.
        flags: the CPU flags to decide ``auto`` on (default: this machine's).

    Example:
        >>> describe_precision("auto", "cpu", {"amx_bf16"})[:2]
        ('precision', 'bf16')
    """
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    choice = select_precision(requested, device_type, flags)
    return "precision", choice.precision, f"{choice.reason} ({GATE_NOTE})"
