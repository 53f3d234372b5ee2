"""Training data validation: file:line problems, --skip-invalid, group sampling."""

import json
import random

import pytest

from embedkit import DataError
from embedkit.train.data import TrainExample, load_train_data, parse_row, sample_group, write_train_jsonl


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_valid_rows_and_folders(tmp_path):
    (tmp_path / "d").mkdir()
    _write(tmp_path / "d" / "a.jsonl", [json.dumps({"query": "q", "pos": ["p"], "neg": ["n1", "n2"]})])
    _write(tmp_path / "d" / "b.jsonl", [json.dumps({"query": "q2", "pos": "single string pos",
                                                    "pos_scores": [1.0], "neg": ["x"], "neg_scores": [0.5],
                                                    "prompt": "Find: ", "type": "normal"})])
    data = load_train_data([tmp_path / "d"])
    assert len(data.examples) == 2 and not data.skipped
    assert data.examples[1].pos == ["single string pos"] and data.examples[1].has_scores
    assert data.examples[0].source.endswith("a.jsonl:1")


@pytest.mark.parametrize("line, problem", [
    ('{"query": "q", "pos": ["p"]', "invalid JSON"),
    ('["not", "an", "object"]', "expected a JSON object"),
    ('{"pos": ["p"]}', "missing 'query'"),
    ('{"query": "  ", "pos": ["p"]}', "'query' is empty"),
    ('{"query": "q"}', "missing 'pos'"),
    ('{"query": "q", "pos": []}', "'pos' is empty"),
    ('{"query": "q", "pos": ["p", 3]}', "'pos[1]' is int"),
    ('{"query": 5, "pos": ["p"]}', "'query' is int"),
    ('{"query": "q", "pos": ["p"], "neg": ["n"], "pos_scores": [1, 2], "neg_scores": [0]}',
     "'pos_scores' has 2 scores but 'pos' has 1"),
    ('{"query": "q", "pos": ["p"], "neg": ["n"], "pos_scores": [1]}', "must be given together"),
    ('{"query": "q", "pos": ["p"], "neg": ["n"], "pos_scores": ["a"], "neg_scores": [0]}', "list of numbers"),
])
def test_problems_name_file_and_line(tmp_path, line, problem):
    f = _write(tmp_path / "t.jsonl", ['{"query": "ok", "pos": ["fine"]}', line])
    with pytest.raises(DataError) as info:
        load_train_data(f)
    assert f"{f}:2: " in info.value.message and problem in info.value.message
    assert "--skip-invalid" in info.value.hint


def test_skip_invalid_counts(tmp_path):
    f = _write(tmp_path / "t.jsonl", ['{"query": "ok", "pos": ["fine"]}', "{bad", '{"query": "q"}'])
    data = load_train_data(f, skip_invalid=True)
    assert len(data.examples) == 1 and len(data.skipped) == 2


def test_missing_file_and_empty_data(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_train_data(tmp_path / "nope.jsonl")
    f = _write(tmp_path / "bad.jsonl", ["{bad"])
    with pytest.raises(DataError, match="no valid training rows"):
        load_train_data(f, skip_invalid=True)


def test_sample_group_sizes_and_replacement():
    rng = random.Random(0)
    ex = TrainExample(query="q", pos=["p"], neg=["n1"], pos_scores=[3.0], neg_scores=[1.0])
    passages, scores, used_random = sample_group(ex, 4, rng)
    assert passages == ["p", "n1", "n1", "n1"] and scores == [3.0, 1.0, 1.0, 1.0] and not used_random
    ex2 = TrainExample(query="q", pos=["p"], neg=[f"n{i}" for i in range(10)])
    passages, _, _ = sample_group(ex2, 4, rng)
    assert len(set(passages[1:])) == 3  # without replacement when there are enough


def test_sample_group_draws_random_when_no_negatives():
    ex = TrainExample(query="q", pos=["p"])
    passages, scores, used_random = sample_group(ex, 3, random.Random(0), pool=["p", "other1", "other2"])
    assert used_random and scores is None and "p" not in passages[1:]


def test_write_roundtrip(tmp_path):
    ex = parse_row({"query": "q", "pos": ["p"], "neg": ["n"], "prompt": "x"})
    out = write_train_jsonl(tmp_path / "o.jsonl", [ex])
    assert load_train_data(out).examples[0].prompt == "x"
