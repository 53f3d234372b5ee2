"""ONNX export and the ONNX backend, against PyTorch on real onnxruntime sessions."""

import json

import numpy as np
import pytest

from embedkit import CheckpointError, Embedder, SpecError
from embedkit.checkpoint.save import save
from embedkit.cli import main
from embedkit.export.onnx import export_onnx

TEXTS_37 = [" ".join(["the quick brown fox jumps"] * (i % 9)) + f" text {i}" for i in range(35)] + ["", "x"]
LONG = " ".join(["a long text that goes past max length"] * 40)


def _export(tiny_bert, tmp_path, name, **spec):
    src = tmp_path / f"{name}-src"
    save(tiny_bert, src, **spec)
    return export_onnx(src, tmp_path / name)


@pytest.mark.parametrize("spec", [
    {"pooling": "cls", "normalize": True},
    {"pooling": "mean", "normalize": False},
    {"pooling": "last_token", "normalize": True, "truncate_dim": 16},
    {"pooling": "mean", "normalize": True, "truncate_dim": 8, "max_length": 24},
], ids=["cls-norm", "mean-raw", "last-trunc", "mean-trunc-len24"])
def test_fp32_parity_dynamic_shapes(tiny_bert, tmp_path, spec):
    report = _export(tiny_bert, tmp_path, "onnx", **spec)
    assert report.parity_max_abs_diff <= 1e-5
    torch_model = Embedder(report.path, show_progress=False)
    onnx_model = Embedder(report.path, backend="onnx", show_progress=False)
    assert onnx_model.dim == torch_model.dim == spec.get("truncate_dim", 32)
    for texts, bs in ((["x"], 1), (TEXTS_37, 37), (TEXTS_37, 5), ([LONG], 1), ([LONG, "a"], 2)):
        a = onnx_model.encode_queries(texts, batch_size=bs)
        b = torch_model.encode_queries(texts, batch_size=bs)
        assert np.abs(a - b).max() <= 1e-5, (texts[:1], bs)
    info = json.loads((report.path / "onnx" / "export.json").read_text())
    assert info["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert info["spec"]["pooling"] == spec["pooling"]


def test_transformer_graph_outputs_last_hidden_state(tiny_bert, tmp_path):
    import onnxruntime as ort
    import torch
    from transformers import AutoModel, AutoTokenizer

    report = _export(tiny_bert, tmp_path, "onnx", pooling="cls", normalize=True)
    sess = ort.InferenceSession(str(report.path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["last_hidden_state"]
    tok = AutoTokenizer.from_pretrained(str(report.path))
    enc = tok(TEXTS_37[:7], padding=True, return_tensors="np")
    out = sess.run(None, {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")})[0]
    with torch.no_grad():
        ref = AutoModel.from_pretrained(str(report.path)).eval()(**tok(TEXTS_37[:7], padding=True,
                                                                      return_tensors="pt")).last_hidden_state
    assert np.abs(out - ref.numpy()).max() <= 1e-5


def test_minilm_export_parity_and_int8_gate(tmp_path, minilm):
    report = export_onnx("minilm", tmp_path / "mini", quantize="int8")
    texts = ["hello world", "", "中文 测试", LONG, "The quick brown fox jumps over the lazy dog."]
    onnx_model = Embedder(report.path, backend="onnx", show_progress=False)
    assert np.abs(onnx_model.encode(texts) - minilm.encode(texts)).max() <= 1e-5
    assert report.int8["kept"] and report.int8["mean_cosine"] >= 0.99
    int8 = Embedder(report.path, backend="onnx", precision="int8", show_progress=False).encode(texts)
    assert float((int8 * minilm.encode(texts)).sum(1).mean()) >= 0.97


def test_int8_gate_refuses_when_quality_is_too_low(tiny_bert, tmp_path, caplog):
    src = tmp_path / "src"
    save(tiny_bert, src, pooling="mean", normalize=True)
    report = export_onnx(src, tmp_path / "strict", quantize="int8", min_cosine=0.999999999)
    assert report.int8["kept"] is False and report.int8["tried"]
    assert not (tmp_path / "strict" / "onnx" / "embedder_int8.onnx").exists()
    assert "int8 kept out" in caplog.text
    with pytest.raises(CheckpointError, match="failed the quality gate"):
        Embedder(tmp_path / "strict", backend="onnx", precision="int8")
    loose = export_onnx(src, tmp_path / "loose", quantize="int8", min_cosine=0.0, min_cosine_floor=0.0)
    assert loose.int8["kept"] and (tmp_path / "loose" / "onnx" / "embedder_int8.onnx").is_file()


def test_backend_refuses_missing_stale_or_mismatched_exports(tiny_bert, tmp_path):
    with pytest.raises(CheckpointError, match="no ONNX export") as info:
        Embedder(tiny_bert, backend="onnx")
    assert "embedkit export onnx" in info.value.hint
    report = _export(tiny_bert, tmp_path, "onnx", pooling="cls", normalize=True)
    with pytest.raises(SpecError, match="exported with pooling='cls'"):
        Embedder(report.path, backend="onnx", pooling="mean")
    with pytest.raises(CheckpointError, match="no onnx/embedder_int8.onnx .int8 was not requested"):
        Embedder(report.path, backend="onnx", precision="int8")
    # the weights change after the export: the graph no longer matches the model
    from safetensors.torch import load_file, save_file

    weights = report.path / "model.safetensors"
    state = load_file(weights)
    state["embeddings.word_embeddings.weight"] += 1.0
    save_file(state, weights)
    with pytest.raises(CheckpointError, match="made from other weights"):
        Embedder(report.path, backend="onnx")


def test_sentence_transformers_onnx_backend_or_skip(tmp_path, tiny_bert):
    report = _export(tiny_bert, tmp_path, "onnx", pooling="mean", normalize=True)
    from sentence_transformers import SentenceTransformer

    try:
        st = SentenceTransformer(str(report.path), backend="onnx", device="cpu", local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - sentence-transformers' ONNX backend needs optimum
        if "Optimum" in str(exc) or "optimum" in str(exc):
            pytest.skip("sentence-transformers' ONNX backend needs optimum, which cannot be installed next to "
                        "transformers 5 (it pins transformers < 4.58)")
        raise
    ours = Embedder(report.path, show_progress=False)
    assert np.abs(st.encode(TEXTS_37) - ours.encode(TEXTS_37)).max() <= 1e-5


def test_cli_export(tiny_bert, tmp_path, capsys):
    src = tmp_path / "src"
    save(tiny_bert, src, pooling="cls", normalize=True)
    assert main(["export", "onnx", str(src), str(tmp_path / "out"), "--quantize", "int8", "--min-cosine", "0"]) == 0
    out = capsys.readouterr().out
    assert "max abs diff vs PyTorch" in out and "int8: kept" in out
    assert main(["export", "onnx", str(src), str(tmp_path / "out")]) == 2
    assert "already exists" in capsys.readouterr().err
