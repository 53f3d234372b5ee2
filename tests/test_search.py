"""embedkit.search: exact inner-product search (real faiss), equal to a brute-force numpy top-k."""

import sys
from pathlib import Path

import numpy as np
import pytest

from embedkit.errors import EmbedkitError
from embedkit.search import search

pytest.importorskip("faiss")


def _brute_force(q, c, k):
    scores = q.astype(np.float64) @ c.astype(np.float64).T
    idx = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, idx, axis=1), idx


@pytest.mark.parametrize(("n_queries", "n_corpus", "dim", "k", "batch"), [
    (13, 200, 32, 10, None), (50, 97, 8, 5, 7), (3, 4, 16, 10, None), (1, 1, 4, 3, 1)])
def test_search_equals_numpy_top_k(n_queries, n_corpus, dim, k, batch):
    rng = np.random.default_rng(n_corpus)
    q = rng.normal(size=(n_queries, dim)).astype(np.float32)
    c = rng.normal(size=(n_corpus, dim)).astype(np.float32)
    seen = []
    scores, idx = search(q, c, k, batch_size=batch, on_batch=seen.append)
    want_scores, want_idx = _brute_force(q, c, min(k, n_corpus))
    assert idx.shape == scores.shape == (n_queries, min(k, n_corpus))  # top_k capped at the corpus size
    np.testing.assert_array_equal(idx, want_idx)  # random floats: no ties
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    assert sum(seen) == n_queries and (batch is None or max(seen) <= batch)


def test_normalized_vectors_find_themselves():
    rng = np.random.default_rng(3)
    c = rng.normal(size=(40, 12)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    scores, idx = search(c, c.astype(np.float64), 1)  # any float dtype is accepted
    assert idx[:, 0].tolist() == list(range(40)) and np.allclose(scores[:, 0], 1.0, atol=1e-5)


def test_missing_faiss_names_the_eval_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(EmbedkitError) as info:
        search(np.ones((1, 2), np.float32), np.ones((1, 2), np.float32), 1, feature="evaluation")
    assert info.value.message == "evaluation needs faiss, which is not installed"
    assert info.value.hint == "pip install 'embedkit[eval]'"


@pytest.mark.parametrize("module", ["eval/retrieval.py", "train/mine.py"])
def test_callers_use_the_one_search(module):
    text = (Path(__file__).resolve().parents[1] / "embedkit" / module).read_text(encoding="utf-8")
    assert "from ..search import search" in text and "IndexFlatIP(" not in text
