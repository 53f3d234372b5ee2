"""Argument checks and progress switch shared by mining (:mod:`.mine`) and teacher scoring (:mod:`.score`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._io import refuse_overwriting_inputs
from ..errors import DataError
from ..models import resolve_model_path

PathLike = str | Path


def positive_int(name: str, value: Any, hint: str) -> int:
    """``value`` when it is a positive integer (not a bool), else :class:`DataError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise DataError(f"{name} must be a positive integer, got {value!r}", hint=hint)
    return value


def check_output(output: Path, inputs: Sequence[PathLike], others: Sequence[PathLike] = (),
                 model_dirs: Sequence[Any] = ()) -> Path:
    """Refuse an output that is a folder, one of the inputs, inside an input folder, or inside the model folder."""
    output = Path(output)
    if output.is_dir():
        raise DataError(f"output {output} is a folder", hint="pass a file path, e.g. --output mined.jsonl")
    dirs = [resolve_model_path(m) if isinstance(m, (str, Path)) else getattr(m, "path", None) for m in model_dirs]
    return refuse_overwriting_inputs(output, inputs=[*inputs, *others], model_dirs=dirs, flag="--output")


def progress_enabled(show_progress: bool | None, total: int, step: int) -> bool:
    """``show_progress`` when given, else on in a terminal when there is more than one ``step`` of work."""
    if show_progress is not None:
        return bool(show_progress)
    return sys.stderr.isatty() and total > step
