"""The reduced `make demo`, end to end, so the main job cannot rot."""

import json

import pytest


@pytest.mark.slow
def test_small_demo_end_to_end(tmp_path, monkeypatch):
    from rich.console import Console

    from embedkit.demo import run_demo

    out = tmp_path / "demo-output"
    monkeypatch.setenv("EMBEDKIT_CACHE", str(tmp_path / "cache"))
    summary = run_demo(out, small=True, console=Console(file=open(tmp_path / "log.txt", "w"), width=120))
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
