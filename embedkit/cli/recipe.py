"""``embedkit recipe``: a standalone transformers + torch script that reproduces a model's vectors."""

from __future__ import annotations

from pathlib import Path

import typer


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


def register(app: typer.Typer) -> None:
    """Add ``embedkit recipe`` to ``app``."""
    app.command("recipe")(recipe_command)
