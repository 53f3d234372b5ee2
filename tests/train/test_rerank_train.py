"""``embedkit finetune --reranker``: FlagEmbedding's reranker recipe on tiny models; the trained folder scores the same
in embedkit's Reranker, FlagEmbedding's FlagReranker and sentence-transformers' CrossEncoder."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from embedkit import CheckpointError, Reranker
from embedkit.checkpoint.manifest import verify_manifest
from embedkit.cli import main
from embedkit.errors import DataError
from embedkit.rerank import RerankerSpec
from embedkit.rerank.features import pair_features
from embedkit.train.arguments import parse_args
from embedkit.train.rerank_data import PairCollator
from embedkit.train.rerank_model import RerankerTrainingModel, distill_loss, group_loss
from embedkit.train.rerank_trainer import run_reranker
from tests.rerank.test_rerank import _build_bert
from tests.train.test_finetune import make_data

PAIRS = [("the cat", "the cat hello"), ("what is bge", "what is bge short"), ("fox", ""), ("", "a dog"),
         ("quick brown fox", "the lazy dog jumps over a long text")]


def _args(model, data, out, *extra):
    return ["--model_name_or_path", str(model), "--reranker", "--train_data", str(data), "--output_dir", str(out),
            "--per_device_train_batch_size", "4", "--train_group_size", "4", "--learning_rate", "2e-3",
            "--logging_steps", "1", "--max_steps", "20", "--query_max_len", "12", "--passage_max_len", "20",
            "--max_len", "32", "--seed", "0", "--save_strategy", "steps", "--save_steps", "10", *extra]


def _losses(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory):
    return _build_bert(tmp_path_factory.mktemp("ce") / "tiny-ce")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("rrdata") / "train.jsonl", n=16, scores=True)


@pytest.fixture(scope="module")
def trained(cross_encoder, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("rr") / "out"
    return out, run_reranker(*parse_args(_args(cross_encoder, data, out)))


def test_loss_decreases_and_outputs_match_embedder_finetuning(trained):
    out, final = trained
    losses = _losses(out)
    assert len(losses) == 20 and np.mean(losses[-5:]) < np.mean(losses[:5])
    assert (out / "loss_curve.png").stat().st_size > 1000 and (out / "data_summary.json").is_file()
    summary = json.loads((out / "data_summary.json").read_text())
    assert summary["reranker"] == {"truncation": "flagembedding", "max_length": 32, "fresh_head": False}
    assert final == out / "model" and verify_manifest(final).ok
    for step in (10, 20):
        assert verify_manifest(out / f"checkpoint-{step}").ok
        assert (out / f"checkpoint-{step}" / "model.safetensors").is_file()
    assert not (final / "modules.json").exists()  # no embedder layout: CrossEncoder would build an embedder
    config = json.loads((final / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["sentence_transformers"] == {"activation_fn": "torch.nn.modules.activation.Sigmoid"}
    card = (final / "README.md").read_text()
    assert "FlagReranker" in card and "CrossEncoder" in card and "flagembedding" in card


def test_trained_folder_scores_equal_in_reranker_flagreranker_and_crossencoder(trained):
    from FlagEmbedding import FlagReranker
    from sentence_transformers import CrossEncoder

    _, final = trained
    r = Reranker(final, device="cpu", show_progress=False)
    assert r.spec.truncation == "flagembedding" and r.spec.max_length == 32 and r.spec.query_max_length == 12
    assert "saved by embedkit" in r.spec.provenance["truncation"]
    ours = np.asarray(r.compute_score(PAIRS))
    flag = np.asarray(FlagReranker(str(final), use_fp16=False, devices="cpu", max_length=32,
                                   query_max_length=12).compute_score(PAIRS))
    assert np.abs(ours - flag).max() <= 1e-5
    # CrossEncoder: the same scores on pairs that both peers tokenize alike (on transformers 5 FlagReranker turns an
    # empty passage into a single sequence, see docs/rerank.md; embedkit's truncation="longest_first" matches
    # CrossEncoder there, as tests/rerank/test_rerank.py proves)
    same = [i for i, (_, p) in enumerate(PAIRS) if p]
    ce = CrossEncoder(str(final), device="cpu", max_length=32)
    ce_logits = ce.predict([PAIRS[i] for i in same], activation_fn=torch.nn.Identity())
    assert np.abs(ours[same] - ce_logits).max() <= 1e-5
    sig = ce.predict([PAIRS[i] for i in same])  # the activation saved for CrossEncoder: sigmoid
    assert np.abs(sig - 1 / (1 + np.exp(-ours[same]))).max() <= 1e-5
    longest = Reranker(final, device="cpu", show_progress=False, truncation="longest_first")
    assert np.abs(np.asarray(longest.compute_score(PAIRS)) - ce.predict(PAIRS, activation_fn=torch.nn.Identity())
                  ).max() <= 1e-5


def test_starting_from_an_embedding_model_adds_a_fresh_head(tiny_bert, data, tmp_path, caplog):
    out = tmp_path / "from-embedder"
    with caplog.at_level(logging.WARNING, logger="embedkit"):
        final = run_reranker(*parse_args(_args(tiny_bert, data, out, "--save_strategy", "no")))
    assert "is an embedding model" in caplog.text and "fresh one-label classification head" in caplog.text
    losses = _losses(out)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    config = json.loads((final / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"] and config["num_labels"] == 1 \
        if "num_labels" in config else len(config["id2label"]) == 1
    assert json.loads((out / "data_summary.json").read_text())["reranker"]["fresh_head"] is True
    scores = Reranker(final, device="cpu", show_progress=False).compute_score(PAIRS)
    assert len(scores) == len(PAIRS) and np.isfinite(scores).all()


def test_group_loss_and_distillation_equal_a_hand_computation(cross_encoder):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(cross_encoder)
    spec = RerankerSpec(max_length=32, query_max_length=12)
    collator = PairCollator(tok, spec, passage_max_length=20)
    items = [{"query": "the cat", "passages": ["the cat hello", "a dog", "fox", ""], "scores": [3.0, 1.0, 0.0, -1.0]},
             {"query": "what is bge", "passages": ["what is bge", "lazy dog", "the cat", "x"],
              "scores": [2.0, 2.5, 0.0, 0.5]}]
    batch = collator(items)
    # the pairs are tokenized exactly as inference does it (rows in input order, positive first)
    feats = pair_features(tok, ["the cat"] * 4 + ["what is bge"] * 4, items[0]["passages"] + items[1]["passages"],
                          truncation="flagembedding", max_length=32, query_max_length=12)
    for i, ids in enumerate(feats["input_ids"]):
        assert batch["features"]["input_ids"][i, :len(ids)].tolist() == ids
    model = AutoModelForSequenceClassification.from_pretrained(cross_encoder).eval()
    trainer_model = RerankerTrainingModel(model, group_size=4, kd_weight=1.0)
    with torch.no_grad():
        out = trainer_model(**batch)
        logits = model(**batch["features"]).logits.reshape(2, 4).double().numpy()
    teacher = np.array([it["scores"] for it in items])

    def log_softmax(x):
        x = x - x.max(axis=1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))

    ce = -log_softmax(logits)[:, 0].mean()
    t = np.exp(teacher - teacher.max(axis=1, keepdims=True))
    t /= t.sum(axis=1, keepdims=True)
    kd = -(log_softmax(logits) * t).sum(axis=1).mean()
    assert abs(float(group_loss(torch.from_numpy(logits).reshape(-1), 4)) - ce) < 1e-6
    assert abs(float(distill_loss(torch.from_numpy(logits), torch.from_numpy(teacher), 4)) - kd) < 1e-6
    assert abs(float(out["loss"]) - (ce + kd)) < 1e-5
    assert trainer_model.last_stats["kd_loss"] == pytest.approx(kd, abs=1e-5)


def test_bad_input_is_refused_with_the_flag_named(tmp_path, data, cross_encoder, capsys):
    two = _build_bert(tmp_path / "two-label", num_labels=2)
    with pytest.raises(CheckpointError, match="2 labels"):
        run_reranker(*parse_args(_args(two, data, tmp_path / "o1")))
    with pytest.raises(DataError, match="--pooling.*do\\(es\\) not apply to --reranker"):
        run_reranker(*parse_args(_args(cross_encoder, data, tmp_path / "o2", "--pooling", "cls")))
    with pytest.raises(DataError, match="train_group_size of at least 2"):
        run_reranker(*parse_args(_args(cross_encoder, data, tmp_path / "o3", "--train_group_size", "1")))
    assert main(["finetune", *_args(two, data, tmp_path / "o4")]) == 2
    assert "2 labels" in capsys.readouterr().err
    assert main(["finetune", "--help"]) == 0
    assert "--reranker" in capsys.readouterr().out


def test_lora_adapter_and_merged_model(cross_encoder, data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "lora"
    final = run_reranker(*parse_args(_args(cross_encoder, data, out, "--lora", "--lora_r", "4", "--merge_lora",
                                           "--max_steps", "3", "--save_strategy", "no")))
    assert final == out / "adapter" and (final / "adapter_model.safetensors").is_file()
    assert verify_manifest(final).ok and verify_manifest(out / "merged").ok
    base = AutoModelForSequenceClassification.from_pretrained(cross_encoder)
    merged_by_peft = PeftModel.from_pretrained(base, final).merge_and_unload().eval()
    r = Reranker(out / "merged", device="cpu", show_progress=False)
    batch = PairCollator(r.tokenizer, r.spec)([{"query": q, "passages": [p], "scores": None} for q, p in PAIRS])
    with torch.no_grad():
        expected = merged_by_peft(**batch["features"]).logits.reshape(-1).numpy()
    assert np.abs(np.asarray(r.compute_score(PAIRS)) - expected).max() <= 1e-5


def test_resume_from_a_reranker_checkpoint(trained, cross_encoder, data, tmp_path):
    from safetensors.torch import load_file

    out, _ = trained
    resumed = tmp_path / "resumed"
    final = run_reranker(*parse_args(_args(cross_encoder, data, resumed, "--resume_from_checkpoint",
                                           str(out / "checkpoint-10"), "--save_strategy", "no")))
    steps = [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == list(range(11, 21))  # continued from step 10, with the checkpoint's weights
    assert load_file(final / "model.safetensors").keys() == load_file(out / "model" / "model.safetensors").keys()


def test_two_stage_eval_before_during_after_equals_evaluate_two_stage(cross_encoder, data, tiny_bert, tmp_path):
    """--eval_data with --eval_retriever: the embedder retrieves, the reranker being trained reranks its top k; the
    "before" / "after" metrics are evaluate_two_stage's on the starting folder / the saved model."""
    import shutil

    from embedkit.eval import evaluate_two_stage
    from embedkit.spec import EmbedderSpec, write_sentence_transformers_files
    from tests.eval.test_eval_rerank import _bench

    retriever = tmp_path / "tiny-mean"  # mean pooling: the tiny BERT's CLS vectors are nearly all equal
    shutil.copytree(tiny_bert, retriever)
    write_sentence_transformers_files(retriever, EmbedderSpec(pooling="mean", normalize=True, query_max_length=128,
                                                              passage_max_length=128), hidden_size=32)
    bench = _bench(tmp_path / "bench")
    out = tmp_path / "ev"
    final = run_reranker(*parse_args(_args(cross_encoder, data, out, "--save_strategy", "no", "--max_steps", "10",
                                           "--eval_data", str(bench), "--eval_retriever", str(retriever),
                                           "--eval_rerank_top_k", "5", "--eval_steps", "5")))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    phases = {r["phase"]: r for r in rows if "phase" in r}
    assert list(phases) == ["before", "step-5", "after"]
    assert all(r["rerank_top_k"] == 5 for r in phases.values())
    after = evaluate_two_stage(retriever, Reranker(final, device="cpu", show_progress=False), bench, top_k=5,
                               cache_dir=None, show_progress=False)
    base = Reranker(cross_encoder, device="cpu", show_progress=False, max_length=32, query_max_length=12)
    before = evaluate_two_stage(retriever, base, bench, top_k=5, cache_dir=None, show_progress=False)
    for row, direct in ((phases["after"], after), (phases["before"], before)):
        assert row["retrieval"] == pytest.approx(direct.retrieval.metrics, abs=1e-9)
        assert row["eval"] == pytest.approx(direct.reranked.metrics, abs=1e-9)
    assert phases["before"]["eval"] != phases["after"]["eval"]  # training moved the reranked ranking
    assert (out / "eval_before_after.png").stat().st_size > 1000
    card = (final / "README.md").read_text()
    assert "## Metrics" in card and "→" in card and "retrieval only" in card


def test_two_stage_eval_flags_are_checked(cross_encoder, data, tmp_path):
    from embedkit.errors import ArgumentError
    from tests.eval.test_eval_rerank import _bench

    bench = _bench(tmp_path / "bench")
    with pytest.raises(DataError, match="needs --eval_retriever"):
        run_reranker(*parse_args(_args(cross_encoder, data, tmp_path / "o1", "--eval_data", str(bench))))
    with pytest.raises(DataError, match="--eval_data, which is not given"):
        run_reranker(*parse_args(_args(cross_encoder, data, tmp_path / "o2", "--eval_retriever", "minilm")))
    with pytest.raises(DataError, match="--eval_rerank_top_k must be at least 1"):
        run_reranker(*parse_args(_args(cross_encoder, data, tmp_path / "o3", "--eval_data", str(bench),
                                       "--eval_retriever", "minilm", "--eval_rerank_top_k", "0")))
    argv = _args(cross_encoder, data, tmp_path / "o4", "--eval_retriever", "minilm")
    argv.remove("--reranker")
    for flag in ("--max_len", "32"):
        argv.remove(flag)
    with pytest.raises(ArgumentError, match="--eval_retriever is the retrieving embedder"):
        parse_args(argv)
