"""``embedkit spec``: the resolved embedding recipe of a model and the rule behind each field."""

from __future__ import annotations

import json

import typer


def spec_command(
    model: str = typer.Argument(..., help="Local model folder, or 'minilm'."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: {field: {value, rule}}."),
    precision: str = typer.Option(
        "fp32", help="fp32 (default, exact, as in encode) | auto | bf16 | fp16 | int8: show the precision this "
        "would run in here, and why."),
) -> None:
    """Print MODEL's resolved spec (pooling, normalization, instructions, lengths...) and who decided each field.

    For a reranker (a *ForSequenceClassification folder): its pair truncation (flagembedding | longest_first),
    lengths, query instruction and activation.

    Example: embedkit spec minilm --json
    """
    from ..models import resolve_model_path
    from ..precision import describe_precision
    from ..rerank.spec import describe_reranker, is_reranker_folder, load_reranker_spec
    from ..spec import describe, load_spec

    if is_reranker_folder(model):  # a cross-encoder: its reranking recipe (truncation, lengths, activation)
        rows = describe_reranker(load_reranker_spec(model, warn=not as_json)) + [describe_precision(precision)]
    else:
        spec = load_spec(model, warn=not as_json)
        # auto's row: what auto measured on this host for this model (cached), or that it measures on first use
        rows = describe(spec) + [describe_precision(precision, model_dir=resolve_model_path(model),
                                                    spec=spec.to_dict())]
    if as_json:
        typer.echo(json.dumps({name: {"value": value, "rule": rule} for name, value, rule in rows},
                              indent=2, ensure_ascii=False))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"spec of {escape(model)}")
    table.add_column("field")
    table.add_column("value")
    table.add_column("decided by")
    for name, value, rule in rows:
        table.add_row(name, escape(repr(value)), escape(rule))  # values come from the folder: not rich markup
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Add ``embedkit spec`` to ``app``."""
    app.command("spec")(spec_command)
