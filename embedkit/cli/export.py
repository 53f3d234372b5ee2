"""``embedkit merge`` (LoRA adapter -> plain model, verified) and ``embedkit recipe`` (a standalone script)."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app


@app.command("merge")
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


@app.command("recipe")
def recipe_command(
    model: str = typer.Argument(..., help="Model folder (or 'minilm')."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write the script here (atomically)."),
    path_placeholder: bool = typer.Option(
        False, "--path-placeholder", help="Load from path/to/this/folder instead of the model folder's absolute path."),
) -> None:
    """Print a standalone transformers + torch script that reproduces MODEL's vectors exactly.

    The script applies the spec (instructions, lower-casing, max lengths, pooling, truncation, normalization) and
    defines encode_queries / encode_passages. Redirect it to a file or use --output.

    Example: embedkit recipe my-model > embed_my_model.py
    """
    from .._io import atomic_write
    from ..recipe import recipe

    code = recipe(model, placeholder=path_placeholder)
    if output is None:
        typer.echo(code, nl=False)
        return
    with atomic_write(output, "w") as fh:
        fh.write(code)
    typer.echo(f"wrote {output}")
