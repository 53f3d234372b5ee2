"""``embedkit encode``: texts from a file -> float32 .npy (or, with ``--m3``, a bge-m3 .npz)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer

from ..errors import SpecError

logger = logging.getLogger("embedkit")


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
    dtype: str | None = typer.Option(None, help="fp32 (default) | bf16 | fp16 (torch; see --precision)."),
    precision: str | None = typer.Option(
        None, help="fp32 (default, exact) | auto | bf16 | fp16 | int8 (non-fp32 is quality-gated vs fp32)."),
    max_batch_tokens: int | None = typer.Option(None, min=1, help="Fill batches by padded token count."),
    progress: bool | None = typer.Option(
        None, "--progress/--no-progress", help="Progress bar (default: on in a terminal for long inputs)."),
    m3: bool = typer.Option(False, "--m3", help="bge-m3 outputs: an .npz with 'dense' (plus --sparse / --colbert)."),
    sparse: bool = typer.Option(False, "--sparse", help="With --m3: lexical weights (CSR arrays sparse_indptr, "
                                "sparse_indices = token ids, sparse_data)."),
    colbert: bool = typer.Option(False, "--colbert", help="With --m3: ColBERT vectors (colbert_vecs, colbert_offsets)"),
    sparse_format: str = typer.Option("csr", "--sparse-format", help="With --sparse: 'csr' (arrays in the .npz) or "
                                      "'jsonl' (a sibling OUTPUT.sparse.jsonl, one {token_id: weight} per line)."),
) -> None:
    """Encode every text of INPUT with MODEL and write the vectors to OUTPUT (.npy, float32, input order).

    With --m3, OUTPUT is an .npz: 'dense' (n, d) float32, and with --sparse / --colbert the lexical weights and the
    ColBERT vectors (rows of text i: colbert_vecs\\[colbert_offsets\\[i]:colbert_offsets\\[i+1]]).

    Example: embedkit encode minilm --input texts.txt --output vectors.npy

    Example: embedkit encode bge-m3 --m3 --sparse --colbert --input texts.txt --output out.npz
    """
    from .._io import refuse_overwriting_inputs
    from ..embedder import Embedder
    from ..models import resolve_model_path
    from ..spec import instruction_overrides
    from ..textio import read_texts, save_npy

    if queries and passages:
        raise SpecError("--queries and --passages are exclusive", hint="pick one (or neither for plain texts)")
    if not m3 and (sparse or colbert or sparse_format != "csr"):
        raise SpecError("--sparse, --colbert and --sparse-format are bge-m3 outputs", hint="add --m3")
    if m3:
        if sparse_format not in ("csr", "jsonl"):
            raise SpecError(f"unknown --sparse-format {sparse_format!r}", hint="use 'csr' or 'jsonl'")
        if output.suffix.lower() != ".npz":
            raise SpecError(f"with --m3 the output is an .npz archive, got {output}", hint="e.g. --output out.npz")
    outputs = [output] + ([output.with_suffix(".sparse.jsonl")] if m3 and sparse and sparse_format == "jsonl" else [])
    for out in outputs:
        refuse_overwriting_inputs(out, inputs=[input], model_dirs=[resolve_model_path(model)],
                                  flag="--output" if out == output else "--output (its .sparse.jsonl sibling)")
    if not m3 and output.suffix.lower() != ".npy":  # never numpy bytes under a name that promises something else
        raise SpecError(f"--output {output}: encode writes a float32 .npy array, not "
                        f"{output.suffix or 'a file without an extension'}",
                        hint=f"name it {output.with_suffix('.npy').name} (np.load reads it)")
    texts = read_texts(input, field=field)
    kind = "queries" if queries else "passages" if passages else None
    overrides = instruction_overrides("query" if queries else "passage" if passages else None, instruction,
                                      instruction_format)
    options = dict(pooling=pooling, normalize=normalize, max_length=max_length, truncate_dim=truncate_dim,
                   device=device, dtype=dtype, precision=precision, batch_size=batch_size, show_progress=progress,
                   **overrides)
    if m3:
        _encode_m3(model, texts, input, output, kind, sparse=sparse, colbert=colbert, sparse_format=sparse_format,
                   instruction=instruction, instruction_format=instruction_format, options=options)
        return
    embedder = Embedder(model, max_batch_tokens=max_batch_tokens, **options)
    vectors = _run(embedder, texts, kind, instruction, instruction_format)
    save_npy(output, vectors)
    typer.echo(f"wrote {output} {tuple(vectors.shape)} float32 ({len(texts)} texts from {input}); "
               f"precision {embedder.precision_summary}")


def _run(embedder: Any, texts: list[str], kind: str | None, instruction: str | None,
         instruction_format: str | None) -> Any:
    """Queries, passages, or plain texts (with ``--instruction``), for either embedder."""
    if kind == "queries":
        return embedder.encode_queries(texts)
    if kind == "passages":
        return embedder.encode_corpus(texts)
    return embedder.encode(texts, instruction=instruction, instruction_format=instruction_format)


def _encode_m3(model: str, texts: list[str], input: Path, output: Path, kind: str | None, *, sparse: bool,
               colbert: bool, sparse_format: str, instruction: str | None, instruction_format: str | None,
               options: dict) -> None:
    """``--m3``: encode with :class:`~embedkit.m3.M3Embedder` and write the .npz (and the .sparse.jsonl)."""
    from ..m3 import M3Embedder, save_lexical_jsonl, save_m3_npz

    embedder = M3Embedder(model, return_dense=True, return_sparse=sparse, return_colbert=colbert, **options)
    result = _run(embedder, texts, kind, instruction, instruction_format)
    written = []
    if sparse and sparse_format == "jsonl":
        jsonl = save_lexical_jsonl(output.with_suffix(".sparse.jsonl"), result["lexical_weights"])
        result = dict(result, lexical_weights=None)
        written.append(str(jsonl))
    save_m3_npz(output, result, colbert_dim=embedder.colbert_dim)
    parts = [f"dense {tuple(result['dense_vecs'].shape)}"]
    if result["lexical_weights"] is not None:
        parts.append("sparse (CSR)")
    if colbert:
        parts.append(f"colbert ({sum(len(v) for v in result['colbert_vecs'])} token vectors)")
    typer.echo(f"wrote {output} [{', '.join(parts)}]{''.join(' and ' + w for w in written)} "
               f"({len(texts)} texts from {input}); precision {embedder.precision_summary}")


def register(app: typer.Typer) -> None:
    """Add ``embedkit encode`` to ``app``."""
    app.command("encode")(encode)
