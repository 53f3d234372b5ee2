"""Precision selection, the quality gate, token-budget batching, and bf16 parity within the gate."""

import json
import logging

import numpy as np
import pytest

from embedkit import Embedder, SpecError
from embedkit.batching import length_sorted_order, token_budget_batches
from embedkit.precision import cpu_flags, select_precision

CPUINFO_AMX = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
CPUINFO_AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"
CPUINFO_ARM = "processor\t: 0\nFeatures\t: fp asimd bf16 sve\n"


def test_cpu_flags_parsing():
    assert {"amx_bf16", "avx512_bf16"} <= cpu_flags(CPUINFO_AMX)
    assert cpu_flags(CPUINFO_ARM) == {"fp", "asimd", "bf16", "sve"}
    assert cpu_flags("no flags here") == set()


@pytest.mark.parametrize("requested, device, cpuinfo, expected", [
    ("auto", "cpu", CPUINFO_AMX, "bf16"),
    ("auto", "cpu", "flags : avx512f avx512_bf16\n", "bf16"),
    ("auto", "cpu", CPUINFO_AVX2, "fp32"),
    ("auto", "cuda", CPUINFO_AVX2, "fp16"),
    ("bf16", "cpu", CPUINFO_AVX2, "bf16"),
    (None, "cpu", CPUINFO_AMX, "fp32"),
    ("int8", "cpu", CPUINFO_AMX, "int8"),
])
def test_select_precision(requested, device, cpuinfo, expected):
    choice = select_precision(requested, device, cpu_flags(cpuinfo))
    assert choice.precision == expected and choice.reason


def test_unknown_precision():
    with pytest.raises(SpecError, match="unknown precision"):
        select_precision("fp8", "cpu", set())


@pytest.mark.parametrize("seed", range(5))
def test_token_budget_batches_respect_budget_and_order(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 300, size=500).tolist() + [5000]  # one text longer than the budget
    order = length_sorted_order(lengths)
    chunks = list(token_budget_batches(order, lengths, max_tokens=2048, max_batch_size=64))
    assert np.concatenate(chunks).tolist() == order.tolist()  # every text once, in sorted order
    for rows in chunks:
        padded = len(rows) * max(lengths[i] for i in rows)
        assert len(rows) <= 64 and (padded <= 2048 or len(rows) == 1)
    assert len(chunks[0]) == 1  # the 5000-token text rides alone
    sizes = [len(c) for c in chunks[:-1]]  # (the last one holds the remainder)
    assert sizes == sorted(sizes) and sizes[-1] > 4 * sizes[1]  # short texts ride in much bigger batches


def test_token_budget_encoding_equals_plain(minilm_dir, minilm):
    texts = [" ".join(["word"] * n) for n in (1, 50, 3, 200, 7, 7, 120)] + [""]
    budget = Embedder(minilm_dir, max_batch_tokens=300, show_progress=False)
    assert np.abs(budget.encode(texts) - minilm.encode(texts)).max() <= 1e-5


def test_bf16_within_the_gate_and_cached(minilm_dir, minilm, tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDKIT_CACHE", str(tmp_path))
    m = Embedder(minilm_dir, precision="bf16", show_progress=False)
    assert m.precision == "bf16" and m.quality["passed"] and m.quality["mean_cosine"] >= 0.999
    texts = ["hello world", "", "中文 测试", " ".join(["long text"] * 200), "The quick brown fox."]
    a, b = m.encode(texts), minilm.encode(texts)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.mean() >= 0.999 and cos.min() >= 0.995 and a.dtype == np.float32
    cache = json.loads((tmp_path / "precision-gate.json").read_text())
    assert len(cache) == 1 and next(iter(cache.values()))["passed"]
    again = Embedder(minilm_dir, precision="bf16", show_progress=False)  # verdict from the cache
    assert again.precision == "bf16" and again.quality == m.quality


def test_gate_falls_back_to_fp32(tiny_bert, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("EMBEDKIT_CACHE", str(tmp_path))
    exact = Embedder(tiny_bert, pooling="mean", show_progress=False)
    with caplog.at_level(logging.WARNING, logger="embedkit"):
        m = Embedder(tiny_bert, pooling="mean", precision="fp16", precision_gate=(1.0000001, 1.0),
                     show_progress=False)
    assert m.precision == "fp32" and not m.quality["passed"] and "failed the quality gate" in caplog.text
    assert "failed the quality gate" in m.precision_reason
    texts = ["the quick brown fox", "hello world", ""]
    assert np.abs(m.encode(texts) - exact.encode(texts)).max() <= 1e-6  # really back on fp32 weights
    cached = Embedder(tiny_bert, pooling="mean", precision="fp16", precision_gate=(1.0000001, 1.0),
                      show_progress=False)
    assert cached.precision == "fp32"  # the failed verdict is cached too


def test_int8_uses_the_onnx_graph_or_falls_back(tiny_bert, tmp_path, caplog):
    from embedkit.checkpoint.save import save
    from embedkit.export.onnx import export_onnx

    src = tmp_path / "src"
    save(tiny_bert, src, pooling="cls", normalize=True)
    with caplog.at_level(logging.WARNING, logger="embedkit"):
        plain = Embedder(src, precision="int8", show_progress=False)
    assert plain.precision == "fp32" and "int8" in caplog.text
    out = export_onnx(src, tmp_path / "onnx", quantize="int8", min_cosine=0.0, min_cosine_floor=0.0).path
    m = Embedder(out, precision="int8", show_progress=False)
    assert m.precision == "int8" and m.quality["kept"] and m.encode(["hello"]).shape == (1, 32)


def test_dtype_and_precision_must_agree(tiny_bert):
    with pytest.raises(SpecError, match="disagree"):
        Embedder(tiny_bert, pooling="cls", dtype="bf16", precision="fp16")


@pytest.mark.parametrize("requested, device, cpuinfo, value, reason", [
    ("fp32", "cpu", CPUINFO_AMX, "fp32", "asked for"),
    (None, "cpu", CPUINFO_AMX, "fp32", "default (exact: matches sentence-transformers / FlagEmbedding)"),
    ("auto", "cpu", CPUINFO_AMX, "bf16", "auto: the CPU has bf16 matrix units (amx_bf16, avx512_bf16)"),
    ("auto", "cuda", CPUINFO_AVX2, "fp16", "auto: CUDA device"),
])
def test_describe_precision_is_the_row_spec_shows(requested, device, cpuinfo, value, reason):
    from embedkit.precision import describe_precision

    assert describe_precision(requested, device, cpu_flags(cpuinfo)) == (
        "precision", value, f"{reason} (non-fp32 runs a cached quality gate vs fp32)")


def test_spec_json_precision_row_comes_from_the_library(capsys, minilm_dir, tmp_path, monkeypatch):
    import torch

    from embedkit.cli import main
    from embedkit.precision import describe_precision
    from embedkit.spec import load_spec

    monkeypatch.setenv("EMBEDKIT_CACHE", str(tmp_path))  # nothing measured yet: auto measures on first use
    assert main(["spec", "minilm", "--json", "--precision", "auto"]) == 0
    row = json.loads(capsys.readouterr().out)["precision"]
    expected = describe_precision("auto", model_dir=minilm_dir, spec=load_spec(minilm_dir).to_dict())
    assert ("precision", row["value"], row["rule"]) == expected
    if not torch.cuda.is_available():
        assert row["value"] == "auto" and "measured on first use" in row["rule"]
    assert main(["spec", "minilm", "--json", "--precision", "bf16"]) == 0
    row = json.loads(capsys.readouterr().out)["precision"]
    assert ("precision", row["value"], row["rule"]) == describe_precision("bf16")
    with pytest.raises(SpecError, match="unknown precision"):
        describe_precision("fp8", "cpu", set())


def test_create_backend_chooses_and_gates_outside_the_embedder(tiny_bert, tmp_path, monkeypatch):
    """The backends layer's factory picks backend + precision and runs the gate (no Embedder involved); its verdict
    is cached under the same key the Embedder then reuses."""
    import torch

    from embedkit.backends.factory import create_backend
    from embedkit.precision import cached_verdict, gate_key
    from embedkit.spec import load_spec

    monkeypatch.setenv("EMBEDKIT_CACHE", str(tmp_path))
    spec = load_spec(tiny_bert, {"pooling": "mean"})
    backend, info = create_backend(tiny_bert, spec, precision="fp16", gate=(1.0000001, 1.0), device="cpu")
    assert backend.output == "hidden" and backend.dtype == torch.float32  # failed: back on fp32 weights
    assert (info.precision, info.candidate, info.cached) == ("fp32", "fp16", False)
    assert info.summary == "fp32 (fp16 failed the gate)" and "quality gate failed for fp16" in info.gate_note()
    assert cached_verdict(gate_key(tiny_bert, spec.to_dict(), "fp16", "cpu")) == info.quality
    m = Embedder(tiny_bert, pooling="mean", precision="fp16", precision_gate=(1.0000001, 1.0), device="cpu",
                 show_progress=False)
    assert m.precision_info.cached and m.quality == info.quality and m.precision == "fp32"
    backend, info = create_backend(tiny_bert, spec, dtype="bf16", gate=None, device="cpu")
    assert backend.dtype == torch.bfloat16 and info.precision == "bf16" and info.requested == "bf16"
