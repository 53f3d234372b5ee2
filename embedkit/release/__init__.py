"""``embedkit release SRC DST``: a training output (checkpoint, ZeRO shards, LoRA adapter) -> a verified release.

Plan (:mod:`.plan`, from ``inspect``; refuses to guess) -> merge or slim -> save (HF + sentence-transformers layout,
optional dtype / format) -> ONNX export (optional int8) -> parity across every loader -> optional eval -> RELEASE.md
-> manifest (+ signature). Steps run in a resumable work folder (:mod:`.run`); DST appears atomically, complete.

Example:
    >>> from embedkit.release import ReleaseOptions, release
    >>> report = release("out/checkpoint-15478", "releases/bge-small-ft", ReleaseOptions(pooling="cls"))
    >>> report.parity["checks"][0]["passed"]
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoint import inspect_folder
from ..folder.layout import list_files
from .document import release_markdown, snippets
from .plan import ReleaseOptions, ReleasePlan, Step, plan_release
from .run import build_stages, clean_work, commit, fp32_failures, parity_error, work_dir


@dataclass
class ReleaseReport:
    """What :func:`release` did: the plan, each step, sizes, spec, parity, metrics, snippets (``--json``)."""

    dst: Path
    plan: dict[str, Any]
    steps: list[dict[str, Any]]
    sizes: dict[str, int]
    spec: dict[str, dict[str, Any]]
    parity: dict[str, Any]
    metrics: dict[str, Any] | None
    snippets: dict[str, str]
    signed: bool
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__, dst=str(self.dst))


def _evaluate(folder: Path, options: ReleaseOptions) -> dict[str, Any]:
    from ..eval.data import load_eval_data
    from ..eval.retrieval import evaluate, main_metrics

    data = load_eval_data(options.eval_data, options.eval_split)
    result = evaluate(str(folder), data, cache_dir=None, show_progress=False, name="release")
    out = {"data": str(options.eval_data), "release": result.to_dict(), "main": list(main_metrics(result.metrics)),
           "baseline": None}
    if options.baseline:
        out["baseline"] = evaluate(options.baseline, data, cache_dir=None, show_progress=False,
                                   name=str(options.baseline)).to_dict()
    return out


HALF_TOLERANCE = {"fp16": 1e-2, "bf16": 5e-2}
"""Parity tolerance of a half-precision release: loaders that compute in the stored dtype (sentence-transformers)
differ from embedkit's fp32 compute by rounding (3.8e-4 measured on the tiny test model in fp16), while a spec
mismatch (pooling, instruction, max length) moves vectors by 1e-1 or more."""


def parity_tolerance(dtype: str | None) -> float:
    """``1e-5`` for an fp32 release (every loader must agree exactly), :data:`HALF_TOLERANCE` for fp16 / bf16."""
    return HALF_TOLERANCE.get(dtype or "", 1e-5)


def run_release(plan: ReleasePlan, *, texts: list[str] | None = None,
                on_step: Callable[[str], None] | None = None) -> ReleaseReport:
    """Carry out ``plan`` (from :func:`plan_release`); DST appears only when every check passed.

    ``texts`` is the parity sample (default :data:`embedkit.verify.SAMPLE_TEXTS`); ``on_step`` is called with each
    step's name as it starts (the CLI prints it).
    """
    from ..parity import check_parity

    say = on_step or (lambda name: None)
    say("merge / slim, save, export")
    stage, steps = build_stages(plan)
    state: dict[str, Any] = {}

    def finish(tmp: Path) -> None:
        say("parity")
        parity = check_parity(tmp, texts, tolerance=parity_tolerance(plan.options.dtype))
        failures = fp32_failures(parity)
        if failures:
            raise parity_error(failures, plan.dst)
        state["parity"] = parity.to_dict()
        state["parity"]["model"] = str(plan.dst)
        if plan.options.eval_data:
            say("eval")
            state["metrics"] = _evaluate(tmp, plan.options)
        spec = inspect_folder(tmp).spec or {}
        files = list_files(tmp)
        after = sum((tmp / f).stat().st_size for f in files)
        sizes = {"before": plan.src_bytes, "before_inference": plan.src_inference_bytes, "after": after}
        report = ReleaseReport(
            dst=plan.dst, plan=plan.to_dict(), steps=[asdict(r) for r in steps.results],
            sizes=sizes, spec=spec, parity=state["parity"],
            metrics=state.get("metrics"), snippets=snippets(str(plan.dst), {k: v["value"] for k, v in spec.items()},
                                                            onnx=plan.onnx, signed_with=plan.options.sign),
            signed=plan.options.sign is not None)
        (tmp / "RELEASE.md").write_text(release_markdown(report.to_dict()), encoding="utf-8")
        state["report"] = report
        say("manifest")

    commit(plan, stage, finish)
    clean_work(plan)
    report = state["report"]
    report.files = list_files(plan.dst)
    return report


def release(src: str | Path, dst: str | Path, options: ReleaseOptions | None = None, *,
            texts: list[str] | None = None) -> ReleaseReport:
    """Plan and carry out the release of ``src`` into ``dst`` (see the module docstring).

    Raises :class:`~embedkit.errors.CheckpointError` / :class:`~embedkit.errors.SpecError` when the release would
    need a guess or a check fails; DST is then not written (finished steps stay in the work folder for a re-run).
    """
    return run_release(plan_release(src, dst, options), texts=texts)


__all__ = ["release", "run_release", "plan_release", "ReleaseOptions", "ReleasePlan", "ReleaseReport", "Step",
           "work_dir"]
