"""Cross-encoder rerankers: scores equal to FlagEmbedding's FlagReranker and sentence-transformers' CrossEncoder.

Tiny random ``BertForSequenceClassification`` and ``XLMRobertaForSequenceClassification`` (one label) are built on
the fly and saved with their tokenizers; each peer loads the same folder and scores the same hostile pairs.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from embedkit import CheckpointError, Reranker, SpecError
from embedkit.cli import main
from embedkit.rerank import RerankerSpec, load_reranker_spec
from embedkit.rerank.features import pair_features
from embedkit.rerank.reranker import PairError, judge_scores
from tests.conftest import _write_tiny_tokenizer

TOL = 1e-5
ML = 32  # every peer runs with this max_length: the long texts below pass it on either side of a pair
LONG = " ".join(["a long text that goes past the max length"] * 40)
LONG_Q = "what is the quick brown fox " * 6  # about 30 tokens: past 3/4 of ML alone
PAIRS = [
    ("what is bge", "The quick brown fox jumps over the lazy dog."),
    ("", "the lazy dog"),                      # empty query
    ("the fox", ""),                            # empty passage
    ("", ""),
    ("   ", "\n\nleading and trailing newlines\n\n"),
    ("the fox", LONG),                          # passage past max_length
    (LONG_Q, "short passage"),                  # query past query_max_length, pair within max_length
    (LONG, "the lazy dog"),                     # query past max_length
    (LONG, LONG),                               # both
    ("中文 测试", "中文 测试 文本"),               # CJK
    ("emoji 😀", "emoji 😀🚀 in text"),         # emoji (unknown to the vocabularies)
    ("Tabs\tand\tmixed   spaces", "punctuation!? (brackets) [1, 2, 3]"),
    ("what is bge", "The quick brown fox jumps over the lazy dog."),  # a duplicate
]
WORDS = ("the quick brown fox jumps over lazy dog a long text that goes past max length short tabs and mixed spaces "
         "punctuation leading trailing newlines emoji in query passage hello world what is bge cat").split()


def _build_bert(folder: Path, num_labels: int = 1, seed: int = 0) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    _write_tiny_tokenizer(folder, model_max_length=128)
    vocab_size = len((folder / "vocab.txt").read_text(encoding="utf-8").split("\n")) - 1
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128, num_labels=num_labels,
                        initializer_range=0.2)
    BertForSequenceClassification(config).eval().save_pretrained(str(folder))
    return folder


def _build_xlmr(folder: Path, seed: int = 1) -> Path:
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification, XLMRobertaTokenizer

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    chars = letters + list("0123456789.,!?:;'\"-()") + list("中文测试本")
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("<mask>", 0.0)]
    vocab += [("▁" + w, -2.0) for w in sorted(set(WORDS))] + [("▁", -3.0)]
    vocab += [("▁" + c, -5.0) for c in letters] + [(c, -6.0) for c in chars]
    folder.mkdir(parents=True, exist_ok=True)
    XLMRobertaTokenizer(vocab=vocab, model_max_length=64).save_pretrained(str(folder))
    torch.manual_seed(seed)
    config = XLMRobertaConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=64, max_position_embeddings=66, pad_token_id=1, bos_token_id=0,
                              eos_token_id=2, num_labels=1, initializer_range=0.2)
    XLMRobertaForSequenceClassification(config).eval().save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rerankers")
    return {"bert": _build_bert(root / "tiny-bert-rr"), "xlmr": _build_xlmr(root / "tiny-xlmr-rr")}


@pytest.fixture(scope="module", params=["bert", "xlmr"])
def model(request, models) -> Path:
    return models[request.param]


@pytest.fixture(scope="module")
def flag(model):
    from FlagEmbedding import FlagReranker

    return FlagReranker(str(model), use_fp16=False, devices="cpu", max_length=ML)


@pytest.fixture(scope="module")
def ce(model):
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(model), device="cpu", max_length=ML, local_files_only=True)


def _ours(path: Path, truncation: str, **kwargs) -> Reranker:
    return Reranker(path, device="cpu", max_length=ML, truncation=truncation, show_progress=False, **kwargs)


@pytest.fixture(scope="module")
def ours_flag(model) -> Reranker:
    return _ours(model, "flagembedding")


@pytest.fixture(scope="module")
def ours_ce(model) -> Reranker:
    return _ours(model, "longest_first")


# ---------------------------------------------------------------------- parity with the peers
@pytest.mark.parametrize("normalize", [False, True])
def test_compute_score_equals_flagreranker(ours_flag, flag, normalize):
    ours = np.array(ours_flag.compute_score(PAIRS, normalize=normalize))
    theirs = np.array(flag.compute_score(PAIRS, normalize=normalize))
    assert ours.shape == (len(PAIRS),)
    assert np.abs(ours - theirs).max() <= TOL


def test_query_max_length_and_instruction_equal_flagreranker(model):
    from FlagEmbedding import FlagReranker

    theirs = FlagReranker(str(model), use_fp16=False, devices="cpu", max_length=ML, query_max_length=8,
                          query_instruction_for_rerank="query:", query_instruction_format="{}\\n{}")
    ours = _ours(model, "flagembedding", query_max_length=8, query_instruction="query:",
                 query_instruction_format="{}\\n{}")
    assert np.abs(np.array(ours.compute_score(PAIRS)) - np.array(theirs.compute_score(PAIRS))).max() <= TOL


def test_predict_equals_crossencoder(ours_ce, ce):
    ours = ours_ce.predict(PAIRS)
    assert ours.dtype == np.float32 and ours.shape == (len(PAIRS),)
    assert np.abs(ours - ce.predict(PAIRS)).max() <= TOL
    raw = ours_ce.predict(PAIRS, activation_fn="identity")
    assert np.abs(raw - ce.predict(PAIRS, activation_fn=torch.nn.Identity())).max() <= TOL
    assert np.abs(ours_ce.predict(PAIRS, activation_fn=torch.nn.Identity()) - raw).max() == 0


def test_rank_equals_crossencoder(ours_ce, ce):
    docs = [p for _, p in PAIRS]
    ours = ours_ce.rank("what is bge", docs, return_documents=True)
    theirs = ce.rank("what is bge", docs, return_documents=True)
    assert [r["corpus_id"] for r in ours] == [r["corpus_id"] for r in theirs]
    for a, b in zip(ours, theirs, strict=True):
        assert abs(a["score"] - b["score"]) <= TOL and a["text"] == b["text"]
    top = ours_ce.rank("what is bge", docs, top_k=3)
    assert [r["corpus_id"] for r in top] == [r["corpus_id"] for r in ours[:3]] and "text" not in top[0]
    # the duplicate passage (0 and 12) scores the same: ties keep input order
    ids = [r["corpus_id"] for r in ours]
    assert ids.index(0) < ids.index(12)


def test_single_pair(ours_flag, ours_ce, flag, ce):
    pair = ("what is bge", LONG)
    score = ours_flag.compute_score(pair)
    assert isinstance(score, float)
    assert abs(score - flag.compute_score(pair)[0]) <= TOL  # FlagEmbedding 1.4 returns a one-item list
    assert abs(ours_flag.compute_score(list(pair)) - score) == 0
    one = ours_ce.predict(pair)
    assert np.ndim(one) == 0 and abs(float(one) - float(ce.predict(pair))) <= TOL


def test_the_truncations_agree_on_short_pairs_and_differ_on_long_ones(ours_flag, ours_ce):
    """The parity tests above can tell the two truncations apart: they differ where a pair is cut.

    (Also, on transformers 5, where FlagReranker decodes and re-tokenizes each pair, on an empty passage and on
    characters the vocabulary lacks: rows 2, 3, 10 and 11 are left out of the "agree" half.)"""
    fl, lf = np.array(ours_flag.compute_score(PAIRS)), ours_ce.predict(PAIRS, activation_fn="identity")
    long_rows = [i for i, (q, p) in enumerate(PAIRS) if LONG in (q, p) or q == LONG_Q]
    short_rows = [0, 1, 4, 9, 12]
    assert np.abs(fl[short_rows] - lf[short_rows]).max() <= TOL
    assert np.abs(fl[long_rows] - lf[long_rows]).max() > 1e-3


def test_batch_invariance_and_order(ours_flag):
    ref = np.array(ours_flag.compute_score(PAIRS))
    for bs in (1, 4):
        assert np.abs(np.array(ours_flag.compute_score(PAIRS, batch_size=bs)) - ref).max() <= 1e-6
    budget = Reranker(ours_flag.path, device="cpu", max_length=ML, truncation="flagembedding", max_batch_tokens=40,
                      show_progress=False)
    assert np.abs(np.array(budget.compute_score(PAIRS)) - ref).max() <= 1e-6
    assert np.abs(np.array(ours_flag.compute_score(PAIRS[::-1])) - ref[::-1]).max() <= 1e-6
    assert np.abs(np.array([ours_flag.compute_score(PAIRS[i]) for i in (5, 8)]) - ref[[5, 8]]).max() <= 1e-6


def test_features_fit_max_length(ours_flag, ours_ce):
    for r in (ours_flag, ours_ce):
        feats = pair_features(r.tokenizer, [q for q, _ in PAIRS], [p for _, p in PAIRS],
                              truncation=r.spec.truncation, max_length=ML,
                              query_max_length=r.spec.resolved_query_max_length)
        assert max(len(ids) for ids in feats["input_ids"]) == ML


# ---------------------------------------------------------------------- bad input
def test_bad_input(ours_flag):
    assert ours_flag.compute_score([]) == []
    assert ours_flag.predict([]).shape == (0,)
    assert ours_flag.rank("q", []) == []
    with pytest.raises(PairError, match=r"pairs\[1\]\[0\] is int") as exc:
        ours_flag.compute_score([("a", "b"), (3, "c")])
    assert isinstance(exc.value, SpecError) and isinstance(exc.value, TypeError)
    with pytest.raises(SpecError, match=r"pairs\[0\] is 3 items"):
        ours_flag.predict([("a", "b", "c")])
    with pytest.raises(SpecError, match=r"pairs\[0\] is str"):
        ours_flag.predict(["ab", "cd", "ef"])
    with pytest.raises(SpecError, match=r"pair\[1\] is NoneType"):
        ours_flag.compute_score(("a", None))
    with pytest.raises(SpecError, match="pairs must be"):
        ours_flag.compute_score("a question")
    with pytest.raises(SpecError, match=r"documents\[1\] is bytes"):
        ours_flag.rank("q", ["a", b"b"])
    with pytest.raises(SpecError, match="top_k"):
        ours_flag.rank("q", ["a"], top_k=0)
    with pytest.raises(SpecError, match="unknown activation_fn"):
        ours_flag.predict([("a", "b")], activation_fn="softplus")


def test_a_two_label_head_is_refused(tmp_path):
    folder = _build_bert(tmp_path / "nli-2-labels", num_labels=2)
    with pytest.raises(CheckpointError, match="2 labels") as exc:
        Reranker(folder, device="cpu")
    assert "one-label" in exc.value.hint


def test_an_embedding_model_is_refused(tiny_bert, tmp_path):
    with pytest.raises(CheckpointError, match="BertModel is an embedding model") as exc:
        Reranker(tiny_bert, device="cpu")
    assert "finetune --reranker" in exc.value.hint
    # no architectures to tell: the missing classifier weights are caught at load, with the same hint
    bare = tmp_path / "bare"
    shutil.copytree(tiny_bert, bare)
    cfg = json.loads((bare / "config.json").read_text())
    cfg.pop("architectures", None)
    cfg["id2label"] = {"0": "LABEL_0"}
    cfg["label2id"] = {"LABEL_0": 0}
    (bare / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="missing") as exc:
        Reranker(bare, device="cpu")
    assert "finetune --reranker" in exc.value.hint


def test_spec_arguments_are_checked(models):
    with pytest.raises(SpecError, match="unknown truncation"):
        Reranker(models["bert"], device="cpu", truncation="only_second")
    with pytest.raises(SpecError, match="query_max_length applies to truncation='flagembedding'"):
        Reranker(models["bert"], device="cpu", truncation="longest_first", query_max_length=8)
    with pytest.raises(SpecError, match="exceeds what the model can take"):
        Reranker(models["xlmr"], device="cpu", max_length=512, truncation="flagembedding")
    with pytest.raises(SpecError, match="exactly two"):
        Reranker(models["bert"], device="cpu", query_instruction="q: ", query_instruction_format="{}")
    # int8 is the ONNX export's graph (tests/rerank/test_rerank_io.py); without one: fp32 with a warning
    assert Reranker(models["bert"], device="cpu", precision="int8").precision == "fp32"
    with pytest.raises(CheckpointError, match="no ONNX export"):
        Reranker(models["bert"], backend="onnx")


# ---------------------------------------------------------------------- spec resolution
def test_spec_resolution_with_provenance(models, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="embedkit"):
        spec = load_reranker_spec(models["bert"])
    assert spec.truncation == "flagembedding" and "assumed" in spec.provenance["truncation"]
    assert "truncation='longest_first'" in caplog.text
    assert spec.max_length == 128 and "capped" in spec.provenance["max_length"]  # the model's limit < 512
    assert spec.resolved_query_max_length == 96 and spec.activation == "sigmoid"

    family = tmp_path / "bge-reranker-tiny"
    shutil.copytree(models["bert"], family)
    assert load_reranker_spec(family).provenance["truncation"].startswith("known family: bge-reranker")

    # a folder CrossEncoder saved: its truncation, its activation
    from sentence_transformers import CrossEncoder

    saved = tmp_path / "saved-by-ce"
    CrossEncoder(str(models["xlmr"]), device="cpu", local_files_only=True,
                 activation_fn=torch.nn.Identity()).save(str(saved))
    spec = load_reranker_spec(saved)
    assert spec.truncation == "longest_first" and "CrossEncoder save" in spec.provenance["truncation"]
    assert spec.activation == "identity" and spec.query_max_length is None
    r = Reranker(saved, device="cpu", show_progress=False)
    theirs = CrossEncoder(str(saved), device="cpu", local_files_only=True)
    assert np.abs(r.predict(PAIRS) - theirs.predict(PAIRS)).max() <= TOL  # logits, as the saved activation says

    # the older config.json marker
    old = tmp_path / "old-ce"
    shutil.copytree(models["bert"], old)
    cfg = json.loads((old / "config.json").read_text())
    cfg["sentence_transformers"] = {"activation_fn": "torch.nn.modules.activation.Tanh", "version": "4.0.1"}
    (old / "config.json").write_text(json.dumps(cfg))
    spec = load_reranker_spec(old)
    assert (spec.truncation, spec.activation) == ("longest_first", "tanh")
    assert "sentence_transformers.activation_fn" in spec.provenance["activation"]
    assert load_reranker_spec(old, {"truncation": "flagembedding"}).provenance["truncation"] == "argument"
    assert RerankerSpec().to_dict()["truncation"] == "flagembedding"


def test_precision_gate_on_score_agreement(models, tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDKIT_CACHE", str(tmp_path / "cache"))
    r = Reranker(models["bert"], device="cpu", precision="bf16", show_progress=False)
    assert set(r.quality) >= {"passed", "max_abs_diff", "spearman", "gate", "pairs"}
    assert r.precision == ("bf16" if r.quality["passed"] else "fp32") and not r._gate_cached
    again = Reranker(models["bert"], device="cpu", precision="bf16", show_progress=False)
    assert again._gate_cached and again.quality == r.quality and again.precision == r.precision
    ref = np.array(Reranker(models["bert"], device="cpu", show_progress=False).compute_score(PAIRS))
    got = np.array(again.compute_score(PAIRS))
    assert np.abs(got - ref).max() < (0.1 if again.precision == "bf16" else TOL)
    strict = Reranker(models["bert"], device="cpu", precision="bf16", precision_gate=(0.0, 1.0),
                      show_progress=False)  # an impossible gate: falls back to fp32, says so
    assert strict.precision == "fp32" and "failed the gate" in strict.precision_summary
    assert judge_scores(np.array([1.0, 2.0]), np.array([1.0, 2.0]))["passed"]
    assert not judge_scores(np.array([1.0, 2.0]), np.array([2.0, 1.0]))["passed"]


# ---------------------------------------------------------------------- CLI
def test_cli_rank_and_score_pairs(models, tmp_path, capsys):
    path = models["bert"]
    docs = tmp_path / "docs.txt"
    texts = [p for _, p in PAIRS if "\n" not in p][:6]
    docs.write_text("\n".join(texts) + "\n", encoding="utf-8")
    assert main(["rerank", str(path), "--query", "what is bge", "--input", str(docs), "--top-k", "3", "--json",
                 "--device", "cpu"]) == 0
    ranking = json.loads(capsys.readouterr().out)
    expected = Reranker(path, device="cpu", show_progress=False).rank(
        "what is bge", texts, top_k=3, return_documents=True, activation_fn="identity")
    assert [r["corpus_id"] for r in ranking] == [r["corpus_id"] for r in expected]
    assert all(abs(a["score"] - b["score"]) <= TOL for a, b in zip(ranking, expected, strict=True))

    assert main(["rerank", str(path), "-q", "what is bge", "-i", str(docs), "--device", "cpu"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 6

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"query": q, "passage": p, "id": i}) + "\n" for i, (q, p) in enumerate(PAIRS)),
                     encoding="utf-8")
    out = tmp_path / "scores.jsonl"
    assert main(["rerank", str(path), "--input", str(pairs), "-o", str(out), "--normalize", "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    want = Reranker(path, device="cpu", show_progress=False).compute_score(PAIRS, normalize=True)
    assert [r["id"] for r in rows] == list(range(len(PAIRS)))
    assert np.abs(np.array([r["score"] for r in rows]) - np.array(want)).max() <= TOL

    capsys.readouterr()
    assert main(["rerank", str(path), "--input", str(pairs), "-o", str(pairs)]) == 2
    assert "is also an input file" in capsys.readouterr().err
    assert main(["rerank", str(path), "--input", str(pairs)]) == 2
    assert "needs --output" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "passage": "p"}\n{"query": "q"}\n', encoding="utf-8")
    assert main(["rerank", str(path), "--input", str(bad), "-o", str(tmp_path / "x.jsonl")]) == 2
    assert "bad.jsonl:2: no field 'passage'" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


def test_cli_spec_says_which_truncation_applies(models, capsys):
    assert main(["spec", str(models["xlmr"]), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows["truncation"]["value"] == "flagembedding" and "assumed" in rows["truncation"]["rule"]
    assert rows["query_max_length"]["value"] == 48 and rows["max_length"]["value"] == 64
    assert main(["spec", str(models["xlmr"]), "--json"]) == 0 and "pooling" not in capsys.readouterr().out
