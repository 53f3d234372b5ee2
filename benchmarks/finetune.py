"""Fine-tuning throughput and memory, side by side: embedkit vs sentence-transformers' trainer on the real MiniLM.

Same data (query, positive, hard negative), batch, steps, sequence length, learning rate and temperature
(ST ``MultipleNegativesRankingLoss`` scale 20 = embedkit temperature 0.05, in-batch + 1 hard negative = embedkit
``train_group_size 2``). Each run in its own process, engines alternating, medians. Rows:

- ``throughput``: samples/s at ``--batch-size`` for ``--steps`` steps (embedkit vs ST MNRL);
- ``memory``: one step at ``--big-batch`` (1024): embedkit plain vs embedkit GradCache (``--chunk``) vs ST
  ``CachedMultipleNegativesRankingLoss`` (mini_batch_size = chunk): peak RSS.

    python benchmarks/finetune.py [--runs 3] [--batch-size 32] [--steps 10] [--big-batch 1024] [--chunk 64]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import make_texts, median, peak_rss_mb, run_worker  # noqa: E402


def write_data(path: Path, n: int) -> None:
    texts = make_texts(3 * n, min_words=5, max_words=30, seed=1)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            q, p, neg = texts[3 * i], texts[3 * i + 1], texts[3 * i + 2]
            fh.write(json.dumps({"query": " ".join(q.split()[:8]), "pos": [p], "neg": [neg]}) + "\n")


def worker(engine: str, args: argparse.Namespace) -> None:
    from embedkit.models import minilm_path

    model = str(minilm_path())
    out = tempfile.mkdtemp(prefix="embedkit-bench-ft-")
    batch, steps = args.batch, args.steps
    common = dict(output_dir=out, per_device_train_batch_size=batch, max_steps=steps, learning_rate=2e-5,
                  warmup_steps=0, save_strategy="no", report_to="none", logging_steps=max(1, steps),
                  dataloader_pin_memory=False, seed=0, disable_tqdm=True)
    if engine.startswith("embedkit"):
        from embedkit.train.arguments import parse_args
        from embedkit.train.trainer import build_trainer

        argv = ["--model_name_or_path", model, "--train_data", args.data, "--train_group_size", "2",
                "--temperature", "0.05", "--query_max_length", str(args.max_length),
                "--passage_max_length", str(args.max_length), "--plot_loss", "false"]
        for k, v in common.items():
            argv += [f"--{k}", str(v).lower() if isinstance(v, bool) else str(v)]
        if engine == "embedkit-gradcache":
            argv += ["--grad_cache_chunk", str(args.chunk)]
        trainer, _ = build_trainer(*parse_args(argv))
    else:
        from datasets import Dataset
        from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
        from sentence_transformers import SentenceTransformerTrainingArguments as STArgs
        from sentence_transformers.sentence_transformer.losses import (
            CachedMultipleNegativesRankingLoss,
            MultipleNegativesRankingLoss,
        )

        rows = [json.loads(line) for line in open(args.data, encoding="utf-8")]
        ds = Dataset.from_dict({"anchor": [r["query"] for r in rows], "positive": [r["pos"][0] for r in rows],
                                "negative": [r["neg"][0] for r in rows]})
        st = SentenceTransformer(model, device="cpu", local_files_only=True)
        st.max_seq_length = args.max_length
        loss = (CachedMultipleNegativesRankingLoss(st, scale=20.0, mini_batch_size=args.chunk)
                if engine == "st-cached" else MultipleNegativesRankingLoss(st, scale=20.0))
        trainer = SentenceTransformerTrainer(model=st, args=STArgs(**common), train_dataset=ds, loss=loss)
    from transformers import TrainerCallback

    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, *a, **k):  # noqa: ANN002, ANN003
            stamps.append(time.perf_counter())

    trainer.add_callback(Stamp())
    t0 = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - t0
    # steady state: from the end of step 1 to the end of the last step (first-step warm-up excluded)
    sps = batch * (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else batch * steps / wall
    print(json.dumps({"engine": engine, "samples_per_s": sps, "wall_s": wall,
                      "hf_samples_per_s": result.metrics.get("train_samples_per_second"),
                      "final_loss": result.metrics.get("train_loss"), "peak_rss_mb": peak_rss_mb()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--big-batch", type=int, default=1024)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=32)
    ap.add_argument("--skip-memory", action="store_true", help="only the throughput rows")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args)

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory(prefix="embedkit-bench-ft-data-") as tmp:
        data = Path(tmp) / "train.jsonl"
        write_data(data, max(args.big_batch, args.batch_size * args.steps))
        here = Path(__file__)

        def run(engine: str, batch: int, steps: int) -> dict:
            extra = ["--data", str(data), "--batch", str(batch), "--steps", str(steps), "--chunk", str(args.chunk),
                     "--max-length", str(args.max_length)]
            r = run_worker(here, engine, extra)
            print(f"{engine} batch={batch}: {r['samples_per_s']:.1f} samples/s, peak {r['peak_rss_mb']:.0f} MB",
                  file=sys.stderr)
            return r

        out: dict = {"benchmark": "finetune", "model": "all-MiniLM-L6-v2 (fp32, cpu)", "max_length": args.max_length,
                     "throughput": {"batch_size": args.batch_size, "steps": args.steps, "runs": args.runs}}
        engines = ["embedkit", "st-mnrl"]
        results: dict[str, list[dict]] = {e: [] for e in engines}
        for r in range(args.runs):
            for e in (engines if r % 2 == 0 else engines[::-1]):
                results[e].append(run(e, args.batch_size, args.steps))
        sps = {e: median([x["samples_per_s"] for x in results[e]]) for e in engines}
        for e in engines:
            out["throughput"][e] = {"samples_per_s": round(sps[e], 2),
                                    "runs": [round(x["samples_per_s"], 2) for x in results[e]],
                                    "peak_rss_mb": round(median([x["peak_rss_mb"] for x in results[e]]), 1),
                                    "final_loss": results[e][-1]["final_loss"]}
        out["throughput"]["embedkit_vs_st"] = round(sps["embedkit"] / sps["st-mnrl"], 3)
        if not args.skip_memory:
            mem = {e: run(e, args.big_batch, 1) for e in ("embedkit", "embedkit-gradcache", "st-cached")}
            out["memory"] = {"batch_size": args.big_batch, "chunk": args.chunk,
                             **{e: {"peak_rss_mb": round(m["peak_rss_mb"], 1),
                                    "samples_per_s": round(m["samples_per_s"], 2)} for e, m in mem.items()}}
            out["memory"]["gradcache_rss_vs_plain"] = round(
                mem["embedkit-gradcache"]["peak_rss_mb"] / mem["embedkit"]["peak_rss_mb"], 3)
            out["memory"]["gradcache_vs_st_cached_samples_per_s"] = round(
                mem["embedkit-gradcache"]["samples_per_s"] / mem["st-cached"]["samples_per_s"], 3)
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
