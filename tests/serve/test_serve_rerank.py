"""``embedkit serve`` with a reranker: TEI's ``/rerank`` and Cohere/infinity's ``/v1/rerank`` on real uvicorn
(127.0.0.1, a free port), scores compared with the in-process :class:`~embedkit.Reranker` of the same folder; the
kind checks (an embedder asked to rerank, a reranker asked to embed) and the limits provoked for real."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from embedkit import Reranker  # noqa: E402
from embedkit.serve.app import create_app  # noqa: E402
from embedkit.serve.registry import ServeConfig, folder_kind  # noqa: E402
from tests.rerank.test_rerank import _build_bert  # noqa: E402
from tests.serve.test_serve import metric, post, running, wait_healthy  # noqa: E402

LONG = " ".join(["a long text that goes past the max length"] * 40)
QUERY = "what is the quick brown fox"
DOCS = ["The quick brown fox jumps over the lazy dog.", "the lazy dog", "", "中文 测试 文本", LONG,
        "hello world", "The quick brown fox jumps over the lazy dog."]  # a duplicate: ties keep input order


@pytest.fixture(scope="module")
def reranker_dir(tmp_path_factory) -> Path:
    return _build_bert(tmp_path_factory.mktemp("serve-rerank") / "tiny-reranker")


@pytest.fixture(scope="module")
def local(reranker_dir) -> Reranker:
    return Reranker(reranker_dir, device="cpu", show_progress=False)


@pytest.fixture(scope="module")
def served(tiny_bert, reranker_dir) -> Iterator[str]:
    """One server, two kinds: the tiny BERT embedder ('tiny') and the tiny cross-encoder ('rr')."""
    config = ServeConfig(models=[str(tiny_bert), str(reranker_dir)], served_model_names=["tiny", "rr"],
                         max_client_batch_size=8, max_batch_tokens=1024)
    with running(create_app(config)) as url:
        wait_healthy(url)
        yield url


def test_the_folder_kind_is_read_from_config(tiny_bert, reranker_dir):
    assert folder_kind(str(reranker_dir)) == "reranker" and folder_kind(str(tiny_bert)) == "embedder"


def test_tei_rerank_equals_compute_score(served, local):
    pairs = [(QUERY, d) for d in DOCS]
    for raw in (True, False):
        r = post(served, "/rerank", {"query": QUERY, "texts": DOCS, "raw_scores": raw, "return_text": True})
        assert r.status_code == 200, r.text
        out = r.json()
        assert sorted(o["index"] for o in out) == list(range(len(DOCS)))
        assert all(o["text"] == DOCS[o["index"]] for o in out)
        scores = [o["score"] for o in out]
        assert scores == sorted(scores, reverse=True)  # best first
        order = [o["index"] for o in out]
        assert order.index(0) < order.index(6)  # equal scores (the duplicate) keep input order
        expected = local.compute_score(pairs, normalize=not raw)
        got = {o["index"]: o["score"] for o in out}
        assert [got[i] for i in range(len(DOCS))] == expected  # bit-equal in fp32, alone in its batch
        if not raw:
            assert all(0.0 < s < 1.0 for s in scores)  # TEI's raw_scores=false: the sigmoid
    r = post(served, "/rerank", {"query": QUERY, "texts": DOCS[:2]})  # one reranker served: 'model' may go
    assert r.status_code == 200 and "text" not in r.json()[0]
    assert int(r.headers["x-compute-tokens"]) == sum(len(ids) for ids in local.features(
        [(QUERY, d) for d in DOCS[:2]])["input_ids"])


def test_v1_rerank_equals_rank(served, local):
    r = post(served, "/v1/rerank", {"query": QUERY, "documents": DOCS, "model": "rr", "top_n": 3,
                                    "return_documents": True})
    assert r.status_code == 200, r.text
    body = r.json()
    ranked = local.rank(QUERY, DOCS, top_k=3, return_documents=True)
    assert [(x["index"], x["relevance_score"], x["document"]["text"]) for x in body["results"]] == [
        (x["corpus_id"], x["score"], x["text"]) for x in ranked]
    tokens = sum(len(ids) for ids in local.features([(QUERY, d) for d in DOCS])["input_ids"])
    assert body["model"] == "rr" and body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    full = post(served, "/v1/rerank", {"query": QUERY, "documents": DOCS}).json()["results"]
    assert len(full) == len(DOCS) and "document" not in full[0]
    assert [x["relevance_score"] for x in full] == [x["score"] for x in local.rank(QUERY, DOCS)]


def test_same_pairs_alone_and_inside_a_busy_batch(served, local):
    """Many concurrent requests of different lengths share batches (token budget by pair length): each one's
    scores stay within 1e-6 of the in-process ones."""
    queries = [QUERY, "the fox", LONG, "中文", "hello"]
    got: dict[int, list] = {}

    def send(k: int) -> None:
        q = queries[k % len(queries)]
        got[k] = post(served, "/rerank", {"query": q, "texts": DOCS[k % 3:], "raw_scores": True, "model": "rr"}
                      ).json()

    batches = metric(served, "te_batch_inference_duration_count")
    threads = [threading.Thread(target=send, args=(k,)) for k in range(15)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(got) == 15
    assert 0 < metric(served, "te_batch_inference_duration_count") - batches < 15  # requests did share batches
    for k, out in got.items():
        docs = DOCS[k % 3:]
        expected = np.asarray(local.compute_score([(queries[k % len(queries)], d) for d in docs]))
        served_scores = np.asarray([{o["index"]: o["score"] for o in out}[i] for i in range(len(docs))])
        np.testing.assert_allclose(served_scores, expected, rtol=0, atol=1e-6)


def test_errors_and_kinds(served, local):
    r = post(served, "/rerank", {"query": QUERY, "texts": []})
    assert r.status_code == 422 and r.json()["error_type"] == "empty" and "texts" in r.json()["error"]
    r = post(served, "/v1/rerank", {"query": QUERY, "documents": []})
    assert r.status_code == 422 and "documents" in r.json()["error"]
    r = post(served, "/rerank", {"query": QUERY, "texts": ["a"] * 9})
    assert r.status_code == 413 and "--max-client-batch-size" in r.json()["error"]
    r = post(served, "/v1/rerank", {"query": QUERY, "documents": ["a"], "top_n": 0})
    assert r.status_code == 422 and "top_n" in r.json()["error"]
    r = post(served, "/rerank", {"query": QUERY, "texts": ["a", LONG], "truncate": False})
    n = len(local.tokenizer(QUERY, LONG)["input_ids"])
    assert r.status_code == 422 and f"'texts[1]' with the query is {n} tokens, over the limit of " \
        f"{local.spec.max_length}" in r.json()["error"]
    r = post(served, "/rerank", {"query": QUERY, "texts": ["a"], "model": "nope"})
    assert r.status_code == 404 and "rr" in r.json()["error"]
    # an embedding model asked to rerank, a reranker asked to embed: 422 naming the model's kind
    r = post(served, "/rerank", {"query": QUERY, "texts": ["a"], "model": "tiny"})
    assert r.status_code == 422 and r.json()["error_type"] == "model_kind"
    assert "'tiny' is an embedder model: this route needs a reranker model" in r.json()["error"]
    r = post(served, "/embed", {"inputs": ["a"], "model": "rr"})
    assert r.status_code == 422 and "'rr' is a reranker model: this route needs an embedder model" in r.json()[
        "error"]
    r = post(served, "/v1/embeddings", {"input": "a", "model": "rr"})
    assert r.status_code == 422 and "reranker" in r.json()["error"]["message"]
    assert post(served, "/embed", {"inputs": ["a"]}).status_code == 200  # the only embedder
    # /info describes both kinds; the server is healthy after all of it
    info = httpx.get(f"{served}/info").json()
    kinds = {m["name"]: m["kind"] for m in info["models"]}
    assert kinds == {"tiny": "embedder", "rr": "reranker"}
    rr = next(m for m in info["models"] if m["name"] == "rr")
    assert rr["spec"] == local.spec.to_dict() and rr["precision"] == "fp32"
    assert httpx.get(f"{served}/health").status_code == 200


def test_only_embedders_served(tiny_bert):
    with running(create_app(ServeConfig(models=[str(tiny_bert)]))) as url:
        wait_healthy(url)
        r = post(url, "/rerank", {"query": "a", "texts": ["b"]})
        assert r.status_code == 422 and "no reranker model is served here" in r.json()["error"]
