"""Unified bge-m3 fine-tuning: loss decreases, heads saved and loaded back by FlagEmbedding."""

import json

import numpy as np
import pytest
import torch

from embedkit.m3 import M3Embedder
from embedkit.train.arguments import parse_args
from embedkit.train.loss import kd_loss
from embedkit.train.trainer import run
from tests.m3.test_m3 import build_tiny_m3
from tests.train.test_finetune import _losses

WORDS = "the quick brown fox jumps over lazy dog hello world cat what is bge".split()


@pytest.fixture(scope="module")
def m3_model(tmp_path_factory):
    return build_tiny_m3(tmp_path_factory.mktemp("m3train") / "tiny-m3")


def _data(path, n=48, seed=0):
    import random

    rng = random.Random(seed)
    with open(path, "w") as fh:
        for _ in range(n):
            w = rng.sample(WORDS, 3)
            fh.write(json.dumps({"query": " ".join(w[:2]), "pos": [" ".join(w)],
                                 "neg": [" ".join(rng.sample(WORDS, 3)) for _ in range(3)]}) + "\n")
    return path


def _args(model, data, out, *extra):
    return ["--model_name_or_path", str(model), "--train_data", str(data), "--output_dir", str(out), "--unified",
            "--per_device_train_batch_size", "8", "--train_group_size", "3", "--learning_rate", "2e-3",
            "--logging_steps", "5", "--save_strategy", "no", "--query_max_length", "16", "--passage_max_length",
            "24", "--seed", "0", *extra]


def test_unified_loss_decreases_and_heads_load_in_flagembedding(m3_model, tmp_path):
    from FlagEmbedding import BGEM3FlagModel

    out = tmp_path / "out"
    final = run(*parse_args(_args(m3_model, _data(tmp_path / "t.jsonl"), out, "--max_steps", "30")))
    losses, rows = _losses(out)
    assert np.mean(losses[-2:]) < np.mean(losses[:2])
    assert {"dense_loss", "sparse_loss", "colbert_loss", "ensemble_loss"} <= set(rows[0])
    for name in ("colbert_linear.pt", "sparse_linear.pt", "colbert_linear.safetensors", "sparse_linear.safetensors"):
        assert (final / name).is_file()
    before = torch.load(m3_model / "sparse_linear.pt", weights_only=True)["weight"]
    after = torch.load(final / "sparse_linear.pt", weights_only=True)["weight"]
    assert not torch.equal(before, after)  # the heads were trained
    texts = ["the quick brown fox", "hello world", "cat"]
    flag = BGEM3FlagModel(str(final), use_fp16=False, devices="cpu")
    theirs = flag.encode(texts, return_dense=True, return_sparse=True, return_colbert_vecs=True)
    ours = M3Embedder(final, show_progress=False).encode(texts, return_sparse=True, return_colbert=True)
    assert np.abs(theirs["dense_vecs"] - ours["dense_vecs"]).max() <= 1e-5
    for a, b in zip(theirs["colbert_vecs"], ours["colbert_vecs"], strict=True):
        assert np.abs(a - b).max() <= 1e-5
    for a, b in zip(theirs["lexical_weights"], ours["lexical_weights"], strict=True):
        assert a.keys() == b.keys() and all(abs(float(a[k]) - float(b[k])) <= 1e-5 for k in a)


def test_self_distill_adds_its_term(m3_model, tmp_path):
    out = tmp_path / "sd"
    run(*parse_args(_args(m3_model, _data(tmp_path / "t.jsonl"), out, "--max_steps", "5", "--self_distill")))
    _, rows = _losses(out)
    assert "self_distill_loss" in rows[0]


def test_kd_probs_kind():
    s = torch.tensor([[2.0, 0.0, -1.0]])
    p = torch.tensor([[0.7, 0.2, 0.1]])
    assert torch.allclose(kd_loss(s, p, "kl_div_probs"), -(p * torch.log_softmax(s, -1)).sum())


def test_unified_refuses_grad_cache(m3_model, tmp_path, capsys):
    from embedkit.cli import main

    args = _args(m3_model, _data(tmp_path / "t.jsonl"), tmp_path / "gc", "--max_steps", "1", "--grad_cache_chunk",
                 "4")
    assert main(["finetune", *args]) == 2
    assert "--grad_cache_chunk is not supported" in capsys.readouterr().err
