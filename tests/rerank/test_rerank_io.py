"""Rerankers saved, exported and compared: ``save`` writes what embedkit's Reranker, FlagEmbedding's FlagReranker and
sentence-transformers' CrossEncoder load with equal scores (the model card's own snippets are run), the spec comes
back with provenance ``saved by embedkit``; ``export onnx`` gives one ids -> score graph equal to PyTorch, int8 behind
its gate, used by ``Reranker(backend="onnx")``; ``parity`` compares every engine; hostile values stay data.
"""

from __future__ import annotations

import ast
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from embedkit import CheckpointError, Reranker, SpecError
from embedkit.checkpoint.save import save, save_reranker
from embedkit.cli import main
from embedkit.export.onnx import export_onnx, export_reranker_onnx
from embedkit.parity import check_parity
from embedkit.recipe import PLACEHOLDER_PATH
from embedkit.rerank.spec import SAVED, SAVED_KEY, load_reranker_spec
from tests.rerank.test_rerank import ML, PAIRS, _build_bert, _build_xlmr
from tests.test_hostile_exec import NAME_PAYLOAD, VALUE_PAYLOAD

TOL = 1e-5


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rerank-io")
    return {"bert": _build_bert(root / "tiny-bert-rr"), "xlmr": _build_xlmr(root / "tiny-xlmr-rr")}


@pytest.fixture(scope="module")
def saved(sources, tmp_path_factory) -> Path:
    """The bert reranker saved with CrossEncoder's truncation at ML tokens."""
    dst = tmp_path_factory.mktemp("saved") / "tiny-saved"
    save(sources["bert"], dst, truncation="longest_first", max_length=ML)
    return dst


@pytest.fixture(scope="module")
def exported(saved, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("onnx") / "tiny-onnx"
    export_onnx(saved, dst)
    return dst


def _scores(r: Reranker) -> np.ndarray:
    return np.asarray(r.compute_score(PAIRS), dtype=np.float64)


def _code_blocks(card: str, lang: str = "python") -> list[str]:
    """The fenced blocks of ``lang`` in a Markdown card (fences of three or more backticks)."""
    return [m.group(2) for m in re.finditer(r"^(`{3,})" + lang + r"\n(.*?)\n\1$", card, flags=re.S | re.M)]


def _run_card_snippets(folder: Path) -> dict[str, np.ndarray]:
    """Run the card's embedkit / FlagEmbedding / sentence-transformers snippets on ``folder``: their ``scores``."""
    card = (folder / "README.md").read_text(encoding="utf-8")
    out = {}
    for block in _code_blocks(card):
        ast.parse(block)  # every snippet is valid Python, whatever the values in it
        lib = re.search(r"^from (\w+) import", block, flags=re.M).group(1)
        code = block.replace(repr(PLACEHOLDER_PATH), repr(str(folder)))
        namespace: dict = {}
        exec(compile(code, f"<card {lib}>", "exec"), namespace)  # noqa: S102 - the card's own snippet, on test data
        out[lib] = np.asarray(namespace["scores"], dtype=np.float64).reshape(-1)
    return out


# ---------------------------------------------------------------------- save
@pytest.mark.parametrize("kind", ["bert", "xlmr"])
@pytest.mark.parametrize("truncation", ["flagembedding", "longest_first"])
def test_save_round_trip_peers_load_with_equal_scores(sources, tmp_path, kind, truncation):
    from FlagEmbedding import FlagReranker
    from sentence_transformers import CrossEncoder

    src = sources[kind]
    dst = tmp_path / f"saved-{kind}"
    res = save(src, dst, truncation=truncation, max_length=ML)
    assert res.spec.truncation == truncation and res.spec.max_length == ML
    assert {"README.md", "config.json", "embedkit-manifest.json", "model.safetensors"} <= set(res.files)
    config = json.loads((dst / "config.json").read_text())
    assert config["sentence_transformers"] == {"activation_fn": "torch.nn.modules.activation.Sigmoid"}
    assert config[SAVED_KEY]["truncation"] == truncation and config["architectures"][0].endswith(
        "ForSequenceClassification")

    ours = Reranker(dst, device="cpu", show_progress=False)
    assert ours.spec.truncation == truncation and ours.spec.max_length == ML
    for name in ("truncation", "max_length", "activation"):
        assert ours.spec.provenance[name].startswith(SAVED)
    before = Reranker(src, device="cpu", max_length=ML, truncation=truncation, show_progress=False)
    assert np.abs(_scores(ours) - _scores(before)).max() <= TOL  # the weights and the recipe came through

    # each peer, loaded from the saved folder as the card says, equals embedkit in its own truncation mode
    flag = FlagReranker(str(dst), use_fp16=False, devices="cpu", max_length=ML)
    flag_ours = Reranker(dst, device="cpu", truncation="flagembedding", show_progress=False)
    assert np.abs(np.asarray(flag.compute_score(PAIRS)) - _scores(flag_ours)).max() <= TOL
    ce = CrossEncoder(str(dst), device="cpu", local_files_only=True)  # max_length and activation from the folder
    assert ce.max_length == ML and isinstance(ce.activation_fn, torch.nn.Sigmoid)
    ce_ours = Reranker(dst, device="cpu", truncation="longest_first", show_progress=False)
    assert np.abs(ce.predict(PAIRS, show_progress_bar=False) - ce_ours.predict(PAIRS)).max() <= TOL

    # the model card's snippets run and agree (the short pairs fit in ML tokens: every truncation is equal)
    snippets = _run_card_snippets(dst)
    assert set(snippets) == {"embedkit", "FlagEmbedding", "sentence_transformers"}
    logits = snippets["embedkit"]
    assert np.abs(snippets["FlagEmbedding"] - logits).max() <= TOL
    assert np.abs(snippets["sentence_transformers"] - 1 / (1 + np.exp(-logits))).max() <= TOL


def test_saved_instruction_and_query_length_round_trip_to_flagreranker(sources, tmp_path):
    from FlagEmbedding import FlagReranker

    dst = tmp_path / "instr"
    save(sources["bert"], dst, truncation="flagembedding", max_length=ML, query_max_length=8,
         query_instruction="query:", query_instruction_format="{}\\n{}")
    spec = load_reranker_spec(dst)
    assert (spec.query_max_length, spec.query_instruction) == (8, "query:")
    assert spec.provenance["query_instruction"].startswith(SAVED)
    theirs = FlagReranker(str(dst), use_fp16=False, devices="cpu", max_length=ML, query_max_length=8,
                          query_instruction_for_rerank="query:", query_instruction_format="{}\\n{}")
    ours = Reranker(dst, device="cpu", show_progress=False)  # everything from the folder
    assert np.abs(np.asarray(theirs.compute_score(PAIRS)) - _scores(ours)).max() <= TOL
    snippets = _run_card_snippets(dst)
    assert np.abs(snippets["FlagEmbedding"] - snippets["embedkit"]).max() <= TOL
    # an argument still wins, and switching to longest_first drops the recorded query limit
    other = load_reranker_spec(dst, {"truncation": "longest_first"})
    assert other.truncation == "longest_first" and other.query_max_length is None
    assert other.provenance["truncation"] == "argument" and other.provenance["max_length"].startswith(SAVED)


def test_save_reranker_from_a_model_object(sources, tmp_path):
    """The trainer's path (``finetune --reranker``): a loaded model + tokenizer folder, no source folder."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(sources["bert"])).eval()
    res = save_reranker(model, tmp_path / "obj", tokenizer=sources["bert"], max_length=ML,
                        card={"training": {"steps": 20}})
    assert res.spec.truncation == "flagembedding" and res.spec.provenance["max_length"] == "argument"
    ours = Reranker(tmp_path / "obj", device="cpu", show_progress=False)
    ref = Reranker(sources["bert"], device="cpu", max_length=ML, truncation="flagembedding", show_progress=False)
    assert np.abs(_scores(ours) - _scores(ref)).max() <= TOL
    assert "## Training" in (tmp_path / "obj" / "README.md").read_text()


def test_save_refuses_embedder_fields_and_multi_label_heads(sources, tmp_path):
    with pytest.raises(SpecError, match="pooling"):
        save(sources["bert"], tmp_path / "x", pooling="cls")
    assert not (tmp_path / "x").exists()
    two = _build_bert(tmp_path / "two-labels", num_labels=2)
    with pytest.raises(CheckpointError, match="2 labels"):
        save(two, tmp_path / "y")
    with pytest.raises(SpecError, match="truncation"):
        save(sources["bert"], tmp_path / "z", truncation="middle_out")


def test_cli_save_export_parity(sources, tmp_path, capsys):
    dst, onnx = tmp_path / "cli-saved", tmp_path / "cli-onnx"
    assert main(["save", str(sources["xlmr"]), str(dst), "--truncation", "longest_first", "--max-length", "32"]) == 0
    assert "truncation=longest_first" in capsys.readouterr().out
    assert main(["export", "onnx", str(dst), str(onnx)]) == 0
    assert "onnx/reranker.onnx" in capsys.readouterr().out
    assert main(["parity", str(onnx), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "reranker" and report["ok"]
    assert set(report["engines"]) == {"embedkit-torch", "embedkit-onnx", "flagembedding", "sentence-transformers"}


# ---------------------------------------------------------------------- ONNX
def test_onnx_export_parity_and_backend(saved, exported):
    info = json.loads((exported / "onnx" / "export.json").read_text())
    assert info["kind"] == "reranker" and info["sigmoid"] is False and info["outputs"] == {
        "onnx/reranker.onnx": "score"}
    assert info["parity"]["max_abs_diff_vs_torch"] <= TOL
    torch_r = Reranker(saved, device="cpu", show_progress=False)
    onnx_r = Reranker(exported, backend="onnx", show_progress=False)
    assert onnx_r.onnx is not None and onnx_r.onnx.output == "scores" and onnx_r.model is None
    assert onnx_r.spec == torch_r.spec and onnx_r.spec.provenance["truncation"].startswith(SAVED)
    assert np.abs(_scores(onnx_r) - _scores(torch_r)).max() <= TOL
    assert np.abs(onnx_r.predict(PAIRS) - torch_r.predict(PAIRS)).max() <= TOL
    for batch_size in (1, 3):  # batching does not change a score
        assert np.abs(np.asarray(onnx_r.compute_score(PAIRS, batch_size=batch_size)) - _scores(torch_r)).max() <= TOL
    with pytest.raises(SpecError, match="backend='onnx'"):
        Reranker(exported, backend="onnx", precision="bf16")
    with pytest.raises(CheckpointError, match="no ONNX export"):
        Reranker(saved, backend="onnx")


def test_onnx_int8_is_gated(saved, tmp_path, caplog):
    strict = export_reranker_onnx(saved, tmp_path / "strict", quantize="int8", gate=(0.0, 1.01))
    assert strict.int8["kept"] is False and not (tmp_path / "strict" / "onnx" / "reranker_int8.onnx").exists()
    with caplog.at_level(logging.WARNING, logger="embedkit"):
        fallback = Reranker(tmp_path / "strict", precision="int8", device="cpu", show_progress=False)
    assert fallback.precision == "fp32" and fallback.onnx is None and "failed the quality gate" in caplog.text
    with pytest.raises(CheckpointError, match="failed the quality gate"):
        Reranker(tmp_path / "strict", backend="onnx", precision="int8")

    loose = export_reranker_onnx(saved, tmp_path / "loose", quantize="int8", gate=(1.0, -1.0))
    assert loose.int8["kept"] is True and loose.int8["pairs"] > 50
    int8 = Reranker(tmp_path / "loose", precision="int8", show_progress=False)
    assert int8.onnx is not None and int8.onnx.precision == "int8" and int8.precision == "int8"
    assert int8.quality["source"] == "export gate"
    fp32 = _scores(Reranker(tmp_path / "loose", backend="onnx", show_progress=False))
    assert np.isfinite(_scores(int8)).all() and not np.array_equal(_scores(int8), fp32)  # really the int8 graph


def test_onnx_sigmoid_graph_is_recorded(saved, tmp_path):
    export_onnx(saved, tmp_path / "sig", sigmoid=True)
    info = json.loads((tmp_path / "sig" / "onnx" / "export.json").read_text())
    assert info["sigmoid"] is True and info["score"] == "sigmoid(logit)"
    import onnxruntime as ort

    r = Reranker(saved, device="cpu", show_progress=False)
    from embedkit import batching

    features = r.features(PAIRS)
    (rows, padded), *_ = list(batching.padded_batches(features, r.tokenizer, len(PAIRS)))
    session = ort.InferenceSession(str(tmp_path / "sig" / "onnx" / "reranker.onnx"))
    feed = {i.name: padded[i.name].astype(np.int64) for i in session.get_inputs()}
    got = session.run(None, feed)[0]
    expected = r.predict(PAIRS)[rows]  # CrossEncoder's sigmoid of the same logits
    assert np.abs(got - expected).max() <= TOL
    with pytest.raises(SpecError, match="sigmoid"):
        Reranker(tmp_path / "sig", backend="onnx")
    with pytest.raises(Exception, match="rerankers"):
        export_onnx(_embedder(tmp_path), tmp_path / "emb-sig", sigmoid=True)


def _embedder(tmp_path: Path) -> Path:
    from tests.conftest import build_tiny_bert

    return build_tiny_bert(tmp_path / "embedder")


# ---------------------------------------------------------------------- parity
def test_parity_matrix_for_a_reranker(exported):
    report = check_parity(exported)
    assert report.kind == "reranker" and report.ok, report.to_dict()
    assert report.engines == ["embedkit-torch", "embedkit-onnx", "flagembedding", "sentence-transformers"]
    by = {c.engine: c for c in report.checks}
    assert "truncation=flagembedding" in by["flagembedding"].tolerance
    assert "truncation=longest_first" in by["sentence-transformers"].tolerance
    assert all(c.max_abs_diff <= TOL for c in report.checks)
    assert report.matrix["embedkit-onnx"]["embedkit-torch"]["max_abs_diff"] <= TOL
    # the gate sample has pairs past max_length: the two peers' truncations really differ on it
    assert report.matrix["flagembedding"]["sentence-transformers"]["max_abs_diff"] > 1e-3
    assert json.loads(json.dumps(report.to_dict()))["kind"] == "reranker"
    only = check_parity(exported, engines=("flagembedding",))
    assert only.engines == ["embedkit-torch", "flagembedding"]


# ---------------------------------------------------------------------- hostile values
@pytest.mark.parametrize("payload", [NAME_PAYLOAD, VALUE_PAYLOAD, "a\nb", "a\u2028b", "```\n# pwned\n```", "\\n"])
def test_hostile_values_in_card_and_spec_do_not_execute(sources, tmp_path, monkeypatch, payload):
    monkeypatch.chdir(tmp_path)
    dst = tmp_path / "hostile"
    fmt = "{}" + payload.replace("{", "").replace("}", "") + "{}"
    save(sources["bert"], dst, max_length=ML, query_instruction=payload, query_instruction_format=fmt)
    spec = load_reranker_spec(dst)
    assert (spec.query_instruction, spec.query_instruction_format) == (payload, fmt)
    card = (dst / "README.md").read_text(encoding="utf-8")
    blocks = _code_blocks(card)
    assert len(blocks) == 3
    for block in blocks:
        tree = ast.parse(block)  # the value is a literal inside the code, never code
        strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        assert payload in strings or fmt.replace("\\n", "\n") in strings or "embedkit" in block
    snippets = _run_card_snippets(dst)  # run them for real: nothing but scoring happens
    assert np.abs(snippets["FlagEmbedding"] - snippets["embedkit"]).max() <= TOL
    assert not (tmp_path / "marker").exists()


def test_hostile_folder_name_in_card(sources, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dst = tmp_path / NAME_PAYLOAD
    save(sources["bert"], dst, max_length=ML)
    card = (dst / "README.md").read_text(encoding="utf-8")
    title = next(line for line in card.splitlines() if line.startswith("# "))
    assert "\\_\\_import\\_\\_" in title  # Markdown-escaped text, not raw
    for block in _code_blocks(card):
        ast.parse(block)
    _run_card_snippets(dst)
    assert not (tmp_path / "marker").exists()
