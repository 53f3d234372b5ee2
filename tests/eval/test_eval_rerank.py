"""Two-stage evaluation (retrieve, rerank the top k): metrics checked against a direct computation.

A tiny random embedder (conftest's BERT) and a tiny random ``BertForSequenceClassification`` reranker on a small
benchmark. The direct computation is independent of the code under test: numpy exact search over the embedder's
vectors, FlagEmbedding's ``FlagReranker`` for the pair scores, and nDCG / recall written out by hand.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from embedkit import Embedder, Reranker, SpecError
from embedkit.cli import main
from embedkit.eval import evaluate, evaluate_two_stage, load_eval_data
from embedkit.eval.rerank import rerank_run
from tests.conftest import _TINY_WORDS, _write_tiny_tokenizer

KS = (1, 3, 5, 10)


def _build_reranker(folder: Path, seed: int = 3) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    _write_tiny_tokenizer(folder, model_max_length=128)
    vocab_size = len((folder / "vocab.txt").read_text(encoding="utf-8").split("\n")) - 1
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128, num_labels=1, initializer_range=0.2)
    BertForSequenceClassification(config).eval().save_pretrained(str(folder))
    return folder


def _bench(folder: Path, n_docs: int = 30, n_queries: int = 8, seed: int = 0) -> Path:
    """Random texts of the tiny vocabulary; each query has 1-3 relevant documents (graded 1 or 2) and one judged
    irrelevant (0); one query without a relevant document is dropped."""
    rng = np.random.default_rng(seed)
    words = sorted(set(_TINY_WORDS))
    folder.mkdir(parents=True, exist_ok=True)
    docs = {f"d{i}": " ".join(rng.choice(words, size=int(rng.integers(4, 14)))) for i in range(n_docs)}
    (folder / "corpus.jsonl").write_text("\n".join(json.dumps({"id": k, "title": "", "text": v})
                                                   for k, v in docs.items()))
    queries = {f"q{i}": " ".join(rng.choice(words, size=int(rng.integers(2, 6)))) for i in range(n_queries + 1)}
    (folder / "queries.jsonl").write_text("\n".join(json.dumps({"id": k, "text": v}) for k, v in queries.items()))
    lines = []
    for i in range(n_queries):
        picked = rng.choice(n_docs, size=4, replace=False)
        lines += [{"qid": f"q{i}", "docid": f"d{j}", "relevance": int(rng.integers(1, 3))}
                  for j in picked[:int(rng.integers(1, 4))]]
        lines.append({"qid": f"q{i}", "docid": f"d{picked[3]}", "relevance": 0})
    lines.append({"qid": f"q{n_queries}", "docid": "d0", "relevance": 0})
    (folder / "qrels.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    return folder


def _ndcg(ranking: list[str], rels: dict[str, int], k: int) -> float:
    dcg = sum(rels.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranking[:k]))
    ideal = sorted((r for r in rels.values() if r > 0), reverse=True)[:k]
    return dcg / sum(r / math.log2(i + 2) for i, r in enumerate(ideal))


def _recall(ranking: list[str], rels: dict[str, int], k: int) -> float:
    relevant = {d for d, r in rels.items() if r > 0}
    return len(relevant & set(ranking[:k])) / len(relevant)


@pytest.fixture(scope="module")
def reranker_dir(tmp_path_factory) -> Path:
    return _build_reranker(tmp_path_factory.mktemp("rerankers") / "tiny-reranker")


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    return _bench(tmp_path_factory.mktemp("bench") / "b")


@pytest.fixture(scope="module")
def embedder_dir(tiny_bert, tmp_path_factory) -> Path:
    """The tiny BERT with mean pooling recorded (its CLS vectors are all nearly equal: ties would decide ranks)."""
    from embedkit.spec import EmbedderSpec, write_sentence_transformers_files

    folder = tmp_path_factory.mktemp("embedders") / "tiny-mean"
    shutil.copytree(tiny_bert, folder)
    write_sentence_transformers_files(folder, EmbedderSpec(pooling="mean", normalize=True, query_max_length=128,
                                                                passage_max_length=128),
                                      hidden_size=32)
    return folder


@pytest.fixture(scope="module")
def embedder(embedder_dir) -> Embedder:
    return Embedder(embedder_dir, device="cpu", show_progress=False)


@pytest.fixture(scope="module")
def reranker(reranker_dir) -> Reranker:
    return Reranker(reranker_dir, device="cpu", show_progress=False)


@pytest.fixture(scope="module")
def direct(embedder, reranker_dir, bench):
    """Each query's retrieval ranking (numpy exact search) and FlagReranker's scores of its top 10."""
    from FlagEmbedding import FlagReranker

    data = load_eval_data(bench)
    doc_ids, qids = list(data.corpus), list(data.queries)
    corpus = embedder.encode_corpus(list(data.corpus.values()))
    queries = embedder.encode_queries([data.queries[q] for q in qids])
    sims = queries @ corpus.T
    flag = FlagReranker(str(reranker_dir), use_fp16=False, devices="cpu")
    out = {}
    for i, q in enumerate(qids):
        ranking = [doc_ids[j] for j in np.argsort(-sims[i], kind="stable")]
        scores = flag.compute_score([(data.queries[q], data.corpus[d]) for d in ranking[:10]])
        out[q] = (ranking, [float(s) for s in scores])
    return data, out


def _expected(data, direct, top_k: int) -> dict[str, float]:
    """nDCG@k and recall@k of retrieval + reranking the top ``top_k`` (the rest after them, in retrieval order)."""
    out: dict[str, float] = {}
    for k in KS:
        nd, rc = [], []
        for q, (ranking, scores) in direct.items():
            head = ranking[:top_k]
            order = sorted(range(len(head)), key=lambda i: -scores[i])
            final = [head[i] for i in order] + ranking[top_k:]
            nd.append(_ndcg(final, data.qrels[q], k))
            rc.append(_recall(final, data.qrels[q], k))
        out[f"ndcg@{k}"], out[f"recall@{k}"] = float(np.mean(nd)), float(np.mean(rc))
    return out


@pytest.mark.parametrize("top_k", [10, 4])
def test_two_stage_metrics_match_direct_computation(embedder, reranker, bench, direct, top_k):
    data, ranked = direct
    result = evaluate_two_stage(embedder, reranker, data, top_k=top_k, ks=KS, cache_dir=None)
    # stage 1 is plain retrieval evaluation, exactly
    assert result.retrieval.metrics == evaluate(embedder, data, ks=KS, cache_dir=None).metrics
    for key, value in _expected(data, ranked, top_k=0).items():  # top_k=0: retrieval order unchanged
        assert result.retrieval.metrics[key] == pytest.approx(value, abs=1e-5), key
    for key, value in _expected(data, ranked, top_k=top_k).items():
        assert result.reranked.metrics[key] == pytest.approx(value, abs=1e-5), key
    assert result.reranked.extra["pairs"] == len(data.queries) * top_k
    assert result.reranked.extra["top_k"] == top_k and result.reranked.extra["precision"] == "fp32"
    # the random reranker does reorder: the check above is not retrieval compared with itself
    assert result.reranked.metrics != result.retrieval.metrics
    if top_k == 4:  # k > top_k: the tail is retrieval's, so the documents in the top 10 are the same set
        assert result.reranked.metrics["recall@10"] == result.retrieval.metrics["recall@10"]
    payload = result.to_dict()
    assert [r["stage"] for r in payload["results"]] == ["retrieval", "rerank"]
    d = payload["delta"]["ndcg@10"]
    assert d["delta"] == pytest.approx(d["b"] - d["a"], abs=1e-6)
    assert "| metric |" in result.markdown() and "delta" in result.markdown()


class _FixedScores:
    """Anything with ``compute_score`` reranks (real models give identical pairs scores that differ in the last
    bits across batch rows, so exact ties need fixed scores)."""

    def __init__(self, scores: list[float]) -> None:
        self.scores, self.seen = scores, []

    def compute_score(self, pairs, batch_size=None, show_progress=None):
        self.seen.append(list(pairs))
        return self.scores[:len(pairs)]


def test_rerank_run_orders_ties_by_retrieval_and_keeps_the_tail(reranker, bench):
    data = load_eval_data(bench)
    q1, q2 = list(data.queries)[:2]
    run = {q1: {"d0": 0.9, "d1": 0.8, "d2": 0.7, "d3": 0.6}, q2: {"d4": 0.9, "d5": 0.8, "d6": 0.7}}
    fixed = _FixedScores([0.1, 0.5, 0.1, 0.3, 2.0, 0.0])  # q1's top 3, then q2's top 3
    out, n = rerank_run(fixed, data, run, top_k=3)
    assert n == 6 and fixed.seen[0][0] == (data.queries[q1], data.corpus["d0"])
    assert list(out[q1]) == ["d1", "d0", "d2", "d3"]  # d0 / d2 tie at 0.1: retrieval order; d3 past top_k stays last
    assert list(out[q2]) == ["d5", "d4", "d6"]
    assert list(out[q1].values()) == [4.0, 3.0, 2.0, 1.0]  # rank-based: no ties left for pytrec_eval to break
    with pytest.raises(SpecError, match="top_k"):
        rerank_run(reranker, data, run, top_k=0)
    with pytest.raises(SpecError, match="top_k"):
        evaluate_two_stage("minilm", reranker, data, top_k=0)


def test_cli_prints_both_stages(embedder_dir, reranker_dir, bench, direct, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EMBEDKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COLUMNS", "250")
    data, ranked = direct
    args = ["eval", str(embedder_dir), "--data", str(bench), "--k", "1,3,5,10", "--rerank", str(reranker_dir),
            "--rerank-top-k", "4", "--rerank-batch-size", "7"]
    assert main([*args, "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    retrieval, reranked = payload["results"]
    assert reranked["stage"] == "rerank" and reranked["top_k"] == 4
    for key, value in _expected(data, ranked, top_k=4).items():
        assert reranked["metrics"][key] == pytest.approx(value, abs=1e-5), key
    assert payload["delta"]["ndcg@10"]["a"] == retrieval["metrics"]["ndcg@10"]

    report = tmp_path / "out" / "report.md"
    assert main([*args, "--output", str(report)]) == 0
    out = capsys.readouterr().out
    assert "retrieval:" in out and "+ rerank:" in out and "(top 4)" in out and "delta" in out
    ndcg_row = next(line for line in out.splitlines() if "ndcg@10" in line)
    assert f"{retrieval['metrics']['ndcg@10']:.4f}" in ndcg_row and f"{reranked['metrics']['ndcg@10']:.4f}" in ndcg_row
    assert "Two-stage evaluation" in report.read_text()
    assert (report.parent / "eval_two_stage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert main([*args, "--compare", str(embedder_dir)]) == 2
    assert "cannot be combined" in capsys.readouterr().err
