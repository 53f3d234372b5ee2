"""``embedkit inspect``: what a model / training-output folder is, what it lacks, and what to run next."""

from __future__ import annotations

import json

import typer

from .._format import format_bytes
from ..errors import CheckpointError


def inspect_command(
    folder: str = typer.Argument(..., metavar="DIR", help="Model, checkpoint, adapter or export folder (or 'minilm')."),
    as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON (stable schema)."),
) -> None:
    """Classify every file in DIR and say what the folder is (model, training checkpoint, LoRA adapter, ZeRO
    shards, ONNX export), its parameters and dtype, the resolved spec and who decided each field, what is missing
    for inference, what can be dropped, and the commands to run next.

    Exits 2 (after printing the report) when the folder has problems: files the loaders would refuse.

    Example: embedkit inspect out/checkpoint-500 --json
    """
    from ..checkpoint.inspect import inspect_folder

    report = inspect_folder(folder)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, sort_keys=True, ensure_ascii=False))
    else:
        _print_report(report)
    if report.problems:  # the report is printed; the exit status says the folder cannot be used as it is
        more = f" (+{len(report.problems) - 1} more, listed above)" if len(report.problems) > 1 else ""
        raise CheckpointError(f"{report.path} is not ready for inference: {report.problems[0]}{more}",
                              hint="fix each problem listed (or copy the damaged files again from the model's "
                              "source), then run `embedkit inspect` again")


def _short_count(n: int) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def _print_report(report) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from ..checkpoint.inspect import KIND_DESCRIPTIONS

    console = Console()
    model = report.model
    params = model.get("parameters")
    console.print(f"[bold]{escape(report.path)}[/bold]", soft_wrap=True)
    summary = [f"[bold cyan]{report.kind}[/bold cyan]"]
    if params is not None:
        summary.append(f"{params:,} params" + (f" ({_short_count(params)})" if params >= 1000 else ""))
    if model.get("dtypes"):
        summary.append("/".join(model["dtypes"]))
    arch = (model.get("architectures") or [None])[0] or model.get("model_type")
    if arch:
        hidden = model.get("hidden_size")
        summary.append(f"{arch}" + (f" hidden {hidden}" if hidden else ""))
    summary.append(f"{format_bytes(report.total_bytes)} total, {format_bytes(report.inference_bytes)} for inference, "
                   f"{format_bytes(report.droppable_bytes)} droppable")
    console.print(" · ".join(summary))
    console.print(f"  {KIND_DESCRIPTIONS.get(report.kind, '')}", style="dim")

    if report.classes:
        table = Table(title="files by class")
        table.add_column("class")
        table.add_column("files", justify="right")
        table.add_column("size", justify="right")
        table.add_column("examples")
        for cls, info in sorted(report.classes.items(), key=lambda kv: -kv[1]["bytes"]):
            names = [f["path"] for f in report.files if f["class"] == cls]
            examples = ", ".join(names[:3]) + (f", ... (+{len(names) - 3})" if len(names) > 3 else "")
            table.add_row(cls, str(info["count"]), format_bytes(info["bytes"]), escape(examples))
        console.print(table)

    if report.lora is not None:
        lora = report.lora
        targets = ", ".join(lora.get("target_modules") or []) or "?"
        console.print(f"LoRA adapter: base [bold]{escape(str(lora.get('base_model_name_or_path')))}[/bold], "
                      f"r={lora.get('r')}, lora_alpha={lora.get('lora_alpha')}, target_modules: {escape(targets)}")
    heads = [h for h, present in report.m3_heads.items() if present]
    if heads:
        console.print(f"bge-m3 heads: {', '.join(heads)}")

    if report.spec is not None:
        table = Table(title="spec (embedding recipe)")
        table.add_column("field")
        table.add_column("value")
        table.add_column("decided by")
        for name, row in report.spec.items():
            style = "yellow" if name in report.spec_assumed else None
            table.add_row(name, escape(repr(row["value"])), escape(row["rule"]), style=style)
        console.print(table)
    elif report.spec_error:
        console.print(f"spec: not resolved ({escape(report.spec_error)})", style="yellow")

    if report.missing_for_inference:
        console.print(f"[red]missing for inference:[/red] {', '.join(report.missing_for_inference)}")
    if report.droppable:
        shown = ", ".join(report.droppable[:6]) + (f", ... (+{len(report.droppable) - 6})"
                                                   if len(report.droppable) > 6 else "")
        console.print(f"droppable ({format_bytes(report.droppable_bytes)}): {escape(shown)}", soft_wrap=True)
    for problem in report.problems:
        console.print(f"[yellow]problem:[/yellow] {escape(problem)}")
    if report.next_steps:
        console.print("[bold]next steps:[/bold]")
        for i, step in enumerate(report.next_steps, 1):
            console.print(f"  {i}. {escape(step)}", soft_wrap=True)
    if report.problems:
        console.print(f"[red]not ready for inference: {len(report.problems)} problem(s) listed above[/red]")
    elif not report.next_steps:
        console.print("[green]nothing to do: the folder is ready for inference[/green]")


def register(app: typer.Typer) -> None:
    """Add ``embedkit inspect`` to ``app``."""
    app.command("inspect")(inspect_command)
