"""Hostile data files and outputs: line splitting, BOMs, errors that name the file, non-finite vectors, very long
texts, and nothing written where the user did not ask (issue 11)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from embedkit import Embedder
from embedkit.batching import chars_per_token
from embedkit.cli import main
from embedkit.errors import DataError
from embedkit.eval import load_eval_data
from embedkit.textio import read_lines, read_texts, save_npy
from embedkit.train.data import load_train_data

BOM = b"\xef\xbb\xbf"


def _beir(folder: Path, corpus: bytes | None = None, queries: bytes | None = None, qrels: bytes | None = None) -> Path:
    """A small BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv); any file may be replaced by raw bytes."""
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_bytes(corpus if corpus is not None else
                                          b'{"_id": "d1", "title": "t", "text": "the cat"}\n'
                                          b'{"_id": "d2", "text": "a dog"}\n')
    (folder / "queries.jsonl").write_bytes(queries if queries is not None else b'{"_id": "q1", "text": "cat"}\n')
    (folder / "qrels" / "test.tsv").write_bytes(qrels if qrels is not None else
                                                b"query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    return folder


# ------------------------------------------------------------------ 1. lines are split on \n only
@pytest.mark.parametrize("sep", ["\u2028", "\u2029", "\u0085", "\x0c", "\x0b", "\x1c", "\x1d", "\x1e", "\r"])
def test_txt_rows_split_on_newline_only(tmp_path, sep):
    path = tmp_path / "in.txt"
    path.write_text(f"first{sep}still first\nsecond\r\nthird", encoding="utf-8", newline="")
    assert read_texts(path) == [f"first{sep}still first", "second", "third"]


def test_txt_row_i_is_line_i_plus_1_with_blank_lines_and_crlf(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(b"a\r\n\r\n\nb\r\r\n")
    assert read_lines(path) == ["a", "", "", "b\r"]  # one trailing \r stripped per line, a lone \r kept


def test_jsonl_line_numbers_ignore_unicode_line_separators(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "a\u2028b"}\n{"text": 5}\n', encoding="utf-8")
    with pytest.raises(DataError, match=f"{path}:2: field 'text' is int"):
        read_texts(path)


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_bom_accepted_and_dropped_in_txt_and_jsonl(tmp_path, suffix):
    path = tmp_path / f"in{suffix}"
    body = b'{"text": "hello"}\n{"text": "world"}\n' if suffix == ".jsonl" else b"hello\nworld\n"
    path.write_bytes(BOM + body)
    assert read_texts(path) == ["hello", "world"]


def test_bom_accepted_in_beir_folder_and_training_data(tmp_path):
    folder = _beir(tmp_path / "b", corpus=BOM + b'{"_id": "d1", "text": "the cat"}\r\n',
                   queries=BOM + b'{"_id": "q1", "text": "cat"}\r\n',
                   qrels=BOM + b"query-id\tcorpus-id\tscore\r\nq1\td1\t1\r\n")
    data = load_eval_data(folder)
    assert data.corpus == {"d1": "the cat"} and data.queries == {"q1": "cat"} and data.qrels == {"q1": {"d1": 1}}
    train = tmp_path / "train.jsonl"
    train.write_bytes(BOM + b'{"query": "q", "pos": ["p"]}\n')
    assert load_train_data(train).examples[0].query == "q"


# ------------------------------------------------------------------ 2. every error names the file (and line)
@pytest.mark.parametrize("which", ["corpus.jsonl", "queries.jsonl", "qrels/test.tsv"])
def test_invalid_utf8_in_beir_file_names_file_and_line(tmp_path, which):
    folder = _beir(tmp_path / "b")
    path = folder / which
    path.write_bytes(path.read_bytes() + b"\xff\xfe broken\n")
    line = len(path.read_bytes().split(b"\n")) - 1
    with pytest.raises(DataError, match=f"{path}:{line}: not UTF-8"):
        load_eval_data(folder)


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_invalid_utf8_in_input_names_file_and_line(tmp_path, suffix):
    path = tmp_path / f"in{suffix}"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=f"{path}:2: not UTF-8"):
        read_texts(path)
    with pytest.raises(DataError, match=f"{path}:2: not UTF-8"):
        load_train_data(path)


@pytest.mark.parametrize("line, problem", [
    (b'{"text": ' + b"9" * 5000 + b"}", "invalid JSON"),  # longer than Python converts: a ValueError
    (b"[" * 100_000 + b"]" * 100_000, "invalid JSON"),  # RecursionError
    (b'{"text": "\\ud800"}', "unpaired UTF-16 surrogate"),  # a str that cannot be encoded, tokenized or hashed
])
def test_hostile_json_lines_name_file_and_line(tmp_path, line, problem):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"text": "ok"}\n' + line + b"\n")
    with pytest.raises(DataError, match=f"{path}:2: {problem}"):
        read_texts(path)


def test_paired_surrogate_escapes_are_fine(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"text": "\\ud83d\\ude00"}\n')
    assert read_texts(path) == ["\U0001F600"]


@pytest.mark.parametrize("qrels, problem", [
    (b"query-id\tcorpus-id\tscore\nq1\td1\t\xc2\xb2\n", "expected 'query-id<TAB>corpus-id<TAB>score'"),  # "²"
    (b"query-id\tcorpus-id\tscore\nq1\td1\t" + b"9" * 5000 + b"\n", "score .9+. is out of range"),
])
def test_qrels_tsv_scores_are_ascii_integers(tmp_path, qrels, problem):
    folder = _beir(tmp_path / "b", qrels=qrels)
    with pytest.raises(DataError, match=f"{folder / 'qrels' / 'test.tsv'}:2: {problem}"):
        load_eval_data(folder)


@pytest.mark.parametrize("rel", ["NaN", "Infinity", "-Infinity", "1e999", "9" * 400, "1.5"])
def test_qrels_jsonl_non_integer_relevance(tmp_path, rel):
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "corpus.jsonl").write_text('{"id": "d1", "text": "x"}\n')
    (folder / "queries.jsonl").write_text('{"id": "q1", "text": "y"}\n')
    (folder / "qrels.jsonl").write_text(f'{{"qid": "q1", "docid": "d1", "relevance": {rel}}}\n')
    with pytest.raises(DataError, match=f"{folder / 'qrels.jsonl'}:1: 'relevance' must be an integer"):
        load_eval_data(folder)


@pytest.mark.parametrize("scores", ["[NaN]", "[Infinity]", "[1e999]", "[" + "9" * 400 + "]"])
def test_training_scores_must_be_finite(tmp_path, scores):
    path = tmp_path / "train.jsonl"
    path.write_text(f'{{"query": "q", "pos": ["p"], "neg": ["n"], "pos_scores": {scores}, "neg_scores": [0]}}\n')
    with pytest.raises(DataError, match=f"{path}:1: 'pos_scores' holds a non-finite number"):
        load_train_data(path)


def test_input_folder_and_missing_file_are_named(tmp_path):
    with pytest.raises(DataError, match=f"input file {tmp_path} is a folder"):
        read_texts(tmp_path)
    with pytest.raises(DataError, match=f"input file {tmp_path / 'nope.txt'} does not exist"):
        read_texts(tmp_path / "nope.txt")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_input_is_named(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text("x")
    path.chmod(0)
    with pytest.raises(DataError, match=f"input file {path} cannot be read .permission denied"):
        read_texts(path)


def test_output_that_is_a_folder_or_under_a_file_names_the_users_path(tmp_path):
    out = tmp_path / "existing_dir"
    out.mkdir()
    with pytest.raises(DataError, match=f"output {out} is a folder") as info:
        save_npy(out, np.zeros(2, dtype=np.float32))
    assert ".tmp" not in str(info.value) and os.listdir(out) == []
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DataError, match=f"{blocker} is a file, not a folder"):
        save_npy(blocker / "v.npy", np.zeros(2, dtype=np.float32))
    assert sorted(os.listdir(tmp_path)) == ["existing_dir", "file"]


def test_cli_encode_folder_input_and_folder_output(tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("a\nb\n")
    out = tmp_path / "out_dir.npy"  # a folder with the right extension: the folder check speaks
    out.mkdir()
    folder_input = tmp_path / "texts_dir"
    folder_input.mkdir()
    assert main(["encode", "minilm", "-i", str(folder_input), "-o", str(tmp_path / "v.npy")]) == 2
    assert f"{folder_input} is a folder" in capsys.readouterr().err
    assert main(["encode", "minilm", "-i", str(src), "-o", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"output {out} is a folder" in err and ".tmp" not in err and "Traceback" not in err
    assert os.listdir(out) == []


# ------------------------------------------------------------------ 3. never a non-finite vector
def _poisoned_copy(src: Path, dst: Path, token: str) -> Path:
    """A copy whose word embedding of ``token`` is huge (finite weights): any text with it overflows to NaN."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    shutil.copytree(src, dst)
    weights = load_file(dst / "model.safetensors")
    key = next(k for k in weights if k.endswith("word_embeddings.weight"))
    weights[key][AutoTokenizer.from_pretrained(dst).convert_tokens_to_ids(token)] = 3e38
    save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_non_finite_vector_raises_naming_the_input_row(tiny_bert, tmp_path):
    from embedkit.embedder import NonFiniteOutputError

    model = Embedder(_poisoned_copy(tiny_bert, tmp_path / "nan-bert", "cat"), pooling="cls", normalize=True,
                     show_progress=False)
    texts = ["hello world " * 5, "the quick brown fox", "a cat", "dog"]  # row 2 is neither first nor longest
    with pytest.raises(NonFiniteOutputError, match="for input row 2;"):
        model.encode(texts, batch_size=2)
    assert np.isfinite(model.encode(["hello", "dog"])).all()


def test_cli_encode_writes_nothing_for_a_non_finite_vector(tiny_bert, tmp_path, capsys):
    model = _poisoned_copy(tiny_bert, tmp_path / "nan-bert", "cat")
    src = tmp_path / "in.txt"
    src.write_text("dog\nhello\nthe cat\n")
    out = tmp_path / "v.npy"
    assert main(["encode", str(model), "-i", str(src), "-o", str(out), "--pooling", "cls", "--no-progress"]) == 2
    assert "input row 2" in capsys.readouterr().err and not out.exists()


def test_m3_non_finite_output_raises_naming_the_input_row(tmp_path):
    from embedkit.embedder import NonFiniteOutputError
    from embedkit.m3 import M3Embedder
    from tests.m3.test_m3 import build_tiny_m3

    folder = _poisoned_copy(build_tiny_m3(tmp_path / "m3"), tmp_path / "nan-m3", "▁cat")
    model = M3Embedder(folder, return_sparse=True, return_colbert=True, show_progress=False)
    with pytest.raises(NonFiniteOutputError, match="for input row 1;"):
        model.encode(["the dog", "a cat", "fox"])
    out = model.encode(["the dog", "fox"])
    assert np.isfinite(out["dense_vecs"]).all()


# ------------------------------------------------------------------ 4. a character budget before tokenizing
def _budget_texts(model: Embedder, max_length: int) -> list[str]:
    """Texts just under, at and over the character budget, and the cases a naive cut would get wrong."""
    chars, _ = chars_per_token(model.tokenizer)
    limit = max_length * chars
    words = "the quick brown fox jumps over lazy dog 中文 hello, world! émigré naïve "
    base = (words * (limit // len(words) + 3))
    spaced = "a" + " " * (limit + 10) + "b"  # fits in 3 tokens: whitespace makes no token
    mask = model.tokenizer.mask_token or ""
    out = [base[:limit - 1], base[:limit], base[:limit + 1], base[:limit + 7], spaced, spaced * 3,
           "x" * (limit + 50), "a " * (limit // 2 - 2) + "supercalifragilistic" * 20]
    for shift in range(0, 12):  # an added token, a multi-piece word, accents and CJK straddling the cut
        out.append(base[:limit - shift] + mask + " unbelievablefoxes naïve 中文" + base)
        out.append("x " * ((limit - shift) // 2) + "ab\u0301c" + " tail" * 10)
    return out


@pytest.fixture(scope="module")
def tiny_m3_folder(tmp_path_factory):
    from tests.m3.test_m3 import build_tiny_m3

    return build_tiny_m3(tmp_path_factory.mktemp("m3") / "tiny-bge-m3")


@pytest.mark.parametrize("which", ["minilm", "tiny_bert", "tiny_m3"])
@pytest.mark.parametrize("max_length", [8, 32, 128])
def test_character_budget_gives_the_tokens_of_the_whole_text(which, max_length, minilm, tiny_bert, tiny_m3_folder):
    model = {"minilm": lambda: minilm, "tiny_bert": lambda: Embedder(tiny_bert, pooling="cls", normalize=True),
             "tiny_m3": lambda: Embedder(tiny_m3_folder)}[which]()
    max_length = min(max_length, model.model_max_length or max_length)
    texts = _budget_texts(model, max_length)
    ours = model.tokenize(texts, max_length)
    whole = model.tokenizer(texts, truncation=True, max_length=max_length, padding=False)
    for key in ours:
        assert ours[key] == whole[key], key


@pytest.mark.parametrize("which", ["minilm", "tiny_bert"])
def test_character_budget_keeps_every_vector(which, minilm, tiny_bert):
    model = minilm if which == "minilm" else Embedder(tiny_bert, pooling="cls", normalize=True,
                                                       show_progress=False)
    texts = _budget_texts(model, 16)[:10]
    cut = model.encode(texts, max_length=16)
    whole = Embedder.from_model(model.backend.model, model.tokenizer, model.spec, show_progress=False)
    whole._char_budget = (10**12, 1)  # a budget no text reaches: the uncut path
    np.testing.assert_array_equal(cut, whole.encode(texts, max_length=16))


def test_twenty_megabyte_line_encodes_as_its_prefix(minilm):
    line = "the quick brown fox jumps over the lazy dog. " * (20_000_000 // 45)
    vec = minilm.encode(line)
    np.testing.assert_array_equal(vec, minilm.encode(line[:20_000]))


# ------------------------------------------------------------------ 5. nothing written where the user did not ask
def test_int8_export_leaves_the_working_directory_unchanged(tiny_bert, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from embedkit.export.onnx import export_onnx

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "mine.txt").write_text("user file")
    monkeypatch.chdir(cwd)
    src = tmp_path / "m"
    shutil.copytree(tiny_bert, src)
    report = export_onnx(src, tmp_path / "out", quantize="int8", min_cosine=0.0, min_cosine_floor=0.0)
    assert report.int8["kept"]
    assert os.listdir(cwd) == ["mine.txt"]
    leftovers = [p.name for p in (tmp_path / "out").rglob("*") if "inferred" in p.name or p.suffix == ".data"
                 or p.name.startswith(".")]
    assert leftovers == [] and sorted(os.listdir(tmp_path)) == ["cwd", "m", "out"]


def _eval_bench(folder: Path) -> Path:
    folder.mkdir()
    (folder / "corpus.jsonl").write_text("\n".join(json.dumps({"id": f"d{i}", "text": t}) for i, t in
                                                   enumerate(["the cat", "a dog", "quick fox"])))
    (folder / "queries.jsonl").write_text('{"id": "q1", "text": "cat"}\n{"id": "q2", "text": "dog"}\n')
    (folder / "qrels.jsonl").write_text('{"qid": "q1", "docid": "d0"}\n{"qid": "q2", "docid": "d1"}\n')
    return folder


def test_eval_compare_writes_no_plot_into_the_working_directory(tiny_bert, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setenv("EMBEDKIT_CACHE", str(tmp_path / "cache"))
    bench = _eval_bench(tmp_path / "bench")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert main(["eval", "minilm", "--data", str(bench), "--k", "1", "--compare", str(tiny_bert), "--json"]) == 0
    assert os.listdir(cwd) == []
    plot = tmp_path / "plots" / "cmp.png"
    assert main(["eval", "minilm", "--data", str(bench), "--k", "1", "--compare", str(tiny_bert), "--json",
                 "--plot", str(plot)]) == 0
    assert plot.stat().st_size > 1000 and os.listdir(cwd) == []
