"""Reading texts from .txt / .jsonl files and writing vectors, with file:line errors and atomic writes.

Every reader decodes UTF-8 (one leading byte-order mark is dropped, in every format) and splits lines on ``\\n``
only, dropping one trailing ``\\r`` (Windows line ends): U+2028, U+0085, form feed or a lone ``\\r`` inside a line
stay part of that line, so row ``i`` is always line ``i + 1``.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from ._io import atomic_write
from .errors import DataError

_ESCAPED_SURROGATE = re.compile(r"\\[uU][dD][89a-fA-F]")


def read_text(path: str | Path, what: str = "input file") -> str:
    """The whole content of a UTF-8 file (a leading BOM dropped); :class:`DataError` naming the file (and the line
    of the first undecodable byte) for a missing path, a folder, an unreadable file or bad encoding."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist", hint="check the path") from None
    except IsADirectoryError:
        raise DataError(f"{what} {path} is a folder, not a file", hint="pass the file inside it") from None
    except PermissionError:
        raise DataError(f"{what} {path} cannot be read (permission denied)",
                        hint="check the file's permissions") from None
    except OSError as exc:
        raise DataError(f"{what} {path} cannot be read ({exc.strerror or exc})", hint="check the path") from None
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text ({exc.reason} at byte {exc.start}, column {column})",
                        hint="re-encode the file as UTF-8") from None


def split_lines(text: str) -> list[str]:
    """Split on ``\\n`` only (one trailing ``\\r`` per line dropped; a final line end makes no extra empty line)."""
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_lines(path: str | Path, what: str = "input file") -> list[str]:
    """The lines of a UTF-8 text file (see :func:`split_lines`); :class:`DataError` naming the file otherwise."""
    return split_lines(read_text(path, what))


def _lone_surrogate(obj: Any) -> bool:
    """Whether a decoded JSON value holds a string with an unpaired surrogate (not encodable as UTF-8)."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(obj, dict):
        return any(_lone_surrogate(k) or _lone_surrogate(v) for k, v in obj.items())
    if isinstance(obj, list):
        return any(_lone_surrogate(v) for v in obj)
    return False


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
        obj: Any = None
        try:
            obj = json.loads(line)
            problem = None if isinstance(obj, dict) else f"expected a JSON object, got {type(obj).__name__}"
        except json.JSONDecodeError as exc:
            problem = f"invalid JSON ({exc.msg}, column {exc.colno})"
        except ValueError as exc:  # e.g. an integer literal longer than Python converts
            problem = f"invalid JSON ({exc})"
        except RecursionError:
            problem = "invalid JSON (nested too deeply)"
        if problem is None and _ESCAPED_SURROGATE.search(line) and _lone_surrogate(obj):
            problem = "unpaired UTF-16 surrogate escape in a string (\\ud800-\\udfff alone)"
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


def check_output_file(path: str | Path, what: str = "output") -> Path:
    """Refuse an output path that cannot be a file: an existing folder, or a parent that is a file.

    Raises :class:`DataError` naming the user's path (never a temporary sibling) and what to pass instead.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{what} {path} is a folder, not a file",
                        hint=f"pass a file name, e.g. {path / ('vectors' + (path.suffix or '.npy'))}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise DataError(f"{what} {path}: {parent} is a file, not a folder",
                                hint="choose an output path inside a folder")
            break
    return path


@contextlib.contextmanager
def writing(path: str | Path, what: str = "output", mode: str = "wb") -> Iterator[IO]:
    """:func:`embedkit._io.atomic_write` for a user's output path: checked first (:func:`check_output_file`), and
    an ``OSError`` while writing (permission denied, disk full...) becomes a :class:`DataError` naming ``path``."""
    path = check_output_file(path, what)
    try:
        with atomic_write(path, mode) as fh:
            yield fh
    except OSError as exc:
        raise DataError(f"cannot write {what} {path} ({exc.strerror or exc})",
                        hint="check that its folder exists, is writable and has free space") from None


def save_npy(path: str | Path, array: np.ndarray) -> Path:
    """Write ``array`` as ``.npy`` atomically (temporary sibling, then rename); return the path."""
    path = Path(path)
    with writing(path) as fh:
        np.save(fh, array, allow_pickle=False)
    return path
