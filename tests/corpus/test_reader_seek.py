"""A shard that starts deep inside a large text file is read from its byte offset (``row_marks`` + ``iter_chunks``'
``seek``), not by re-reading every earlier row: the same chunks, and nothing before the offset is touched."""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import pytest

from embedkit.corpus.reader import iter_chunks, row_marks
from embedkit.errors import DataError


def _chunks(files, start, **kw):
    return [(c.start, c.texts, c.ids) for c in iter_chunks(files, 7, start=start, boundary=10, **kw)]


@pytest.mark.parametrize("kind", ["txt", "jsonl"])
def test_seeking_gives_the_chunks_of_counting(tmp_path, kind):
    rows = [f"row {i} é" for i in range(45)]
    first = tmp_path / f"a.{kind}"
    first.write_text("x\ny\nz\n" if kind == "txt" else "".join(json.dumps({"id": i, "text": "x"}) + "\n"
                                                                   for i in range(3)), encoding="utf-8")
    path = tmp_path / f"b.{kind}"
    if kind == "txt":
        body = "\r\n".join(rows) + "\r\n"
    else:  # blank lines are not rows
        body = "".join(json.dumps({"id": 3 + i, "text": t}) + ("\n\n" if i % 5 == 0 else "\n")
                       for i, t in enumerate(rows))
    path.write_bytes(codecs.BOM_UTF8 + body.encode("utf-8"))
    id_field = "id" if kind == "jsonl" else None
    n, marks = row_marks(path, "text", id_field, first_row=3, every=10)
    assert n == 45 and sorted(marks) == [7, 17, 27, 37]  # corpus rows 10, 20, 30, 40
    for start in (10, 20, 40):
        skip = start - 3
        seek = {str(path): (skip, *marks[skip])}
        got = _chunks([first, path], start, id_field=id_field, seek=seek)
        assert got == _chunks([first, path], start, id_field=id_field)
        assert got[0][1][0] == rows[skip]


def test_nothing_before_the_offset_is_read(tmp_path):
    path = tmp_path / "big.txt"
    path.write_text("".join(f"line {i:03d}\n" for i in range(100)), encoding="utf-8")
    _, marks = row_marks(path, "text", None, first_row=0, every=50)
    data = bytearray(path.read_bytes())
    data[0:4] = b"\xff\xfe\xff\xfe"  # rows before the mark are no longer UTF-8
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"big.txt:1: not UTF-8"):
        _chunks([path], 50)
    got = [c.texts for c in iter_chunks([path], 100, start=50, seek={str(path): (50, *marks[50])})]
    assert got == [[f"line {i:03d}" for i in range(50, 100)]]


def test_a_mark_for_another_row_is_ignored(tmp_path):
    path = Path(tmp_path / "t.txt")
    path.write_text("".join(f"{i}\n" for i in range(30)), encoding="utf-8")
    _, marks = row_marks(path, "text", None, first_row=0, every=10)
    seek = {str(path): (10, *marks[10])}
    assert _chunks([path], 20, seek=seek) == _chunks([path], 20)  # skip 20 rows: the mark is for row 10, counted
