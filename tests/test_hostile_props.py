"""Property-based tests of the data readers: any bytes give rows or an EmbedkitError naming the file (no model)."""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from embedkit.errors import EmbedkitError  # noqa: E402
from embedkit.eval.data import load_eval_data  # noqa: E402
from embedkit.textio import read_lines, read_texts  # noqa: E402
from embedkit.train.data import load_train_data  # noqa: E402

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# bytes that make interesting files: line ends of every kind, BOMs, invalid UTF-8, JSON punctuation
_PIECES = [b"\n", b"\r\n", b"\r", b"\x0c", b"\xe2\x80\xa8", b"\xc2\x85", b"\xef\xbb\xbf", b"\xff", b"\xc3", b"\x00",
           b"\t", b"{", b"}", b"[", b"]", b'"', b":", b",", b'"id"', b'"_id"', b'"text"', b'"title"', b'"qid"',
           b'"docid"', b'"relevance"', b'"query"', b'"pos"', b'"neg"', b'"pos_scores"', b'"neg_scores"',
           b"1", b"-1", b"0", b"NaN", b"Infinity", b"1e999", b"9" * 5000, b"[" * 3000, b'"\\ud800"',
           b'"\\ud83d\\ude00"', b"null", b"true", b'"a"', b"query-id\tcorpus-id\tscore", b"\xc2\xb2", b"\xd9\xa1"]
hostile_bytes = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from(_PIECES), max_size=40).map(b"".join),
    st.lists(st.one_of(st.sampled_from(_PIECES), st.binary(max_size=8)), max_size=30).map(b"".join),
)


def _valid_json_line() -> st.SearchStrategy[bytes]:
    value = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                         lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                         max_leaves=8)
    keys = st.sampled_from(["id", "_id", "text", "title", "qid", "docid", "relevance", "score", "query", "pos",
                            "neg", "pos_scores", "neg_scores", "prompt", "type"])
    obj = st.dictionaries(keys, value, max_size=6)
    return obj.map(lambda o: json.dumps(o, ensure_ascii=False).encode("utf-8", "surrogatepass"))


json_lines = st.lists(st.one_of(_valid_json_line(), hostile_bytes), max_size=6).map(b"\n".join)


def _names_file(exc: EmbedkitError, path: Path) -> bool:
    return str(path) in exc.message or str(path.parent) in exc.message


def _check(call, path: Path) -> None:
    try:
        call()
    except EmbedkitError as exc:
        assert _names_file(exc, path), exc.message
        line = re.search(re.escape(str(path)) + r":(\d+)", exc.message)
        if line:
            assert int(line.group(1)) >= 1


@contextlib.contextmanager
def _written(data: bytes, name: str) -> Iterator[Path]:
    """``data`` as the file ``name`` in a fresh temporary folder (hypothesis examples must not share tmp_path)."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_bytes(data)
        yield path


def _strip_bom(data: bytes) -> bytes:
    return data[3:] if data.startswith(b"\xef\xbb\xbf") else data


@SETTINGS
@given(data=hostile_bytes)
def test_any_bytes_as_txt(data: bytes) -> None:
    with _written(data, "in.txt") as path:
        try:
            rows = read_texts(path)
        except EmbedkitError as exc:
            assert str(path) in exc.message
            return
        assert all(isinstance(r, str) and "\n" not in r for r in rows)
        body = _strip_bom(data)
        assert len(rows) == body.count(b"\n") + (0 if not body or body.endswith(b"\n") else 1)


@SETTINGS
@given(data=st.one_of(hostile_bytes, json_lines))
def test_any_bytes_as_jsonl(data: bytes) -> None:
    with _written(data, "in.jsonl") as path:
        _check(lambda: read_texts(path), path)
        _check(lambda: load_train_data(path), path)


@SETTINGS
@given(which=st.sampled_from(["corpus.jsonl", "queries.jsonl", "qrels/test.tsv"]),
       data=st.one_of(hostile_bytes, json_lines))
def test_any_bytes_in_a_beir_folder(which: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        (folder / "qrels").mkdir()
        (folder / "corpus.jsonl").write_text('{"_id": "d1", "title": "t", "text": "a doc"}\n'
                                             '{"_id": "d2", "text": "another"}\n', encoding="utf-8")
        (folder / "queries.jsonl").write_text('{"_id": "q1", "text": "a query"}\n', encoding="utf-8")
        (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n", encoding="utf-8")
        (folder / which).write_bytes(data)
        try:
            loaded = load_eval_data(folder)
        except EmbedkitError as exc:
            assert str(folder) in exc.message, exc.message
            return
        assert loaded.queries and loaded.corpus


@SETTINGS
@given(data=hostile_bytes)
def test_read_lines_row_i_is_line_i_plus_1(data: bytes) -> None:
    with _written(data, "in.txt") as path:
        try:
            text = _strip_bom(data).decode("utf-8")
        except UnicodeDecodeError:
            with pytest.raises(EmbedkitError, match=re.escape(str(path)) + r":\d+: not UTF-8"):
                read_lines(path)
            return
        lines = read_lines(path)
        expected = text.split("\n")
        if expected[-1] == "":
            expected.pop()
        assert lines == [x[:-1] if x.endswith("\r") else x for x in expected]
