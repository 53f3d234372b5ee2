"""``embedkit save``, ``embedkit convert``, ``embedkit slim``: checkpoint folders in, verified folders out."""

from __future__ import annotations

from pathlib import Path

import typer

from .._format import format_bytes

_FORMAT_HELP = "safetensors | bin (a real pytorch_model.bin) | both."


def save_command(
    src: str = typer.Argument(..., help="Model or training-checkpoint folder (or 'minilm')."),
    dst: Path = typer.Argument(..., help="Destination folder (must not exist unless --overwrite)."),
    pooling: str | None = typer.Option(None, help="cls | mean | last_token (default: the resolved spec)."),
    normalize: bool | None = typer.Option(None, "--normalize/--no-normalize", help="L2-normalize vectors."),
    query_instruction: str | None = typer.Option(None, help="Instruction put before each query."),
    query_instruction_format: str | None = typer.Option(None, help='How instruction and query join ("{}{}").'),
    passage_instruction: str | None = typer.Option(None, help="Instruction put before each passage."),
    max_length: int | None = typer.Option(None, min=1, help="Token limit for queries and passages."),
    query_max_length: int | None = typer.Option(None, min=1, help="Token limit for queries."),
    passage_max_length: int | None = typer.Option(None, min=1, help="Token limit for passages."),
    truncate_dim: int | None = typer.Option(None, min=1, help="Output dimension (Matryoshka)."),
    truncation: str | None = typer.Option(
        None, help="Rerankers: flagembedding (FlagReranker) | longest_first (CrossEncoder, TEI)."),
    format: str = typer.Option("safetensors", "--format", help=_FORMAT_HELP),
    dtype: str | None = typer.Option(None, help="fp32 | fp16 | bf16 (default: keep)."),
    sentence_transformers: bool = typer.Option(
        True, "--sentence-transformers/--no-sentence-transformers", help="Also write the ST layout."),
    tokenizer: str | None = typer.Option(None, help="Take the tokenizer from this folder (default: SRC)."),
    sign: Path | None = typer.Option(None, help="ed25519 private key (PEM) to sign the manifest with."),
    overwrite: bool = typer.Option(False, help="Replace DST if it exists (atomically)."),
    trust_pickle: bool = typer.Option(False, help="Allow full unpickling of .bin weights (runs code: trusted only)."),
) -> None:
    """Save SRC as a Hugging Face model + sentence-transformers layout + model card + manifest in DST.

    A cross-encoder (*ForSequenceClassification, one label) is saved for embedkit's Reranker, FlagReranker,
    CrossEncoder and TEI, its reranking recipe (--truncation, --max-length, --query-max-length...) recorded.

    Example: embedkit save checkpoint-1500 my-model --pooling cls --query-instruction "query: "
    """
    from ..checkpoint.save import save

    result = save(src, dst, tokenizer=tokenizer, format=format, dtype=dtype,
                  sentence_transformers=sentence_transformers, overwrite=overwrite, sign_key=sign,
                  trust_pickle=trust_pickle, pooling=pooling, normalize=normalize,
                  query_instruction=query_instruction, query_instruction_format=query_instruction_format,
                  passage_instruction=passage_instruction, max_length=max_length, query_max_length=query_max_length,
                  passage_max_length=passage_max_length, truncate_dim=truncate_dim,
                  **({"truncation": truncation} if truncation is not None else {}))
    size = sum((result.path / f).stat().st_size for f in result.files)
    if hasattr(result.spec, "truncation"):  # a reranker
        typer.echo(f"saved reranker {result.path} (FlagReranker / CrossEncoder / TEI, {len(result.files)} files, "
                   f"{format_bytes(size)}); truncation={result.spec.truncation} max_length={result.spec.max_length}")
        return
    layout = "HF + sentence-transformers" if result.sentence_transformers else "HF only"
    typer.echo(f"saved {result.path} ({layout}, {len(result.files)} files, {format_bytes(size)}); "
               f"pooling={result.spec.pooling} normalize={result.spec.normalize}")


def convert_command(
    folder: str = typer.Argument(..., help="Model folder to convert."),
    to: str | None = typer.Option(None, "--to", help="safetensors | bin (default: keep the format)."),
    dtype: str | None = typer.Option(None, help="fp32 | fp16 | bf16 (default: keep)."),
    max_shard_size: str | None = typer.Option(None, help="Shard weights above this size, e.g. 2GB."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write here instead of in place."),
    overwrite: bool = typer.Option(False, help="Replace --output if it exists."),
    trust_pickle: bool = typer.Option(False, help="Allow full unpickling of .bin weights (trusted files only)."),
    drop_other_formats: bool = typer.Option(
        False, "--drop-other-formats", help="Keep only the --to format (default: every weight format FOLDER holds "
        "is re-written too)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Convert FOLDER's weights (safetensors <-> bin, dtype, sharding); every tensor is read back and compared.

    Every weight format FOLDER holds is kept (re-written in the new dtype / sharding) unless --drop-other-formats.

    Example: embedkit convert my-model --to bin --output my-model-bin
    """
    import json

    from ..checkpoint.convert import convert

    report = convert(folder, to=to, dtype=dtype, max_shard_size=max_shard_size, output=output,
                     overwrite=overwrite, trust_pickle=trust_pickle, drop_other_formats=drop_other_formats)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, sort_keys=True))
        return
    check = "exact (every tensor identical)" if report.exact else f"max abs diff {report.max_abs_diff:.3g}"
    typer.echo(f"converted {report.path}: {report.tensors} tensors as {report.format}"
               + (f" {report.dtype}" if report.dtype else "")
               + f", {format_bytes(report.bytes_before)} -> {format_bytes(report.bytes_after)}; round trip verified, "
               f"{check}")
    if report.embedding_cosine_min is not None:
        typer.echo(f"embedding cosine vs the source (min over 5 texts): {report.embedding_cosine_min:.6f}")
    if report.kept_formats:
        typer.echo(f"kept {' and '.join(report.kept_formats)} as well (re-written the same way: {folder} held it); "
                   f"pass --drop-other-formats to keep only {report.format}")
    if report.dropped_formats:
        typer.echo(f"dropped {' and '.join(report.dropped_formats)} (--drop-other-formats)")


def slim_command(
    checkpoint: str = typer.Argument(..., help="Training checkpoint folder (e.g. output/checkpoint-1500)."),
    dst: Path = typer.Argument(..., help="Destination for the inference-only package."),
    tokenizer: str | None = typer.Option(None, help="Take the tokenizer from this folder (e.g. the base model)."),
    overwrite: bool = typer.Option(False, help="Replace DST if it exists (atomically)."),
    trust_pickle: bool = typer.Option(False, help="Allow full unpickling of .bin weights (trusted files only)."),
) -> None:
    """Copy what inference needs from CHECKPOINT to DST; drop optimizer, scheduler, RNG, trainer state, ZeRO shards.

    Example: embedkit slim output/checkpoint-1500 my-model --tokenizer BAAI-bge-small-en-v1.5
    """
    from ..checkpoint.slim import slim

    report = slim(checkpoint, dst, tokenizer=tokenizer, overwrite=overwrite, trust_pickle=trust_pickle)
    typer.echo(f"slimmed {checkpoint} -> {report.path}: kept {len(report.kept)} files, dropped {len(report.dropped)}; "
               f"{format_bytes(report.bytes_before)} -> {format_bytes(report.bytes_after)} "
               f"(saved {format_bytes(report.bytes_saved)})")
    for f in report.dropped:
        typer.echo(f"  dropped {f}")


def register(app: typer.Typer) -> None:
    """Add ``embedkit save``, ``embedkit convert``, ``embedkit slim`` to ``app``."""
    app.command("save")(save_command)
    app.command("convert")(convert_command)
    app.command("slim")(slim_command)
