"""``make demo``: what embedkit is for, end to end, offline, on 2 CPU cores.

1. builds a real-text retrieval dataset from numpy's documentation (short description -> the function's code),
   split train/test by module;
2. evaluates the bundled all-MiniLM-L6-v2 on the test split;
3. mines hard negatives with it and fine-tunes it on the train split;
4. evaluates again and prints the before/after table;
5. saves the model (HF + sentence-transformers layout + model card + manifest), verifies the manifest, and reloads it
   with sentence-transformers to show identical vectors;
6. fine-tunes a cross-encoder reranker from MiniLM on the same mined training data (``finetune --reranker``) and
   prints the two-stage table on the test split: retrieval only (the fine-tuned embedder) vs + base reranker (MiniLM
   with its new, untrained one-label head: no pretrained cross-encoder is available offline) vs + fine-tuned
   reranker, each query's top :data:`RERANK_TOP_K` reranked;
7. leaves everything (data, models, metrics, plots) in ``demo-output/``.

Step 6 is separate (it takes longer than the rest: a cross-encoder reads every pair): ``python -m embedkit.demo
--rerank`` runs it on the finished demo in ``--output`` (or runs the whole demo first).

Run: ``python -m embedkit.demo [--output demo-output] [--small] [--rerank]`` (``EMBEDKIT_DEMO_SMALL=1`` =
``--small``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from ._io import atomic_write
from .checkpoint.manifest import verify_manifest
from .demo_data import build_numpy_dataset
from .eval import evaluate, load_eval_data
from .eval.retrieval import main_metrics, markdown_report, plot_comparison
from .models import minilm_path
from .train.mine import mine_hard_negatives

# (full, small) settings
EPOCHS = (2, 1)
BATCH = (32, 16)
GROUP = (4, 3)
NEGATIVES = (7, 3)
MINE_RANGE = ((2, 60), (1, 30))
# Training and both evaluations use these lengths: a before/after comparison changes one thing (the weights). MiniLM's
# stock 256 tokens evaluated "before" against 64/128 "after" would credit part of the truncation gain to training.
QUERY_MAX_LENGTH = 64
PASSAGE_MAX_LENGTH = 128
# step 6, the reranker: (full, small) settings. A cross-encoder reads every (query, document) pair, so its cost is
# pairs x tokens, on 2 CPU cores far more than the embedder's: pairs are cut to 96 tokens (the query to 32: the
# descriptions are one sentence), training is a fixed number of steps (24 x 8 queries x 4 passages: a third of an
# epoch), and each query's top 10 retrieved documents are reranked (retrieval's recall@10 is the ceiling at 10)
RERANK_STEPS = (24, 4)
RERANK_BATCH = (8, 4)
RERANK_GROUP = (4, 3)
RERANK_TOP_K = 10
RERANK_MAX_LENGTH = 96
RERANK_QUERY_MAX_LENGTH = 32


def _quiet() -> None:
    for name, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false"),
                        ("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("TRANSFORMERS_VERBOSITY", "error")):
        os.environ.setdefault(name, value)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    logging.getLogger("embedkit").setLevel(logging.WARNING)


def run_demo(output: str | Path = "demo-output", *, small: bool = False, rerank: bool = False,
             console: Any = None) -> dict[str, Any]:
    """Run the whole demo into ``output`` (replaced if it exists); return a summary dict (also ``summary.json``).

    ``rerank=True`` adds step 6 (the reranker; :func:`run_rerank_demo` runs it on a finished demo folder)."""
    _quiet()
    from rich.console import Console

    console = console or Console()
    out = Path(output)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    def step(n: int, text: str) -> float:
        console.rule(f"[bold]{n}. {text}")
        return time.perf_counter()

    t = step(1, "Build a retrieval dataset from numpy's documentation (offline)")
    info = _build_data(out, small, console)
    timings["data"] = time.perf_counter() - t

    t = step(2, f"Evaluate the bundled all-MiniLM-L6-v2 on the test split (query/passage max length "
                f"{QUERY_MAX_LENGTH}/{PASSAGE_MAX_LENGTH}, as in training)")
    bench, base, before = _evaluate_base(info, console)
    timings["eval_before"] = time.perf_counter() - t

    t = step(3, "Mine hard negatives with MiniLM, then fine-tune it on the train split")
    final = _mine_and_finetune(out, info, base, 1 if small else 0, console)
    timings["finetune"] = time.perf_counter() - t

    t = step(4, "Evaluate the fine-tuned model on the same test split")
    tuned, after = _evaluate_tuned(out, final, bench, base, before, console)
    timings["eval_after"] = time.perf_counter() - t

    t = step(5, "Verify the saved model and reload it with sentence-transformers")
    manifest, diff = _verify(final, bench, tuned, console)
    timings["verify"] = time.perf_counter() - t

    two_stage = None
    if rerank:
        t = step(6, f"Fine-tune a reranker from MiniLM on the mined training data; rerank the top {RERANK_TOP_K}")
        two_stage = rerank_step(out, info.test_dir, out / "data" / "train.mined.jsonl", final, 1 if small else 0,
                                console)
        timings["rerank"] = time.perf_counter() - t

    summary = {
        "output": str(out.resolve()), "small": small, "dataset": info.to_dict(),
        "before": before.metrics, "after": after.metrics, "spec_before": base.spec.to_dict(),
        "spec_after": tuned.spec.to_dict(),
        "delta": {k: round(after.metrics[k] - before.metrics[k], 6) for k in before.metrics},
        "model": str(final), "manifest_ok": manifest.ok, "st_max_abs_diff": diff, "two_stage": two_stage,
        "seconds": {k: round(v, 1) for k, v in timings.items()} | {"total": round(time.perf_counter() - t_start, 1)},
    }
    with atomic_write(out / "summary.json", "w") as fh:
        fh.write(json.dumps(summary, indent=2, default=str))
    console.rule("[bold]Done")
    console.print(f"everything is in {out.resolve()}: data/, train/ (model/, metrics.jsonl, loss_curve.png, "
                  f"eval_before_after.png), eval_report.md, eval_before_after.png, "
                  f"{'rerank/ (model/, metrics.jsonl), rerank_report.md, rerank_two_stage.png, ' if rerank else ''}"
                  f"summary.json "
                  f"({summary['seconds']['total']:.0f} s)")
    return summary


def _build_data(out: Path, small: bool, console: Any) -> Any:
    """Step 1: the numpy-docs retrieval dataset (train jsonl, test benchmark) under ``out/data``."""
    info = build_numpy_dataset(out / "data", small=small)
    console.print(f"train: {info.n_train} (description -> code) pairs from {len(info.train_modules)} modules; "
                  f"test: {info.n_test_queries} queries over {info.n_corpus} functions of "
                  f"{', '.join(sorted(m for m in info.test_modules if m.count('.') <= 1))}")
    return info


def _evaluate_base(info: Any, console: Any) -> tuple[Any, Any, Any]:
    """Step 2: the bundled MiniLM at the training lengths on the test split: ``(benchmark, embedder, result)``."""
    from .embedder import Embedder  # lazy: pulls in torch; embedkit.demo stays importable without it

    bench = load_eval_data(info.test_dir)
    base = Embedder(minilm_path(), query_max_length=QUERY_MAX_LENGTH, passage_max_length=PASSAGE_MAX_LENGTH,
                    show_progress=False)
    before = evaluate(base, bench, cache_dir=None, name="all-MiniLM-L6-v2")
    console.print(", ".join(f"{k} {before.metrics[k]:.4f}" for k in main_metrics(before.metrics)))
    return bench, base, before


def _mine_and_finetune(out: Path, info: Any, base: Any, i: int, console: Any) -> Path:
    """Step 3: hard negatives mined with MiniLM, then fine-tuning (settings ``i``: 0 full, 1 small); the model."""
    from .train.arguments import parse_args
    from .train.trainer import run

    mined = out / "data" / "train.mined.jsonl"
    report = mine_hard_negatives(base, info.train_file, mined, range=MINE_RANGE[i], negative_number=NEGATIVES[i],
                                 show_progress=False)
    console.print(f"mined {report.negative_number} hard negatives per row from ranks {report.range[0]}-"
                  f"{report.range[1]} of a {report.pool_size}-passage pool ({report.topped_up_rows} rows topped up)")
    train_dir = out / "train"
    argv = ["--model_name_or_path", str(minilm_path()), "--train_data", str(mined), "--output_dir", str(train_dir),
            "--train_group_size", str(GROUP[i]), "--per_device_train_batch_size", str(BATCH[i]),
            "--num_train_epochs", str(EPOCHS[i]), "--learning_rate", "5e-5", "--warmup_steps", "5",
            "--temperature", "0.05", "--query_max_length", str(QUERY_MAX_LENGTH),
            "--passage_max_length", str(PASSAGE_MAX_LENGTH),
            "--logging_steps", "5", "--save_strategy", "no", "--eval_data", str(info.test_dir), "--seed", "0",
            "--disable_tqdm", "false" if sys.stderr.isatty() else "true"]
    return run(*parse_args(argv))


def _evaluate_tuned(out: Path, final: Path, bench: Any, base: Any, before: Any, console: Any) -> tuple[Any, Any]:
    """Step 4: the fine-tuned model on the same split and spec; the before/after table, report and chart."""
    from rich.table import Table

    from .embedder import Embedder

    tuned = Embedder(final, show_progress=False)
    spec_before, spec_after = base.spec.to_dict(), tuned.spec.to_dict()
    if spec_before != spec_after:  # the comparison must change the weights only
        changed = sorted(k for k in spec_before if spec_before[k] != spec_after.get(k))
        raise RuntimeError(f"demo bug: before/after specs differ in {changed}")
    after = evaluate(tuned, bench, cache_dir=None, name="fine-tuned")
    table = Table(title=f"numpy docs retrieval, test split ({len(bench.queries)} queries, {len(bench.corpus)} docs)")
    table.add_column("metric")
    table.add_column("all-MiniLM-L6-v2", justify="right")
    table.add_column("fine-tuned", justify="right")
    table.add_column("delta", justify="right")
    for k in before.metrics:
        if k.split("@")[1] in ("1", "10", "100") and not k.startswith("precision"):
            d = after.metrics[k] - before.metrics[k]
            table.add_row(k, f"{before.metrics[k]:.4f}", f"{after.metrics[k]:.4f}",
                          f"[{'green' if d > 0 else 'red'}]{d:+.4f}[/]")
    console.print(table)
    with atomic_write(out / "eval_report.md", "w") as fh:
        fh.write(markdown_report([before, after], "numpy docs retrieval: before / after"))
    plot_comparison([before, after], out / "eval_before_after.png", labels=["all-MiniLM-L6-v2", "fine-tuned"],
                    title="numpy docs retrieval (test split)")
    return tuned, after


def _verify(final: Path, bench: Any, tuned: Any, console: Any) -> tuple[Any, float]:
    """Step 5: the manifest of the saved folder, and sentence-transformers' vectors of it vs embedkit's."""
    manifest = verify_manifest(final)
    console.print(f"manifest: {'OK' if manifest.ok else 'FAILED'} ({manifest.checked} files) in {final}")
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(final), device="cpu", local_files_only=True)
    sample = list(bench.corpus.values())[:16]
    diff = float(abs(st.encode(sample, convert_to_numpy=True) - tuned.encode_corpus(sample)).max())
    console.print(f"sentence-transformers vs embedkit on the saved folder: max abs diff {diff:.2e} "
                  f"over {len(sample)} passages")
    return manifest, diff


def run_rerank_demo(output: str | Path = "demo-output", *, small: bool = False, console: Any = None
                    ) -> dict[str, Any]:
    """``python -m embedkit.demo --rerank``: step 6 on the demo folder ``output`` when it holds a finished demo of
    the same size (its data, mined negatives and fine-tuned embedder are reused; ``summary.json`` gains
    ``two_stage``), else the whole demo with step 6. Returns the summary."""
    _quiet()
    from rich.console import Console

    console = console or Console()
    out = Path(output)
    previous = out / "summary.json"
    summary = json.loads(previous.read_text(encoding="utf-8")) if previous.is_file() else None
    if (summary is None or summary.get("small") != small or not Path(summary["model"]).is_dir()
            or not (out / "data" / "train.mined.jsonl").is_file()):
        return run_demo(out, small=small, rerank=True, console=console)
    console.print(f"reusing the demo in {out.resolve()} (data, mined negatives, fine-tuned embedder)")
    console.rule(f"[bold]6. Fine-tune a reranker from MiniLM on the mined training data; rerank the top "
                 f"{RERANK_TOP_K}")
    t = time.perf_counter()
    shutil.rmtree(out / "rerank", ignore_errors=True)
    summary["two_stage"] = rerank_step(out, Path(summary["dataset"]["test_dir"]), out / "data" / "train.mined.jsonl",
                                       Path(summary["model"]), 1 if small else 0, console)
    summary["seconds"]["rerank"] = round(time.perf_counter() - t, 1)
    with atomic_write(previous, "w") as fh:
        fh.write(json.dumps(summary, indent=2, default=str))
    console.print(f"step 6 took {summary['seconds']['rerank']:.0f} s: rerank/ (model/, metrics.jsonl, "
                  f"eval_before_after.png), rerank_report.md, rerank_two_stage.png, summary.json (two_stage)")
    return summary


def rerank_step(out: Path, test_dir: Path, mined: Path, retriever: Path, i: int, console: Any) -> dict[str, Any]:
    """Step 6: ``finetune --reranker`` from MiniLM on ``mined`` (settings ``i``: 0 full, 1 small) with two-stage
    evaluation on ``test_dir`` (``retriever`` retrieves, the reranker reranks each query's top :data:`RERANK_TOP_K`);
    the table, ``rerank_report.md`` and ``rerank_two_stage.png``. Returns ``{"retrieval", "base", "fine_tuned"}``
    metrics and the settings.

    The "base reranker" is the trainer's "before": MiniLM with the fresh one-label head the trainer adds (seeded),
    i.e. what the fine-tuning starts from; no pretrained cross-encoder ships offline.
    """
    from rich.table import Table

    from .eval.retrieval import EvalResult
    from .train.arguments import parse_args
    from .train.rerank_trainer import run_reranker

    train_dir = out / "rerank"
    argv = ["--model_name_or_path", str(minilm_path()), "--reranker", "--train_data", str(mined),
            "--output_dir", str(train_dir), "--train_group_size", str(RERANK_GROUP[i]),
            "--per_device_train_batch_size", str(RERANK_BATCH[i]), "--max_steps", str(RERANK_STEPS[i]),
            "--learning_rate", "3e-4", "--warmup_steps", "3", "--max_length", str(RERANK_MAX_LENGTH),
            "--query_max_length", str(RERANK_QUERY_MAX_LENGTH), "--logging_steps", "5", "--save_strategy", "no",
            "--eval_data", str(test_dir), "--eval_retriever", str(retriever),
            "--eval_rerank_top_k", str(RERANK_TOP_K), "--seed", "0",
            "--disable_tqdm", "false" if sys.stderr.isatty() else "true"]
    final = run_reranker(*parse_args(argv))
    phases = {r["phase"]: r for r in map(json.loads, (train_dir / "metrics.jsonl").read_text().splitlines())
              if "phase" in r}
    data = load_eval_data(test_dir).summary()
    columns = {"retrieval": ("retrieval only (fine-tuned MiniLM)", phases["after"]["retrieval"]),
               "base": ("+ base reranker (MiniLM, untrained head)", phases["before"]["eval"]),
               "fine_tuned": ("+ fine-tuned reranker", phases["after"]["eval"])}
    table = Table(title=f"numpy docs two-stage retrieval, test split ({data['queries']} queries, "
                        f"{data['corpus']} docs), top {RERANK_TOP_K} reranked")
    table.add_column("metric")
    for name, _ in columns.values():
        table.add_column(name, justify="right")
    table.add_column("delta (fine-tuned reranker vs retrieval)", justify="right")
    first = columns["retrieval"][1]
    for k in first:
        if k.split("@")[1] in ("1", "3", "10") and not k.startswith("precision"):
            d = columns["fine_tuned"][1][k] - first[k]
            table.add_row(k, *(f"{m[k]:.4f}" for _, m in columns.values()),
                          f"[{'green' if d > 0 else 'red'}]{d:+.4f}[/]")
    console.print(table)
    results = [EvalResult(model=name, data=data, metrics=m, ks=tuple(sorted({int(k.split("@")[1]) for k in m})))
               for name, m in columns.values()]
    with atomic_write(out / "rerank_report.md", "w") as fh:
        fh.write(markdown_report(results, f"numpy docs two-stage retrieval: top {RERANK_TOP_K} reranked"))
    plot_comparison(results, out / "rerank_two_stage.png", labels=[name for name, _ in columns.values()],
                    title=f"numpy docs two-stage (test split, top {RERANK_TOP_K} reranked)")
    return {key: m for key, (_, m) in columns.items()} | {
        "top_k": RERANK_TOP_K, "model": str(final), "base_reranker": "MiniLM + untrained one-label head (seed 0)"}


def main(argv: list[str] | None = None) -> int:
    """``python -m embedkit.demo``."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", default="demo-output", help="where everything is written (replaced)")
    ap.add_argument("--small", action="store_true", default=bool(os.environ.get("EMBEDKIT_DEMO_SMALL")),
                    help="a reduced run (about a minute), as the test suite does")
    ap.add_argument("--rerank", action="store_true",
                    help="step 6: fine-tune a reranker and print the two-stage table (on the finished demo in "
                         "--output when there is one, else after the whole demo)")
    args = ap.parse_args(argv)
    if args.rerank:
        summary = run_rerank_demo(args.output, small=args.small)
    else:
        summary = run_demo(args.output, small=args.small)
    return 0 if summary["manifest_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
