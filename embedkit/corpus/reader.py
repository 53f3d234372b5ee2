"""Chunked readers for a corpus: ``.txt`` (one text per line), ``.jsonl`` and ``.parquet`` files, a folder of them
or a glob of shards. Memory holds one chunk of rows, never the corpus.

The line rules are :mod:`embedkit.textio`'s: UTF-8, one leading byte-order mark dropped, lines split on ``\\n``
only with one trailing ``\\r`` dropped; in a ``.txt`` file an empty line is an empty text (row ``i`` is line
``i + 1``), in a ``.jsonl`` file blank lines are skipped. Every malformed row raises :class:`DataError` naming
``file:line`` (``file:row N`` for Parquet).
"""

from __future__ import annotations

import codecs
import glob as globlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._optional import require
from ..errors import DataError
from ..folder.fingerprint import hash_file
from ..textio import _ESCAPED_SURROGATE, _lone_surrogate

SUFFIXES = (".txt", ".jsonl", ".ndjson", ".parquet")
"""The input formats, by file extension."""


@dataclass
class Chunk:
    """Up to ``chunk_size`` consecutive rows: ``texts``, their ``ids`` (``None`` when the row number is the id) and
    ``start``, the corpus row number of the first one."""

    start: int
    texts: list[str]
    ids: list[Any] | None


def input_files(source: str | Path) -> list[Path]:
    """The files a corpus ``source`` names: a file, a folder (its ``.txt`` / ``.jsonl`` / ``.parquet`` files, in
    name order, recursively; names starting with ``.`` or ``_`` skipped) or a glob pattern (``shards/*.jsonl``).

    Raises :class:`DataError` when nothing matches or a file has an unknown extension.
    """
    text = str(source)
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES
                       and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts))
        if not files:
            raise DataError(f"input folder {path} holds no .txt, .jsonl or .parquet file",
                            hint="pass the folder that holds the corpus shards")
        return files
    if path.is_file():
        files = [path]
    elif any(c in text for c in "*?["):
        files = sorted(Path(p) for p in globlib.glob(text, recursive=True) if Path(p).is_file())
        if not files:
            raise DataError(f"input pattern {text!r} matches no file", hint="check the pattern (quote it in a shell)")
    else:
        raise DataError(f"input {path} does not exist", hint="pass a file, a folder or a glob of shards")
    for f in files:
        if f.suffix.lower() not in SUFFIXES:
            raise DataError(f"input file {f}: unknown format {f.suffix or '(no extension)'}",
                            hint="use .txt (one text per line), .jsonl or .parquet")
    return files


def describe_inputs(files: list[Path]) -> list[dict[str, Any]]:
    """``[{"path", "size", "sha256"}]`` for each input file (what the manifest records and ``--resume`` checks)."""
    out = []
    for f in files:
        try:
            digest, size = hash_file(f)
        except OSError as exc:
            raise DataError(f"input file {f} cannot be read ({exc.strerror or exc})", hint="check the path") from None
        out.append({"path": str(f), "size": size, "sha256": digest})
    return out


def _lines(path: Path, at: tuple[int, int] = (0, 1), offsets: bool = False) -> Iterator[tuple[Any, ...]]:
    """``(line number, decoded line)`` of a UTF-8 file, streamed (textio's rules), from byte offset ``at[0]`` (the
    start of line number ``at[1]``). With ``offsets``: ``(line number, decoded line, byte offset of the line)``."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise DataError(f"input file {path} cannot be read ({exc.strerror or exc})", hint="check the path") from None
    with fh:
        fh.seek(at[0])
        position = at[0]
        for lineno, raw in enumerate(fh, start=at[1]):
            start, position = position, position + len(raw)
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            if raw.endswith(b"\n"):
                raw = raw[:-1]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not UTF-8 text ({exc.reason}, column {exc.start + 1})",
                                hint="re-encode the file as UTF-8") from None
            yield (lineno, line, start) if offsets else (lineno, line)


def _json_row(path: Path, lineno: int, line: str) -> dict[str, Any]:
    try:
        obj = json.loads(line)
        problem = None if isinstance(obj, dict) else f"expected a JSON object, got {type(obj).__name__}"
    except json.JSONDecodeError as exc:
        problem = f"invalid JSON ({exc.msg}, column {exc.colno})"
    except (ValueError, RecursionError) as exc:
        problem = f"invalid JSON ({exc})"
    if problem is None and _ESCAPED_SURROGATE.search(line) and _lone_surrogate(obj):
        problem = "unpaired UTF-16 surrogate escape in a string (\\ud800-\\udfff alone)"
    if problem is not None:
        raise DataError(f"{path}:{lineno}: {problem}", hint="each line must be one JSON object")
    return obj


def _field(where: str, row: dict[str, Any], name: str, option: str, kinds: tuple[type, ...]) -> Any:
    if name not in row:
        raise DataError(f"{where}: no field {name!r} (fields: {', '.join(map(repr, row)) or 'none'})",
                        hint=f"choose the field with {option} NAME")
    value = row[name]
    if not isinstance(value, kinds) or isinstance(value, bool):
        want = "a string" if kinds == (str,) else "a string or an integer"
        raise DataError(f"{where}: field {name!r} is {type(value).__name__}, expected {want}",
                        hint="fix that row")
    return value


def _rows(path: Path, text_field: str, id_field: str | None, skip: int, at: tuple[int, int] | None = None
          ) -> Iterator[tuple[str, str, Any]]:
    """``(where, text, id or None)`` of every row of one file after the first ``skip`` rows (skipped rows are
    counted, not parsed). ``at``: the byte offset and line number where row ``skip`` starts (from
    :func:`row_marks`): a text file is then read from there, nothing before it."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        if id_field is not None:
            raise DataError(f"input file {path}: --id-field {id_field!r} needs .jsonl or .parquet input",
                            hint="a .txt file has no fields; drop --id-field (ids are row numbers)")
        for lineno, line in _lines(path, at or (0, 1)):
            if at is not None or lineno > skip:
                yield f"{path}:{lineno}", line, None
        return
    if suffix in (".jsonl", ".ndjson"):
        seen = skip if at is not None else 0
        for lineno, line in _lines(path, at or (0, 1)):
            if not line.strip():
                continue
            seen += 1
            if seen <= skip:
                continue
            where = f"{path}:{lineno}"
            row = _json_row(path, lineno, line)
            text = _field(where, row, text_field, "--text-field", (str,))
            yield where, text, None if id_field is None else _field(where, row, id_field, "--id-field", (str, int))
        return
    yield from _parquet_rows(path, text_field, id_field, skip)


def _parquet_rows(path: Path, text_field: str, id_field: str | None, skip: int) -> Iterator[tuple[str, str, Any]]:
    pq = require("pyarrow.parquet", "Parquet input")
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for a file that is not Parquet
        raise DataError(f"input file {path} is not a readable Parquet file ({exc})",
                        hint="check the file (pyarrow.parquet.read_table reads it?)") from None
    names = pf.schema_arrow.names
    for name, option in ((text_field, "--text-field"), (id_field, "--id-field")):
        if name is not None and name not in names:
            raise DataError(f"input file {path}: no column {name!r} (columns: {', '.join(map(repr, names))})",
                            hint=f"choose the column with {option} NAME")
    columns = [text_field] + ([id_field] if id_field is not None else [])
    row = 0
    for group in range(pf.num_row_groups):
        n = pf.metadata.row_group(group).num_rows
        if row + n <= skip:  # whole row groups are skipped without reading them
            row += n
            continue
        table = pf.read_row_group(group, columns=columns)
        texts = table.column(text_field).to_pylist()
        ids = table.column(id_field).to_pylist() if id_field is not None else None
        for i, text in enumerate(texts):
            row += 1
            if row <= skip:
                continue
            where = f"{path}:row {row}"
            if not isinstance(text, str):
                raise DataError(f"{where}: column {text_field!r} is {type(text).__name__}, expected a string",
                                hint="every text must be a non-null string")
            value = None
            if ids is not None:
                value = ids[i]
                if not isinstance(value, (str, int)) or isinstance(value, bool):
                    raise DataError(f"{where}: column {id_field!r} is {type(value).__name__}, expected a string or "
                                    "an integer", hint="every id must be a non-null string or integer")
            yield where, text, value


def iter_chunks(files: list[Path], chunk_size: int, *, text_field: str = "text", id_field: str | None = None,
                start: int = 0, boundary: int | None = None,
                seek: dict[str, tuple[int, int, int]] | None = None) -> Iterator[Chunk]:
    """Stream the rows of ``files`` (in order) as :class:`Chunk` s of ``chunk_size`` rows, from corpus row
    ``start`` on (rows before it are counted, not parsed: how ``--resume`` skips completed shards).

    With ``boundary`` (the shard size) no chunk crosses a multiple of it: chunk boundaries then depend on the shard
    alone, so a resumed run batches (and so rounds) every shard exactly as an uninterrupted run.

    With ``id_field``, every id must be of one kind (all strings or all integers); a row that breaks that raises
    :class:`DataError` naming it.

    ``seek``: ``{file path: (row in that file, byte offset, line number)}`` (:func:`row_marks`): when the rows to
    skip in that file end exactly at that row, the file is read from that offset instead of counting its first rows
    (a Ray actor starting a shard deep inside a large file).

    Example:
        >>> for chunk in iter_chunks(input_files("corpus/*.jsonl"), 10_000, id_field="id"):
        ...     print(chunk.start, len(chunk.texts))
    """
    if chunk_size <= 0:
        raise DataError(f"chunk size must be positive, got {chunk_size}")
    row = 0
    texts: list[str] = []
    ids: list[Any] = []
    kind: type | None = None
    chunk_start = start
    for path in files:
        skip = max(0, start - row)
        mark = (seek or {}).get(str(path))
        at = None
        if skip and mark is not None and mark[0] == skip:  # the plan counted this file: it holds more rows
            row += skip
            skip_here, at = skip, (mark[1], mark[2])
        elif skip:
            counted = count_rows(path, text_field, id_field, skip)
            row += counted
            if counted < skip:
                continue
            skip_here = skip
        else:
            skip_here = 0
        for where, text, value in _rows(path, text_field, id_field, skip_here, at):
            if id_field is not None:
                this = str if isinstance(value, str) else int
                if kind is None:
                    kind = this
                elif this is not kind:
                    raise DataError(f"{where}: id {value!r} is {this.__name__}, earlier ids are {kind.__name__}",
                                    hint="every id of a corpus must be of one kind (all strings or all integers)")
                ids.append(value)
            texts.append(text)
            row += 1
            if len(texts) == chunk_size or (boundary is not None and row % boundary == 0):
                yield Chunk(chunk_start, texts, ids if id_field is not None else None)
                chunk_start += len(texts)
                texts, ids = [], []
    if texts:
        yield Chunk(chunk_start, texts, ids if id_field is not None else None)


def count_rows(path: Path, text_field: str, id_field: str | None, limit: int) -> int:
    """Rows of ``path``, counted up to ``limit`` (Parquet: from its metadata)."""
    if path.suffix.lower() == ".parquet":
        pq = require("pyarrow.parquet", "Parquet input")
        return min(limit, pq.ParquetFile(path).metadata.num_rows)
    n = 0
    jsonl = path.suffix.lower() != ".txt"
    for _, line in _lines(path):
        if jsonl and not line.strip():
            continue
        n += 1
        if n >= limit:
            break
    return n


def row_marks(path: Path, text_field: str, id_field: str | None, first_row: int, every: int
              ) -> tuple[int, dict[int, tuple[int, int]]]:
    """Rows of ``path`` and, for a ``.txt`` / ``.jsonl`` file, where each row whose corpus row number
    (``first_row`` + its row in the file) is a multiple of ``every`` starts: ``{row in file: (byte offset, line
    number)}`` (one pass; what :func:`iter_chunks`' ``seek`` takes). Parquet files: their row count, no marks (whole
    row groups are skipped from the metadata already)."""
    if path.suffix.lower() == ".parquet":
        return count_rows(path, text_field, id_field, 1 << 62), {}
    marks: dict[int, tuple[int, int]] = {}
    n = 0
    jsonl = path.suffix.lower() != ".txt"
    for lineno, line, offset in _lines(path, offsets=True):
        if jsonl and not line.strip():
            continue
        if n and (first_row + n) % every == 0:
            marks[n] = (offset, lineno)
        n += 1
    return n, marks
