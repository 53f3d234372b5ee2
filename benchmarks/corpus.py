"""Corpus encode: texts/s and peak RSS of `embedkit encode --format parquet` (streamed shards) vs the in-memory
`.npy` path vs sentence-transformers' `encode` with its multi-process pool on the same CPU count, and Ray Data
(`embedkit.distributed.encode_dataset`) with 1 and 2 actors on a local Ray of the machine's CPUs.

Each engine runs in a fresh process (peak RSS is that process's VmHWM; for the sentence-transformers pool, the sum
of the parent's and its workers' peaks; for Ray, the driver's only: the actors are Ray's processes). Ray rows
time ``encode_dataset`` including actor start-up (``ray_init_s``, starting Ray itself, is reported apart).
Texts are short (3-12 words), written once to a .txt file.

    python benchmarks/corpus.py --model minilm --n 100000 [--runs 3]      # throughput, every engine
    python benchmarks/corpus.py --model tiny --engines parquet,npy --n 100000,1000000 --threads 1   # memory

    python benchmarks/corpus.py --recall DEMO_DATA_DIR --model minilm      # nDCG@10 per --output-dtype

``--model tiny`` builds a 2-layer random BERT (hidden 32): the forward pass is cheap, so what is measured is the
pipeline's own memory (reading, tokenizing, writing), which is what must stay flat as the corpus grows.
Prints one JSON object (also written to --json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import peak_rss_mb, run_worker  # noqa: E402

ENGINES = ("parquet", "npy", "st-pool", "ray-1", "ray-2")


def _children_peak_mb() -> float:
    """Sum of the VmHWM of this process's live children (the sentence-transformers pool workers)."""
    total = 0.0
    me = os.getpid()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if fields.get("PPid", "").strip() == str(me) and "VmHWM" in fields:
            total += int(fields["VmHWM"].split()[0]) / 1024
    return total


def worker(engine: str, args: argparse.Namespace) -> None:
    from embedkit.cli import main as cli

    src, model, out = args.input, args.model_path, Path(args.out)
    n = sum(1 for _ in open(src, encoding="utf-8"))
    common = ["-i", src, "--passages", "--batch-size", str(args.batch_size), "--no-progress"]
    start = time.perf_counter()
    extra = 0.0
    extra_fields: dict = {}
    if engine == "parquet":
        rc = cli(["encode", model, *common, "-o", str(out / "parquet"), "--format", "parquet",
                  "--shard-size", str(args.shard_size)])
    elif engine == "npy":
        rc = cli(["encode", model, *common, "-o", str(out / "vectors.npy")])
    elif engine.startswith("ray-"):
        import ray

        from embedkit.distributed import encode_dataset

        os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).resolve().parent.parent),
                                                               os.environ.get("PYTHONPATH")) if p)
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        extra_fields["ray_init_s"] = round(time.perf_counter() - start, 2)
        start = time.perf_counter()
        encode_dataset(model, src, out / "ray", kind="passages", shard_size=args.shard_size,
                       batch_size=args.batch_size, workers=int(engine.split("-")[1]), show_progress=False)
        ray.shutdown()
        rc = 0
    else:
        from sentence_transformers import SentenceTransformer

        texts = open(src, encoding="utf-8").read().split("\n")[:n]
        st = SentenceTransformer(model, device="cpu")
        pool = st.start_multi_process_pool(target_devices=["cpu"] * args.workers)
        start = time.perf_counter()
        st.encode_multi_process(texts, pool, batch_size=args.batch_size)
        extra = _children_peak_mb()
        st.stop_multi_process_pool(pool)
        rc = 0
    seconds = time.perf_counter() - start
    if rc != 0:
        raise SystemExit(f"{engine}: exit {rc}")
    print(json.dumps({"engine": engine, "n": n, "seconds": round(seconds, 2), "texts_per_s": round(n / seconds, 1),
                      "peak_rss_mb": round(peak_rss_mb() + extra, 1), **extra_fields}))


def recall(folder: str, model: str, batch_size: int) -> dict:
    """nDCG@10 of exact search on a retrieval set (the demo's test split) for each ``--output-dtype``.

    The corpus is written by :func:`embedkit.corpus.encode_to_parquet` (float32) and read back; each dtype is then
    that float32 matrix through :func:`embedkit.corpus.quantize` (what the shards of that dtype hold, see
    tests/test_corpus.py), with int8 / uint8 ranges calibrated on the first 10,000 passages as the encoder does.
    Queries are quantized the same way (same ranges); scores: inner product (int32 for int8; uint8 is scored as its
    int8 equivalent, value - 128), and for binary / ubinary the number of equal bits (8 * bytes - Hamming distance).
    """
    import numpy as np
    import pyarrow.parquet as pq

    from embedkit import Embedder
    from embedkit.corpus import calibration_ranges, encode_to_parquet, quantize
    from embedkit.eval.data import load_eval_data
    from embedkit.eval.retrieval import compute_metrics

    data = load_eval_data(folder)
    doc_ids, q_ids = list(data.corpus), list(data.queries)
    embedder = Embedder(model, batch_size=batch_size)
    with tempfile.TemporaryDirectory(prefix="embedkit-recall-") as tmp:
        src = Path(tmp) / "corpus.jsonl"
        src.write_text("".join(json.dumps({"id": i, "text": data.corpus[i]}) + "\n" for i in doc_ids),
                       encoding="utf-8")
        encode_to_parquet(embedder, src, Path(tmp) / "out", id_field="id", kind="passages")
        table = pq.read_table(Path(tmp) / "out")
        assert table.column("id").to_pylist() == doc_ids
        docs = table.column("embedding").combine_chunks().flatten().to_numpy().reshape(len(doc_ids), -1)
    queries = embedder.encode_queries([data.queries[q] for q in q_ids])
    ranges = calibration_ranges(docs[:10_000])
    rows = {}
    for dtype in ("float32", "float16", "int8", "uint8", "binary", "ubinary"):
        d, q = quantize(docs, dtype, ranges), quantize(queries, dtype, ranges)
        if dtype.endswith("binary"):
            du, qu = np.unpackbits(d.view(np.uint8), axis=1), np.unpackbits(q.view(np.uint8), axis=1)
            scores = (qu.astype(np.int32) @ du.T.astype(np.int32)
                      + (1 - qu).astype(np.int32) @ (1 - du).T.astype(np.int32)).astype(np.float64)
        elif dtype == "uint8":
            scores = ((q.astype(np.int32) - 128) @ (d.astype(np.int32) - 128).T).astype(np.float64)
        else:
            scores = q.astype(np.float32 if dtype != "int8" else np.int32) @ d.astype(
                np.float32 if dtype != "int8" else np.int32).T
        top = np.argsort(-scores, axis=1, kind="stable")[:, :10]
        run = {qid: {doc_ids[j]: float(scores[i, j]) for j in top[i]} for i, qid in enumerate(q_ids)}
        metrics = compute_metrics(data.qrels, run, ks=(10,))
        bytes_per_vector = int(d.shape[1] * d.dtype.itemsize)
        rows[dtype] = {"ndcg@10": metrics["ndcg@10"], "recall@10": metrics["recall@10"],
                       "bytes_per_vector": bytes_per_vector}
    # asymmetric int8: float32 queries against the int8 shards dequantized to their buckets' centres
    steps = np.where((ranges[1] - ranges[0]) / 255 == 0, 1, (ranges[1] - ranges[0]) / 255)
    deq = ranges[0] + steps * (quantize(docs, "int8", ranges).astype(np.float32) + 128 + 0.5)
    scores = queries @ deq.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    run = {qid: {doc_ids[j]: float(scores[i, j]) for j in top[i]} for i, qid in enumerate(q_ids)}
    metrics = compute_metrics(data.qrels, run, ks=(10,))
    rows["int8, float32 queries"] = {"ndcg@10": metrics["ndcg@10"], "recall@10": metrics["recall@10"],
                                     "bytes_per_vector": rows["int8"]["bytes_per_vector"]}
    return {"data": data.summary() | {"files": None}, "model": model, "dtypes": rows}


def write_texts(path: Path, n: int, seed: int = 0) -> None:
    """``n`` short pseudo-sentences (3-12 words of the MiniLM vocabulary), written in blocks of 100,000."""
    import numpy as np

    from embedkit.models import minilm_path

    vocab = (minilm_path() / "vocab.txt").read_text(encoding="utf-8").split("\n")
    words = np.array([w for w in vocab[2000:] if w.isalpha() and len(w) > 1])
    rng = np.random.default_rng(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(0, n, 100_000):
            m = min(100_000, n - i)
            lengths = rng.integers(3, 13, size=m)
            picks = words[rng.integers(0, len(words), size=int(lengths.sum()))]
            ends = np.cumsum(lengths)
            fh.writelines(" ".join(picks[e - k:e]) + "\n" for k, e in zip(lengths, ends, strict=True))


def _rounds(engines: list[str], runs: int) -> list[str]:
    """Every engine once per round, the first one rotating each round (so no engine always runs first)."""
    return [e for r in range(runs) for e in engines[r % len(engines):] + engines[:r % len(engines)]]


def _summary(results: list[dict]) -> dict:
    """Per corpus size and engine: the median texts/s over the rounds and the largest peak RSS; and the streaming
    (parquet) throughput as a ratio of the in-memory (.npy) one."""
    import statistics

    out: dict = {}
    for r in results:
        row = out.setdefault(str(r["n"]), {}).setdefault(r["engine"], {"runs": [], "peak_rss_mb": 0.0})
        row["runs"].append(r["texts_per_s"])
        row["peak_rss_mb"] = max(row["peak_rss_mb"], r["peak_rss_mb"])
    for by_engine in out.values():
        for row in by_engine.values():
            row["texts_per_s"] = round(statistics.median(row["runs"]), 1)
        if "parquet" in by_engine and "npy" in by_engine:
            by_engine["parquet_vs_npy"] = round(by_engine["parquet"]["texts_per_s"] / by_engine["npy"]["texts_per_s"],
                                                3)
    return out


def _cpu() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo", encoding="utf-8")
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


def _model(name: str, tmp: Path) -> str:
    if name == "tiny":
        from tests.conftest import build_tiny_bert

        return str(build_tiny_bert(tmp / "tiny-bert"))
    if name == "minilm":
        from embedkit.models import minilm_path

        return str(minilm_path())
    return name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="minilm", help="minilm | tiny | a model folder")
    ap.add_argument("--n", default="100000", help="comma-separated corpus sizes")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--shard-size", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=None, help="torch / OMP threads per process (default: all)")
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="sentence-transformers pool processes")
    ap.add_argument("--runs", type=int, default=1, help="rounds; each runs every engine once, in turn")
    ap.add_argument("--json", default=None, help="also write the result here")
    ap.add_argument("--recall", default=None, help="a retrieval folder (the demo's data dir): nDCG@10 per dtype")
    for hidden in ("--worker", "--input", "--model-path", "--out"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args)
        return
    if args.recall:
        with tempfile.TemporaryDirectory() as tmp:
            report = recall(args.recall, _model(args.model, Path(tmp)), args.batch_size)
        text = json.dumps(report, indent=1)
        print(text)
        if args.json:
            Path(args.json).write_text(text + "\n", encoding="utf-8")
        return
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    results = []
    engines = [e for e in args.engines.split(",") if not (e == "st-pool" and args.model == "tiny")]  # no ST files
    with tempfile.TemporaryDirectory(prefix="embedkit-corpus-bench-") as tmp_name:
        tmp = Path(tmp_name)
        model = _model(args.model, tmp)
        for n in [int(x) for x in args.n.split(",")]:
            src = tmp / f"texts-{n}.txt"
            write_texts(src, n)
            for r, engine in enumerate(_rounds(engines, args.runs)):
                out = tmp / f"out-{engine}-{n}-{r}"
                out.mkdir()
                result = run_worker(Path(__file__), engine, ["--input", str(src), "--model-path", model, "--out",
                                                              str(out), "--batch-size", str(args.batch_size),
                                                              "--shard-size", str(args.shard_size),
                                                              "--workers", str(args.workers)])
                results.append(result)
                print(json.dumps(result), file=sys.stderr, flush=True)
    report = {"model": args.model, "host": _cpu(), "cpus": os.cpu_count(), "threads": args.threads,
              "batch_size": args.batch_size, "shard_size": args.shard_size, "runs": args.runs,
              "load_average": [round(x, 2) for x in os.getloadavg()], "summary": _summary(results), "results": results}
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
