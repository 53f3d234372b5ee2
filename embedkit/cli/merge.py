"""``embedkit merge``: a LoRA adapter -> a plain model, verified against base + adapter before anything is written."""

from __future__ import annotations

from pathlib import Path

import typer


def merge_command(
    base: str = typer.Argument(..., help="Base model folder the adapter was trained on (or 'minilm')."),
    adapter: Path = typer.Argument(..., help="LoRA adapter folder (adapter_config.json + adapter weights)."),
    dst: Path = typer.Argument(..., help="Where to write the merged model (must not exist unless --overwrite)."),
    overwrite: bool = typer.Option(False, help="Replace DST if it exists (atomically)."),
    texts: Path | None = typer.Option(
        None, "--texts", help="Verification texts, one per line (default: a built-in varied sample)."),
    tolerance: float = typer.Option(1e-4, min=0, help="Largest accepted max abs diff vs the adapter model."),
    trust_pickle: bool = typer.Option(False, help="Allow full unpickling of the base's .bin weights (trusted only)."),
) -> None:
    """Merge the LoRA ADAPTER into BASE and save DST; its vectors are checked against base + adapter first.

    The spec (pooling, instructions, max lengths...) and the tokenizer come from the adapter folder when it has
    them, else from BASE. Nothing is written when the merged vectors differ from the adapter model's.

    Example: embedkit merge bge-small-en-v1.5 output/adapter bge-small-finetuned
    """
    from ..checkpoint.merge import merge_lora
    from ..textio import read_lines

    sample = read_lines(texts, "--texts file") if texts is not None else None
    report = merge_lora(base, adapter, dst, overwrite=overwrite, texts=sample, tolerance=tolerance,
                        trust_pickle=trust_pickle)
    typer.echo(f"merged: {report.verification}; the adapter moves the base's vectors by up to "
               f"{report.base_max_abs_diff:.3g}")
    typer.echo(f"saved {report.path} ({len(report.files)} files); pooling={report.spec.pooling} "
               f"normalize={report.spec.normalize}")


def register(app: typer.Typer) -> None:
    """Add ``embedkit merge`` to ``app``."""
    app.command("merge")(merge_command)
