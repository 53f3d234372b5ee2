"""Precision: which dtype to run a model in, why, and whether it is good enough (a cached quality gate).

``auto`` on a CPU is **measured**, per host and model, once: fp32 and each candidate (``int8-torch``: dynamically
quantized linears; ``int8``: the folder's ONNX int8 graph when it has one; ``bf16`` only where the CPU has native bf16,
``avx512_bf16`` / ``amx_bf16``) run the quality gate and a small fixed workload, and the fastest that passes wins
(fp32 unless a candidate beats it by :data:`AUTO_MARGIN`). The measurement is cached with the verdicts, keyed on the
host (CPU model, flags, threads) so another CPU measures again. On CUDA ``auto`` is fp16.

Any precision other than fp32 must pass a quality gate the first time it is used for a (model, spec, precision,
machine): vectors on the varied built-in sample (:data:`embedkit.verify.SAMPLE_TEXTS`) are compared
with fp32, and below the thresholds (mean cosine 0.999, min 0.995 by default) embedkit falls back to fp32 with a
warning. The verdict is cached on disk (``$EMBEDKIT_CACHE/precision-gate.json``) so the check costs once.
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

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8", "int8-torch")
AUTO_MARGIN = 1.05  # a candidate must beat exact fp32 by 5 % on the workload for auto to give up exactness
NATIVE_BF16 = ("amx_bf16", "avx512_bf16")
HOST_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile", "f16c")
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


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name (``/proc/cpuinfo``'s ``model name``; ``platform.processor()`` elsewhere)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            cpuinfo = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "cpu model"):
            return value.strip()
    return platform.processor() or platform.machine()


def host_id() -> dict[str, Any]:
    """What makes a speed measurement this host's: CPU model, the flags that decide int8 / bf16 speed, torch
    threads and version (part of ``auto``'s cache key: a different CPU measures again)."""
    return {"cpu": cpu_model(), "flags": sorted(cpu_flags() & set(HOST_FLAGS)), "threads": torch.get_num_threads(),
            "torch": torch.__version__}


def pick_fastest(candidates: dict[str, dict[str, Any]], margin: float = AUTO_MARGIN) -> str:
    """The fastest candidate that passed the gate (``{"passed": True, "texts_per_s": ...}``); exact ``fp32``
    unless one beats it by ``margin``. Skipped / failed / unmeasured candidates are never picked.

    Example:
        >>> pick_fastest({"fp32": {"passed": True, "texts_per_s": 100.0},
        ...               "int8-torch": {"passed": False, "texts_per_s": 300.0}})
        'fp32'
    """
    base = candidates.get("fp32", {}).get("texts_per_s") or 0.0
    best, speed = "fp32", base * margin
    for name, c in candidates.items():
        if name != "fp32" and c.get("passed") and (c.get("texts_per_s") or 0.0) > speed:
            best, speed = name, c["texts_per_s"]
    return best


def auto_note(verdict: dict[str, Any]) -> str:
    """One line of what ``auto`` measured: ``fp32 31.2 texts/s; int8-torch 40.1 texts/s, gate passed (mean cosine
    0.99950, min 0.99800); bf16 skipped (no native bf16 ...)``. Only fp32 and candidates that passed are timed."""
    parts = []
    for name, c in sorted(verdict.get("candidates", {}).items(), key=lambda item: item[0] != "fp32"):
        if "skipped" in c:
            parts.append(f"{name} skipped ({c['skipped']})")
            continue
        part = f"{name} {c['texts_per_s']:.1f} texts/s" if "texts_per_s" in c else f"{name} not timed"
        if name != "fp32":
            part += (", gate passed" if c.get("passed") else ", failed the gate") + (
                f" (mean cosine {c['mean_cosine']:.5f}, min {c['min_cosine']:.5f})" if "mean_cosine" in c else "")
        parts.append(part)
    return "; ".join(parts)


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
        auto: ``auto``'s measurement on this host (``{"chosen", "candidates": {name: {"texts_per_s", "passed",
            "mean_cosine", ...} | {"skipped": why}}, "host", ...}``), from the cache when ``cached``.
    """

    precision: str
    reason: str
    requested: str | None = None
    quality: dict[str, Any] | None = field(default=None)
    cached: bool = False
    candidate: str | None = None
    auto: dict[str, Any] | None = None

    def gate_note(self) -> str:
        """``, quality gate passed: mean cosine 0.99991, min 0.99962 (cached)`` (empty without a gate)."""
        q = self.quality or {}
        if self.auto is not None:
            return f", measured on this host{' (cached)' if self.cached else ''}: {auto_note(self.auto)}"
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
        if self.auto is not None:
            cands = self.auto.get("candidates", {})
            base, mine = cands.get("fp32", {}).get("texts_per_s"), cands.get(self.precision, {}).get("texts_per_s")
            notes.append("measured" + (" (cached)" if self.cached else ""))
            if self.precision != "fp32" and base and mine:
                notes.append(f"gate passed, {mine / base:.2f}x fp32")
            notes += [f"{n} failed the gate" for n, c in cands.items() if n != "fp32" and c.get("passed") is False]
            return f"{self.precision} ({', '.join(notes)})"
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


def gate_key(model_dir: Path | None, spec: dict[str, Any], precision: str, device: str,
             host: dict[str, Any] | None = None) -> str | None:
    """(model, spec, precision, machine) -> a cache key; ``None`` for an in-memory model (never cached).
    ``host`` (:func:`host_id`, for ``auto``'s speed measurement) joins the key when given."""
    if model_dir is None:
        return None
    machine = ({"host": host} if host is not None else {}) | {
        "cpu": platform.processor() or platform.machine(), "flags": sorted(cpu_flags() & {
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


def describe_precision(requested: str | None, device_type: str | None = None, flags: set[str] | None = None,
                       model_dir: Path | None = None, spec: dict[str, Any] | None = None) -> tuple[str, str, str]:
    """The precision ``requested`` would run in on this machine, as a ``(field, value, rule)`` row like those of
    :func:`embedkit.spec.describe` (``embedkit spec`` prints it after the spec's rows).

    Args:
        requested: ``auto``, an explicit precision, or ``None`` (fp32), as :func:`select_precision` takes it.
        device_type: ``"cpu"`` or ``"cuda"``; default: ``"cuda"`` when torch sees a CUDA device, as an
            :class:`~embedkit.Embedder` without ``device=`` would run.
        flags: the CPU flags to decide ``auto`` on (default: this machine's).
        model_dir / spec: the model folder and its resolved spec (``EmbedderSpec.to_dict()``): ``auto`` on a CPU
            then shows what it measured on this host for that model (cached), or that it measures on first use.

    Example:
        >>> describe_precision("auto", "cpu", {"amx_bf16"})[:2]
        ('precision', 'bf16')
    """
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    choice = select_precision(requested, device_type, flags)
    if requested == "auto" and device_type == "cpu" and model_dir is not None and spec is not None:
        verdict = cached_verdict(gate_key(Path(model_dir), spec, "auto", "cpu", host=host_id()))
        if verdict is not None:
            return "precision", verdict["chosen"], f"auto: measured on this host (cached): {auto_note(verdict)}"
        return "precision", "auto", ("auto: measured on first use on this host (fp32 vs int8-torch, the folder's "
                                     f"ONNX int8, bf16 where native), fastest that passes the gate ({GATE_NOTE})")
    return "precision", choice.precision, f"{choice.reason} ({GATE_NOTE})"
