"""Retrieval evaluation: metrics by hand, every accepted layout, errors, cache, compare."""

import json

import numpy as np
import pytest

from embedkit import DataError, Embedder
from embedkit.cli import main
from embedkit.eval import compute_metrics, evaluate, load_eval_data
from embedkit.eval.retrieval import plot_comparison


def test_metrics_match_hand_computation():
    qrels = {"q1": {"d1": 1, "d3": 1}, "q2": {"d2": 2}}
    run = {"q1": {"d1": 0.9, "d2": 0.8, "d3": 0.7}, "q2": {"d1": 0.9, "d3": 0.8, "d2": 0.7}}
    m = compute_metrics(qrels, run, ks=(1, 3))
    idcg_q1 = 1 + 1 / np.log2(3)
    expected = {
        "ndcg@3": ((1 + 0.5) / idcg_q1 + 0.5) / 2,  # q2: gain 2 at rank 3 -> 2/2 over ideal 2/1
        "ndcg@1": (1 + 0) / 2,
        "recall@1": (0.5 + 0) / 2, "recall@3": 1.0,
        "precision@1": 0.5, "precision@3": (2 / 3 + 1 / 3) / 2,
        "mrr@1": 0.5, "mrr@3": (1 + 1 / 3) / 2,
        "map@1": (0.5 + 0) / 2, "map@3": ((1 + 2 / 3) / 2 + 1 / 3) / 2,
    }
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, abs=1e-5), key


def test_missing_queries_score_zero():
    m = compute_metrics({"q1": {"d1": 1}, "q2": {"d1": 1}}, {"q1": {"d1": 1.0}}, ks=(1,))
    assert m["ndcg@1"] == pytest.approx(0.5) and m["mrr@1"] == pytest.approx(0.5)


def _bench(folder, layout="custom", split="test"):
    folder.mkdir(parents=True, exist_ok=True)
    docs = {"d1": ("Cats", "the cat sat on the mat"), "d2": ("Dogs", "a dog jumps over the fox"),
            "d3": ("", "hello world what is bge"), "d4": ("Fox", "quick brown fox")}
    (folder / "corpus.jsonl").write_text("\n".join(
        json.dumps({"_id" if layout == "beir" else "id": k, "title": t, "text": x}) for k, (t, x) in docs.items()))
    qfile = "queries.jsonl" if layout != "split" else f"{split}_queries.jsonl"
    (folder / qfile).write_text("\n".join(json.dumps({"id": q, "text": t}) for q, t in
                                          [("q1", "where is the cat"), ("q2", "dog"), ("q3", "no judgement")]))
    pairs = [("q1", "d1", 1), ("q2", "d2", 1)]
    if layout == "beir":
        (folder / "qrels").mkdir()
        (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" +
                                                       "\n".join(f"{q}\t{d}\t{r}" for q, d, r in pairs))
    else:
        name = "qrels.jsonl" if layout == "custom" else f"{split}_qrels.jsonl"
        (folder / name).write_text("\n".join(json.dumps({"qid": q, "docid": d, "relevance": r})
                                             for q, d, r in pairs))
    return folder


@pytest.mark.parametrize("layout", ["custom", "split", "beir"])
def test_layouts(tmp_path, layout):
    data = load_eval_data(_bench(tmp_path / layout, layout), "test")
    assert len(data.corpus) == 4 and set(data.queries) == {"q1", "q2"} and data.dropped_queries == 1
    assert data.corpus["d1"] == "Cats the cat sat on the mat" and data.corpus["d3"] == "hello world what is bge"


@pytest.mark.parametrize("mutate, message", [
    (lambda f: (f / "qrels.jsonl").write_text('{"qid": "q1", "docid": "nope", "relevance": 1}'),
     "qrels.jsonl:1: unknown document id 'nope'"),
    (lambda f: (f / "qrels.jsonl").write_text('{"qid": "qX", "docid": "d1", "relevance": 1}'),
     "qrels.jsonl:1: unknown query id 'qX'"),
    (lambda f: (f / "qrels.jsonl").write_text('{"qid": "q1", "docid": "d1"}\n{"qid": "q1", "docid": "d1"}'),
     "qrels.jsonl:2: duplicate judgement"),
    (lambda f: (f / "corpus.jsonl").write_text('{"id": "d1", "text": "a"}\n{"id": "d1", "text": "b"}'),
     "corpus.jsonl:2: duplicate document id 'd1'"),
    (lambda f: (f / "corpus.jsonl").write_text('{"id": "d1", "text": 3}'), "corpus.jsonl:1: 'text' is int"),
    (lambda f: (f / "queries.jsonl").write_text('{"text": "x"}'), "queries.jsonl:1: missing 'id'"),
    (lambda f: (f / "queries.jsonl").write_text('{"id": 1, "text": "x"'), "queries.jsonl:1: invalid JSON"),
    (lambda f: (f / "qrels.jsonl").unlink(), "no qrels file"),
    (lambda f: (f / "qrels.jsonl").write_text('{"qid": "q1", "docid": "d1", "relevance": "high"}'),
     "'relevance' must be an integer"),
])
def test_errors_name_file_and_line(tmp_path, mutate, message):
    folder = _bench(tmp_path / "b")
    mutate(folder)
    with pytest.raises(DataError) as info:
        load_eval_data(folder)
    assert message in info.value.message


def test_not_a_folder(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        load_eval_data(tmp_path / "missing")


def test_evaluate_minilm_and_cache(tmp_path, minilm, minilm_dir):
    folder = _bench(tmp_path / "b")
    cache = tmp_path / "cache"
    first = evaluate(minilm, folder, ks=(1, 3), cache_dir=cache)
    assert not first.cache_hit and first.metrics["recall@3"] == 1.0 and first.metrics["ndcg@1"] == 1.0
    assert len(list(cache.glob("*.npy"))) == 1
    second = evaluate(minilm, folder, ks=(1, 3), cache_dir=cache)
    assert second.cache_hit and second.metrics == first.metrics
    # a different spec (another query instruction does not change the corpus, pooling does) -> new entry
    other = Embedder(minilm_dir, pooling="cls", show_progress=False)
    assert not evaluate(other, folder, ks=(1,), cache_dir=cache).cache_hit
    # a changed corpus -> new entry
    with open(folder / "corpus.jsonl", "a") as fh:
        fh.write('\n{"id": "d5", "text": "a new document"}')
    assert not evaluate(minilm, folder, ks=(1,), cache_dir=cache).cache_hit
    assert len(list(cache.glob("*.npy"))) == 3


def test_compare_cli_report_and_plot(tmp_path, tiny_bert, capsys, monkeypatch):
    monkeypatch.setenv("EMBEDKIT_CACHE", str(tmp_path / "cache"))
    folder = _bench(tmp_path / "b")
    report = tmp_path / "report.md"
    rc = main(["eval", "minilm", "--data", str(folder), "--k", "1,3", "--compare", str(tiny_bert), "--output",
               str(report), "--json"])
    assert rc == 0
    payload = json.loads(capsys.readouterr().out)
    assert len(payload["results"]) == 2 and "ndcg@3" in payload["delta"]
    d = payload["delta"]["ndcg@3"]
    assert d["delta"] == pytest.approx(d["b"] - d["a"], abs=1e-6)
    text = report.read_text()
    assert "| metric |" in text and "delta" in text
    assert (tmp_path / "eval_comparison.png").stat().st_size > 1000
    assert main(["eval", "minilm", "--data", str(folder), "--k", "0"]) == 2
    assert main(["eval", "minilm", "--data", str(tmp_path / "none")]) == 2


def test_plot_comparison(tmp_path):
    from embedkit.eval.retrieval import EvalResult

    a = EvalResult("a", {}, {"ndcg@10": 0.3, "recall@10": 0.5, "mrr@10": 0.2, "map@10": 0.25}, (10,))
    b = EvalResult("b", {}, {"ndcg@10": 0.4, "recall@10": 0.6, "mrr@10": 0.3, "map@10": 0.35}, (10,))
    png = plot_comparison([a, b], tmp_path / "x.png", labels=["before", "after"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
