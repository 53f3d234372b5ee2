"""precision='auto' on CPU: measured once per (model, spec, host), cached with the gate verdicts; int8-torch."""

import json

import numpy as np
import pytest

from embedkit import Embedder
from embedkit.backends.factory import create_backend, measure_auto
from embedkit.backends.int8_torch import TorchInt8Backend
from embedkit.backends.torch_backend import TorchBackend
from embedkit.folder.loading import load_tokenizer
from embedkit.precision import describe_precision, pick_fastest
from embedkit.spec import load_spec

IMPOSSIBLE = (1.0000001, 1.0)  # no candidate can pass: auto must stay on fp32
TEXTS = ["the quick brown fox", "hello world", "", "a much longer text " * 20]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "precision-gate.json"


def _auto_entries(cache_file):
    return {k: v for k, v in json.loads(cache_file.read_text()).items() if v.get("kind") == "auto"}


def test_pick_fastest_never_picks_a_failed_or_skipped_candidate():
    fp32 = {"passed": True, "texts_per_s": 100.0}
    assert pick_fastest({"fp32": fp32, "int8-torch": {"passed": False, "texts_per_s": 500.0},
                         "bf16": {"skipped": "no native bf16"}}) == "fp32"
    assert pick_fastest({"fp32": fp32, "int8-torch": {"passed": True, "texts_per_s": 150.0}}) == "int8-torch"
    assert pick_fastest({"fp32": fp32, "int8-torch": {"passed": True, "texts_per_s": 103.0}}) == "fp32"  # < margin
    assert pick_fastest({"fp32": fp32, "int8": {"passed": True, "texts_per_s": 140.0},
                         "int8-torch": {"passed": True, "texts_per_s": 150.0}}) == "int8-torch"
    assert pick_fastest({"fp32": {"passed": True}, "int8-torch": {"passed": False}}) == "fp32"  # nothing timed


def test_auto_measures_once_then_reuses_the_cache(tiny_bert, cache):
    spec = load_spec(tiny_bert, {"pooling": "mean"})
    backend, info = create_backend(tiny_bert, spec, precision="auto", device="cpu", gate=(0.0, -1.0))
    verdict = info.auto
    assert not info.cached and verdict["kind"] == "auto" and info.precision == verdict["chosen"]
    assert verdict["candidates"]["int8-torch"]["passed"]  # a gate anything passes: int8-torch was timed
    assert {"fp32", "int8-torch"} <= {n for n, c in verdict["candidates"].items() if "texts_per_s" in c}
    assert verdict["chosen"] == pick_fastest(verdict["candidates"])
    assert isinstance(backend, TorchInt8Backend) == (verdict["chosen"] == "int8-torch")
    assert verdict["host"]["cpu"] and "threads" in verdict["host"]
    assert len(_auto_entries(cache)) == 1

    again, info2 = create_backend(tiny_bert, spec, precision="auto", device="cpu", gate=(0.0, -1.0))
    assert info2.cached and info2.auto == json.loads(json.dumps(verdict))  # same measurement (measured_at too)
    assert info2.precision == verdict["chosen"] and type(again) is type(backend)
    assert len(_auto_entries(cache)) == 1 and "measured (cached)" in info2.summary
    m = Embedder(tiny_bert, pooling="mean", precision="auto", precision_gate=(0.0, -1.0), device="cpu",
                 show_progress=False)
    assert m.precision_info.cached and m.encode(TEXTS).shape == (4, 32)
    row = describe_precision("auto", "cpu", model_dir=tiny_bert, spec=spec.to_dict())
    assert row[1] == verdict["chosen"] and "measured on this host (cached)" in row[2]


def test_another_host_measures_again(tiny_bert, cache, monkeypatch):
    import embedkit.backends.factory as factory

    spec = load_spec(tiny_bert, {"pooling": "mean"})
    create_backend(tiny_bert, spec, precision="auto", device="cpu")
    real = factory.host_id()
    monkeypatch.setattr(factory, "host_id", lambda: real | {"cpu": "Some Other CPU", "flags": ["avx512f"]})
    _, info = create_backend(tiny_bert, spec, precision="auto", device="cpu")
    assert not info.cached and info.auto["host"]["cpu"] == "Some Other CPU"
    assert len(_auto_entries(cache)) == 2
    _, info = create_backend(tiny_bert, spec, precision="auto", device="cpu")
    assert info.cached


def test_failing_candidates_are_never_chosen_and_fp32_is_exact(tiny_bert, cache):
    exact = Embedder(tiny_bert, pooling="mean", show_progress=False)
    m = Embedder(tiny_bert, pooling="mean", precision="auto", precision_gate=IMPOSSIBLE, show_progress=False)
    cands = m.precision_info.auto["candidates"]
    assert m.precision == "fp32" and cands["int8-torch"]["passed"] is False
    assert "texts_per_s" not in cands["int8-torch"]  # a candidate that failed is not even timed
    assert type(m.backend) is TorchBackend and "int8-torch failed the gate" in m.precision_summary
    assert np.array_equal(m.encode(TEXTS), exact.encode(TEXTS))  # bit-identical fp32
    fp32 = Embedder(tiny_bert, pooling="mean", precision="fp32", show_progress=False)
    assert np.array_equal(fp32.encode(TEXTS), exact.encode(TEXTS)) and fp32.precision_info.auto is None


def test_bf16_only_where_native(tiny_bert):
    spec = load_spec(tiny_bert, {"pooling": "mean"})
    tok = load_tokenizer(tiny_bert)
    verdict, _ = measure_auto(tiny_bert, spec, tok, (0.0, -1.0), flags={"avx2"})
    assert "avx512_bf16" in verdict["candidates"]["bf16"]["skipped"]
    verdict, runners = measure_auto(tiny_bert, spec, tok, (0.0, -1.0), flags={"avx512_bf16"})
    assert "skipped" not in verdict["candidates"]["bf16"] and "mean_cosine" in verdict["candidates"]["bf16"]


def test_int8_torch_on_minilm_is_held_to_the_gate(minilm_dir, minilm, cache):
    """Dynamic int8 linears cost MiniLM too much (mean cosine ~0.97 vs the 0.999 gate): asked for, it falls back
    to fp32 with the verdict recorded; with the gate off it runs int8 and its vectors stay close to fp32."""
    m = Embedder(minilm_dir, precision="int8-torch", show_progress=False)
    q = m.quality
    assert not q["passed"] and 0.9 < q["mean_cosine"] < 0.999 and m.precision == "fp32"
    assert np.array_equal(m.encode(TEXTS), minilm.encode(TEXTS))  # the fallback is exact fp32
    raw = Embedder(minilm_dir, precision="int8-torch", precision_gate=None, show_progress=False)
    assert isinstance(raw.backend, TorchInt8Backend) and raw.precision == "int8-torch"
    a, b = raw.encode(TEXTS), minilm.encode(TEXTS)
    assert a.dtype == np.float32 and ((a * b).sum(1)).min() > 0.8
