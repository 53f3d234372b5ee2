"""Reading texts from .txt / .jsonl files and writing vectors, with file:line errors and atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ._io import atomic_write
from .errors import DataError


def read_texts(path: str | Path, field: str = "text") -> list[str]:
    """Read texts: a ``.jsonl`` file (``field`` of each object) or any other file as one text per line.

    In a text file every line is one text (an empty line is an empty text, so row ``i`` of the output is
    line ``i + 1``). Raises :class:`DataError` naming ``file:line`` for anything malformed.

    Example:
        >>> read_texts("queries.jsonl", field="query")
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"input file {path} does not exist" if not path.exists() else f"{path} is not a file",
                        hint="pass a .txt (one text per line) or .jsonl file")
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})",
                        hint="re-encode the file as UTF-8") from None
    lines = content.splitlines()
    if path.suffix.lower() not in (".jsonl", ".ndjson"):
        return lines
    texts: list[str] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg}, column {exc.colno})",
                            hint="each line must be one JSON object") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}",
                            hint=f'each line must look like {{"{field}": "..."}}')
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
