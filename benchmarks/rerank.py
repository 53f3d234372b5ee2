"""Rerank throughput, side by side: embedkit ``Reranker`` (fp32, auto) vs FlagEmbedding's ``FlagReranker``
(``use_fp16=False``) and sentence-transformers' ``CrossEncoder``, on the same (query, passage) pairs.

No real reranker checkpoint is available offline, so the models are built here and the JSON says so:

- ``minilm``: the bundled all-MiniLM-L6-v2 encoder with a fresh, random one-label head (the shape of
  cross-encoder/ms-marco-MiniLM-L-6-v2: 384 hidden, 6 layers);
- ``base``: a random bge-reranker-base-sized BERT (768 hidden, 12 layers, 12 heads) with MiniLM's tokenizer
  (bge-reranker-base is an XLM-RoBERTa of the same depth and width; only its 250k-token embedding table differs).

Each engine runs in its own process, engines alternate, several runs, medians. Scores compared are raw logits
(FlagReranker ``compute_score``, CrossEncoder ``predict(activation_fn=Identity())``): max abs diff and Spearman of
every engine vs FlagReranker. Prints one JSON object with pairs/s, the ratio to FlagReranker, peak RSS and the host.

    python benchmarks/rerank.py [--models minilm,base] [--n 1000] [--n-base 200] [--runs 3] [--batch-size 32]
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
from _common import make_texts, median, peak_rss_mb, run_and_collect  # noqa: E402
from encode import host_info  # noqa: E402

ENGINES = ("flagreranker", "crossencoder", "embedkit-fp32", "embedkit-auto")
PEER = "flagreranker"


def make_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (query, passage) pairs: queries of 3-12 words, each against several passages of 20-80 words."""
    queries = make_texts(max(1, n // 10), min_words=3, max_words=12, seed=seed)
    passages = make_texts(n, min_words=20, max_words=80, seed=seed + 1)
    return [(queries[i % len(queries)], p) for i, p in enumerate(passages)]


def _load(engine: str, path: str, max_length: int, batch_size: int):
    if engine.startswith("embedkit"):
        from embedkit import Reranker

        m = Reranker(path, device="cpu", max_length=max_length, batch_size=batch_size,
                     precision=engine.split("-", 1)[1], truncation="flagembedding", show_progress=False)
        return lambda pairs: m.compute_score(pairs), m
    if engine == "flagreranker":
        from FlagEmbedding import FlagReranker

        m = FlagReranker(path, use_fp16=False, devices="cpu", max_length=max_length, batch_size=batch_size)
        return lambda pairs: m.compute_score(pairs, batch_size=batch_size, max_length=max_length), None
    if engine == "crossencoder":
        import torch
        from sentence_transformers import CrossEncoder

        m = CrossEncoder(path, device="cpu", max_length=max_length, local_files_only=True)
        return lambda pairs: m.predict(pairs, batch_size=batch_size, activation_fn=torch.nn.Identity(),
                                       show_progress_bar=False), None
    raise SystemExit(f"unknown engine {engine}")


def worker(engine: str, args: argparse.Namespace) -> None:
    pairs = make_pairs(args.n)
    t0 = time.perf_counter()
    score, reranker = _load(engine, args.model, args.max_length, args.batch_size)
    load_s = time.perf_counter() - t0
    score(pairs[:64])  # warm-up
    t0 = time.perf_counter()
    scores = np.asarray(score(pairs), dtype=np.float64).reshape(-1)
    elapsed = time.perf_counter() - t0
    np.save(args.vectors_out, scores)
    print(json.dumps({"engine": engine, "pairs_per_s": len(pairs) / elapsed, "seconds": elapsed, "load_s": load_s,
                      "peak_rss_mb": peak_rss_mb(),
                      "precision": getattr(reranker, "precision_summary", None)}))


def build_minilm_reranker(folder: Path) -> Path:
    """The bundled MiniLM encoder + a random one-label classification head (seeded), saved with its tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    from embedkit.models import minilm_path

    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(str(minilm_path()), num_labels=1).eval()
    model.save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True).save_pretrained(str(folder))
    return folder


def build_base_reranker(folder: Path) -> Path:
    """A random bge-reranker-base-sized BERT cross-encoder (768 hidden, 12 layers, one label), MiniLM's tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from embedkit.models import minilm_path

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                        intermediate_size=3072, max_position_embeddings=512, num_labels=1)
    BertForSequenceClassification(config).eval().save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True).save_pretrained(str(folder))
    return folder


MODELS = {
    "minilm": (build_minilm_reranker, "all-MiniLM-L6-v2 encoder (real weights) + random one-label head "
               "(ms-marco-MiniLM-L-6-v2 shape: 384 hidden, 6 layers)"),
    "base": (build_base_reranker, "random weights, bge-reranker-base-sized BERT (768 hidden, 12 layers, 12 heads), "
             "MiniLM's tokenizer"),
}


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def bench_model(label: str, path: Path, n: int, args: argparse.Namespace, engines: list[str]) -> dict:
    passthrough = ["--n", str(n), "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
                   "--model", str(path)]
    results: dict[str, list[dict]] = {e: [] for e in engines}
    scores: dict[str, np.ndarray] = {}
    for r in range(args.runs):
        for engine in (engines if r % 2 == 0 else engines[::-1]):
            result, scores[engine] = run_and_collect(Path(__file__), engine, passthrough)
            results[engine].append(result)
            print(f"{label} run {r + 1}/{args.runs} {engine}: {result['pairs_per_s']:.1f} pairs/s", file=sys.stderr)
    pps = {e: median([x["pairs_per_s"] for x in results[e]]) for e in engines}
    ref = scores.get(PEER)
    out: dict = {"weights": MODELS[label][1], "n_pairs": n, "engines": {}}
    for e in engines:
        row = {"pairs_per_s": round(pps[e], 1), "runs": [round(x["pairs_per_s"], 1) for x in results[e]],
               "peak_rss_mb": round(median([x["peak_rss_mb"] for x in results[e]])),
               "load_s": round(median([x["load_s"] for x in results[e]]), 2)}
        if results[e][-1].get("precision"):
            row["precision"] = results[e][-1]["precision"]
        if PEER in pps:
            row["ratio_to_flagreranker"] = round(pps[e] / pps[PEER], 3)
        if ref is not None:
            row["max_abs_diff_vs_flagreranker"] = float(np.abs(scores[e] - ref).max())
            row["spearman_vs_flagreranker"] = round(_spearman(scores[e], ref), 6)
        out["engines"][e] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="minilm,base")
    ap.add_argument("--n", type=int, default=1000, help="pairs for the MiniLM-sized reranker")
    ap.add_argument("--n-base", type=int, default=200, help="pairs for the base-sized reranker")
    ap.add_argument("--runs", type=int, default=3, help="runs per engine (alternating)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=512, help="FlagReranker's default")
    ap.add_argument("--engines", default=",".join(ENGINES))
    for hidden in ("--worker", "--vectors-out", "--model"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args)

    engines = args.engines.split(",")
    out: dict = {"benchmark": "rerank", "batch_size": args.batch_size, "max_length": args.max_length,
                 "runs": args.runs, "pairs": "queries of 3-12 words x passages of 20-80 words (MiniLM vocabulary)",
                 "scores": "raw logits", "host": host_info(), "models": {}}
    with tempfile.TemporaryDirectory(prefix="embedkit-bench-") as tmp:
        os.environ.setdefault("EMBEDKIT_CACHE", str(Path(tmp) / "cache"))  # the auto gate's verdict: not in ~/.cache
        for label in args.models.split(","):
            if label not in MODELS:
                raise SystemExit(f"unknown model {label}: use {', '.join(MODELS)}")
            path = MODELS[label][0](Path(tmp) / f"{label}-reranker")
            out["models"][label] = bench_model(label, path, args.n if label == "minilm" else args.n_base, args,
                                               engines)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
