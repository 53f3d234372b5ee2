"""HTTP serving throughput and latency: ``embedkit serve`` vs the in-process ``Embedder`` (the ceiling) vs infinity.

For 1, 8 and 64 concurrent clients (threads, each with its own keep-alive httpx client), every client sends requests
of ``--per-request`` texts until the ``--n`` texts are done; texts/s over the wall time and p50 / p99 request latency.

- ``embedkit-serve``: ``embedkit serve MODEL`` in its own process (fp32, default token budget), ``POST /embed``.
- ``in-process``: the same texts, the same client threads calling ``Embedder.encode(request_texts)`` directly; and
  ``in-process-bulk``: one ``encode(all texts)`` call (throughput only; the ceiling).
- ``infinity``: ``infinity_emb v2`` serving the same folder (``POST /embeddings``), run from its own venv, because
  infinity-emb 0.0.78 only resolves with transformers 4.57 / sentence-transformers 3.4::

      python -m venv benchmarks/.venv-infinity
      benchmarks/.venv-infinity/bin/pip install 'infinity-emb[server,torch]==0.0.78' 'transformers==4.57.*' \\
          'sentence-transformers==3.4.*'

  Without that venv the peer is skipped with a message in the JSON.

    python benchmarks/serve.py [--model minilm] [--n 512] [--per-request 1] [--clients 1,8,64]

Prints one JSON object (and the host's CPU model).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import make_texts  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
INFINITY_VENV = ROOT / "benchmarks" / ".venv-infinity"


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} never answered 200")


def drive(send, chunks: list[list[str]], clients: int) -> dict:
    """``clients`` threads take request chunks from a shared list; texts/s and latency percentiles."""
    lock = threading.Lock()
    nxt = [0]
    latencies: list[float] = []
    errors = [0]

    def worker() -> None:
        state = {}
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= len(chunks):
                return
            t0 = time.perf_counter()
            ok = send(chunks[i], state)
            took = time.perf_counter() - t0
            with lock:
                latencies.append(took)
                errors[0] += 0 if ok else 1

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    n = sum(len(c) for c in chunks)
    lat = np.array(latencies) * 1000
    return {"texts_per_s": round(n / wall, 1), "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1), "errors": errors[0]}


def http_sender(url: str, body_of):
    import httpx

    def send(texts: list[str], state: dict) -> bool:
        client = state.get("client")
        if client is None:
            client = state["client"] = httpx.Client(timeout=600)
        return client.post(url, json=body_of(texts)).status_code == 200

    return send


def bench_server(cmd: list[str], health: str, url: str, body_of, chunks, clients_list, env=None) -> dict:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(health, proc)
        send = http_sender(url, body_of)
        drive(send, chunks[: max(8, len(chunks) // 8)], 8)  # warm-up
        return {str(c): drive(send, chunks, c) for c in clients_list}
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--per-request", type=int, default=1)
    ap.add_argument("--clients", default="1,8,64")
    args = ap.parse_args()
    from embedkit import Embedder
    from embedkit.models import resolve_model_path

    folder = str(resolve_model_path(args.model))
    texts = make_texts(args.n, min_words=5, max_words=40)
    chunks = [texts[i:i + args.per_request] for i in range(0, len(texts), args.per_request)]
    clients_list = [int(c) for c in args.clients.split(",")]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    out: dict = {"host": cpu_model(), "cores": os.cpu_count(), "model": args.model, "n_texts": len(texts),
                 "per_request": args.per_request, "precision": "fp32", "results": {}}

    m = Embedder(folder, device="cpu", show_progress=False, max_batch_tokens=16384)
    m.encode(texts[:64])
    t0 = time.perf_counter()
    m.encode(texts)
    out["results"]["in-process-bulk"] = {"texts_per_s": round(len(texts) / (time.perf_counter() - t0), 1)}

    def local(batch: list[str], state: dict) -> bool:
        return m.encode(batch) is not None

    out["results"]["in-process"] = {str(c): drive(local, chunks, c) for c in clients_list}

    port = free_port()
    out["results"]["embedkit-serve"] = bench_server(
        [sys.executable, "-m", "embedkit", "-q", "serve", folder, "--port", str(port),
         "--max-concurrent-requests", "4096"], f"http://127.0.0.1:{port}/health", f"http://127.0.0.1:{port}/embed",
        lambda t: {"inputs": t}, chunks, clients_list, env)

    infinity = INFINITY_VENV / "bin" / "infinity_emb"
    if not infinity.is_file():
        out["results"]["infinity"] = (f"skipped: no {INFINITY_VENV.relative_to(ROOT)} (create it as this file's "
                                      "docstring says)")
    else:
        port = free_port()
        out["results"]["infinity"] = bench_server(
            [str(infinity), "v2", "--model-id", folder, "--port", str(port), "--host", "127.0.0.1",
             "--engine", "torch", "--device", "cpu", "--no-bettertransformer"], f"http://127.0.0.1:{port}/health",
            f"http://127.0.0.1:{port}/embeddings", lambda t: {"input": t, "model": folder}, chunks, clients_list,
            env)
    serve64 = out["results"]["embedkit-serve"].get(str(clients_list[-1]), {})
    out["serve_vs_in_process_at_max_clients"] = round(
        serve64.get("texts_per_s", 0) / out["results"]["in-process"][str(clients_list[-1])]["texts_per_s"], 3)
    out["serve_vs_bulk"] = round(serve64.get("texts_per_s", 0) / out["results"]["in-process-bulk"]["texts_per_s"], 3)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
