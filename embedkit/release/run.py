"""Carrying out a :class:`~embedkit.release.plan.ReleasePlan`: resumable steps in a work folder, then one atomic DST.

Every step writes its own folder (atomically, through the checkpoint / export functions) under the work folder
``.DST.release-work/`` next to DST, named by a key that hashes the step's inputs: the source files (names, sizes,
modification times), the base's, the options, and the previous step's key. A re-run after a failure or a kill reuses a
step's folder only when its key matches; other folders there are removed. The final folder is assembled in a
temporary sibling of DST (:func:`embedkit._io.atomic_dir`), checked for parity, evaluated, documented
(``RELEASE.md``), given its manifest, and renamed into place; the work folder is removed on success.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._io import atomic_dir, atomic_write
from ..checkpoint import save, slim, write_manifest
from ..checkpoint.manifest import MANIFEST_NAME, SIGNATURE_NAME
from ..errors import CheckpointError
from ..folder.layout import list_files
from .plan import ReleasePlan

logger = logging.getLogger("embedkit")

RESULT_FILE = "step.json"


@dataclass
class StepResult:
    """What one step did: its folder, whether it was reused from an earlier run, its seconds and its report."""

    name: str
    reused: bool
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)


def work_dir(dst: Path) -> Path:
    """The resumable work folder of a release into ``dst``: ``.NAME.release-work`` next to it."""
    dst = Path(os.path.abspath(dst))
    return dst.parent / f".{dst.name}.release-work"


def folder_fingerprint(folder: Path | None) -> str:
    """sha256 of every file's relative path, size and modification time (cheap; changes when a file does)."""
    h = hashlib.sha256()
    if folder is None:
        return "none"
    for rel in list_files(folder):
        st = (folder / rel).stat()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


class _Steps:
    """Runs steps in the work folder, reusing a finished one whose key matches."""

    def __init__(self, work: Path, first_key: str) -> None:
        self.work = work
        self.key = first_key
        self.results: list[StepResult] = []
        self.wanted: set[str] = set()

    def run(self, name: str, params: dict[str, Any], build: Any) -> Path:
        """``build(out_folder) -> details``; the folder and its ``.json`` result are reused when the key matches."""
        self.key = _key(self.key, name, params)
        folder = self.work / f"{name}-{self.key}"
        result = self.work / f"{name}-{self.key}.json"
        self.wanted |= {folder.name, result.name}
        t0 = time.perf_counter()
        if folder.is_dir() and result.is_file():
            with contextlib.suppress(OSError, ValueError):
                details = json.loads(result.read_text(encoding="utf-8"))
                self.results.append(StepResult(name, True, 0.0, details))
                logger.info("release: %s reused from an earlier run (inputs unchanged)", name)
                return folder
        if folder.exists():
            shutil.rmtree(folder)
        details = _json_safe(build(folder))
        with atomic_write(result, "w") as fh:
            fh.write(json.dumps(details, indent=1))
        self.results.append(StepResult(name, False, time.perf_counter() - t0, details))
        return folder

    def prune(self) -> None:
        """Remove folders of earlier runs whose inputs differ (never a live writer's temporary sibling)."""
        for entry in self.work.iterdir():
            if entry.name not in self.wanted and not entry.name.startswith("."):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)


class _DropAssumedSpecWarning(logging.Filter):
    """The intermediate folders' "assuming pooling=..." warning, when the user settled the spec already."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "recorded (no sentence-transformers files" not in record.getMessage()


@contextlib.contextmanager
def _spec_settled(plan: ReleasePlan) -> Any:
    settled = plan.options.pooling is not None or plan.options.accept_assumed_spec
    flt = _DropAssumedSpecWarning()
    if settled:
        logger.addFilter(flt)
    try:
        yield
    finally:
        logger.removeFilter(flt)


def build_stages(plan: ReleasePlan) -> tuple[Path, _Steps]:
    """Run merge / slim, save (+ conversion) and ONNX export in the work folder; return the last stage's folder."""
    opts = plan.options
    work = work_dir(plan.dst)
    work.mkdir(parents=True, exist_ok=True)
    steps = _Steps(work, _key("release-v1", str(plan.src), folder_fingerprint(plan.src),
                              str(plan.base), folder_fingerprint(plan.base)))
    if plan.step("merge"):
        def merge_step(out: Path) -> dict[str, Any]:
            from ..checkpoint.merge import merge_lora

            with _spec_settled(plan):
                report = merge_lora(plan.base, plan.src, out, trust_pickle=opts.trust_pickle)
            return {"verification": report.verification, "max_abs_diff": report.max_abs_diff,
                    "base_max_abs_diff": report.base_max_abs_diff, "lora": report.lora, "files": report.files}
        stage = steps.run("merge", {}, merge_step)
    else:
        def slim_step(out: Path) -> dict[str, Any]:
            with _spec_settled(plan):
                report = slim(plan.src, out, tokenizer=plan.base if plan.tokenizer_from_base else None,
                              trust_pickle=opts.trust_pickle)
            return report.to_dict()
        stage = steps.run("slim", {"tokenizer": str(plan.base)}, slim_step)

    card = {"notes": [f"released with `embedkit release` from {plan.src}"]}
    if plan.base is not None:
        card["base_model"] = str(plan.base)
    save_params = {"format": opts.format, "dtype": opts.dtype, "spec": opts.spec_overrides()}

    def save_step(out: Path) -> dict[str, Any]:
        result = save(stage, out, format=opts.format, dtype=opts.dtype, card=card, trust_pickle=opts.trust_pickle,
                      **opts.spec_overrides())
        return {"spec": asdict(result.spec), "files": result.files, "warnings": result.warnings,
                "sentence_transformers": result.sentence_transformers}
    stage = steps.run("save", save_params, save_step)

    if plan.onnx:
        def onnx_step(out: Path) -> dict[str, Any]:
            from ..export.onnx import export_onnx

            report = export_onnx(stage, out, quantize="int8" if opts.int8 else None)
            return report.to_dict()
        stage = steps.run("onnx", {"int8": opts.int8}, onnx_step)
    steps.prune()
    return stage, steps


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # the work folder is deleted on success; files are only added, never edited in place
    except OSError:
        shutil.copy2(src, dst)


def assemble(stage: Path, tmp: Path) -> None:
    """Put the last stage's files into the release's temporary folder (its manifest is written last, anew)."""
    for rel in list_files(stage):
        if rel in (MANIFEST_NAME, SIGNATURE_NAME):
            continue
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        _link_or_copy(str(stage / rel), str(tmp / rel))


def fp32_failures(parity: Any) -> list[str]:
    """One line per fp32 engine that disagrees with embedkit (or failed to run)."""
    out = []
    for check in parity.checks:
        if check.passed or check.engine.endswith("int8"):
            continue
        why = check.error or (f"max abs diff {check.max_abs_diff:.3g} > tolerance ({check.tolerance}); "
                              + "; ".join(check.diagnosis))
        out.append(f"{check.engine}: {why}")
    return out


def commit(plan: ReleasePlan, stage: Path, finish: Any) -> None:
    """Build DST atomically: assemble, ``finish(tmp)`` (parity, eval, RELEASE.md), manifest (+ signature)."""
    if plan.options.sign is not None:
        from ..checkpoint.signing import load_private_key

        load_private_key(plan.options.sign)  # an unusable key fails before the long steps' output is assembled
    with atomic_dir(plan.dst, overwrite=plan.options.overwrite) as tmp:
        assemble(stage, tmp)
        finish(tmp)
        write_manifest(tmp, sign_key=plan.options.sign)


def clean_work(plan: ReleasePlan) -> None:
    """Remove the work folder after a successful release."""
    shutil.rmtree(work_dir(plan.dst), ignore_errors=True)


def parity_error(failures: list[str], dst: Path) -> CheckpointError:
    return CheckpointError(
        f"parity failed, {dst} was not written: " + " | ".join(failures),
        hint="the released folder would give different vectors in these loaders; fix the spec (--pooling, "
        "--query-max-length ...) or see `embedkit parity` on the work folder for the full matrix")


__all__ = ["StepResult", "work_dir", "folder_fingerprint", "build_stages", "assemble", "commit", "clean_work",
           "fp32_failures", "parity_error"]
