"""``embedkit eval``: retrieval metrics of a model on a BEIR-layout folder, optionally against a second model, or
of a two-stage pipeline (retrieve, then rerank the top k with a cross-encoder) side by side with retrieval alone."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..errors import ArgumentError, DataError


def _parse_ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(sorted({int(k) for k in text.split(",") if k.strip()}))
    except ValueError:
        raise DataError(f"--k {text!r} is not a comma-separated list of integers",
                        hint="e.g. --k 1,3,5,10,100") from None
    if not ks or ks[0] < 1:
        raise DataError(f"--k {text!r}: every k must be >= 1", hint="e.g. --k 1,3,5,10,100")
    return ks


def eval_command(
    model: str = typer.Argument(..., help="Local model folder, or 'minilm'."),
    data: Path = typer.Option(..., "--data", "-d", help="BEIR / FlagEmbedding layout folder."),
    split: str = typer.Option("test", help="Which split's queries / qrels."),
    k: str = typer.Option("1,3,5,10,100", "--k", help="Cut-offs, comma-separated."),
    compare: str | None = typer.Option(None, help="A second model, evaluated on the same data (with deltas)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write a markdown report here."),
    plot: Path | None = typer.Option(None, help="Bar chart PNG (default with --compare and --output: "
                                     "eval_comparison.png next to --output; never the working directory)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    batch_size: int | None = typer.Option(None, "--batch-size", "-b", min=1, help="Texts per forward pass."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Reuse cached corpus embeddings."),
    rerank: str | None = typer.Option(None, "--rerank", metavar="RERANKER", help="Two-stage: rerank each query's "
                                      "top --rerank-top-k retrieved documents with this cross-encoder folder and "
                                      "report both stages side by side."),
    rerank_top_k: int = typer.Option(100, "--rerank-top-k", min=1, help="With --rerank: documents per query "
                                     "handed to the reranker."),
    rerank_batch_size: int = typer.Option(128, "--rerank-batch-size", min=1, help="With --rerank: pairs per "
                                          "forward pass."),
    rerank_max_length: int | None = typer.Option(None, "--rerank-max-length", min=1, help="With --rerank: token "
                                                 "limit of a pair (default 512, capped at the model's)."),
    rerank_precision: str | None = typer.Option(None, "--rerank-precision", help="With --rerank: fp32 (default, "
                                                "exact) | auto | bf16 | fp16 (non-fp32 is quality-gated)."),
) -> None:
    """Evaluate MODEL's retrieval quality (nDCG, recall, MRR, MAP, precision @k) on the benchmark in --data.

    Example: embedkit eval minilm --data my-benchmark --compare out/model --output report.md

    Example: embedkit eval minilm --data my-benchmark --rerank bge-reranker-base --rerank-top-k 100
    """
    from .._io import atomic_write, refuse_overwriting_inputs
    from ..eval import load_eval_data
    from ..eval.retrieval import compare_metrics, default_cache_dir, evaluate, markdown_report, plot_comparison
    from ..models import resolve_model_path

    ks = _parse_ks(k)
    if rerank and compare:
        raise ArgumentError("--rerank and --compare cannot be combined",
                            hint="run one `embedkit eval MODEL --rerank RERANKER` per model")
    plot_flag = "--plot"
    if (compare or rerank) and plot is None and output is not None:  # never into the working directory unasked
        plot = output.parent / ("eval_two_stage.png" if rerank else "eval_comparison.png")
        plot_flag = "the default --plot"
    models = [resolve_model_path(m) for m in (model, compare, rerank) if m]
    for path, flag in ((output, "--output"), (plot, plot_flag)):
        if path is not None:
            refuse_overwriting_inputs(path, inputs=[data], model_dirs=models, flag=flag)
    bench = load_eval_data(data, split)
    cache_dir = default_cache_dir() if cache else None
    if rerank:
        from ..eval.rerank import evaluate_two_stage
        from ..rerank.reranker import Reranker

        reranker = Reranker(models[-1], max_length=rerank_max_length, batch_size=rerank_batch_size,
                            precision=rerank_precision)
        two = evaluate_two_stage(model, reranker, bench, top_k=rerank_top_k, ks=ks, batch_size=batch_size,
                                 cache_dir=cache_dir, name=model, reranker_name=rerank)
        results = two.stages
    else:
        results = [evaluate(model, bench, ks=ks, batch_size=batch_size, cache_dir=cache_dir, name=model)]
        if compare:
            results.append(evaluate(compare, bench, ks=ks, batch_size=batch_size, cache_dir=cache_dir, name=compare))
    title = "Two-stage evaluation" if rerank else "Retrieval evaluation"
    if output:
        with atomic_write(output, "w") as fh:
            fh.write(markdown_report(results, title=title))
    if plot:
        if rerank:
            plot_comparison(results, plot, labels=["retrieval", f"+ rerank (top {rerank_top_k})"],
                            title="Retrieval vs retrieval + rerank")
        else:
            plot_comparison(results, plot)
    if as_json:
        payload = {"results": [r.to_dict() for r in results]}
        if len(results) == 2:
            payload["delta"] = compare_metrics(results[0], results[1])
        typer.echo(json.dumps(payload, indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    s = results[0].data
    table = Table(title=escape(f"{data} ({split}): {s['queries']} queries, {s['corpus']} documents"))
    table.add_column("metric")
    heads = ([f"retrieval: {model}", f"+ rerank: {rerank} (top {rerank_top_k})"] if rerank
             else [r.model for r in results])
    for i, (r, head) in enumerate(zip(results, heads, strict=True)):
        cached = r.cache_hit and (i == 0 or not rerank)
        table.add_column(escape(head + (" (cached corpus)" if cached else "")), justify="right")
    two_columns = len(results) == 2
    if two_columns:
        table.add_column("delta", justify="right")
    for metric in results[0].metrics:
        row = [f"{r.metrics[metric]:.4f}" for r in results]
        if two_columns:
            d = results[1].metrics[metric] - results[0].metrics[metric]
            row.append(f"[{'green' if d > 0 else 'red' if d < 0 else 'white'}]{d:+.4f}[/]")
        table.add_row(metric, *row)
    Console().print(table)
    for path in (output, plot):
        if path:
            typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    """Add ``embedkit eval`` to ``app``."""
    app.command("eval")(eval_command)
