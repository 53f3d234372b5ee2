"""``embedkit parity``: the same texts through every way of loading a model; a matrix, verdicts and diagnoses."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def parity_command(
    model: str = typer.Argument(..., help="Local model folder, or 'minilm'."),
    texts: Path | None = typer.Option(None, help="Texts to compare on (.txt one per line, or .jsonl 'text')."),
    tolerance: float = typer.Option(1e-5, help="Max abs diff allowed for fp32 engines."),
    int8_min_cosine: float = typer.Option(0.95, help="Minimum cosine allowed for the int8 graph."),
    engine: list[str] = typer.Option([], "--engine", help="Only these engines (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Encode the same texts with embedkit (PyTorch), the ONNX export, sentence-transformers, FlagEmbedding and the
    standalone recipe; print max abs diff / min cosine between them and diagnose any disagreement. Exit 1 on failure.

    A reranker (cross-encoder) is scored on (query, passage) pairs by embedkit (PyTorch, ONNX), FlagReranker and
    CrossEncoder, each peer matched with embedkit in its own truncation mode.

    Example: embedkit parity my-bge-onnx --json
    """
    from ..parity import check_parity
    from ..textio import read_texts

    items = read_texts(texts) if texts else None
    report = check_parity(model, items, tolerance=tolerance, int8_min_cosine=int8_min_cosine,
                          engines=tuple(engine) or None)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        console = Console()
        short = {n: n.replace("embedkit-", "").replace("sentence-transformers", "st").replace("flagembedding", "flag")
                 for n in report.engines}
        rerank = report.kind == "reranker"
        title = (f"max abs diff of logits between engines ({report.texts} (query, passage) pairs)" if rerank else
                 f"max abs diff between engines ({report.texts} texts, as queries and as passages)")
        table = Table(title=title)
        table.add_column("")
        for name in report.engines:
            table.add_column(short[name], justify="right")
        for a in report.engines:
            table.add_row(short[a], *(f"{report.matrix[a][b]['max_abs_diff']:.1e}" for b in report.engines))
        console.print(table)
        for c in report.checks:
            mark = "[green]PASS[/]" if c.passed else "[red]FAIL[/]"
            detail = c.error or (f"max abs diff {c.max_abs_diff:.2e} ({c.tolerance})" if rerank else
                                 f"max abs diff {c.max_abs_diff:.2e}, min cosine {c.min_cosine:.6f} ({c.tolerance})")
            console.print(f"{mark} {escape(c.engine)}: {escape(detail)}")  # errors and diagnoses quote spec values
            for d in c.diagnosis:
                console.print(f"     diagnosis: {escape(d)}")
        for name, why in report.skipped.items():
            console.print(f"[dim]skipped {escape(name)}: {escape(why)}[/]")
    if not report.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``embedkit parity`` to ``app``."""
    app.command("parity")(parity_command)
