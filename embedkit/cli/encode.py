"""``embedkit encode``: texts from a file -> float32 .npy."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from ..errors import SpecError
from .app import app

logger = logging.getLogger("embedkit")


@app.command()
def encode(
    model: str = typer.Argument(..., help="Local model folder, or 'minilm' for the bundled all-MiniLM-L6-v2."),
    input: Path = typer.Option(..., "--input", "-i", help=".txt (one text per line) or .jsonl file."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the float32 .npy (atomically)."),
    field: str = typer.Option("text", help="Field holding the text in a .jsonl input."),
    queries: bool = typer.Option(False, "--queries", help="Encode as queries: query instruction + max length."),
    passages: bool = typer.Option(False, "--passages", help="Encode as passages: passage instruction + length."),
    batch_size: int = typer.Option(256, "--batch-size", "-b", min=1, help="Texts per forward pass."),
    max_length: int | None = typer.Option(None, "--max-length", min=1, help="Token limit (default: the spec's)."),
    pooling: str | None = typer.Option(None, help="cls | mean | last_token (default: the model's spec)."),
    normalize: bool | None = typer.Option(None, "--normalize/--no-normalize", help="L2-normalize the vectors."),
    instruction: str | None = typer.Option(
        None, help="Instruction put before each text (with --queries/--passages: replaces the spec's)."),
    instruction_format: str | None = typer.Option(None, help='How instruction and text join, e.g. "{}{}".'),
    truncate_dim: int | None = typer.Option(None, min=1, help="Keep the first N dimensions (Matryoshka)."),
    device: str | None = typer.Option(None, help="cpu | cuda | cuda:N (default: cuda when available)."),
    dtype: str | None = typer.Option(None, help="fp32 (default) | bf16 | fp16."),
    progress: bool | None = typer.Option(
        None, "--progress/--no-progress", help="Progress bar (default: on in a terminal for long inputs)."),
) -> None:
    """Encode every text of INPUT with MODEL and write the vectors to OUTPUT (.npy, float32, input order).

    Example: embedkit encode minilm --input texts.txt --output vectors.npy
    """
    from ..embedder import Embedder
    from ..textio import read_texts, save_npy

    if queries and passages:
        raise SpecError("--queries and --passages are exclusive", hint="pick one (or neither for plain texts)")
    texts = read_texts(input, field=field)
    kind = "queries" if queries else "passages" if passages else None
    overrides = {}
    if instruction is not None and kind is not None:
        prefix = "query" if queries else "passage"
        overrides[f"{prefix}_instruction"] = instruction
        overrides[f"{prefix}_instruction_format"] = instruction_format
    embedder = Embedder(model, pooling=pooling, normalize=normalize, max_length=max_length,
                        truncate_dim=truncate_dim, device=device, dtype=dtype, batch_size=batch_size,
                        show_progress=progress, **overrides)
    if kind == "queries":
        vectors = embedder.encode_queries(texts)
    elif kind == "passages":
        vectors = embedder.encode_corpus(texts)
    else:
        vectors = embedder.encode(texts, instruction=instruction, instruction_format=instruction_format)
    save_npy(output, vectors)
    typer.echo(f"wrote {output} {tuple(vectors.shape)} float32 ({len(texts)} texts from {input})")
