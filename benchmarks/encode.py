"""Encode throughput, side by side: embedkit (fp32, auto, bf16, ONNX int8) vs sentence-transformers and FlagEmbedding.

Models: the real all-MiniLM-L6-v2 and a random bge-base-sized BERT (768 hidden, 12 layers, MiniLM's tokenizer).
Each engine runs in its own process, engines alternate, several runs, medians. Also measures this machine's fp32,
bf16 and int8 matrix-multiply speed and the host (CPU model, flags); the machine's ceiling for a model is its fastest
GEMM divided by the model's FLOPs per text (no padding). Prints one JSON object; per engine: warm texts/s, the first
pass over the texts in a fresh process, the first call (load + one batch: what a CLI user feels), ratio to
sentence-transformers fp32 and to FlagEmbedding fp32, ratio to the ceiling, cosine mean/min vs fp32, peak RSS.

    python benchmarks/encode.py [--models minilm,bge-base] [--n 2000] [--n-base 500] [--runs 3] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import make_texts, median, peak_rss_mb, run_and_collect, run_worker  # noqa: E402

ENGINES = ("sentence-transformers", "flagembedding", "embedkit-fp32", "embedkit-auto", "embedkit-bf16",
           "embedkit-int8", "embedkit-int8-torch")
# Levers measured on request (--engines), not by default: fp32 with widths padded up to 16 (fewer oneDNN shapes).
LEVERS = ("embedkit-fp32-pad16",)
PEER = "sentence-transformers"


def _load(engine: str, path: str, max_length: int, onnx_dir: str | None, pooling: str):
    if engine.startswith("embedkit"):
        from embedkit import Embedder

        precision = engine.split("-", 1)[1]
        folder = onnx_dir if precision == "int8" else path
        cls = Embedder
        if precision == "fp32-pad16":
            class Padded(Embedder):
                _pad_multiple = 16
            cls, precision = Padded, "fp32"
        # int8-torch ungated: its raw speed and its cosine vs fp32 are what this row is for (auto gates it)
        gate = {"precision_gate": None} if precision == "int8-torch" else {}
        m = cls(folder, device="cpu", max_length=max_length, precision=precision, show_progress=False, **gate)
        return lambda texts, bs: m.encode(texts, batch_size=bs), m
    if engine == "sentence-transformers":
        from sentence_transformers import SentenceTransformer

        m = SentenceTransformer(path, device="cpu", local_files_only=True)
        m.max_seq_length = max_length
        return lambda texts, bs: m.encode(texts, batch_size=bs, show_progress_bar=False), None
    if engine == "flagembedding":
        from FlagEmbedding import FlagModel

        m = FlagModel(path, pooling_method=pooling, normalize_embeddings=True, use_fp16=False, devices="cpu",
                      query_max_length=max_length, passage_max_length=max_length)
        return lambda texts, bs: m.encode(texts, batch_size=bs), None
    raise SystemExit(f"unknown engine {engine}")


def worker(engine: str, args: argparse.Namespace) -> None:
    if engine == "gemm":
        return gemm_worker()
    texts = make_texts(args.n)
    t0 = time.perf_counter()
    enc, embedder = _load(engine, args.model, args.max_length, args.onnx_dir, args.pooling)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    enc(texts[:args.batch_size], args.batch_size)  # what a CLI user feels: load + one batch, in a fresh process
    first_call_s = load_s + time.perf_counter() - t0
    t0 = time.perf_counter()
    enc(texts, args.batch_size)  # the first pass over every text (new shapes: kernels are built here)
    first_pass = len(texts) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    vecs = np.asarray(enc(texts, args.batch_size), dtype=np.float32)  # warm
    elapsed = time.perf_counter() - t0
    np.save(args.vectors_out, vecs)
    print(json.dumps({"engine": engine, "texts_per_s": len(texts) / elapsed, "seconds": elapsed, "load_s": load_s,
                      "first_call_s": first_call_s, "first_pass_texts_per_s": first_pass,
                      "peak_rss_mb": peak_rss_mb(),
                      "precision": getattr(embedder, "precision", None),
                      "precision_summary": getattr(embedder, "precision_summary", None),
                      "auto": getattr(getattr(embedder, "precision_info", None), "auto", None)}))


HOST_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile")


def host_info() -> dict:
    """The CPU this ran on: model name, core count and the flags that decide bf16 / int8 speed."""
    import os

    model, flags = "unknown", set()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"cpu": model, "cpus": os.cpu_count(), "flags": [f for f in HOST_FLAGS if f in flags]}


def gemm_worker(n: int = 2048, budget_s: float = 2.0) -> None:
    """fp32 and bf16 GEMM GFLOP/s, each timed for about ``budget_s`` seconds. Without native bf16 (no avx512_bf16 /
    AMX) torch emulates bf16 matrix multiply very slowly: a smaller matrix is timed there so the probe ends."""
    import torch

    info = host_info()
    native_bf16 = bool({"avx512_bf16", "amx_bf16"} & set(info["flags"]))
    out: dict = {"host": info}
    int8 = _int8_gemm_gflops(n if {"avx512_vnni", "amx_int8"} & set(info["flags"]) else 512, budget_s)
    if int8 is not None:
        out["int8_gops"] = int8
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        size = n if name == "fp32" or native_bf16 else 256
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        a @ b
        reps, t0 = 0, time.perf_counter()
        while reps < 3 or time.perf_counter() - t0 < budget_s:
            a @ b
            reps += 1
            if reps >= 50:
                break
        out[f"{name}_gflops"] = round(2 * size**3 * reps / (time.perf_counter() - t0) / 1e9, 1)
    out["bf16_native"] = native_bf16
    print(json.dumps(out))


def _int8_gemm_gflops(size: int, budget_s: float) -> float | None:
    """int8 x int8 -> int32 matrix multiply, in GOP/s (``torch._int_mm``, what an int8 linear layer runs on); None
    where this torch has no CPU kernel for it."""
    import torch

    try:
        a = torch.randint(-128, 127, (size, size), dtype=torch.int8)
        b = torch.randint(-128, 127, (size, size), dtype=torch.int8)
        torch._int_mm(a, b)
    except (RuntimeError, AttributeError, NotImplementedError):
        return None
    reps, t0 = 0, time.perf_counter()
    while reps < 3 or time.perf_counter() - t0 < budget_s:
        torch._int_mm(a, b)
        reps += 1
        if reps >= 50:
            break
    return round(2 * size**3 * reps / (time.perf_counter() - t0) / 1e9, 1)


def flops_per_text(path: Path, texts: list[str], max_length: int) -> float:
    """Mean forward-pass FLOPs per text of a BERT-like encoder on ``texts`` with no padding: per token and layer,
    2 x (4 d^2 attention projections + 2 d ff feed-forward + 2 d n attention scores and mixing)."""
    from transformers import AutoConfig, AutoTokenizer

    cfg = AutoConfig.from_pretrained(str(path), local_files_only=True)
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    lengths = [len(ids) for ids in tok(texts, truncation=True, max_length=max_length)["input_ids"]]
    d, ff, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    per_text = [2 * layers * n * (4 * d * d + 2 * d * ff + 2 * d * n) for n in lengths]
    return float(np.mean(per_text))


def build_base_model(folder: Path) -> Path:
    """A random bge-base-sized BERT (768 hidden, 12 layers, 12 heads) with MiniLM's tokenizer, saved with embedkit."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from embedkit.checkpoint.save import save
    from embedkit.models import minilm_path

    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                 intermediate_size=3072, max_position_embeddings=512)).eval()
    tok = AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)
    from embedkit.spec import EmbedderSpec

    save(model, folder, spec=EmbedderSpec(pooling="cls", normalize=True), tokenizer=tok)
    return folder


def bench_model(label: str, path: Path, n: int, args: argparse.Namespace, engines: list[str], pooling: str) -> dict:
    from embedkit.export.onnx import export_onnx

    passthrough = ["--n", str(n), "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
                   "--model", str(path), "--pooling", pooling]
    if "embedkit-int8" in engines:
        report = export_onnx(path, Path(args.tmp) / f"{label}-onnx", quantize="int8")
        passthrough += ["--onnx-dir", str(report.path)]
        if not report.int8["kept"]:
            engines = [e for e in engines if e != "embedkit-int8"]
    results: dict[str, list[dict]] = {e: [] for e in engines}
    vectors: dict[str, np.ndarray] = {}
    for r in range(args.runs):
        for engine in (engines if r % 2 == 0 else engines[::-1]):
            result, vectors[engine] = run_and_collect(Path(__file__), engine, passthrough)
            results[engine].append(result)
            print(f"{label} run {r + 1}/{args.runs} {engine}: {result['texts_per_s']:.1f} texts/s",
                  file=sys.stderr)
    tps = {e: median([x["texts_per_s"] for x in results[e]]) for e in engines}
    ref = vectors.get(PEER)
    out = {"n_texts": n, "gflop_per_text": round(flops_per_text(path, make_texts(n), args.max_length) / 1e9, 4),
           "engines": {}}
    for e in engines:
        row = {"texts_per_s": round(tps[e], 1), "runs": [round(x["texts_per_s"], 1) for x in results[e]],
               "peak_rss_mb": round(median([x["peak_rss_mb"] for x in results[e]])),
               "load_s": round(median([x["load_s"] for x in results[e]]), 2),
               "first_call_s": round(median([x["first_call_s"] for x in results[e]]), 2),
               "first_pass_texts_per_s": round(median([x["first_pass_texts_per_s"] for x in results[e]]), 1)}
        if results[e][-1].get("precision"):
            row["precision"] = results[e][-1]["precision"]
            row["precision_summary"] = results[e][-1]["precision_summary"]
        if results[e][0].get("auto"):  # what auto measured and picked on this host (the first run measures)
            auto = results[e][0]["auto"]
            row["auto"] = {"chosen": auto["chosen"], "candidates": auto["candidates"],
                           "first_run_load_s": round(results[e][0]["load_s"], 2)}
        if PEER in tps:
            row["ratio_to_st_fp32"] = round(tps[e] / tps[PEER], 3)
        if "flagembedding" in tps:
            row["ratio_to_flagembedding_fp32"] = round(tps[e] / tps["flagembedding"], 3)
        if ref is not None:
            cos = (vectors[e] * ref).sum(1) / (np.linalg.norm(vectors[e], axis=1) * np.linalg.norm(ref, axis=1))
            row["cosine_vs_fp32"] = {"mean": round(float(cos.mean()), 6), "min": round(float(cos.min()), 6)}
            row["max_abs_diff_vs_fp32"] = float(np.abs(vectors[e] - ref).max())
        out["engines"][e] = row
    if "flagembedding" in tps and "embedkit-fp32" in tps:
        out["embedkit_fp32_vs_flagembedding"] = round(tps["embedkit-fp32"] / tps["flagembedding"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="minilm,bge-base")
    ap.add_argument("--n", type=int, default=2000, help="texts for MiniLM (5-60 words each)")
    ap.add_argument("--n-base", type=int, default=500, help="texts for the bge-base-sized model")
    ap.add_argument("--runs", type=int, default=3, help="runs per engine (alternating)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--engines", default=",".join(ENGINES))
    for hidden in ("--worker", "--vectors-out", "--onnx-dir", "--model", "--tmp"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    ap.add_argument("--pooling", default="mean", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args)

    from embedkit.models import minilm_path

    engines = args.engines.split(",")
    gemm = run_worker(Path(__file__), "gemm", [])
    out: dict = {"benchmark": "encode", "batch_size": args.batch_size, "max_length": args.max_length,
                 "runs": args.runs, "machine": gemm, "models": {}}
    with tempfile.TemporaryDirectory(prefix="embedkit-bench-") as tmp:
        args.tmp = tmp
        os.environ.setdefault("EMBEDKIT_CACHE", str(Path(tmp) / "cache"))  # auto measures in its first run
        for label in args.models.split(","):
            if label == "minilm":
                result = bench_model("minilm", minilm_path(), args.n, args, engines, "mean")
            elif label == "bge-base":
                result = bench_model("bge-base", build_base_model(Path(tmp) / "bge-base-random"), args.n_base, args,
                                     engines, "cls")
            else:
                raise SystemExit(f"unknown model {label}: use minilm, bge-base")
            # the machine's ceiling: its fastest measured GEMM (fp32, bf16 or int8) x the model's FLOPs per text
            best = max(gemm["fp32_gflops"], gemm["bf16_gflops"], gemm.get("int8_gops", 0.0))
            ceiling = best / result["gflop_per_text"]
            result["ceiling_texts_per_s"] = round(ceiling, 1)
            result["fp32_ceiling_texts_per_s"] = round(gemm["fp32_gflops"] / result["gflop_per_text"], 1)
            for row in result["engines"].values():
                row["ratio_to_ceiling"] = round(row["texts_per_s"] / ceiling, 3)
            out["models"][label] = result
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
