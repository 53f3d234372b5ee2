"""embedkit release (issue 17): a fake FlagEmbedding training output and a LoRA adapter -> verified releases; the
refusals (assumed spec, ZeRO-only folder), a parity failure that leaves no DST, resuming, and kill -9 mid-release."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from embedkit import CheckpointError, Embedder, SpecError
from embedkit.checkpoint.manifest import verify_manifest
from embedkit.cli import main
from embedkit.release import ReleaseOptions, plan_release, release, work_dir
from tests.eval.test_eval import _bench

ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["the quick brown fox", "hello world cat", "", "中文 测试", "what is bge " * 40]
TRAINING_FILES = {"optimizer.pt", "scheduler.pt", "rng_state_0.pth", "trainer_state.json", "training_args.bin",
                  "global_step10/zero_pp_rank_0_mp_rank_00_optim_states.pt"}


def make_flag_output(model_dir: Path, folder: Path) -> Path:
    """What a FlagEmbedding (HF Trainer + DeepSpeed) run leaves in output_dir/checkpoint-N."""
    shutil.copytree(model_dir, folder)
    torch.save({"state": {0: {"exp_avg": torch.zeros(1000)}}}, folder / "optimizer.pt")
    torch.save({"last_epoch": 3}, folder / "scheduler.pt")
    torch.save({"python": 1}, folder / "rng_state_0.pth")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 10}))
    (folder / "training_args.bin").write_bytes(b"\x80\x04pickled-args")
    (folder / "global_step10").mkdir()
    (folder / "global_step10" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"0" * 4096)
    return folder


def _dropped_in_release_md(folder: Path) -> set[str]:
    text = (folder / "RELEASE.md").read_text(encoding="utf-8")
    section = text.split("### Dropped", 1)[1].split("\n#", 1)[0]
    return set(re.findall(r"^- `([^`]+)`", section, flags=re.M))


def _close(a, b, atol=1e-5):
    return np.allclose(np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32), atol=atol)


@pytest.fixture(scope="module")
def flag_output(tiny_bert, tmp_path_factory):
    return make_flag_output(tiny_bert, tmp_path_factory.mktemp("run") / "checkpoint-10")


@pytest.fixture(scope="module")
def released(flag_output, tmp_path_factory):
    from embedkit.checkpoint.manifest import generate_keypair

    private, _public = generate_keypair(tmp_path_factory.mktemp("keys") / "release.key")
    dst = tmp_path_factory.mktemp("releases") / "bge-tiny-ft"
    return dst, release(flag_output, dst, ReleaseOptions(pooling="cls", sign=str(private)), texts=TEXTS)


def test_release_loads_everywhere_with_equal_vectors(released, flag_output, capsys):
    from FlagEmbedding import FlagModel
    from sentence_transformers import SentenceTransformer

    dst, report = released
    public = report.snippets["verify"].split("--public-key ")[1]
    assert verify_manifest(dst, public_key=public).signature == "valid"
    assert main(["verify", str(dst), "--public-key", public]) == 0 and report.signed
    assert not work_dir(dst).exists() and not [p for p in dst.parent.iterdir() if p.name.startswith(".")]
    assert all(c["passed"] for c in report.parity["checks"])
    assert {"embedkit-onnx", "sentence-transformers", "flagembedding", "recipe"} <= set(report.parity["engines"])
    ref = Embedder(dst, show_progress=False)
    q, p = ref.encode_queries(TEXTS), ref.encode_corpus(TEXTS)
    assert _close(q, Embedder(flag_output, pooling="cls", show_progress=False).encode_queries(TEXTS), 1e-6)
    onnx = Embedder(dst, backend="onnx", show_progress=False)
    assert _close(onnx.encode_queries(TEXTS), q) and _close(onnx.encode_corpus(TEXTS), p)
    assert _close(SentenceTransformer(str(dst), device="cpu").encode(TEXTS), p)
    flag = FlagModel(str(dst), pooling_method="cls", normalize_embeddings=True, use_fp16=False, devices="cpu")
    assert _close(flag.encode_queries(TEXTS), q) and _close(flag.encode_corpus(TEXTS), p)
    # RELEASE.md lists exactly what was dropped, and nothing dropped is in the release
    assert _dropped_in_release_md(dst) == TRAINING_FILES
    assert not any((dst / f).exists() for f in TRAINING_FILES)
    md = (dst / "RELEASE.md").read_text(encoding="utf-8")
    for heading in ("## Sizes", "## Parity", "### sentence-transformers", "### FlagEmbedding", "### transformers",
                    "### ONNX Runtime", "### TEI", f"embedkit verify {dst}"):
        assert heading in md
    assert report.sizes["before"] > report.sizes["before_inference"]


def test_lora_adapter_release_merges_onto_its_recorded_base(tiny_bert, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    torch.manual_seed(3)
    peft_model = get_peft_model(AutoModel.from_pretrained(str(tiny_bert)),
                                LoraConfig(r=4, target_modules=["query", "value"], init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(str(adapter))  # records base_model_name_or_path = the tiny BERT folder
    dst = tmp_path / "lora-release"
    plan = plan_release(adapter, dst, ReleaseOptions(pooling="cls", onnx=False))
    assert [s.name for s in plan.steps][:2] == ["merge", "save"] and plan.base == tiny_bert.resolve()
    bench = _bench(tmp_path / "bench")
    report = release(adapter, dst, ReleaseOptions(pooling="cls", onnx=False, eval_data=str(bench),
                                                  baseline=str(tiny_bert)), texts=TEXTS)
    assert verify_manifest(dst).ok and report.parity["ok"]
    assert set(report.metrics["release"]["metrics"]) == set(report.metrics["baseline"]["metrics"])
    md = (dst / "RELEASE.md").read_text(encoding="utf-8")
    assert "## Metrics" in md and "| metric | baseline | release | change |" in md and "before " in md
    assert "adapter_model.safetensors" in report.plan["merged"] and not (dst / "adapter_config.json").exists()
    merged = Embedder(dst, show_progress=False).encode(TEXTS)
    assert not _close(merged, Embedder(tiny_bert, pooling="cls", show_progress=False).encode(TEXTS), 1e-3)


def test_release_that_must_guess_the_spec_refuses(flag_output, tmp_path, capsys):
    dst = tmp_path / "guess"
    with pytest.raises(SpecError, match="guess") as info:
        release(flag_output, dst)
    assert "--pooling" in info.value.hint and "--accept-assumed-spec" in info.value.hint
    assert main(["release", str(flag_output), str(dst)]) == 2
    assert "--pooling" in capsys.readouterr().err
    assert not dst.exists() and not work_dir(dst).exists()
    plan = plan_release(flag_output, dst, ReleaseOptions(accept_assumed_spec=True))  # explicit: accepted
    assert plan.spec["pooling"]["value"] == "cls"


def test_zero_shards_only_refuse_naming_the_files_and_the_deepspeed_command(tiny_bert, tmp_path):
    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed installed: the shards would be consolidated")
    src = make_flag_output(tiny_bert, tmp_path / "checkpoint-10")
    (src / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="zero_pp_rank_0_mp_rank_00_optim_states.pt") as info:
        plan_release(src, tmp_path / "out", ReleaseOptions(pooling="cls"))
    assert "zero_to_fp32.py" in info.value.hint and not (tmp_path / "out").exists()


def test_parity_failure_leaves_no_dst_and_a_rerun_reuses_unchanged_steps(flag_output, tmp_path):
    dst = tmp_path / "mismatched"
    # sentence-transformers has one max_seq_length: a query limit of 3 tokens cannot be expressed in its files
    bad = ReleaseOptions(pooling="cls", onnx=False, query_max_length=3, passage_max_length=64)
    with pytest.raises(CheckpointError, match="parity failed.*sentence-transformers"):
        release(flag_output, dst, bad, texts=TEXTS)
    assert not dst.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(f".{dst.name}.tmp")]
    assert work_dir(dst).is_dir()  # finished steps kept for the re-run
    report = release(flag_output, dst, ReleaseOptions(pooling="cls", onnx=False), texts=TEXTS)
    steps = {s["name"]: s["reused"] for s in report.steps}
    assert steps == {"slim": True, "save": False}  # same source: slim reused; another spec: saved anew
    assert verify_manifest(dst).ok and not work_dir(dst).exists()


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")


@pytest.mark.slow
def test_kill_9_mid_release_leaves_no_dst_or_the_complete_one(flag_output, tmp_path):
    dst = tmp_path / "killed"
    cmd = [sys.executable, "-m", "embedkit", "release", str(flag_output), str(dst), "--pooling", "cls", "--no-onnx"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    try:  # kill once the first step is done and the rest is under way
        while time.monotonic() < deadline and proc.poll() is None:
            if work_dir(dst).is_dir() and list(work_dir(dst).glob("slim-*.json")):
                break
            time.sleep(0.05)
        time.sleep(0.5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed mid-release, not finished
    assert not dst.exists() or verify_manifest(dst).ok
    # the re-run (the CLI: plan first, then the JSON report) reuses the finished slim step
    done = subprocess.run(cmd + ["--overwrite", "--json"], env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.index("release plan:") < done.stderr.index("... parity")
    assert "dropped: optimizer.pt" in done.stderr
    report = json.loads(done.stdout)
    assert set(report["plan"]["dropped"]) == TRAINING_FILES and report["parity"]["ok"]
    assert report["steps"][0] == {**report["steps"][0], "name": "slim", "reused": True}
    assert "embedkit-onnx" in report["parity"]["skipped"] and not (dst / "onnx").exists()
    assert verify_manifest(dst).ok and not work_dir(dst).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
