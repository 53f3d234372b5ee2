"""End-to-end fine-tuning on a tiny model: real Trainer, real files, real peers loading the output."""

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from embedkit import Embedder
from embedkit.checkpoint.manifest import verify_manifest
from embedkit.cli import main
from embedkit.train.arguments import parse_args
from embedkit.train.trainer import run

WORDS = "the quick brown fox jumps over lazy dog a long text that goes past max length short".split()
TOPICS = {"cat": "the cat", "dog": "a dog", "fox": "quick brown fox", "world": "hello world", "bge": "what is bge"}


def make_data(path, n=64, scores=False, seed=0):
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(n):
            k = rng.choice(list(TOPICS))
            row = {"query": f"{k} {rng.choice(WORDS)}", "pos": [f"{TOPICS[k]} {rng.choice(WORDS)} {k}"],
                   "neg": [f"{rng.choice(WORDS)} {rng.choice(WORDS)}" for _ in range(3)]}
            if scores:
                row["pos_scores"], row["neg_scores"] = [5.0], [1.0, 0.5, 0.0]
            fh.write(json.dumps(row) + "\n")
    return path


def _args(tiny_bert, data, out, *extra):
    return ["--model_name_or_path", str(tiny_bert), "--pooling", "cls", "--normalize", "true",
            "--train_data", str(data), "--output_dir", str(out), "--per_device_train_batch_size", "8",
            "--train_group_size", "4", "--learning_rate", "1e-3", "--logging_steps", "5",
            "--query_max_length", "16", "--passage_max_length", "24", "--seed", "0", *extra]


def _losses(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r], rows


@pytest.fixture(scope="module")
def trained(tiny_bert, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ft")
    data = make_data(tmp / "train.jsonl")
    out = tmp / "out"
    final = run(*parse_args(_args(tiny_bert, data, out, "--max_steps", "30", "--save_strategy", "steps",
                                  "--save_steps", "10")))
    return data, out, final


def test_loss_decreases_and_outputs_exist(trained):
    _, out, final = trained
    losses, rows = _losses(out)
    assert len(losses) == 6 and np.mean(losses[-2:]) < np.mean(losses[:2])
    assert rows[0]["queries_in_loss"] == 8 and rows[0]["passages_in_loss"] == 32  # in-batch negatives
    assert (out / "loss_curve.png").stat().st_size > 1000 and (out / "data_summary.json").is_file()
    assert final == out / "model" and verify_manifest(final).ok
    for step in (10, 20, 30):
        assert (out / f"checkpoint-{step}" / "model.safetensors").is_file()
        assert (out / f"checkpoint-{step}" / "modules.json").is_file()


def test_trained_model_loads_in_sentence_transformers_with_equal_vectors(trained):
    from sentence_transformers import SentenceTransformer

    _, _, final = trained
    ours = Embedder(final, show_progress=False)
    assert (ours.spec.pooling, ours.spec.query_max_length, ours.spec.passage_max_length) == ("cls", 16, 24)
    st = SentenceTransformer(str(final), device="cpu", local_files_only=True)
    texts = ["the quick brown fox", "hello world cat", ""]
    assert np.abs(st.encode(texts) - ours.encode_corpus(texts)).max() <= 1e-5


def test_resume_from_checkpoint(trained, tiny_bert, tmp_path):
    import shutil

    data, out, _ = trained
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(out / "checkpoint-20", resumed / "checkpoint-20")
    run(*parse_args(_args(tiny_bert, data, resumed, "--max_steps", "30", "--save_strategy", "no",
                          "--resume_from_checkpoint", str(resumed / "checkpoint-20"))))
    losses, rows = _losses(resumed)
    assert [r["step"] for r in rows if "loss" in r] == [25, 30]  # continued from step 20


def test_output_dir_is_required_and_an_earlier_run_is_never_mixed_in(trained, tiny_bert, tmp_path, capsys):
    from embedkit.cli import main
    from embedkit.errors import ArgumentError

    data, out, _ = trained
    argv = _args(tiny_bert, data, out, "--max_steps", "2", "--save_strategy", "no")
    no_out = [a for i, a in enumerate(argv) if a != "--output_dir" and argv[i - 1] != "--output_dir"]
    with pytest.raises(ArgumentError, match="--output_dir is required"):
        parse_args(no_out)
    with pytest.raises(ArgumentError, match="is not empty") as exc:  # the trained run's folder
        parse_args(argv)
    assert "--resume_from_checkpoint" in exc.value.hint and "--overwrite_output_dir" in exc.value.hint
    assert main(["finetune", *argv]) == 2
    assert "error: --output_dir" in capsys.readouterr().err
    # --overwrite_output_dir replaces the earlier run: its checkpoints and metrics do not mix with the new ones
    again = tmp_path / "again"
    import shutil

    shutil.copytree(out, again)
    run(*parse_args(_args(tiny_bert, data, again, "--max_steps", "2", "--save_strategy", "no", "--logging_steps",
                          "1", "--overwrite_output_dir")))
    assert not list(again.glob("checkpoint-*"))
    _, rows = _losses(again)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]


def test_no_in_batch_negatives_and_kd(tiny_bert, tmp_path):
    data = make_data(tmp_path / "kd.jsonl", scores=True)
    out = tmp_path / "kd"
    run(*parse_args(_args(tiny_bert, data, out, "--max_steps", "5", "--save_strategy", "no",
                          "--no-in-batch-negatives")))
    _, rows = _losses(out)
    assert rows[0]["passages_in_loss"] == 32 and "kd_loss" in rows[0]


def test_lora_and_merge(tiny_bert, tmp_path):
    data = make_data(tmp_path / "t.jsonl")
    out = tmp_path / "lora"
    final = run(*parse_args(_args(tiny_bert, data, out, "--max_steps", "10", "--save_strategy", "no",
                                  "--lora", "--lora_r", "4", "--merge_lora", "--learning_rate", "1e-2")))
    assert final == out / "adapter" and (final / "adapter_config.json").is_file()
    assert (final / "adapter_model.safetensors").is_file() and (final / "modules.json").is_file()
    merged = Embedder(out / "merged", show_progress=False)
    base = Embedder(tiny_bert, pooling="cls", normalize=True, show_progress=False)
    texts = ["the quick brown fox", "hello world"]
    assert np.abs(merged.encode(texts) - base.encode(texts)).max() > 1e-4  # the adapter changed something
    # the merged model equals base + adapter through peft
    import torch
    from peft import PeftModel
    from transformers import AutoModel, AutoTokenizer

    peft_model = PeftModel.from_pretrained(AutoModel.from_pretrained(str(tiny_bert)), str(final)).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    with torch.no_grad():
        h = peft_model(**tok(texts, padding=True, return_tensors="pt")).last_hidden_state[:, 0]
    ref = torch.nn.functional.normalize(h, dim=-1).numpy()
    assert np.abs(merged.encode(texts) - ref).max() <= 1e-4


def test_grad_cache_run(tiny_bert, tmp_path):
    data = make_data(tmp_path / "t.jsonl")
    out = tmp_path / "gc"
    run(*parse_args(_args(tiny_bert, data, out, "--max_steps", "5", "--save_strategy", "no",
                          "--grad_cache_chunk", "4")))
    losses, _ = _losses(out)
    assert losses and all(np.isfinite(losses))


def test_cli_help_config_and_bad_data(tiny_bert, tmp_path, capsys):
    assert main(["finetune", "--help"]) == 0
    assert "--train_group_size" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "pos": ["p"]}\n{"query": "q"}\n')
    config = tmp_path / "train.yaml"
    config.write_text(f"model_name_or_path: {tiny_bert}\ntrain_data: [{bad}]\noutput_dir: {tmp_path / 'o'}\n"
                      "max_steps: 2\npooling: cls\n")
    assert main(["finetune", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2: missing 'pos'" in err and "--skip-invalid" in err
    assert main(["finetune", "--config", str(config), "--skip_invalid", "--save_strategy", "no",
                 "--normalize", "true"]) == 0
    assert (tmp_path / "o" / "model" / "model.safetensors").is_file()


def test_torchrun_on_cpu_as_the_readme_says(tiny_bert, tmp_path):
    """The README's line exactly (no --ddp_backend / --use_cpu): on a machine without a GPU the two processes form
    one gloo group on the CPU, log once, synchronise gradients, gather cross-device negatives, and only rank 0
    writes (checkpoints complete with both ranks' RNG states)."""
    import yaml

    data = make_data(tmp_path / "t.jsonl")
    out = tmp_path / "ddp"
    tokens = _args(tiny_bert, data, out, "--max_steps", "3", "--save_strategy", "steps", "--save_steps", "2",
                   "--logging_steps", "1")
    config = {tokens[i][2:]: tokens[i + 1] for i in range(0, len(tokens), 2)}
    config["train_data"] = [config["train_data"]]
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    readme = "torchrun --nproc_per_node 2 -m embedkit.train --config train.yaml --negatives_cross_device"
    cmd = [torchrun, *readme.split()[1:]]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PET_MASTER_PORT=str(29500 + os.getpid() % 1000),
               PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
                                           os.environ.get("PYTHONPATH", "")]))
    env["CUDA_VISIBLE_DEVICES"] = ""  # a machine without a GPU, even where the tests run on one
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    logs = proc.stdout + proc.stderr
    assert proc.returncode == 0, logs[-3000:]
    assert logs.count("distributed training on the CPU with the gloo backend") == 1, logs[-3000:]
    assert logs.count("weights identical on all 2 processes") == 1, logs[-3000:]  # gradients were synchronised
    assert proc.stdout.count("trained model:") == 1 and logs.count("{'loss': ") == 3  # rank 0 logs, once a step
    _, rows = _losses(out)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]  # each metrics line once
    local = 8
    assert rows[0]["queries_in_loss"] == 2 * local and rows[0]["passages_in_loss"] == 2 * local * 4
    checkpoint = out / "checkpoint-2"
    for name in ("model.safetensors", "config.json", "trainer_state.json", "rng_state_0.pth", "rng_state_1.pth"):
        assert (checkpoint / name).is_file(), name
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]
    assert Embedder(out / "model", device="cpu", show_progress=False).encode(["hello"]).shape == (1, 32)


def test_eval_data_before_during_after(tiny_bert, tmp_path):
    from tests.eval.test_eval import _bench

    data = make_data(tmp_path / "t.jsonl")
    bench = _bench(tmp_path / "bench")
    out = tmp_path / "ev"
    final = run(*parse_args(_args(tiny_bert, data, out, "--max_steps", "10", "--save_strategy", "no",
                                  "--eval_data", str(bench), "--eval_steps", "5")))
    _, rows = _losses(out)
    phases = [r["phase"] for r in rows if "phase" in r]
    assert phases == ["before", "step-5", "after"]
    assert all("ndcg@10" in r["eval"] for r in rows if "phase" in r)
    assert (out / "eval_before_after.png").stat().st_size > 1000
    card = (final / "README.md").read_text()
    assert "## Metrics" in card and "ndcg@10" in card and "→" in card
