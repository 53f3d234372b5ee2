"""embedkit.verify: the one sample and the one vector comparison, used by every check that compares vectors."""

import math
import re
from pathlib import Path

import numpy as np
import pytest

from embedkit.verify import SAMPLE_TEXTS, Comparison, compare

ROOT = Path(__file__).resolve().parents[1] / "embedkit"


def test_identical_vectors():
    a = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    c = compare(a, a.copy())
    assert isinstance(c, Comparison) and c.same_shape and c.rows == 5
    assert c.max_abs_diff == 0.0
    assert c.mean_cosine == pytest.approx(1.0, abs=1e-6) and c.min_cosine == pytest.approx(1.0, abs=1e-6)


def test_orthogonal_and_opposite_rows():
    a = np.eye(3, dtype=np.float32)
    b = np.roll(a, 1, axis=1)  # each row orthogonal to a's
    c = compare(a, b)
    assert c.max_abs_diff == 1.0 and c.min_cosine == pytest.approx(0.0) and c.mean_cosine == pytest.approx(0.0)
    mixed = compare(a, np.stack([a[0], -a[1], a[2]]))  # one row flipped: min -1, mean 1/3
    assert mixed.min_cosine == pytest.approx(-1.0) and mixed.mean_cosine == pytest.approx(1 / 3)
    assert mixed.max_abs_diff == 2.0


def test_known_numbers_match_the_formula_the_checks_used():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(7, 16)).astype(np.float32), rng.normal(size=(7, 16)).astype(np.float32)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    c = compare(a, b)
    assert c.max_abs_diff == float(np.abs(a - b).max())
    assert c.min_cosine == float(cos.min()) and c.mean_cosine == float(cos.mean())  # bit for bit


def test_shape_mismatch_never_passes_a_threshold():
    c = compare(np.ones((3, 4)), np.ones((3, 5)))
    assert not c.same_shape and c.rows == 0
    assert c.max_abs_diff == math.inf and c.min_cosine == -math.inf and c.mean_cosine == -math.inf
    assert not compare(np.ones((2, 4)), np.ones((3, 4))).same_shape


def test_zero_rows():
    c = compare(np.zeros((0, 4), np.float32), np.zeros((0, 4), np.float32))
    assert c.same_shape and c.rows == 0 and c.max_abs_diff == 0.0
    assert math.isnan(c.mean_cosine) and math.isnan(c.min_cosine)  # nothing measured: a cosine gate fails
    assert not (c.min_cosine >= 0.9)


def test_zero_vector_row_and_nan_propagate():
    c = compare(np.zeros((1, 3)), np.ones((1, 3)))
    assert c.min_cosine == 0.0 and c.max_abs_diff == 1.0
    bad = compare(np.array([[np.nan, 1.0]]), np.array([[1.0, 1.0]]))
    assert not bad.max_abs_diff <= 1.0  # a tolerance check fails on NaN


def test_one_vector_is_one_row():
    c = compare(np.array([1.0, 0.0]), np.array([[1.0, 0.0]]))
    assert c.same_shape and c.rows == 1 and c.max_abs_diff == 0.0


def test_sample_is_varied_and_distinct():
    texts = SAMPLE_TEXTS
    assert 20 <= len(texts) <= 32 and len(set(texts)) == len(texts)
    assert texts[0] == ""  # export runs the first text alone as the shortest batch
    assert any(t and not t.strip() for t in texts)  # whitespace only
    assert any("\n" in t for t in texts) and any("\t" in t for t in texts)
    assert any(re.search(r"[\u4e00-\u9fff]", t) for t in texts)  # CJK
    assert any(re.search(r"[\u3040-\u30ff]", t) for t in texts)  # Japanese kana
    assert any(re.search("[\U0001F300-\U0001FAFF]", t) for t in texts)  # emoji
    assert any("def " in t for t in texts) and any(t.startswith("SELECT") for t in texts)  # code
    assert any(len(t.split()) > 600 for t in texts)  # past any usual max length
    assert any(c in "".join(texts) for c in "äöüß") and "¿" in "".join(texts) and "é" in "".join(texts)


# ---------------------------------------------------------------------- every former caller uses verify
@pytest.mark.parametrize("module", ["precision.py", "export/onnx.py", "checkpoint/convert.py",
                                    "checkpoint/merge.py", "parity/embedder.py", "backends/factory.py"])
def test_callers_use_verify(module):
    text = (ROOT / module).read_text(encoding="utf-8")
    assert re.search(r"from \.+verify import", text), f"{module} does not use embedkit.verify"
    assert "np.linalg.norm" not in text, f"{module} computes a row cosine itself"


def test_no_other_sample_lists_left():
    for path in ROOT.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for old in ("GATE_TEXTS", "CALIBRATION_TEXTS", "VERIFY_TEXTS", "CHECK_TEXTS", "DEFAULT_TEXTS"):
            assert old not in text, f"{path.relative_to(ROOT)} still has {old}"
        if path.name != "verify.py":
            assert "np.linalg.norm(a, axis=1)" not in text, f"{path.relative_to(ROOT)} has its own row cosine"
