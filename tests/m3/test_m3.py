"""bge-m3: dense, lexical (sparse) and ColBERT outputs and scores, side by side with FlagEmbedding's BGEM3FlagModel.

A tiny random XLM-RoBERTa (hidden 32, 2 layers) with a real Unigram tokenizer built in code, and random heads saved
in FlagEmbedding's layout (``torch.save(linear.state_dict())``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from embedkit import CheckpointError, Embedder, M3Embedder, SpecError
from embedkit.checkpoint.inspect import inspect_folder
from embedkit.checkpoint.save import save
from embedkit.cli import main
from embedkit.m3 import (
    SCORE_KEYS,
    M3Heads,
    colbert_scores,
    csr_to_lexical_weights,
    m3_outputs,
    paired_colbert_scores,
    process_token_weights,
)
from tests.conftest import HOSTILE_TEXTS

TOL = 1e-5
Q_LEN, P_LEN = 16, 32
HEAD_FILES = ("colbert_linear.pt", "sparse_linear.pt", "colbert_linear.safetensors", "sparse_linear.safetensors")
WORDS = ("the quick brown fox jumps over lazy dog a long text that goes past max length short tabs and mixed spaces "
         "punctuation leading trailing newlines emoji in query passage hello world what is bge cat").split()
PAIRS = [
    ("the fox", "The quick brown fox jumps over the lazy dog."),
    ("lazy dog", "the lazy dog"),
    ("", "中文 测试 文本"),
    ("what is bge", " ".join(["a long text that goes past the max length"] * 40)),
    ("   ", ""),
    ("中文", "中文 测试"),
    ("emoji 😀", "emoji 😀🚀 in text"),
    ("the fox", "The quick brown fox jumps over the lazy dog."),
    ("short", "short"),
    ("中文 测试 本", ""),  # one passage token: negative token maxima meet the padding's zeros (FlagEmbedding's max)
    ("emoji 😀 dog", "   "),
]


def build_tiny_m3(folder: Path, seed: int = 1) -> Path:
    """A random XLM-RoBERTa with a Unigram tokenizer, plus random bge-m3 heads as FlagEmbedding saves them."""
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizer

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    chars = letters + list("0123456789.,!?:;'\"-()") + list("中文测试本")
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("<mask>", 0.0)]
    vocab += [("▁" + w, -2.0) for w in sorted(set(WORDS))] + [("▁", -3.0)]
    vocab += [("▁" + c, -5.0) for c in letters] + [(c, -6.0) for c in chars]
    tokenizer = XLMRobertaTokenizer(vocab=vocab, model_max_length=64)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder))
    torch.manual_seed(seed)
    config = XLMRobertaConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=64, max_position_embeddings=66, initializer_range=0.5,
                              pad_token_id=1, bos_token_id=0, eos_token_id=2)
    model = XLMRobertaModel(config).eval()
    model.save_pretrained(str(folder))
    colbert = torch.nn.Linear(32, 32)
    with torch.no_grad():  # centre the token vectors: some query tokens then match no passage token (max < 0)
        enc = tokenizer([" ".join(WORDS), "中文 测试 本", "emoji 😀 short"], padding=True, return_tensors="pt")
        hidden = model(**enc).last_hidden_state[enc["attention_mask"].bool()]
        colbert.bias.copy_(-colbert.weight @ hidden.mean(0))
    torch.save(colbert.state_dict(), folder / "colbert_linear.pt")
    sparse = torch.nn.Linear(32, 1)
    with torch.no_grad():
        sparse.bias.fill_(0.6)  # most tokens get a weight > 0, some (after ReLU) none: both paths exercised
    torch.save(sparse.state_dict(), folder / "sparse_linear.pt")
    return folder


@pytest.fixture(scope="module")
def tiny_m3(tmp_path_factory) -> Path:
    return build_tiny_m3(tmp_path_factory.mktemp("m3") / "tiny-bge-m3")


@pytest.fixture(scope="module")
def ours(tiny_m3) -> M3Embedder:
    return M3Embedder(tiny_m3, device="cpu", query_max_length=Q_LEN, passage_max_length=P_LEN, show_progress=False,
                      return_sparse=True, return_colbert=True)


def _flag(path: Path, **kwargs):
    from FlagEmbedding import BGEM3FlagModel

    return BGEM3FlagModel(str(path), use_fp16=False, devices="cpu", query_max_length=Q_LEN,
                          passage_max_length=P_LEN, **kwargs)


@pytest.fixture(scope="module")
def flag(tiny_m3):
    return _flag(tiny_m3)


@pytest.fixture
def m3_copy(tiny_m3, tmp_path):
    def make(name: str = "copy-bge-m3", drop: tuple[str, ...] = ()) -> Path:
        dst = tmp_path / name
        shutil.copytree(tiny_m3, dst)
        for f in drop:
            (dst / f).unlink()
        return dst

    return make


def _flag_encode(flag, method: str, texts, **kwargs):
    return getattr(flag, method)(texts, return_dense=True, return_sparse=True, return_colbert_vecs=True, **kwargs)


def assert_same_outputs(a: dict, b: dict) -> None:
    """embedkit's encode result vs FlagEmbedding's: dense, lexical weights (keys and values), ColBERT vectors."""
    assert set(a) == {"dense_vecs", "lexical_weights", "colbert_vecs"}
    assert a["dense_vecs"].shape == b["dense_vecs"].shape and a["dense_vecs"].dtype == np.float32
    assert np.abs(a["dense_vecs"] - b["dense_vecs"]).max() <= TOL
    assert len(a["lexical_weights"]) == len(b["lexical_weights"])
    for x, y in zip(a["lexical_weights"], b["lexical_weights"], strict=True):
        assert list(x) == list(y)  # same token ids, in the same order
        assert all(abs(float(x[k]) - float(y[k])) <= TOL for k in x)
        assert all(isinstance(v, np.float32) for v in x.values())
    assert len(a["colbert_vecs"]) == len(b["colbert_vecs"])
    for x, y in zip(a["colbert_vecs"], b["colbert_vecs"], strict=True):
        assert x.shape == y.shape and x.dtype == np.float32
        assert np.abs(x - y).max(initial=0) <= TOL


# ---------------------------------------------------------------------- the test model is real enough
def test_tiny_tokenizer_maps_words_to_real_ids(ours):
    tok = ours.tokenizer
    ids = tok("the quick brown fox 中文")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.eos_token_id
    assert tok.unk_token_id not in ids and len(set(ids)) == len(ids)
    assert tok.unk_token_id in tok("emoji 😀")["input_ids"]  # and unknown things are unk
    assert ours.unused_token_ids == {tok.cls_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id}
    assert (ours.spec.pooling, ours.spec.normalize) == ("cls", True)  # the bge-m3 family rule


# ---------------------------------------------------------------------- encode: parity with FlagEmbedding
@pytest.mark.parametrize("method", ["encode", "encode_queries", "encode_corpus"])
def test_encode_matches_flagembedding_on_hostile_texts(ours, flag, method):
    texts = HOSTILE_TEXTS + ["the lazy dog", "中文"]
    expected = _flag_encode(flag, method, texts)
    assert_same_outputs(getattr(ours, method)(texts), expected)
    assert_same_outputs(getattr(ours, method)(texts, batch_size=3), expected)  # several batches, order restored
    lengths = [len(v) for v in expected["colbert_vecs"]]
    assert max(lengths) == (Q_LEN if method == "encode_queries" else P_LEN) - 1  # truncated, CLS dropped
    assert any(not w for w in expected["lexical_weights"])  # the empty text keeps nothing


def test_single_string_gives_per_text_values(ours, flag):
    a = ours.encode("The quick brown fox")
    b = _flag_encode(flag, "encode", "The quick brown fox")
    assert a["dense_vecs"].shape == (32,) and a["colbert_vecs"].ndim == 2 and isinstance(a["lexical_weights"], dict)
    assert_same_outputs({k: [v] if k != "dense_vecs" else v[None] for k, v in a.items()},
                        {k: [v] if k != "dense_vecs" else v[None] for k, v in b.items()})


def test_output_selection_and_empty_input(ours):
    out = ours.encode(["hello world"], return_sparse=False, return_colbert=False)
    assert out["lexical_weights"] is None and out["colbert_vecs"] is None and out["dense_vecs"].shape == (1, 32)
    out = ours.encode(["hello world"], return_dense=False, return_colbert_vecs=False)  # FlagEmbedding's keyword
    assert out["dense_vecs"] is None and out["colbert_vecs"] is None and len(out["lexical_weights"]) == 1
    empty = ours.encode([])
    assert empty["dense_vecs"].shape == (0, 32) and empty["lexical_weights"] == [] and empty["colbert_vecs"] == []
    with pytest.raises(SpecError, match="nothing to return"):
        ours.encode(["x"], return_dense=False, return_sparse=False, return_colbert=False)
    with pytest.raises(SpecError, match="disagree"):
        ours.encode(["x"], return_colbert=True, return_colbert_vecs=False)
    with pytest.raises(SpecError, match="exceeds"):
        ours.encode(["x"], max_length=500)


def test_query_instruction_as_flagembedding(tiny_m3):
    ours = M3Embedder(tiny_m3, device="cpu", query_max_length=Q_LEN, passage_max_length=P_LEN,
                      query_instruction="query: ", return_sparse=True, return_colbert=True, show_progress=False)
    flag = _flag(tiny_m3, query_instruction_for_retrieval="query: ")
    texts = ["the fox", "", "中文"]
    assert_same_outputs(ours.encode_queries(texts), _flag_encode(flag, "encode_queries", texts))
    assert_same_outputs(ours.encode_corpus(texts), _flag_encode(flag, "encode_corpus", texts))


# ---------------------------------------------------------------------- scores
@pytest.mark.parametrize("weights", [None, [0.4, 0.2, 0.4]])
def test_compute_score_matches_flagembedding(ours, flag, weights):
    kwargs = dict(batch_size=4, max_query_length=8, max_passage_length=24, weights_for_different_modes=weights)
    a = ours.compute_score(PAIRS, **kwargs)
    b = flag.compute_score(PAIRS, **kwargs)
    assert list(a) == list(b) == list(SCORE_KEYS)
    for key in SCORE_KEYS:
        assert len(a[key]) == len(PAIRS) and all(isinstance(v, float) for v in a[key])
        assert np.abs(np.array(a[key]) - np.array(b[key])).max() <= TOL, key
    assert max(a["sparse"]) > 0  # the pairs share tokens: the lexical score is exercised


def test_compute_score_single_pair_defaults_and_errors(ours, flag):
    a, b = ours.compute_score(PAIRS[0]), flag.compute_score(PAIRS[0])
    assert all(abs(a[k] - b[k]) <= TOL for k in SCORE_KEYS)
    assert ours.compute_score([]) == {k: [] for k in SCORE_KEYS}
    with pytest.raises(SpecError, match="3 weights"):
        ours.compute_score(PAIRS, weights_for_different_modes=[1.0, 1.0])
    with pytest.raises(TypeError, match=r"sentence_pairs\[1\]"):
        ours.compute_score([("q", "p"), ("only one",)])


def test_lexical_colbert_scores_and_tokens_match_flagembedding(ours, flag):
    q = ours.encode_queries(["the fox", "lazy dog", ""])
    p = ours.encode_corpus(["The quick brown fox jumps over the lazy dog.", "the lazy dog", "中文"])
    lex_a = ours.compute_lexical_matching_score(q["lexical_weights"], p["lexical_weights"])
    lex_b = flag.compute_lexical_matching_score(q["lexical_weights"], p["lexical_weights"])
    assert lex_a.shape == (3, 3) and np.abs(lex_a - lex_b).max() <= TOL and lex_a.max() > 0
    one = ours.compute_lexical_matching_score(q["lexical_weights"][0], p["lexical_weights"][0])
    assert abs(one - flag.compute_lexical_matching_score(q["lexical_weights"][0], p["lexical_weights"][0])) <= TOL
    for qv in q["colbert_vecs"]:
        for pv in p["colbert_vecs"]:
            assert abs(ours.colbert_score(qv, pv) - float(flag.colbert_score(qv, pv))) <= TOL
    assert ours.convert_id_to_token(p["lexical_weights"][0]) == flag.convert_id_to_token(p["lexical_weights"][0])
    readable = ours.convert_id_to_token(p["lexical_weights"])
    assert isinstance(readable, list) and "quick" in readable[0]


# ---------------------------------------------------------------------- the differentiable layer (for training)
def test_representations_are_consistent_and_differentiable(ours, tiny_m3):
    from transformers import AutoModel

    texts = ["The quick brown fox.", "the lazy dog", ""]
    enc = ours.tokenizer(texts, padding=True, return_tensors="pt")
    model = AutoModel.from_pretrained(str(tiny_m3))
    heads = M3Heads.from_folder(tiny_m3, hidden_size=32)
    hidden = model(**enc).last_hidden_state
    out = m3_outputs(hidden, enc["attention_mask"], heads, input_ids=enc["input_ids"], sparse=True, colbert=True,
                     vocab_size=ours.vocab_size, unused_token_ids=ours.unused_token_ids)
    # the (batch, vocab) sparse embedding holds exactly the lexical weights
    ref = ours.encode(texts)
    for i, weights in enumerate(ref["lexical_weights"]):
        row = out.sparse[i].detach().numpy()
        assert sorted(int(k) for k in weights) == np.flatnonzero(row).tolist()
        assert all(abs(row[int(k)] - w) <= TOL for k, w in weights.items())
        assert process_token_weights(out.token_weights[i].detach().numpy(), enc["input_ids"][i].tolist(),
                                     ours.unused_token_ids).keys() == weights.keys()
    matrix = colbert_scores(out.colbert, out.colbert, enc["attention_mask"])
    assert torch.allclose(matrix.diagonal(), paired_colbert_scores(out.colbert, out.colbert, enc["attention_mask"]))
    loss = out.dense.sum() + out.sparse.sum() + matrix.sum()
    loss.backward()
    assert heads.sparse_linear.weight.grad is not None and heads.colbert_linear.weight.grad.abs().sum() > 0


def test_from_model_with_heads(ours, tiny_m3):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(tiny_m3)).eval()
    heads = M3Heads.from_folder(tiny_m3, hidden_size=32)
    m = M3Embedder.from_model(model, ours.tokenizer, ours.spec, heads=heads, return_sparse=True, return_colbert=True)
    assert_same_outputs(m.encode(HOSTILE_TEXTS), ours.encode(HOSTILE_TEXTS))
    with pytest.raises(CheckpointError, match="sparse_linear"):
        M3Embedder.from_model(model, ours.tokenizer, ours.spec, return_sparse=True)


# ---------------------------------------------------------------------- heads: missing, wrong, safetensors
@pytest.mark.parametrize("missing, flag_name", [("sparse_linear.pt", "return_sparse"),
                                                 ("colbert_linear.pt", "return_colbert")])
def test_missing_head_raises_and_dense_still_works(m3_copy, ours, missing, flag_name):
    folder = m3_copy(drop=(missing,))
    with pytest.raises(CheckpointError) as err:
        M3Embedder(folder, device="cpu", **{flag_name: True})
    assert missing in err.value.message and "--unified" in err.value.hint and "copy" in err.value.hint
    dense_only = M3Embedder(folder, device="cpu", query_max_length=Q_LEN, passage_max_length=P_LEN)
    out = dense_only.encode(HOSTILE_TEXTS)
    assert np.abs(out["dense_vecs"] - ours.encode(HOSTILE_TEXTS)["dense_vecs"]).max() <= TOL
    with pytest.raises(CheckpointError, match=missing.removesuffix(".pt")):
        dense_only.encode(["x"], **{flag_name: True})
    with pytest.raises(CheckpointError):
        dense_only.compute_score(PAIRS[:1])


@pytest.mark.parametrize("case", ["hidden", "sparse_out", "colbert_dim", "keys", "pickle"])
def test_bad_head_files_raise(m3_copy, case):
    folder = m3_copy()
    if case == "hidden":
        torch.save(torch.nn.Linear(16, 32).state_dict(), folder / "colbert_linear.pt")
        match, kwargs = "hidden size is 32", {}
    elif case == "sparse_out":
        torch.save(torch.nn.Linear(32, 2).state_dict(), folder / "sparse_linear.pt")
        match, kwargs = "2 outputs, expected 1", {}
    elif case == "colbert_dim":
        match, kwargs = "32 outputs, expected 8", {"colbert_dim": 8}
    elif case == "keys":
        torch.save({"linear.weight": torch.zeros(1, 32)}, folder / "sparse_linear.pt")
        match, kwargs = "keys weight and bias", {}
    else:
        torch.save({"weight": torch.zeros(1, 32), "bias": torch.zeros(1), "x": _Evil()}, folder / "sparse_linear.pt")
        match, kwargs = "arbitrary code", {}
    with pytest.raises(CheckpointError, match=match):
        M3Embedder(folder, device="cpu", **kwargs)


class _Evil:
    """Any class instance makes torch.save need full unpickling (which would import and run code)."""


def test_colbert_dim_from_the_file_and_safetensors_only_heads(m3_copy, ours, tmp_path):
    folder = m3_copy("st-bge-m3")
    M3Heads.from_folder(folder, 32).save(folder)  # writes .pt and .safetensors
    for name in ("colbert_linear.pt", "sparse_linear.pt"):
        (folder / name).unlink()
    m = M3Embedder(folder, device="cpu", query_max_length=Q_LEN, passage_max_length=P_LEN, return_sparse=True,
                   return_colbert=True, show_progress=False)
    assert_same_outputs(m.encode(HOSTILE_TEXTS), ours.encode(HOSTILE_TEXTS))
    small = m3_copy("small-colbert-bge-m3")
    torch.save(torch.nn.Linear(32, 8).state_dict(), small / "colbert_linear.pt")
    m = M3Embedder(small, device="cpu", return_colbert=True, show_progress=False)
    assert m.colbert_dim == 8 and m.encode("hello")["colbert_vecs"].shape[1] == 8


def test_pt_and_safetensors_that_differ_are_refused(m3_copy):
    from safetensors.torch import save_file

    folder = m3_copy()
    save_file({"weight": torch.ones(1, 32), "bias": torch.zeros(1)}, str(folder / "sparse_linear.safetensors"))
    with pytest.raises(CheckpointError, match="different tensors"):
        M3Embedder(folder, device="cpu")


# ---------------------------------------------------------------------- save round trip, inspect
def test_save_roundtrip_flagembedding_loads_it(tiny_m3, ours, flag, tmp_path):
    from safetensors.torch import load_file

    dst = tmp_path / "saved-bge-m3"
    result = save(tiny_m3, dst, max_length=P_LEN)
    for name in HEAD_FILES:
        assert name in result.files, name
    for head in ("colbert_linear", "sparse_linear"):
        pt = torch.load(dst / f"{head}.pt", weights_only=True)
        st = load_file(str(dst / f"{head}.safetensors"))
        original = torch.load(tiny_m3 / f"{head}.pt", weights_only=True)
        assert pt.keys() == st.keys() == {"weight", "bias"}
        assert all(torch.equal(pt[k], st[k]) and torch.equal(pt[k], original[k]) for k in pt)
    texts = HOSTILE_TEXTS
    reloaded = _flag(dst)
    assert_same_outputs(_flag_encode(reloaded, "encode", texts), _flag_encode(flag, "encode", texts))
    ours_saved = M3Embedder(dst, device="cpu", query_max_length=Q_LEN, return_sparse=True, return_colbert=True,
                            show_progress=False)
    assert_same_outputs(ours_saved.encode(texts), ours.encode(texts))
    kwargs = dict(batch_size=4, max_query_length=8, max_passage_length=24)
    a, b = ours_saved.compute_score(PAIRS, **kwargs), reloaded.compute_score(PAIRS, **kwargs)
    assert all(np.abs(np.array(a[k]) - np.array(b[k])).max() <= TOL for k in SCORE_KEYS)


def test_save_model_object_with_heads(tiny_m3, ours, tmp_path):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(tiny_m3))
    heads = M3Heads.from_folder(tiny_m3, hidden_size=32)
    dst = tmp_path / "trained-bge-m3"
    save(model, dst, tokenizer=tiny_m3, m3_heads=heads, max_length=P_LEN)
    assert all((dst / name).is_file() for name in HEAD_FILES)
    m = M3Embedder(dst, device="cpu", query_max_length=Q_LEN, return_sparse=True, return_colbert=True,
                   show_progress=False)
    assert_same_outputs(m.encode(HOSTILE_TEXTS), ours.encode(HOSTILE_TEXTS))
    with pytest.raises(CheckpointError, match="hidden size is 32"):
        save(model, tmp_path / "bad", tokenizer=tiny_m3, m3_heads={"sparse_linear": torch.nn.Linear(8, 1)})


def test_inspect_reports_m3_folder_and_head_problems(tiny_m3, m3_copy, capsys):
    report = inspect_folder(tiny_m3)
    assert report.m3_heads == {"colbert_linear": True, "sparse_linear": True}
    assert not [p for p in report.problems if "bge-m3" in p]
    assert main(["inspect", str(tiny_m3)]) == 0
    assert "bge-m3 heads: colbert_linear, sparse_linear" in capsys.readouterr().out
    one = m3_copy("one-head", drop=("colbert_linear.pt",))
    assert any("colbert_linear is missing" in p for p in inspect_folder(one).problems)
    st_only = m3_copy("st-only")
    M3Heads.from_folder(st_only, 32).save(st_only)
    for name in ("colbert_linear.pt", "sparse_linear.pt"):
        (st_only / name).unlink()
    assert any("only as .safetensors" in p for p in inspect_folder(st_only).problems)
    bad = m3_copy("bad-head")
    torch.save(torch.nn.Linear(16, 1).state_dict(), bad / "sparse_linear.pt")
    assert any("hidden size is 32" in p for p in inspect_folder(bad).problems)


# ---------------------------------------------------------------------- CLI
def test_cli_m3_npz(tiny_m3, ours, tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in HOSTILE_TEXTS), encoding="utf-8")
    out = tmp_path / "m3.npz"
    rc = main(["encode", str(tiny_m3), "--m3", "--sparse", "--colbert", "-i", str(src), "-o", str(out),
               "--max-length", str(P_LEN), "--no-progress"])
    assert rc == 0 and "wrote" in capsys.readouterr().out
    ref = ours.encode(HOSTILE_TEXTS)
    with np.load(out) as z:
        data = dict(z)
    n = len(HOSTILE_TEXTS)
    assert set(data) == {"dense", "sparse_indptr", "sparse_indices", "sparse_data", "colbert_vecs", "colbert_offsets"}
    assert data["dense"].shape == (n, 32) and data["dense"].dtype == np.float32
    assert np.abs(data["dense"] - ref["dense_vecs"]).max() <= TOL
    assert data["sparse_indptr"].shape == (n + 1,) and data["sparse_indptr"].dtype == np.int64
    assert data["sparse_indices"].dtype == np.int64 and data["sparse_data"].dtype == np.float32
    lexical = csr_to_lexical_weights(data["sparse_indptr"], data["sparse_indices"], data["sparse_data"])
    for got, want in zip(lexical, ref["lexical_weights"], strict=True):
        assert got.keys() == want.keys() and all(abs(got[k] - want[k]) <= TOL for k in want)
    offsets = data["colbert_offsets"]
    assert offsets.dtype == np.int64 and offsets.shape == (n + 1,) and offsets[0] == 0
    assert data["colbert_vecs"].shape == (offsets[-1], 32) and data["colbert_vecs"].dtype == np.float32
    for i, want in enumerate(ref["colbert_vecs"]):
        assert np.abs(data["colbert_vecs"][offsets[i]:offsets[i + 1]] - want).max() <= TOL


def test_cli_m3_queries_sparse_jsonl_and_errors(tiny_m3, ours, tmp_path, capsys):
    src = tmp_path / "q.txt"
    src.write_text("the fox\n\n中文 测试\n", encoding="utf-8")
    out = tmp_path / "q.npz"
    rc = main(["encode", str(tiny_m3), "--m3", "--sparse", "--sparse-format", "jsonl", "--queries", "-i", str(src),
               "-o", str(out), "--max-length", str(Q_LEN)])
    assert rc == 0
    ref = ours.encode_queries(["the fox", "", "中文 测试"])
    with np.load(out) as z:
        assert sorted(z.files) == ["dense"]
        assert np.abs(z["dense"] - ref["dense_vecs"]).max() <= TOL
    lines = (tmp_path / "q.sparse.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3
    for line, want in zip(lines, ref["lexical_weights"], strict=True):
        got = json.loads(line)
        assert got.keys() == want.keys() and all(abs(got[k] - float(want[k])) <= TOL for k in want)
    capsys.readouterr()
    assert main(["encode", str(tiny_m3), "--sparse", "-i", str(src), "-o", str(tmp_path / "x.npy")]) == 2
    assert "--m3" in capsys.readouterr().err
    assert main(["encode", str(tiny_m3), "--m3", "-i", str(src), "-o", str(tmp_path / "x.npy")]) == 2
    assert ".npz" in capsys.readouterr().err
    no_heads = tmp_path / "no-heads-bge-m3"
    shutil.copytree(tiny_m3, no_heads)
    (no_heads / "sparse_linear.pt").unlink()
    assert main(["encode", str(no_heads), "--m3", "--sparse", "-i", str(src), "-o", str(tmp_path / "y.npz")]) == 2
    err = capsys.readouterr().err
    assert "sparse_linear.pt" in err and "hint:" in err and "Traceback" not in err
    assert not (tmp_path / "y.npz").exists()


def test_token_budget_batching_gives_the_same_outputs(tiny_m3, ours):
    """M3 goes through Embedder's shared batch iterator: token-budget batches must not change any output."""
    texts = ["the quick brown fox", "", "hello world " * 20, "cat", "what is bge"]
    budget = M3Embedder(tiny_m3, device="cpu", query_max_length=Q_LEN, passage_max_length=P_LEN, max_batch_tokens=40,
                        return_sparse=True, return_colbert=True, show_progress=False)
    assert_same_outputs(ours.encode(texts, return_sparse=True, return_colbert=True),
                        budget.encode(texts, return_sparse=True, return_colbert=True))


def test_an_onnx_backend_gives_m3_a_clear_spec_error(tiny_m3, tmp_path):
    """M3's heads need hidden states: backend='onnx', and an int8 precision that runs the ONNX graph, are refused
    with a SpecError saying so (the backend's declared ``output`` decides, no attribute probing)."""
    from embedkit.export.onnx import export_onnx

    with pytest.raises(SpecError, match="needs backend='torch'"):
        M3Embedder(tiny_m3, backend="onnx")
    out = export_onnx(tiny_m3, tmp_path / "onnx", quantize="int8", min_cosine=0.0, min_cosine_floor=0.0).path
    assert Embedder(out, precision="int8", show_progress=False).backend.output == "pooled"
    with pytest.raises(SpecError, match="needs the torch backend") as err:
        M3Embedder(out, precision="int8", show_progress=False)
    assert "precision='fp32'" in err.value.hint


def test_m3_overrides_only_the_per_batch_hook(ours):
    """M3Embedder reuses the base encode loop: its encode methods are thin wrappers over Embedder._encode_as, and
    what differs is the per-batch outputs (``_outputs``)."""
    from embedkit.embedder import Embedder as Base

    for name in ("_encode_as", "_encode", "_prepare", "_padded_batches"):
        assert getattr(M3Embedder, name) is getattr(Base, name), name
    assert M3Embedder._outputs is not Base._outputs
    assert not hasattr(ours, "_m3_ready")
    one = ours.encode_queries("the fox", return_sparse=True)
    many = ours.encode_queries(["the fox"], return_sparse=True)
    assert np.array_equal(one["dense_vecs"], many["dense_vecs"][0])
    assert one["lexical_weights"] == many["lexical_weights"][0]
