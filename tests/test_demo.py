"""The reduced `make demo`, end to end, so the main job cannot rot."""

import json

import pytest


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    """The reduced demo, run once for the tests below: ``(tmp_path, output folder, summary)``."""
    from rich.console import Console

    from embedkit.demo import run_demo

    tmp_path = tmp_path_factory.mktemp("demo")
    out = tmp_path / "demo-output"
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("EMBEDKIT_CACHE", str(tmp_path / "cache"))
        summary = run_demo(out, small=True, console=Console(file=open(tmp_path / "log.txt", "w"), width=120))
    return tmp_path, out, summary


@pytest.mark.slow
def test_small_demo_end_to_end(small_demo):
    tmp_path, out, summary = small_demo
    assert summary["manifest_ok"] and summary["st_max_abs_diff"] <= 1e-5
    # the reduced run (one short epoch) checks the pipeline, not the gain: with before and after on equal specs its
    # few steps barely move nDCG; the full demo's measured gain is in docs/demo.md
    assert 0.0 < summary["before"]["ndcg@10"] <= 1.0 and 0.0 < summary["after"]["ndcg@10"] <= 1.0
    for rel in ("data/train.jsonl", "data/train.mined.jsonl", "data/test/corpus.jsonl", "train/model/modules.json",
                "train/metrics.jsonl", "train/loss_curve.png", "train/eval_before_after.png",
                "eval_before_after.png", "eval_report.md", "summary.json"):
        assert (out / rel).is_file(), rel
    assert json.loads((out / "summary.json").read_text())["small"] is True
    # a comparison changes one thing: before and after are evaluated with the same spec (lengths included), so the
    # demo's "before" is the trainer's "before" and the two charts agree
    assert summary["spec_before"] == summary["spec_after"]
    assert summary["spec_before"]["query_max_length"] == 64 and summary["spec_before"]["passage_max_length"] == 128
    phases = {r["phase"]: r["eval"] for r in map(json.loads, (out / "train/metrics.jsonl").read_text().splitlines())
              if "phase" in r}
    assert abs(phases["before"]["ndcg@10"] - summary["before"]["ndcg@10"]) < 1e-6
    assert abs(phases["after"]["ndcg@10"] - summary["after"]["ndcg@10"]) < 1e-6
    assert not (tmp_path / "cache").exists()  # the demo writes nothing outside its output folder


@pytest.mark.slow
def test_small_rerank_step_on_the_finished_demo(small_demo, monkeypatch):
    """``python -m embedkit.demo --rerank`` on a finished (reduced) demo: reuses its data and embedder, fine-tunes a
    reranker from MiniLM on the mined negatives, and reports retrieval only / + base reranker / + fine-tuned."""
    from rich.console import Console

    from embedkit.demo import RERANK_TOP_K, run_rerank_demo

    tmp_path, out, first = small_demo
    monkeypatch.setenv("EMBEDKIT_CACHE", str(tmp_path / "cache"))
    log = tmp_path / "rerank-log.txt"
    summary = run_rerank_demo(out, small=True, console=Console(file=open(log, "w"), width=200))
    text = log.read_text()
    assert "reusing the demo" in text and "+ base reranker (MiniLM, untrained head)" in text
    two = summary["two_stage"]
    assert two["top_k"] == RERANK_TOP_K and "untrained" in two["base_reranker"]
    # retrieval only is the demo's fine-tuned embedder: the demo's "after", evaluated again by the reranker trainer
    assert abs(two["retrieval"]["ndcg@10"] - first["after"]["ndcg@10"]) < 1e-6
    for stage in ("retrieval", "base", "fine_tuned"):
        assert 0.0 < two[stage]["ndcg@10"] <= 1.0
        # reranking reorders the top k only: recall at k and beyond is retrieval's
        assert two[stage]["recall@100"] == two["retrieval"]["recall@100"]
    for rel in ("rerank/model/config.json", "rerank/metrics.jsonl", "rerank/eval_before_after.png",
                "rerank_report.md", "rerank_two_stage.png"):
        assert (out / rel).is_file(), rel
    saved = json.loads((out / "summary.json").read_text())
    assert saved["two_stage"]["fine_tuned"] == two["fine_tuned"] and "rerank" in saved["seconds"]
    assert not (tmp_path / "cache").exists()
