"""HTTP serving throughput and latency: ``embedkit serve`` vs the in-process ``Embedder`` (the ceiling) vs infinity.

For 1, 8 and 64 concurrent clients (threads, each with its own keep-alive httpx client), every client sends requests
of ``--per-request`` texts until the ``--n`` texts are done; texts/s over the wall time and p50 / p99 request latency.

- ``embedkit-serve``: ``embedkit serve MODEL`` in its own process (fp32, default token budget), ``POST /embed``.
- ``in-process``: the same texts, the same client threads calling ``Embedder.encode(request_texts)`` directly; and
  its ``bulk`` row: one ``encode(all texts)`` call (throughput only; the ceiling).
- ``infinity``: ``infinity_emb v2`` serving the same folder (``POST /embeddings``), run from its own venv, because
  infinity-emb 0.0.78 only resolves with transformers 4.57 / sentence-transformers 3.4::

      python -m venv benchmarks/.venv-infinity
      benchmarks/.venv-infinity/bin/pip install torch==2.13.0      # the CPU wheel first, or pip pulls CUDA
      benchmarks/.venv-infinity/bin/pip install 'infinity-emb[server,torch]==0.0.78' 'transformers==4.57.*' \\
          'sentence-transformers==3.4.*' torch==2.13.0

  Without that venv the peer is skipped with a message in the JSON.

    python benchmarks/serve.py [--model minilm] [--n 512] [--per-request 1] [--clients 1,8,64] [--runs 3]

Each engine runs in its own fresh process, the engines in turn (the first one rotates each round); per engine and
client count the round with the median texts/s is reported, with every round's texts/s.

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


ENGINES = ("in-process", "embedkit-serve", "infinity")


def worker(engine: str, args: argparse.Namespace) -> dict:
    """One engine's measurements, in this (fresh) process."""
    from embedkit.models import resolve_model_path

    folder = str(resolve_model_path(args.model))
    texts = make_texts(args.n, min_words=5, max_words=40)
    chunks = [texts[i:i + args.per_request] for i in range(0, len(texts), args.per_request)]
    clients_list = [int(c) for c in args.clients.split(",")]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    if engine == "in-process":
        from embedkit import Embedder

        m = Embedder(folder, device="cpu", show_progress=False, max_batch_tokens=16384)
        m.encode(texts[:64])
        t0 = time.perf_counter()
        m.encode(texts)
        out = {"bulk": {"texts_per_s": round(len(texts) / (time.perf_counter() - t0), 1)}}

        def local(batch: list[str], state: dict) -> bool:
            return m.encode(batch) is not None

        return out | {str(c): drive(local, chunks, c) for c in clients_list}
    port = free_port()
    if engine == "embedkit-serve":
        return bench_server(
            [sys.executable, "-m", "embedkit", "-q", "serve", folder, "--port", str(port),
             "--max-concurrent-requests", "4096"], f"http://127.0.0.1:{port}/health",
            f"http://127.0.0.1:{port}/embed", lambda t: {"inputs": t}, chunks, clients_list, env)
    infinity = INFINITY_VENV / "bin" / "infinity_emb"
    return bench_server(
        [str(infinity), "v2", "--model-id", folder, "--port", str(port), "--host", "127.0.0.1",
         "--engine", "torch", "--device", "cpu", "--no-bettertransformer"], f"http://127.0.0.1:{port}/health",
        f"http://127.0.0.1:{port}/embeddings", lambda t: {"input": t, "model": folder}, chunks, clients_list, env)


def _median_run(runs: list[dict]) -> dict:
    """The run with the median throughput (its latencies with it), plus every run's texts/s."""
    ranked = sorted(runs, key=lambda r: r["texts_per_s"])
    return ranked[len(ranked) // 2] | {"runs": [r["texts_per_s"] for r in runs]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--per-request", type=int, default=1)
    ap.add_argument("--clients", default="1,8,64")
    ap.add_argument("--runs", type=int, default=3, help="rounds; each round runs every engine once, in turn")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return
    engines = args.engines.split(",")
    if "infinity" in engines and not (INFINITY_VENV / "bin" / "infinity_emb").is_file():
        engines.remove("infinity")
        skipped = f"skipped: no {INFINITY_VENV.relative_to(ROOT)} (create it as this file's docstring says)"
    else:
        skipped = None
    clients_list = args.clients.split(",")
    raw: dict[str, list[dict]] = {e: [] for e in engines}
    for r in range(args.runs):
        for engine in engines[r % len(engines):] + engines[:r % len(engines)]:  # rotate who goes first
            cmd = [sys.executable, __file__, "--worker", engine, "--model", args.model, "--n", str(args.n),
                   "--per-request", str(args.per_request), "--clients", args.clients]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{engine} failed:\n{proc.stderr[-3000:]}")
            raw[engine].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(engine, json.dumps(raw[engine][-1]), file=sys.stderr, flush=True)
    results: dict = {e: {k: _median_run([run[k] for run in raw[e]]) for k in raw[e][0]} for e in engines}
    if skipped:
        results["infinity"] = skipped
    top = clients_list[-1]
    serve, local = results["embedkit-serve"], results.get("in-process")
    out: dict = {"host": cpu_model(), "cores": os.cpu_count(), "model": args.model, "n_texts": args.n,
                 "per_request": args.per_request, "precision": "fp32", "runs": args.runs,
                 "load_average": [round(x, 2) for x in os.getloadavg()], "results": results}
    if local:
        out[f"serve_vs_in_process_at_{top}_clients"] = round(serve[top]["texts_per_s"] / local[top]["texts_per_s"], 3)
        out["serve_vs_in_process_bulk"] = round(serve[top]["texts_per_s"] / local["bulk"]["texts_per_s"], 3)
    if isinstance(results.get("infinity"), dict):
        out[f"serve_vs_infinity_at_{top}_clients"] = round(
            serve[top]["texts_per_s"] / results["infinity"][top]["texts_per_s"], 3)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
