"""``embedkit encode``: texts from a file -> float32 .npy (or, with ``--m3``, a bge-m3 .npz), or a corpus of any size
-> a folder of Parquet shards with a manifest (``--format parquet``, streamed and resumable)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer

from ..errors import SpecError

logger = logging.getLogger("embedkit")


def encode(
    model: str = typer.Argument(..., help="Local model folder, or 'minilm' for the bundled all-MiniLM-L6-v2."),
    input: Path = typer.Option(..., "--input", "-i", help=".txt (one text per line) or .jsonl file (with --format "
                               "parquet also .parquet, a folder of them or a quoted glob of shards)."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the float32 .npy (atomically), or the "
                                "folder of Parquet shards."),
    field: str = typer.Option("text", "--field", "--text-field", help="Field (.jsonl) or column (.parquet) holding "
                              "the text."),
    format: str | None = typer.Option(None, "--format", help="npy | parquet (default: from the --output extension: "
                                      ".npy, .npz with --m3, .parquet)."),
    id_field: str | None = typer.Option(None, "--id-field", help="With --format parquet: field / column holding "
                                        "each row's id (default: the row number)."),
    shard_size: int = typer.Option(100_000, "--shard-size", min=1, help="With --format parquet: rows per shard."),
    resume: bool = typer.Option(False, "--resume", help="With --format parquet: continue the run recorded in "
                                "OUTPUT/_embedkit.json (model, spec and input must match)."),
    output_dtype: str = typer.Option("float32", "--output-dtype", help="With --format parquet: float32 | float16 | "
                                     "int8 | uint8 | binary | ubinary (sentence-transformers' quantize_embeddings)."),
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
    ray: bool = typer.Option(False, "--ray", help="Encode on Ray Data (Parquet output; see docs/scale-out.md)."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="With --ray: auto | ray://HEAD:10001 "
                                           "(default: a local Ray instance)."),
    workers: int = typer.Option(1, "--workers", min=1, help="With --ray: actors, one model each."),
    gpus_per_worker: float = typer.Option(0, "--gpus-per-worker", min=0, help="With --ray: GPUs per actor."),
) -> None:
    """Encode every text of INPUT with MODEL and write the vectors to OUTPUT (.npy, float32, input order).

    With --m3, OUTPUT is an .npz: 'dense' (n, d) float32, and with --sparse / --colbert the lexical weights and the
    ColBERT vectors (rows of text i: colbert_vecs\\[colbert_offsets\\[i]:colbert_offsets\\[i+1]]).

    Example: embedkit encode minilm --input texts.txt --output vectors.npy

    Example: embedkit encode bge-m3 --m3 --sparse --colbert --input texts.txt --output out.npz

    With --format parquet (or an OUTPUT ending in .parquet), OUTPUT is a folder of part-NNNNN.parquet shards (id,
    embedding as fixed_size_list, with --m3 --sparse a sparse column) and _embedkit.json; input is streamed in
    chunks, each shard is recorded when written, and --resume continues a killed run.

    Example: embedkit encode minilm --passages -i corpus.jsonl --id-field id -o vectors/ --format parquet
    """
    from .._io import refuse_overwriting_inputs
    from ..embedder import Embedder
    from ..models import resolve_model_path
    from ..spec import instruction_overrides
    from ..textio import read_texts, save_npy

    if queries and passages:
        raise SpecError("--queries and --passages are exclusive", hint="pick one (or neither for plain texts)")
    chosen = "parquet" if ray and format is None else _choose_format(format, output, m3)
    ray_used = [flag for flag, used in (("--ray", ray), ("--ray-address", ray_address is not None),
                                        ("--workers", workers != 1), ("--gpus-per-worker", gpus_per_worker != 0))
                if used]
    if ray_used and (chosen != "parquet" or not ray):
        raise SpecError(f"{', '.join(ray_used)}: Ray encodes to Parquet shards and needs --ray",
                        hint="use --ray --format parquet")
    if ray:
        if output.suffix.lower() in (".npy", ".npz"):
            raise SpecError(f"--ray writes a folder of Parquet shards, not {output.suffix} (--output {output})",
                            hint=f"pass a folder name, e.g. --output {output.with_suffix('')}")
        _check_parquet_m3(m3, sparse, colbert, sparse_format)
        _encode_ray(model, input, output, field=field, id_field=id_field, shard_size=shard_size, resume=resume,
                    m3=m3, sparse=sparse,
                    output_dtype=output_dtype, queries=queries, passages=passages, instruction=instruction,
                    instruction_format=instruction_format, progress=progress, address=ray_address, workers=workers,
                    gpus_per_worker=gpus_per_worker,
                    options=dict(pooling=pooling, normalize=normalize, max_length=max_length,
                                 truncate_dim=truncate_dim, device=device, dtype=dtype, precision=precision,
                                 batch_size=batch_size, max_batch_tokens=max_batch_tokens))
        return
    if chosen == "parquet":
        _encode_parquet(model, input, output, field=field, id_field=id_field, shard_size=shard_size, resume=resume,
                        output_dtype=output_dtype, queries=queries, passages=passages, m3=m3, sparse=sparse,
                        colbert=colbert, sparse_format=sparse_format, instruction=instruction,
                        instruction_format=instruction_format,
                        options=dict(pooling=pooling, normalize=normalize, max_length=max_length,
                                     truncate_dim=truncate_dim, device=device, dtype=dtype, precision=precision,
                                     batch_size=batch_size, max_batch_tokens=max_batch_tokens),
                        progress=progress)
        return
    parquet_only = [flag for flag, used in (("--id-field", id_field is not None), ("--resume", resume),
                                            ("--shard-size", shard_size != 100_000),
                                            ("--output-dtype", output_dtype != "float32")) if used]
    if parquet_only:
        raise SpecError(f"{', '.join(parquet_only)} apply to Parquet output", hint="add --format parquet")
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
                        hint=f"name it {output.with_suffix('.npy').name} (np.load reads it), or pass --format parquet "
                        "for a folder of Parquet shards")
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


def _choose_format(format: str | None, output: Path, m3: bool) -> str:
    """``npy`` (an .npy, or the .npz of --m3) or ``parquet``: --format, else the output's extension."""
    if format is None:
        return "parquet" if output.suffix.lower() == ".parquet" else "npy"
    if format not in ("npy", "parquet"):
        raise SpecError(f"unknown --format {format!r}", hint="use 'npy' (or .npz with --m3) or 'parquet'")
    return format


def _encode_parquet(model: str, input: Path, output: Path, *, field: str, id_field: str | None, shard_size: int,
                    resume: bool, output_dtype: str, queries: bool, passages: bool, m3: bool, sparse: bool,
                    colbert: bool, sparse_format: str, instruction: str | None, instruction_format: str | None,
                    options: dict, progress: bool | None) -> None:
    """``--format parquet``: stream INPUT into Parquet shards under OUTPUT (see
    :func:`embedkit.corpus.encode_to_parquet`)."""
    from ..corpus import encode_to_parquet
    from ..corpus.quantize import check_output_dtype
    from ..embedder import Embedder
    from ..spec import instruction_overrides

    check_output_dtype(output_dtype)
    _check_parquet_m3(m3, sparse, colbert, sparse_format)
    kind = "queries" if queries else "passages" if passages else None
    overrides = instruction_overrides("query" if queries else "passage" if passages else None, instruction,
                                      instruction_format)
    options = dict(options, show_progress=False, **overrides)
    if m3:
        from ..m3 import M3Embedder

        embedder: Any = M3Embedder(model, return_dense=True, return_sparse=sparse, return_colbert=False, **options)
    else:
        embedder = Embedder(model, **options)
    result = encode_to_parquet(embedder, input, output, kind=kind, text_field=field, id_field=id_field,
                               shard_size=shard_size, output_dtype=output_dtype, resume=resume, sparse=sparse,
                               instruction=instruction if kind is None else None,
                               instruction_format=instruction_format if kind is None else None,
                               show_progress=progress)
    resumed = f", {result.shards - result.written} already complete" if result.shards > result.written else ""
    typer.echo(f"wrote {output}: {result.rows} rows in {result.shards} shard(s) ({result.written} this run{resumed}), "
               f"{output_dtype}, dim {embedder.dim}; precision {embedder.precision_summary}")


def _check_parquet_m3(m3: bool, sparse: bool, colbert: bool, sparse_format: str) -> None:
    """Parquet output (one process or Ray) holds bge-m3's dense vectors and, with --sparse, a 'sparse' column."""
    if sparse and not m3:
        raise SpecError("--sparse is a bge-m3 output", hint="add --m3")
    if colbert or sparse_format != "csr":
        raise SpecError("--colbert and --sparse-format are not written to Parquet output",
                        hint="use --m3 --sparse (a 'sparse' column) or write an .npz without --format parquet")


def _encode_ray(model: str, input: Path, output: Path, *, field: str, id_field: str | None, shard_size: int,
                resume: bool, output_dtype: str, queries: bool, passages: bool, m3: bool, sparse: bool,
                instruction: str | None,
                instruction_format: str | None, progress: bool | None, address: str | None, workers: int,
                gpus_per_worker: float, options: dict) -> None:
    """``--ray``: the Parquet output of ``--format parquet``, encoded by Ray actors (see
    :func:`embedkit.distributed.encode_dataset`)."""
    from ..distributed import encode_dataset
    from ..spec import instruction_overrides

    kind = "queries" if queries else "passages" if passages else None
    overrides = instruction_overrides("query" if queries else "passage" if passages else None, instruction,
                                      instruction_format)
    result = encode_dataset(model, input, output, kind=kind, text_field=field, id_field=id_field,
                            shard_size=shard_size, output_dtype=output_dtype, resume=resume,
                            instruction=instruction if kind is None else None,
                            instruction_format=instruction_format if kind is None else None,
                            show_progress=progress, embedder_options=dict(options, **overrides), workers=workers,
                            gpus_per_worker=gpus_per_worker, address=address, m3=m3, sparse=sparse)
    resumed = f", {result.shards - result.written} already complete" if result.shards > result.written else ""
    typer.echo(f"wrote {output}: {result.rows} rows in {result.shards} shard(s) ({result.written} this run{resumed}), "
               f"{output_dtype}, dim {result.manifest['dim']}; {workers} Ray worker(s)")


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
