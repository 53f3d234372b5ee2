"""Reading texts from .txt / .jsonl files and writing vectors, with file:line errors and atomic writes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ._io import atomic_write
from .errors import DataError


def read_lines(path: str | Path, what: str = "input file") -> list[str]:
    """The lines of a UTF-8 text file; :class:`DataError` for a missing file or bad encoding."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist" if not path.exists() else f"{path} is not a file",
                        hint="check the path")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})",
                        hint="re-encode the file as UTF-8") from None


def iter_jsonl(path: str | Path, *, problems: list[str] | None = None, what: str = "input file",
               ) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every non-blank line of a jsonl file.

    Invalid JSON and non-objects raise :class:`DataError` naming ``file:line`` or, when ``problems`` is a list,
    are appended to it as ``"file:line: problem"`` and skipped.
    """
    path = Path(path)
    for lineno, line in enumerate(read_lines(path, what), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            problem = None if isinstance(obj, dict) else f"expected a JSON object, got {type(obj).__name__}"
        except json.JSONDecodeError as exc:
            problem = f"invalid JSON ({exc.msg}, column {exc.colno})"
        if problem is None:
            yield lineno, obj
        elif problems is not None:
            problems.append(f"{path}:{lineno}: {problem}")
        else:
            raise DataError(f"{path}:{lineno}: {problem}", hint="each line must be one JSON object")


def read_texts(path: str | Path, field: str = "text", what: str = "input file") -> list[str]:
    """Read texts: a ``.jsonl`` file (``field`` of each object) or any other file as one text per line.

    In a text file every line is one text (an empty line is an empty text, so row ``i`` of the output is
    line ``i + 1``). Raises :class:`DataError` naming ``file:line`` for anything malformed.

    Example:
        >>> read_texts("queries.jsonl", field="query")
    """
    path = Path(path)
    if path.suffix.lower() not in (".jsonl", ".ndjson"):
        return read_lines(path, what)
    texts: list[str] = []
    for lineno, obj in iter_jsonl(path, what=what):
        if field not in obj:
            raise DataError(f"{path}:{lineno}: no field {field!r} (fields: {', '.join(map(repr, obj)) or 'none'})",
                            hint="choose the field with --field NAME")
        value = obj[field]
        if not isinstance(value, str):
            raise DataError(f"{path}:{lineno}: field {field!r} is {type(value).__name__}, expected a string",
                            hint="every text must be a JSON string")
        texts.append(value)
    return texts


def save_npy(path: str | Path, array: np.ndarray) -> Path:
    """Write ``array`` as ``.npy`` atomically (temporary sibling, then rename); return the path."""
    path = Path(path)
    with atomic_write(path) as fh:
        np.save(fh, array, allow_pickle=False)
    return path
