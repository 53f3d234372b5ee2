"""Training data: FlagEmbedding's jsonl, validated before anything trains.

One row per line::

    {"query": str, "pos": [str, ...], "neg": [str, ...], "pos_scores": [float], "neg_scores": [float],
     "prompt": str, "type": str}

``query`` and a non-empty ``pos`` are required; ``neg``, the score lists (same length as ``pos`` / ``neg``),
``prompt`` (a per-row query instruction) and ``type`` are optional.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._io import atomic_write
from ..errors import DataError
from ..textio import iter_jsonl

logger = logging.getLogger("embedkit")


@dataclass
class TrainExample:
    """One validated row."""

    query: str
    pos: list[str]
    neg: list[str] = field(default_factory=list)
    pos_scores: list[float] | None = None
    neg_scores: list[float] | None = None
    prompt: str | None = None
    type: str | None = None
    source: str = ""  # "file:line"

    @property
    def has_scores(self) -> bool:
        return self.pos_scores is not None and self.neg_scores is not None

    def to_json(self) -> dict[str, Any]:
        """The row as FlagEmbedding jsonl (optional fields only when set)."""
        d: dict[str, Any] = {"query": self.query, "pos": self.pos, "neg": self.neg}
        for key in ("pos_scores", "neg_scores", "prompt", "type"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        return d


@dataclass
class LoadResult:
    """Rows that passed validation, and what was skipped (with ``skip_invalid``)."""

    examples: list[TrainExample]
    skipped: list[str] = field(default_factory=list)  # "file:line: problem"
    files: list[Path] = field(default_factory=list)


def _str_list(row: dict[str, Any], key: str, required: bool) -> list[str] | str:
    """The list of strings under ``key``, or an error message."""
    if key not in row:
        return f"missing '{key}'" if required else []
    value = row[key]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return f"'{key}' must be a list of strings, got {type(value).__name__}"
    for i, item in enumerate(value):
        if not isinstance(item, str):
            return f"'{key}[{i}]' is {type(item).__name__}, expected a string"
    if required and not value:
        return f"'{key}' is empty (each row needs at least one positive)"
    return value


def _scores(row: dict[str, Any], key: str, n: int, of: str) -> list[float] | str | None:
    if key not in row or row[key] is None:
        return None
    value = row[key]
    if not isinstance(value, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
        return f"'{key}' must be a list of numbers"
    if not all(abs(x) <= 1e300 and math.isfinite(x) for x in value):
        return f"'{key}' holds a non-finite number (NaN or Infinity)"
    if len(value) != n:
        return f"'{key}' has {len(value)} scores but '{of}' has {n} passages"
    return [float(x) for x in value]


def parse_row(obj: Any) -> TrainExample | str:
    """Validate one decoded JSON value; return the example or a problem description."""
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    query = obj.get("query")
    if not isinstance(query, str):
        return "missing 'query'" if query is None else f"'query' is {type(query).__name__}, expected a string"
    if not query.strip():
        return "'query' is empty"
    pos = _str_list(obj, "pos", required=True)
    if isinstance(pos, str):
        return pos
    neg = _str_list(obj, "neg", required=False)
    if isinstance(neg, str):
        return neg
    pos_scores = _scores(obj, "pos_scores", len(pos), "pos")
    if isinstance(pos_scores, str):
        return pos_scores
    neg_scores = _scores(obj, "neg_scores", len(neg), "neg")
    if isinstance(neg_scores, str):
        return neg_scores
    if (pos_scores is None) != (neg_scores is None):
        return "'pos_scores' and 'neg_scores' must be given together"
    for key in ("prompt", "type"):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            return f"'{key}' must be a string"
    return TrainExample(query=query, pos=pos, neg=neg, pos_scores=pos_scores, neg_scores=neg_scores,
                        prompt=obj.get("prompt"), type=obj.get("type"))


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files and folders (every ``*.jsonl`` and ``*.json`` inside, sorted, as FlagEmbedding reads a folder of
    ``--train_data``) -> a list of files."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix in (".jsonl", ".json") and f.is_file())
            if not found:
                raise DataError(f"{p} holds no .jsonl or .json files",
                                hint="pass .jsonl files or folders containing them")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"training data {p} does not exist", hint="check the path given to --train-data")
    if not out:
        raise DataError("no training data given", hint="pass --train-data FILE_OR_FOLDER")
    return out


def load_train_data(paths: str | Path | Sequence[str | Path], *, skip_invalid: bool = False,
                    max_report: int = 20) -> LoadResult:
    """Read and validate every row of every file; raise :class:`DataError` listing ``file:line: problem``.

    With ``skip_invalid`` bad rows are skipped and counted instead (``result.skipped``).

    Example:
        >>> data = load_train_data(["train.jsonl"], skip_invalid=True)
        >>> len(data.examples), len(data.skipped)
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files = expand_paths(paths)
    examples: list[TrainExample] = []
    problems: list[str] = []
    for f in files:
        for lineno, obj in iter_jsonl(f, problems=problems, what="training data"):
            row = parse_row(obj)
            if isinstance(row, str):
                problems.append(f"{f}:{lineno}: {row}")
                continue
            row.source = f"{f}:{lineno}"
            examples.append(row)
    if problems and not skip_invalid:
        shown = "\n".join(problems[:max_report])
        more = f"\n... and {len(problems) - max_report} more" if len(problems) > max_report else ""
        raise DataError(f"{len(problems)} invalid training row(s):\n{shown}{more}",
                        hint="fix the rows, or pass --skip-invalid to skip them (they are counted)")
    if not examples:
        raise DataError(f"no valid training rows in {', '.join(map(str, files))}",
                        hint="each line needs {\"query\": str, \"pos\": [str, ...]}")
    if problems:
        logger.warning("skipped %d invalid row(s), e.g. %s", len(problems), problems[0])
    return LoadResult(examples=examples, skipped=problems, files=files)


def write_train_jsonl(path: str | Path, examples: Iterable[TrainExample]) -> Path:
    """Write examples as jsonl atomically (temporary sibling, then rename)."""
    path = Path(path)
    with atomic_write(path, "w") as fh:
        for ex in examples:
            fh.write(json.dumps(ex.to_json(), ensure_ascii=False) + "\n")
    return path


# ---------------------------------------------------------------------- groups for training
def sample_group(ex: TrainExample, group_size: int, rng: random.Random,
                 pool: Sequence[str] = ()) -> tuple[list[str], list[float] | None, bool]:
    """1 positive + ``group_size - 1`` negatives (with replacement when short; from ``pool`` when none).

    Returns ``(passages, teacher_scores_or_None, used_random_negatives)``.
    """
    i = rng.randrange(len(ex.pos))
    passages = [ex.pos[i]]
    scores = [ex.pos_scores[i]] if ex.has_scores else None
    n_neg = group_size - 1
    used_random = False
    if n_neg > 0:
        if ex.neg:
            idx = rng.sample(range(len(ex.neg)), n_neg) if len(ex.neg) >= n_neg else \
                [rng.randrange(len(ex.neg)) for _ in range(n_neg)]
            passages += [ex.neg[j] for j in idx]
            if scores is not None:
                scores += [ex.neg_scores[j] for j in idx]
        else:
            positives = set(ex.pos)
            candidates = [p for p in pool if p not in positives] or list(pool)
            if not candidates:
                raise DataError(f"{ex.source}: no negatives and no other passages to draw from",
                                hint="add 'neg' passages, or more rows")
            passages += [rng.choice(candidates) for _ in range(n_neg)]
            scores = None  # no teacher scores for random passages
            used_random = True
    return passages, scores, used_random
