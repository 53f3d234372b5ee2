"""Hard-negative mining (real faiss, real MiniLM) and teacher scores (a tiny random cross-encoder)."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from embedkit.cli import main
from embedkit.errors import CheckpointError, DataError, EmbedkitError
from embedkit.train.data import load_train_data
from embedkit.train.mine import (
    load_candidate_pool,
    mine_hard_negatives,
    parse_range,
    score_pairs,
)

TOPICS = {
    "cat": [
        "Cats are small carnivorous mammals kept as house pets.",
        "A kitten needs high-protein cat food several times a day.",
        "Domestic cats sleep between twelve and sixteen hours daily.",
        "Cats groom themselves with their rough tongues.",
        "A purring cat is usually content and relaxed.",
        "Cats use their whiskers to judge narrow spaces.",
        "Many cats dislike water and avoid baths.",
        "Siamese cats are known for their loud meowing.",
    ],
    "space": [
        "Mars is the fourth planet from the Sun.",
        "The Moon orbits the Earth roughly every 27 days.",
        "Jupiter is the largest planet in the solar system.",
        "Astronauts live aboard the International Space Station.",
        "A light-year measures the distance light travels in a year.",
        "Saturn's rings are made of ice and rock.",
        "Black holes bend light with their gravity.",
        "The Milky Way galaxy contains billions of stars.",
    ],
    "cooking": [
        "Boil pasta in salted water until it is al dente.",
        "Knead bread dough for ten minutes to develop gluten.",
        "Sear the steak in a hot cast-iron pan.",
        "Simmer tomato sauce slowly with garlic and basil.",
        "Whisk eggs and sugar until pale for a sponge cake.",
        "Roast vegetables at high heat to caramelize them.",
        "Season soup with salt at the end of cooking.",
        "Marinate chicken overnight in yogurt and spices.",
    ],
    "finance": [
        "Stocks represent partial ownership of a company.",
        "Bonds pay interest to their holders at fixed intervals.",
        "Inflation reduces the purchasing power of money.",
        "A diversified portfolio lowers investment risk.",
        "Central banks raise interest rates to fight inflation.",
        "Index funds track the performance of a market index.",
        "Compound interest grows savings over time.",
        "A mortgage is a loan used to buy a house.",
    ],
}
QUERIES = {
    "cat": ["how long do cats sleep", "what should a kitten eat"],
    "space": ["which planet is the largest", "how long does the moon take to orbit earth"],
    "cooking": ["how to cook pasta", "how long should I knead bread"],
    "finance": ["what is a stock", "how do central banks fight inflation"],
}
POSITIVE = {  # query -> index of its positive in its topic
    "how long do cats sleep": 2, "what should a kitten eat": 1, "which planet is the largest": 2,
    "how long does the moon take to orbit earth": 1, "how to cook pasta": 0, "how long should I knead bread": 1,
    "what is a stock": 0, "how do central banks fight inflation": 4,
}
TOPIC_OF = {p: t for t, ps in TOPICS.items() for p in ps}
EPS = 1e-5  # faiss (sgemm) and numpy may differ in the last float32 bits: ties within EPS can go either way


def _rows() -> list[dict]:
    """Each query: its positive; the other passages of all topics are spread over the rows as old negatives."""
    rows = []
    others = [p for ps in TOPICS.values() for p in ps if p not in
              {TOPICS[t][POSITIVE[q]] for t, qs in QUERIES.items() for q in qs}]
    for t, qs in QUERIES.items():
        for q in qs:
            rows.append({"query": q, "pos": [TOPICS[t][POSITIVE[q]]], "neg": []})
    for i, p in enumerate(others):
        rows[i % len(rows)]["neg"].append(p)
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _query_vecs(embedder, rows: list[dict]) -> np.ndarray:
    """Query vectors computed independently of the miner: the row's prompt replaces the query instruction."""
    spec = embedder.spec
    out = []
    for r in rows:
        if r.get("prompt") is not None:
            out.append(embedder.encode(r["query"], instruction=r["prompt"], max_length=spec.query_max_length,
                                       instruction_format=spec.query_instruction_format))
        else:
            out.append(embedder.encode_queries(r["query"]))
    return np.stack(out).astype(np.float64)


def _rank_bounds(scores: np.ndarray, j: int) -> tuple[int, int]:
    """The ranks (0 = best) passage ``j`` can have, ties within EPS resolved either way: ``(lowest, highest)``."""
    s = scores[j]
    return int(np.sum(scores > s + EPS)), int(np.sum(scores >= s - EPS)) - 1


@pytest.fixture(scope="module")
def train_file(tmp_path_factory) -> Path:
    rows = _rows()
    rows[0]["prompt"] = "Represent this question for searching relevant passages: "
    rows[1]["type"] = "normal"
    rows[2]["pos_scores"], rows[2]["neg_scores"] = [1.0], [0.5] * len(rows[2]["neg"])
    # a row whose query text is also a pool passage: it must never be its own negative
    rows.append({"query": TOPICS["space"][5], "pos": [TOPICS["space"][6]]})
    return _write_jsonl(tmp_path_factory.mktemp("mine") / "train.jsonl", rows)


# ---------------------------------------------------------------------- mining
def test_negatives_lie_in_rank_window_and_never_are_positives(train_file, tmp_path, minilm):
    start, end, n = 3, 15, 4
    out = tmp_path / "mined.jsonl"
    report = mine_hard_negatives(minilm, train_file, out, range=(start, end), negative_number=n, seed=1)
    src, mined = _read_jsonl(train_file), _read_jsonl(out)
    pool = list(dict.fromkeys(p for r in src for p in (*r["pos"], *r.get("neg", []))))
    assert report.rows == len(src) and report.pool_size == len(pool) == 32
    assert report.topped_up_rows == 0 and report.short_rows == 0  # 12 window slots, at most 2 excluded
    # brute force: the same model, plain numpy, over the whole pool
    scores = _query_vecs(minilm, src) @ minilm.encode_corpus(pool).astype(np.float64).T
    for i, (row, got) in enumerate(zip(src, mined, strict=True)):
        assert got["query"] == row["query"] and got["pos"] == row["pos"]
        assert len(got["neg"]) == n and len(set(got["neg"])) == n
        assert not set(got["neg"]) & set(row["pos"]) and row["query"] not in got["neg"]
        for text in got["neg"]:
            lo, hi = _rank_bounds(scores[i], pool.index(text))
            assert lo < end and hi >= start, (row["query"], text, lo, hi)
    # the same seed gives the same file
    again = tmp_path / "again.jsonl"
    mine_hard_negatives(minilm, train_file, again, range=(start, end), negative_number=n, seed=1)
    assert again.read_bytes() == out.read_bytes()


def test_row_prompt_replaces_the_query_instruction(minilm):
    from embedkit.train.data import TrainExample
    from embedkit.train.mine import _encode_queries

    prompt = "Represent this question for searching relevant passages: "
    rows = [TrainExample(query="how to cook pasta", pos=["x"], prompt=prompt),
            TrainExample(query="how to cook pasta", pos=["x"])]
    vecs = _encode_queries(minilm, rows, batch_size=8, show_progress=False)
    np.testing.assert_allclose(vecs[0], minilm.encode(prompt + "how to cook pasta"), atol=1e-5)
    np.testing.assert_allclose(vecs[1], minilm.encode_queries("how to cook pasta"), atol=1e-5)
    assert not np.allclose(vecs[0], vecs[1], atol=1e-3)


def test_top_hits_are_same_topic_with_real_model(train_file, tmp_path, minilm):
    out = tmp_path / "mined.jsonl"
    mine_hard_negatives(minilm, train_file, out, range=(0, 4), negative_number=2)
    rows = _read_jsonl(out)[:8]  # the topical rows
    same = sum(TOPIC_OF[neg] == TOPIC_OF[r["pos"][0]] for r in rows for neg in r["neg"])
    assert same >= 14, same  # of 16: the nearest passages of a query are on its topic


def test_output_is_valid_training_data_and_drops_stale_scores(train_file, tmp_path, minilm, caplog):
    out = tmp_path / "mined.jsonl"
    with caplog.at_level("WARNING", logger="embedkit"):
        report = mine_hard_negatives(minilm, train_file, out, range=(2, 10), negative_number=3)
    assert report.dropped_scores_rows == 1 and "pos_scores/neg_scores" in caplog.text
    data = load_train_data(out)
    assert len(data.examples) == report.rows and not data.skipped
    assert all(ex.pos_scores is None and ex.neg_scores is None for ex in data.examples)
    src = _read_jsonl(train_file)
    assert data.examples[0].prompt == src[0]["prompt"] and data.examples[1].type == "normal"
    d = report.to_dict()
    assert d["range"] == [2, 10] and d["output"] == str(out) and d["negative_number"] == 3
    json.dumps(d)


def test_short_window_is_topped_up_outside_the_skipped_top(tmp_path, minilm):
    rows = [{"query": q, "pos": [TOPICS[t][POSITIVE[q]]], "neg": [p for p in TOPICS[t] if p != TOPICS[t][POSITIVE[q]]]}
            for t in ("cat", "space") for q in QUERIES[t]]
    src = _write_jsonl(tmp_path / "train.jsonl", rows)
    start, end, n = 2, 5, 6
    out = tmp_path / "mined.jsonl"
    report = mine_hard_negatives(minilm, src, out, range=(start, end), negative_number=n, seed=3)
    pool = list(dict.fromkeys(p for r in rows for p in (*r["pos"], *r["neg"])))
    assert report.pool_size == 16 and report.topped_up_rows == len(rows) and report.short_rows == 0
    scores = _query_vecs(minilm, rows) @ minilm.encode_corpus(pool).astype(np.float64).T
    for i, (row, got) in enumerate(zip(rows, _read_jsonl(out), strict=True)):
        assert len(got["neg"]) == n and len(set(got["neg"])) == n and not set(got["neg"]) & set(row["pos"])
        window = [j for j in np.argsort(-scores[i], kind="stable")[start:end] if pool[j] not in row["pos"]]
        assert len(window) < n  # the window really is short
        for text in got["neg"]:
            _lo, hi = _rank_bounds(scores[i], pool.index(text))
            assert hi >= start, (row["query"], text)  # never one of the skipped top hits (likely false negatives)

    # a pool too small to fill the rows: counted, not padded with duplicates
    tiny = _write_jsonl(tmp_path / "tiny.jsonl", [{"query": "q", "pos": ["a"], "neg": ["b", "c"]}])
    report = mine_hard_negatives(minilm, tiny, tmp_path / "tiny.out.jsonl", range=(0, 10), negative_number=5)
    assert report.topped_up_rows == 1 and report.short_rows == 1
    assert sorted(_read_jsonl(tmp_path / "tiny.out.jsonl")[0]["neg"]) == ["b", "c"]


def test_candidate_pool_file(train_file, tmp_path, minilm):
    pool_texts = TOPICS["cooking"] + TOPICS["finance"] + ["   "]
    pool_file = _write_jsonl(tmp_path / "pool.jsonl", [{"text": t} for t in pool_texts])
    assert load_candidate_pool(pool_file) == pool_texts[:-1]  # empty texts are skipped
    out = tmp_path / "mined.jsonl"
    report = mine_hard_negatives(minilm, train_file, out, candidate_pool=pool_file, range=(0, 6), negative_number=3)
    assert report.pool_size == 16
    for row, got in zip(_read_jsonl(train_file), _read_jsonl(out), strict=True):
        assert set(got["neg"]) <= set(pool_texts) and not set(got["neg"]) & set(row["pos"])
        assert len(got["neg"]) == 3

    bad = tmp_path / "bad_pool.jsonl"
    bad.write_text('{"text": "fine"}\n{"txt": "typo"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{bad}:2")):
        mine_hard_negatives(minilm, train_file, tmp_path / "x.jsonl", candidate_pool=bad)
    bad.write_text('{"text": "fine"}\n\n{"text": 3}\n', encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{bad}:3")):
        load_candidate_pool(bad)
    assert not (tmp_path / "x.jsonl").exists()


@pytest.mark.parametrize("value", ["10", "a-b", "5-3", "4-4", "-1-5", "1-2-3", (3, 1), (-1, 5), (1.0, 5)])
def test_bad_range_is_rejected(value):
    with pytest.raises(DataError, match="range"):
        parse_range(value)


def test_parse_range_ok():
    assert parse_range("10-210") == (10, 210) and parse_range(" 0-1 ") == (0, 1) and parse_range([2, 9]) == (2, 9)


def test_bad_arguments(train_file, tmp_path, minilm):
    out = tmp_path / "o.jsonl"
    with pytest.raises(DataError, match="smaller than its end"):
        mine_hard_negatives(minilm, train_file, out, range=(5, 5))
    with pytest.raises(DataError, match="negative_number"):
        mine_hard_negatives(minilm, train_file, out, negative_number=0)
    with pytest.raises(DataError, match="also an input"):
        mine_hard_negatives(minilm, train_file, train_file)
    with pytest.raises(DataError, match="inside the input folder"):
        mine_hard_negatives(minilm, train_file.parent, train_file.parent / "mined.jsonl")
    assert not out.exists()


def test_missing_faiss_names_the_extra(train_file, tmp_path, minilm, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # what an environment without faiss-cpu looks like
    with pytest.raises(EmbedkitError) as info:
        mine_hard_negatives(minilm, train_file, tmp_path / "o.jsonl")
    assert "embedkit[eval]" in info.value.hint  # the extra that installs faiss (embedkit[train] includes it)


def test_cli_mine(train_file, tmp_path, capsys):
    extra = _write_jsonl(tmp_path / "extra.jsonl", [{"query": "what is a mortgage", "pos": [TOPICS["finance"][7]]}])
    out = tmp_path / "mined.jsonl"
    argv = ["mine", "minilm", "--input", str(train_file), "--input", str(extra), "--output", str(out),
            "--range", "1-8", "--negative-number", "2", "--seed", "5", "--no-progress"]
    assert main(argv + ["--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == len(_read_jsonl(train_file)) + 1 and report["range"] == [1, 8]
    assert len(load_train_data(out).examples) == report["rows"]
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out}: {report['rows']} rows")

    for bad in (["--range", "20-10"], ["--range", "ten"], ["--candidate-pool", str(tmp_path / "nope.jsonl")]):
        rc = main(["mine", "minilm", "-i", str(train_file), "-o", str(tmp_path / "bad.jsonl"), *bad])
        err = capsys.readouterr().err
        assert rc == 2 and "error:" in err and "Traceback" not in err, bad
    assert main(["mine", "minilm", "-i", str(train_file), "-o", str(train_file)]) == 2
    assert "also an input" in capsys.readouterr().err
    assert not (tmp_path / "bad.jsonl").exists()


# ---------------------------------------------------------------------- teacher scores
def _build_reranker(folder: Path, tokenizer_dir: Path, num_labels: int, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder.mkdir(parents=True)
    shutil.copy(tokenizer_dir / "vocab.txt", folder / "vocab.txt")
    # rebuilt from the copied vocab (`vocab=`: transformers 5 ignores `vocab_file=`, which leaves only 5 tokens)
    tok = BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True, model_max_length=128)
    assert tok.convert_tokens_to_ids("cat") != tok.unk_token_id
    tok.save_pretrained(str(folder))
    vocab_size = len((folder / "vocab.txt").read_text(encoding="utf-8").split("\n")) - 1
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128, num_labels=num_labels,
                        initializer_range=0.2)  # larger weights: scores of different pairs differ clearly
    BertForSequenceClassification(config).eval().save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def reranker(tiny_bert, tmp_path_factory) -> Path:
    return _build_reranker(tmp_path_factory.mktemp("rr") / "tiny-reranker", tiny_bert, num_labels=1)


def _direct_scores(folder: Path, pairs: list[tuple[str, str]], label: int) -> list[float]:
    """One plain transformers forward pass per pair, no batching, no padding."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), local_files_only=True).eval()
    with torch.inference_mode():
        return [float(model(**tok(q, p, return_tensors="pt")).logits[0, label]) for q, p in pairs]


SCORE_ROWS = [
    {"query": "what is bge", "pos": ["bge is a text embedding model"], "neg": ["the quick brown fox", "hello world",
                                                                              "a cat"], "type": "normal"},
    {"query": "hello", "pos": ["hello world", "world"]},
    {"query": "long query " * 50, "pos": ["long passage " * 80], "neg": ["short"]},
]


def test_score_pairs_fills_scores_equal_to_direct_forward(reranker, tmp_path):
    src = _write_jsonl(tmp_path / "mined.jsonl", SCORE_ROWS)
    out = tmp_path / "scored.jsonl"
    report = score_pairs(reranker, src, out, batch_size=3)
    assert report.rows == 3 and report.pairs == 8 and report.num_labels == 1 and report.max_length == 128
    data = load_train_data(out)
    for row, ex in zip(SCORE_ROWS, data.examples, strict=True):
        assert len(ex.pos_scores) == len(row["pos"]) and len(ex.neg_scores) == len(row.get("neg", []))
        assert all(isinstance(s, float) for s in ex.pos_scores + ex.neg_scores)
    assert data.examples[0].type == "normal"
    got, pairs = [], []
    for ex in data.examples[:2]:  # batched, length-sorted and padded == one unpadded pair at a time
        got += ex.pos_scores + ex.neg_scores
        pairs += [(ex.query, p) for p in ex.pos + ex.neg]
    np.testing.assert_allclose(got, _direct_scores(reranker, pairs, 0), atol=1e-4, rtol=1e-5)
    assert len({round(s, 4) for s in got}) == len(got)  # different pairs, different scores: a real check
    json.dumps(report.to_dict())


def test_score_pairs_batches_are_the_tokenizers_own_pair_padding(reranker, tmp_path):
    """score_pairs goes through embedkit.batching's features stage: its scores are bit for bit the logits of the same
    token-length sorted batches (longest first, ties in input order) tokenized and padded by the tokenizer itself,
    pairs truncated longest-first."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    src = _write_jsonl(tmp_path / "in.jsonl", SCORE_ROWS * 2)
    out = score_pairs(reranker, src, tmp_path / "out.jsonl", batch_size=3, max_length=16, device="cpu").output
    got = [s for ex in load_train_data(out).examples for s in ex.pos_scores + ex.neg_scores]
    pairs = [(row["query"], p) for row in SCORE_ROWS * 2 for p in row["pos"] + row.get("neg", [])]
    tok = AutoTokenizer.from_pretrained(str(reranker), local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(str(reranker), local_files_only=True).eval()
    qs, ps = [q for q, _ in pairs], [p for _, p in pairs]
    lengths = [len(ids) for ids in tok(qs, ps, truncation="longest_first", max_length=16)["input_ids"]]
    assert max(lengths) == 16 and min(lengths) < 16
    order = sorted(range(len(pairs)), key=lambda i: -lengths[i])
    want = [0.0] * len(pairs)
    with torch.inference_mode():
        for c in range(0, len(order), 3):
            rows = order[c:c + 3]
            enc = tok([qs[i] for i in rows], [ps[i] for i in rows], truncation="longest_first", max_length=16,
                      padding=True, return_tensors="pt")
            for i, logit in zip(rows, model(**enc).logits[:, 0].tolist(), strict=True):
                want[i] = logit
    assert got == want


def test_score_pairs_uses_last_label_of_multi_label_model(tiny_bert, tmp_path):
    folder = _build_reranker(tmp_path / "rr3", tiny_bert, num_labels=3, seed=1)
    src = _write_jsonl(tmp_path / "in.jsonl", SCORE_ROWS[:1])
    report = score_pairs(folder, src, tmp_path / "out.jsonl", max_length=64)
    assert report.num_labels == 3 and report.max_length == 64
    got = load_train_data(tmp_path / "out.jsonl").examples[0]
    want = _direct_scores(folder, [(got.query, p) for p in got.pos + got.neg], 2)
    np.testing.assert_allclose(got.pos_scores + got.neg_scores, want, atol=1e-4, rtol=1e-5)


def test_score_pairs_refuses_bad_models_and_outputs(reranker, tiny_bert, tmp_path):
    src = _write_jsonl(tmp_path / "in.jsonl", SCORE_ROWS[:1])
    out = tmp_path / "out.jsonl"
    with pytest.raises(CheckpointError) as info:
        score_pairs(tmp_path / "BAAI" / "bge-reranker-base", src, out)
    assert "offline" in info.value.message and "local" in info.value.hint
    with pytest.raises(CheckpointError, match="random"):  # an embedding model has no classification head
        score_pairs(tiny_bert, src, out)
    with pytest.raises(DataError, match="also an input"):
        score_pairs(reranker, src, src)
    with pytest.raises(EmbedkitError, match="exceeds"):
        score_pairs(reranker, src, out, max_length=4096)
    assert not out.exists()


def test_cli_score_pairs(reranker, tmp_path, capsys):
    src = _write_jsonl(tmp_path / "in.jsonl", SCORE_ROWS)
    out = tmp_path / "out.jsonl"
    assert main(["score-pairs", str(reranker), "--input", str(src), "--output", str(out), "--batch-size", "4",
                 "--max-length", "100", "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out}: 8 pairs of 3 rows")
    assert load_train_data(out).examples[1].pos_scores is not None
    assert main(["score-pairs", str(tmp_path / "nope"), "-i", str(src), "-o", str(tmp_path / "o2.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "offline" in err and "Traceback" not in err
