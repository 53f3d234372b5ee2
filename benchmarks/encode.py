"""Encode throughput, side by side: embedkit vs sentence-transformers vs FlagEmbedding on the real MiniLM.

Each engine runs in its own process, engines alternate, several runs, medians. Prints one JSON object.

    python benchmarks/encode.py [--n 2000] [--runs 3] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import make_texts, median, run_and_collect  # noqa: E402

ENGINES = ("embedkit", "sentence-transformers", "flagembedding", "embedkit-onnx", "embedkit-onnx-int8")
PEER = "sentence-transformers"


def _load(engine: str, path: str, max_length: int, onnx_dir: str | None = None):
    if engine.startswith("embedkit"):
        from embedkit import Embedder

        if engine == "embedkit":
            m = Embedder(path, device="cpu", max_length=max_length, show_progress=False)
        else:
            m = Embedder(onnx_dir, backend="onnx", precision="int8" if engine.endswith("int8") else "fp32",
                         max_length=max_length, show_progress=False)
        return lambda texts, bs: m.encode(texts, batch_size=bs)
    if engine == "sentence-transformers":
        from sentence_transformers import SentenceTransformer

        m = SentenceTransformer(path, device="cpu", local_files_only=True)
        m.max_seq_length = max_length
        return lambda texts, bs: m.encode(texts, batch_size=bs, show_progress_bar=False)
    if engine == "flagembedding":
        from FlagEmbedding import FlagModel

        m = FlagModel(path, pooling_method="mean", normalize_embeddings=True, use_fp16=False, devices="cpu",
                      query_max_length=max_length, passage_max_length=max_length)
        return lambda texts, bs: m.encode(texts, batch_size=bs)
    raise SystemExit(f"unknown engine {engine}")


def worker(engine: str, args: argparse.Namespace) -> None:
    from embedkit.models import minilm_path

    texts = make_texts(args.n)
    t0 = time.perf_counter()
    enc = _load(engine, str(minilm_path()), args.max_length, args.onnx_dir)
    load_s = time.perf_counter() - t0
    enc(texts[:64], args.batch_size)  # warm-up
    t0 = time.perf_counter()
    vecs = np.asarray(enc(texts, args.batch_size), dtype=np.float32)
    elapsed = time.perf_counter() - t0
    np.save(args.vectors_out, vecs)
    print(json.dumps({"engine": engine, "texts_per_s": len(texts) / elapsed, "seconds": elapsed, "load_s": load_s}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="texts to encode (5-60 words each)")
    ap.add_argument("--runs", type=int, default=3, help="runs per engine (alternating)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--vectors-out", help=argparse.SUPPRESS)
    ap.add_argument("--onnx-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args)

    engines = args.engines.split(",")
    passthrough = ["--n", str(args.n), "--batch-size", str(args.batch_size), "--max-length", str(args.max_length)]
    tmp = None
    if any(e.startswith("embedkit-onnx") for e in engines):
        import tempfile

        from embedkit.export.onnx import export_onnx

        tmp = tempfile.TemporaryDirectory(prefix="embedkit-bench-onnx-")
        report = export_onnx("minilm", Path(tmp.name) / "minilm-onnx", quantize="int8")
        passthrough += ["--onnx-dir", str(report.path)]
        if not report.int8["kept"]:
            engines = [e for e in engines if e != "embedkit-onnx-int8"]
    results: dict[str, list[dict]] = {e: [] for e in engines}
    vectors: dict[str, np.ndarray] = {}
    for r in range(args.runs):
        for engine in (engines if r % 2 == 0 else engines[::-1]):
            result, vectors[engine] = run_and_collect(Path(__file__), engine, passthrough)
            results[engine].append(result)
            print(f"run {r + 1}/{args.runs} {engine}: {results[engine][-1]['texts_per_s']:.1f} texts/s",
                  file=sys.stderr)

    out = {"benchmark": "encode", "model": "all-MiniLM-L6-v2 (fp32, cpu)", "n_texts": args.n,
           "batch_size": args.batch_size, "max_length": args.max_length, "runs": args.runs, "engines": {}}
    tps = {e: median([x["texts_per_s"] for x in results[e]]) for e in engines}
    ref = vectors.get(PEER)
    for e in engines:
        row = {"texts_per_s": round(tps[e], 1), "runs_texts_per_s": [round(x["texts_per_s"], 1) for x in results[e]],
               "load_s": round(median([x["load_s"] for x in results[e]]), 2)}
        for peer in engines:
            if peer != e:
                row[f"ratio_to_{peer}"] = round(tps[e] / tps[peer], 3)
        if ref is not None:
            cos = np.sum(vectors[e] * ref, axis=1) / (
                np.linalg.norm(vectors[e], axis=1) * np.linalg.norm(ref, axis=1))
            row["max_abs_diff_vs_st_fp32"] = float(np.abs(vectors[e] - ref).max())
            row["min_cosine_vs_st_fp32"] = round(float(cos.min()), 7)
        out["engines"][e] = row
    print(json.dumps(out, indent=2))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
