"""``embedkit serve``: real uvicorn on 127.0.0.1 (a free port), the official ``openai`` client and httpx against every
route, vectors compared with the in-process ``Embedder``; every error status provoked for real; SIGTERM drain in a
subprocess. Every wait is a bounded loop."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from embedkit import Embedder, M3Embedder  # noqa: E402
from embedkit.serve.app import create_app  # noqa: E402
from embedkit.serve.registry import ServeConfig, load_embedder  # noqa: E402
from tests.m3.test_m3 import build_tiny_m3  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
LONG = " ".join(["the quick brown fox jumps over the lazy dog"] * 40)
TEXTS = ["hello world", "The quick brown fox jumps over the lazy dog.", "a cat", "中文 测试 文本", LONG]


@contextmanager
def running(app, timeout: float = 60.0) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread on a free port; yield its URL once ``/health`` answers 200."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=10))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def wait_healthy(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = httpx.get(f"{url}/health", timeout=5)
            if r.status_code == 200:
                return
            assert r.json()["status"] != "failed", r.json()
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server never became healthy"
        time.sleep(0.05)


def metric(url: str, name: str) -> float:
    """The value of one sample of ``/metrics`` (0 when absent)."""
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            if line.split(" ")[0] == name or "{" in name:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture(scope="module")
def tiny_prompts(tiny_bert, tmp_path_factory) -> Path:
    """The tiny BERT with sentence-transformers prompts: query, document and one more named prompt."""
    folder = tmp_path_factory.mktemp("serve") / "tiny"
    shutil.copytree(tiny_bert, folder)
    (folder / "config_sentence_transformers.json").write_text(json.dumps(
        {"prompts": {"query": "query: ", "document": "", "short": "what is "}}))
    return folder


@pytest.fixture(scope="module")
def tiny_nan(tiny_bert, tmp_path_factory) -> Path:
    """The tiny BERT with the word 'cat' embedded at 1e38: finite weights (the loader's NaN check passes them), but
    any text holding 'cat' overflows to NaN, and the others stay finite."""
    import torch
    from transformers import AutoTokenizer, BertModel

    folder = tmp_path_factory.mktemp("serve") / "nan"
    shutil.copytree(tiny_bert, folder)
    model = BertModel.from_pretrained(str(folder))
    cat = AutoTokenizer.from_pretrained(str(folder)).convert_tokens_to_ids("cat")
    with torch.no_grad():
        model.embeddings.word_embeddings.weight[cat] = 1e38
    model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def tiny_m3_dir(tmp_path_factory) -> Path:
    return build_tiny_m3(tmp_path_factory.mktemp("serve") / "tiny-bge-m3")


@pytest.fixture(scope="module")
def served(tiny_prompts, minilm_dir, tiny_m3_dir, tiny_nan) -> Iterator[str]:
    """One server with four models: tiny (prompts), minilm, m3 (sparse head), nan."""
    config = ServeConfig(models=[str(tiny_prompts), str(minilm_dir), str(tiny_m3_dir), str(tiny_nan)],
                         served_model_names=["tiny", "minilm", "m3", "nan"], max_client_batch_size=8,
                         payload_limit=20_000, max_batch_tokens=4096)
    with running(create_app(config)) as url:
        wait_healthy(url)
        yield url


@pytest.fixture(scope="module")
def tiny_local(tiny_prompts) -> Embedder:
    return Embedder(tiny_prompts, device="cpu", show_progress=False)


def post(url: str, path: str, body: dict, **kw) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=60, **kw)


# ---------------------------------------------------------------------- exact vectors
def test_openai_client_default_base64_and_float_equal_in_process(served, minilm):
    from openai import OpenAI

    client = OpenAI(base_url=f"{served}/v1", api_key="unused", max_retries=0)
    for text in TEXTS:  # one text per request: the batch is that text alone, as in-process: bit-equal
        want = minilm.encode(text)
        default = client.embeddings.create(input=text, model="minilm")  # the client asks for base64
        floats = client.embeddings.create(input=[text], model="minilm", encoding_format="float")
        assert np.array_equal(np.asarray(default.data[0].embedding, dtype=np.float32), want)
        assert np.array_equal(np.asarray(floats.data[0].embedding, dtype=np.float32), want)
        assert default.usage.prompt_tokens == len(minilm.tokenize([text], 256)["input_ids"][0])
    many = client.embeddings.create(input=TEXTS, model="minilm", encoding_format="float")
    got = np.array([d.embedding for d in sorted(many.data, key=lambda d: d.index)], dtype=np.float32)
    np.testing.assert_allclose(got, minilm.encode(TEXTS), atol=1e-6)
    assert many.model == "minilm" and many.usage.total_tokens == sum(
        len(r) for r in minilm.tokenize(TEXTS, 256)["input_ids"])
    # the /embeddings alias and raw base64 bytes (little-endian float32)
    raw = post(served, "/embeddings", {"input": "a cat", "model": "minilm", "encoding_format": "base64"}).json()
    vec = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    assert np.array_equal(vec, minilm.encode("a cat"))


def test_prompt_name_maps_to_the_spec_instructions(served, tiny_local):
    for text in ("what is bge", "the lazy dog"):
        cases = {"query": tiny_local.encode_queries(text), "document": tiny_local.encode_corpus(text),
                 None: tiny_local.encode(text), "short": tiny_local.encode(text, instruction="what is ")}
        for name, want in cases.items():
            got = post(served, "/embed", {"inputs": text, "model": "tiny", "prompt_name": name}).json()
            assert np.array_equal(np.asarray(got[0], dtype=np.float32), want), name
    assert not np.array_equal(tiny_local.encode_queries("cat"), tiny_local.encode("cat"))  # the prompt matters
    r = post(served, "/embed", {"inputs": "cat", "model": "tiny", "prompt_name": "nope"})
    assert r.status_code == 422 and "short" in r.json()["error"]


def test_dimensions_normalize_and_token_ids(served, tiny_prompts, tiny_local, minilm):
    cut = Embedder(tiny_prompts, device="cpu", show_progress=False, truncate_dim=16)
    got = post(served, "/embed", {"inputs": ["a cat", "the dog"], "model": "tiny", "dimensions": 16}).json()
    np.testing.assert_allclose(np.asarray(got, dtype=np.float32), cut.encode(["a cat", "the dog"]), atol=1e-6)
    raw = Embedder(tiny_prompts, device="cpu", show_progress=False, normalize=False)
    got = post(served, "/embed", {"inputs": "a cat", "model": "tiny", "normalize": False}).json()
    assert np.array_equal(np.asarray(got[0], dtype=np.float32), raw.encode("a cat"))
    for bad in (0, 33):
        r = post(served, "/v1/embeddings", {"input": "a", "model": "tiny", "dimensions": bad})
        assert r.status_code == 422 and r.json()["error"]["param"] == "dimensions"
    ids = minilm.tokenize(["a cat"], 256)["input_ids"][0]
    r = post(served, "/v1/embeddings", {"input": [ids], "model": "minilm"}).json()
    assert np.array_equal(np.asarray(r["data"][0]["embedding"], dtype=np.float32), minilm.encode("a cat"))
    r = post(served, "/v1/embeddings", {"input": [10**9], "model": "minilm"})
    assert r.status_code == 422 and "vocabulary" in r.json()["error"]["message"]


def test_same_text_alone_and_inside_a_busy_batch(served, minilm):
    alone = minilm.encode("a cat")
    results: list = []

    def client(i: int) -> None:
        texts = [f"{TEXTS[i % 4]} {i}", "a cat", LONG[: 30 + 10 * i]]
        r = post(served, "/embed", {"inputs": texts, "model": "minilm"})
        results.append((r.status_code, r.json()))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 12 and all(code == 200 for code, _ in results)
    for _, vecs in results:
        np.testing.assert_allclose(np.asarray(vecs[1], dtype=np.float32), alone, atol=1e-6)


def test_embed_sparse_equals_m3_lexical_weights(served, tiny_m3_dir):
    m3 = M3Embedder(tiny_m3_dir, return_sparse=True, device="cpu", show_progress=False)
    texts = ["the quick brown fox", "中文 测试", "emoji 😀 short"]
    got = post(served, "/embed_sparse", {"inputs": texts, "model": "m3"}).json()
    want = m3.encode(texts, return_dense=False, return_sparse=True)["lexical_weights"]
    for g, w in zip(got, want, strict=True):
        assert {str(e["index"]): np.float32(e["value"]) for e in g} == w
        assert [e["index"] for e in g] == sorted(e["index"] for e in g)
    dense = post(served, "/embed", {"inputs": "the quick brown fox", "model": "m3"}).json()
    assert np.array_equal(np.asarray(dense[0], dtype=np.float32), m3.encode("the quick brown fox")["dense_vecs"])
    r = post(served, "/embed_sparse", {"inputs": "a", "model": "minilm"})
    assert r.status_code == 422 and "sparse" in r.json()["error"]


# ---------------------------------------------------------------------- other routes
def test_tokenize_info_health_metrics_docs(served, minilm):
    toks = post(served, "/tokenize", {"inputs": ["hello world"], "model": "minilm"}).json()[0]
    assert [t["id"] for t in toks] == minilm.tokenize(["hello world"], 256)["input_ids"][0]
    assert toks[0]["special"] and toks[1] == {"id": toks[1]["id"], "text": "hello", "special": False, "start": 0,
                                              "stop": 5}
    q = post(served, "/tokenize", {"inputs": "cat", "model": "tiny", "prompt_name": "query"}).json()[0]
    assert [t["text"] for t in q if not t["special"]][:1] == ["query"]
    info = httpx.get(f"{served}/info").json()
    by_name = {m["name"]: m for m in info["models"]}
    assert set(by_name) == {"tiny", "minilm", "m3", "nan"}
    assert by_name["minilm"]["spec"]["pooling"] == "mean" and by_name["minilm"]["dim"] == 384
    assert "sentence-transformers" in by_name["minilm"]["provenance"]["pooling"]
    assert by_name["tiny"]["prompts"]["short"] == "what is " and by_name["m3"]["sparse"]
    assert info["max_batch_tokens"] == 4096 and info["version"]
    assert httpx.get(f"{served}/health").json()["status"] == "ok"
    text = httpx.get(f"{served}/metrics").text
    for name in ("te_request_count", "te_request_success", "te_request_duration", "te_request_queue_duration",
                 "te_request_inference_duration", "te_request_tokenization_duration", "te_queue_size",
                 "te_batch_next_size", "te_batch_next_tokens"):
        assert name in text, name
    assert metric(served, 'te_request_count_total{method="embed"}') > 0
    docs = httpx.get(f"{served}/docs")
    assert docs.status_code == 200 and "/v1/embeddings" in docs.text and "cdn" not in docs.text.lower()
    assert "/v1/embeddings" in httpx.get(f"{served}/openapi.json").json()["paths"]
    r = post(served, "/embed", {"inputs": "a cat", "model": "minilm"})
    assert {"x-compute-time", "x-queue-time", "x-inference-time", "x-compute-tokens"} <= set(r.headers)


# ---------------------------------------------------------------------- errors, each provoked for real
def test_errors_404_413_422_500(served, minilm):
    from openai import NotFoundError, OpenAI, UnprocessableEntityError

    client = OpenAI(base_url=f"{served}/v1", api_key="unused", max_retries=0)
    with pytest.raises(NotFoundError) as exc:
        client.embeddings.create(input="a", model="gpt-nope")
    assert "minilm" in str(exc.value) and "tiny" in str(exc.value)  # the list of served models
    r = post(served, "/v1/embeddings", {"input": "a"})  # four models: 'model' is needed
    assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(UnprocessableEntityError):
        client.embeddings.create(input=[], model="minilm")
    r = post(served, "/embed", {"inputs": ["a", ""], "model": "minilm"})
    assert r.status_code == 422 and "inputs[1]" in r.json()["error"] and r.json()["error_type"] == "empty"
    r = post(served, "/embed", {"inputs": ["a cat", LONG], "model": "minilm", "truncate": False})
    n = len(minilm.tokenizer(LONG)["input_ids"])
    assert r.status_code == 422 and f"'inputs[1]' has {n} tokens, over the limit of 256" in r.json()["error"]
    assert post(served, "/embed", {"inputs": ["a cat", LONG], "model": "minilm"}).status_code == 200  # auto-truncate
    r = post(served, "/embed", {"inputs": ["a"] * 9, "model": "minilm"})
    assert r.status_code == 413 and "--max-client-batch-size" in r.json()["error"]
    r = post(served, "/v1/embeddings", {"input": "x" * 30_000, "model": "minilm"})
    assert r.status_code == 413 and "payload" in r.json()["error"]["message"]
    chunked = (part for part in [b'{"inputs": "', b"x" * 25_000, b'", "model": "minilm"}'])  # no Content-Length
    r = httpx.post(f"{served}/embed", content=chunked, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 413 and r.json()["error_type"] == "payload"
    r = post(served, "/embed", {"inputs": "a", "model": "minilm", "wrong": 1, "normalize": "maybe"})
    assert r.status_code == 422 and r.json()["error_type"] == "validation"
    # a NaN output fails the request it belongs to (500), is never returned, and the server stays up; requests
    # sharing its batch are answered
    codes: dict = {}

    def send(text: str) -> None:
        codes[text] = post(served, "/embed", {"inputs": [text], "model": "nan"})

    threads = [threading.Thread(target=send, args=(t,)) for t in ("a cat", "a dog", "the fox", "a lazy cat")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert {t: r.status_code for t, r in codes.items()} == {"a cat": 500, "a dog": 200, "the fox": 200,
                                                             "a lazy cat": 500}
    assert "non-finite" in codes["a cat"].json()["error"]
    assert np.isfinite(np.asarray(codes["a dog"].json(), dtype=np.float32)).all()
    r = post(served, "/v1/embeddings", {"input": ["a dog", "a cat"], "model": "nan"})
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    assert post(served, "/embed", {"inputs": "a cat", "model": "tiny"}).status_code == 200
    assert httpx.get(f"{served}/health").status_code == 200


def test_401_with_an_api_key(tiny_prompts):
    with running(create_app(ServeConfig(models=[str(tiny_prompts)], api_key="s3cret"))) as url:
        wait_healthy(url)  # /health and /metrics need no key
        assert httpx.get(f"{url}/metrics").status_code == 200
        r = post(url, "/v1/embeddings", {"input": "a"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert post(url, "/embed", {"inputs": "a"}, headers={"authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(f"{url}/info").status_code == 401
        assert post(url, "/embed", {"inputs": "a"}, headers={"authorization": "Bearer s3cret"}).status_code == 200
        from openai import AuthenticationError, OpenAI

        with pytest.raises(AuthenticationError):
            OpenAI(base_url=f"{url}/v1", api_key="nope", max_retries=0).embeddings.create(input="a", model="tiny")
        ok = OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0).embeddings.create(input="a", model="tiny")
        assert len(ok.data[0].embedding) == 32


def test_503_while_loading(tiny_prompts):
    gate = threading.Event()

    def slow_loader(*args):
        assert gate.wait(30)
        return load_embedder(*args)

    with running(create_app(ServeConfig(models=[str(tiny_prompts)]), loader=slow_loader)) as url:
        h = httpx.get(f"{url}/health")
        assert h.status_code == 503 and h.json()["status"] == "loading"
        r = post(url, "/v1/embeddings", {"input": "a"})
        assert r.status_code == 503 and r.json()["error"]["type"] == "server_error" and r.headers["retry-after"]
        gate.set()
        wait_healthy(url)
        assert post(url, "/v1/embeddings", {"input": "a"}).status_code == 200


@pytest.fixture(scope="module")
def tiny_short_vocab(tiny_bert, tmp_path_factory) -> Path:
    """The tiny BERT whose embedding matrix is one row short of its tokenizer (a real defect: tokens added to the
    tokenizer without resizing the model): the last vocabulary entry, '##9', makes the forward raise IndexError;
    every other text works. The loader has no way to see it before the first such input."""
    from transformers import AutoTokenizer, BertModel

    folder = tmp_path_factory.mktemp("serve") / "short-vocab"
    shutil.copytree(tiny_bert, folder)
    tok = AutoTokenizer.from_pretrained(str(folder))
    assert tok.convert_tokens_to_ids(tok.tokenize("x9"))[-1] == len(tok) - 1
    model = BertModel.from_pretrained(str(folder))
    model.resize_token_embeddings(len(tok) - 1)
    model.save_pretrained(str(folder))
    return folder


def test_503_after_a_backend_failure_and_other_models_keep_serving(tiny_prompts, tiny_short_vocab):
    config = ServeConfig(models=[str(tiny_prompts), str(tiny_short_vocab)], served_model_names=["tiny", "broken"])
    with running(create_app(config)) as url:
        wait_healthy(url)
        r = post(url, "/embed", {"inputs": ["x9"], "model": "broken"})  # the forward raises IndexError
        assert r.status_code == 500 and r.json()["error_type"] == "backend"
        assert "the model failed on a batch" in r.json()["error"] and "index out of range" in r.json()["error"]
        h = httpx.get(f"{url}/health")
        assert h.status_code == 503 and h.json() == {"status": "unhealthy", "models": ["broken"]}
        r = post(url, "/v1/embeddings", {"input": "x9", "model": "broken"})
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
        # the other model keeps serving; /health stays 503 (a model is still failing)
        assert post(url, "/embed", {"inputs": ["x9", "a cat"], "model": "tiny"}).status_code == 200
        assert httpx.get(f"{url}/health").status_code == 503
        # the failing model itself still answers what it can; one batch that succeeds makes it healthy again
        assert post(url, "/embed", {"inputs": ["a cat"], "model": "broken"}).status_code == 200
        assert httpx.get(f"{url}/health").status_code == 200
        assert metric(url, 'te_request_failure_total{err="backend"}') >= 2


def test_429_when_permits_run_out_and_disconnects_are_dropped(minilm_dir):
    config = ServeConfig(models=[str(minilm_dir)], max_concurrent_requests=4, max_batch_tokens=512)
    with running(create_app(config)) as url:
        wait_healthy(url)
        slow = {"inputs": [LONG + f" {i}" for i in range(4)]}  # 4 inputs x 256 tokens: 2 batches of 2
        got = None
        for _ in range(5):  # bounded: the slow request must still be running when the second one arrives
            holder = threading.Thread(target=post, args=(url, "/embed", slow))
            holder.start()
            time.sleep(0.05)
            r = post(url, "/embed", {"inputs": "a"})
            holder.join(60)
            if r.status_code == 429:
                got = r
                break
        assert got is not None and got.headers["retry-after"] == "1" and got.json()["error_type"] == "overloaded"
        assert metric(url, 'te_request_failure_total{err="overloaded"}') >= 1
        # a client that gives up while queued is dropped (counted), and its permits come back
        busy = threading.Thread(target=post, args=(url, "/embed", {"inputs": [LONG + " x", LONG + " y"]}))
        busy.start()
        time.sleep(0.02)
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"{url}/embed", json={"inputs": [LONG + " z", LONG + " w"]}, timeout=0.05)
        busy.join(60)
        deadline = time.monotonic() + 20
        while metric(url, "te_request_cancelled_total") < 1:
            assert time.monotonic() < deadline, "the disconnect was not counted"
            time.sleep(0.05)
        assert post(url, "/embed", {"inputs": ["a", "b", "c", "d"]}).status_code == 200  # all 4 permits are back


# ---------------------------------------------------------------------- graceful shutdown (a real process)
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_drains_requests_in_flight(minilm_dir, tmp_path):
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "embedkit", "serve", str(minilm_dir), "--port", str(port),
                             "--max-batch-tokens", "2048"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, timeout=120)
        results: list = []

        def client(i: int) -> None:
            r = post(url, "/embed", {"inputs": [f"{LONG[:500]} {i} {j}" for j in range(8)]})
            results.append((r.status_code, len(r.json())))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while metric(url, "te_request_input_count_total") < 32:  # all 4 requests are in
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(120)
        assert proc.wait(60) == 0
        assert results == [(200, 8)] * 4
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert "Shutting down" in (tmp_path / "serve.log").read_text()


# ---------------------------------------------------------------------- soak
@pytest.mark.slow
def test_soak_64_clients_30s(minilm_dir):
    import psutil

    config = ServeConfig(models=[str(minilm_dir)], max_concurrent_requests=256)
    proc = psutil.Process()
    with running(create_app(config)) as url:
        wait_healthy(url)
        codes: dict[int, int] = {}
        lock = threading.Lock()
        stop = time.monotonic() + 30
        rss: list[int] = [proc.memory_info().rss]

        def client(i: int) -> None:
            with httpx.Client(timeout=120) as c:
                k = 0
                while time.monotonic() < stop:
                    k += 1
                    r = c.post(f"{url}/v1/embeddings", json={"input": [f"{TEXTS[(i + k) % 5][:200]} {k}"] * 4})
                    with lock:
                        codes[r.status_code] = codes.get(r.status_code, 0) + 1

        threads = [threading.Thread(target=client, args=(i,)) for i in range(64)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            rss.append(proc.memory_info().rss)
            time.sleep(1)
        for t in threads:
            t.join(120)
    print(f"soak: {codes}, RSS start {rss[0] / 2**20:.0f} MiB, max {max(rss) / 2**20:.0f} MiB, "
          f"end {rss[-1] / 2**20:.0f} MiB")
    assert set(codes) <= {200, 429} and codes.get(200, 0) > 0
    assert max(rss) - rss[0] < 1024 * 2**20


def test_cli_refuses_a_folder_it_cannot_load(tmp_path, capsys):
    from embedkit.cli import main

    assert main(["serve", str(tmp_path / "nope"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "error: could not load the model(s)" in err and "nope" in err
    assert main(["serve", str(tmp_path), "--served-model-name", "a", "--served-model-name", "b"]) == 2


def test_runner_serves_an_onnx_model_exactly(tiny_prompts, tmp_path):
    """A pooled (ONNX) backend: the runner takes its graph output as the vector (it once probed an attribute the
    typed backend protocol no longer has, and would have pooled the ONNX vectors again)."""
    pytest.importorskip("onnxruntime")
    from embedkit import Embedder, batching
    from embedkit.export.onnx import export_onnx
    from embedkit.serve.runner import Post, Runner

    report = export_onnx(tiny_prompts, tmp_path / "tiny-onnx")
    onnx = Embedder(report.path, backend="onnx", show_progress=False)
    assert onnx.backend.output == "pooled"
    texts = ["a cat", "the quick brown fox jumps"]
    features = onnx.tokenize(texts, onnx.spec.passage_max_length)
    (rows, padded), = batching.padded_batches(features, onnx.tokenizer, 8, sort=False)
    got = Runner(onnx).run(padded, [Post()] * len(texts), rows)
    np.testing.assert_array_equal(np.stack(got), onnx.encode(texts))


def test_queue_runs_a_mixed_length_batch_as_tight_groups_with_the_same_vectors(minilm):
    """On a CPU one popped batch of short and long inputs runs as a few length groups (less padding), and every
    vector still equals ``Embedder.encode`` of its text."""
    import asyncio

    from embedkit.serve.queue import BatchQueue, Post, Runner

    texts = [LONG[: 20 + 37 * i] if i % 2 else f"short {i}" for i in range(40)]
    runner = Runner(minilm)
    widths: list[int] = []
    run = runner.run

    def counting(padded, posts, rows):  # the real runner, recording each forward pass's padded width
        widths.append(padded["input_ids"].shape[1])
        return run(padded, posts, rows)

    runner.run = counting
    queue = BatchQueue(minilm, max_batch_tokens=1 << 20, runner=runner)

    async def go() -> list:
        job = queue.submit(minilm.tokenize(texts, minilm.spec.passage_max_length), Post(),
                           asyncio.get_running_loop())
        return await asyncio.wait_for(job.future, 120)

    try:
        got = asyncio.run(go())
    finally:
        queue.close(30)
    assert len(widths) > 1 and sorted(widths, reverse=True) == widths  # longest group first, then narrower ones
    np.testing.assert_allclose(np.stack(got), minilm.encode(texts), atol=1e-6)
