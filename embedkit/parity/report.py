"""The parity report (:class:`ParityReport`, one :class:`EngineCheck` per engine) and the engine bookkeeping the
embedder and the reranker runs share: restricting to the engines asked for, running each so one failing does not
hide the others, ordering the checks."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..errors import EmbedkitError

T = TypeVar("T")


@dataclass
class EngineCheck:
    """One engine compared with the reference (embedkit, PyTorch)."""

    engine: str
    max_abs_diff: float
    min_cosine: float
    passed: bool
    tolerance: str
    diagnosis: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class ParityReport:
    """The pairwise matrix and the per-engine verdicts."""

    model: str
    engines: list[str]
    texts: int
    matrix: dict[str, dict[str, dict[str, float]]]
    checks: list[EngineCheck]
    skipped: dict[str, str]
    kind: str = "embedder"
    """``"embedder"`` (vectors; ``texts`` counts texts) or ``"reranker"`` (logits; ``texts`` counts pairs)."""

    @property
    def ok(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "ok": self.ok, "engines": self.engines, "texts": self.texts,
                "matrix": self.matrix, "checks": [dataclasses.asdict(c) for c in self.checks],
                "skipped": self.skipped, "kind": self.kind}

def restrict_engines(candidates: dict[str, T], skipped: dict[str, str],
                     engines: tuple[str, ...] | None) -> dict[str, T]:
    """``candidates`` cut down to ``engines`` (the reference ``embedkit-torch`` always kept); an unknown name is an
    error that lists the available ones."""
    if not engines:
        return candidates
    unknown = set(engines) - set(candidates) - set(skipped)
    if unknown:
        raise EmbedkitError(f"unknown engine(s) {', '.join(sorted(unknown))}",
                            hint=f"available here: {', '.join(candidates)}")
    return {k: v for k, v in candidates.items() if k in engines or k == "embedkit-torch"}


def run_engines(builds: dict[str, Callable[[], Any]], checks: list[EngineCheck]) -> dict[str, Any]:
    """Each engine's output by name; an engine that raises gets a failed :class:`EngineCheck` in ``checks``
    instead (one engine failing must not hide the others)."""
    out: dict[str, Any] = {}
    for name, build in builds.items():
        try:
            out[name] = build()
        except Exception as exc:  # noqa: BLE001 - one engine failing must not hide the others
            checks.append(EngineCheck(name, float("nan"), float("nan"), False, "-", error=f"{type(exc).__name__}: "
                                      f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"))
    return out


def in_engine_order(checks: list[EngineCheck], order: list[str]) -> list[EngineCheck]:
    """``checks`` in the order of ``order`` (engines that failed to run last)."""
    return sorted(checks, key=lambda c: order.index(c.engine) if c.engine in order else 99)
