"""The reduced `make demo`, end to end, so the main job cannot rot."""

import json

import pytest


@pytest.mark.slow
def test_small_demo_end_to_end(tmp_path):
    from rich.console import Console

    from embedkit.demo import run_demo

    out = tmp_path / "demo-output"
    summary = run_demo(out, small=True, console=Console(file=open(tmp_path / "log.txt", "w"), width=120))
    assert summary["manifest_ok"] and summary["st_max_abs_diff"] <= 1e-5
    assert summary["after"]["ndcg@10"] > summary["before"]["ndcg@10"]
    for rel in ("data/train.jsonl", "data/train.mined.jsonl", "data/test/corpus.jsonl", "train/model/modules.json",
                "train/metrics.jsonl", "train/loss_curve.png", "train/eval_before_after.png",
                "eval_before_after.png", "eval_report.md", "summary.json"):
        assert (out / rel).is_file(), rel
    assert json.loads((out / "summary.json").read_text())["small"] is True
