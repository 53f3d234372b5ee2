"""``embedkit rerank``: rank documents for a query, or score a jsonl of (query, passage) pairs, with a cross-encoder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from ..errors import DataError, SpecError


def _read_pairs(path: Path) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    """``(pairs, objects)`` of a jsonl file with ``{"query", "passage"}`` per line; :class:`DataError` naming
    ``file:line`` for a missing or non-string field."""
    from ..textio import iter_jsonl

    pairs: list[tuple[str, str]] = []
    rows: list[dict[str, Any]] = []
    for lineno, obj in iter_jsonl(path):
        for key in ("query", "passage"):
            if key not in obj:
                raise DataError(f"{path}:{lineno}: no field {key!r} (fields: {', '.join(map(repr, obj)) or 'none'})",
                                hint='each line must be {"query": "...", "passage": "..."}')
            if not isinstance(obj[key], str):
                raise DataError(f"{path}:{lineno}: field {key!r} is {type(obj[key]).__name__}, expected a string",
                                hint="every query and passage must be a JSON string")
        pairs.append((obj["query"], obj["passage"]))
        rows.append(obj)
    return pairs, rows


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    from ..textio import writing

    with writing(path, "--output", mode="w") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def rerank(
    model: str = typer.Argument(..., help="Local cross-encoder folder (e.g. a copy of bge-reranker-base)."),
    input: Path = typer.Option(..., "--input", "-i", help="With --query: documents, .txt (one per line) or .jsonl "
                               "(--field). Without: a .jsonl of {\"query\", \"passage\"} pairs."),
    query: str | None = typer.Option(None, "--query", "-q", help="Rank the documents of --input for this query."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write jsonl (atomically): the pairs with a "
                                       "'score' each, or with --query the ranking. Required for pairs."),
    top_k: int | None = typer.Option(None, "--top-k", "-k", min=1, help="With --query: keep the best K."),
    as_json: bool = typer.Option(False, "--json", help="With --query: print the ranking as JSON."),
    field: str = typer.Option("text", help="Field holding the document in a .jsonl --input (with --query)."),
    normalize: bool = typer.Option(False, "--normalize", help="Sigmoid of the logit (FlagReranker normalize=True); "
                                   "default: the raw logit, as FlagReranker.compute_score."),
    truncation: str | None = typer.Option(
        None, help="flagembedding (FlagReranker) | longest_first (CrossEncoder); default: the folder's spec."),
    max_length: int | None = typer.Option(None, "--max-length", min=1, help="Token limit of a pair (default 512, "
                                          "capped at the model's)."),
    query_max_length: int | None = typer.Option(None, "--query-max-length", min=1,
                                                help="flagembedding: the query's own limit (default 3/4 of it)."),
    instruction: str | None = typer.Option(None, help="Query instruction put before each query."),
    instruction_format: str | None = typer.Option(None, help='How instruction and query join, e.g. "{}{}".'),
    batch_size: int = typer.Option(128, "--batch-size", "-b", min=1, help="Pairs per forward pass."),
    max_batch_tokens: int | None = typer.Option(None, min=1, help="Fill batches by padded token count."),
    device: str | None = typer.Option(None, help="cpu | cuda | cuda:N (default: cuda when available)."),
    precision: str | None = typer.Option(
        None, help="fp32 (default, exact) | auto | bf16 | fp16 (non-fp32 is quality-gated vs fp32)."),
    progress: bool | None = typer.Option(
        None, "--progress/--no-progress", help="Progress bar (default: on in a terminal for long inputs)."),
) -> None:
    """Rank the documents of INPUT for --query, or score every {"query", "passage"} line of INPUT into --output.

    Scores are the raw logits (FlagReranker.compute_score) unless --normalize; the order is the same either way.

    Example: embedkit rerank bge-reranker-base --query "what is a panda?" --input docs.txt --top-k 10

    Example: embedkit rerank bge-reranker-base --input pairs.jsonl --output scores.jsonl
    """
    from .._io import refuse_overwriting_inputs
    from ..models import resolve_model_path
    from ..rerank.reranker import Reranker
    from ..textio import read_texts

    if query is None and output is None:
        raise SpecError("scoring pairs needs --output", hint="pass --output scores.jsonl, or --query to rank the "
                        "documents of --input")
    if query is None and (top_k is not None or as_json):
        raise SpecError("--top-k and --json rank documents for a query", hint="add --query \"...\"")
    if output is not None:
        refuse_overwriting_inputs(output, inputs=[input], model_dirs=[resolve_model_path(model)], flag="--output")
    if query is None:
        pairs, rows = _read_pairs(input)
    else:
        docs = read_texts(input, field=field)
    reranker = Reranker(model, max_length=max_length, query_max_length=query_max_length, batch_size=batch_size,
                        query_instruction=instruction, query_instruction_format=instruction_format,
                        precision=precision, device=device, truncation=truncation,
                        max_batch_tokens=max_batch_tokens, show_progress=progress)
    note = f"truncation {reranker.spec.truncation}, precision {reranker.precision_summary}"
    if query is None:
        scores = reranker.compute_score(pairs, normalize=normalize) if pairs else []
        _write_jsonl(output, [row | {"score": s} for row, s in zip(rows, scores, strict=True)])
        typer.echo(f"wrote {output} ({len(pairs)} scored pairs from {input}); {note}")
        return
    ranking = reranker.rank(query, docs, top_k=top_k, return_documents=True,
                            activation_fn="sigmoid" if normalize else "identity")
    if output is not None:
        _write_jsonl(output, ranking)
    if as_json:
        typer.echo(json.dumps(ranking, ensure_ascii=False, indent=2))
        return
    for place, hit in enumerate(ranking, start=1):
        text = " ".join(hit["text"].split())
        text = text if len(text) <= 100 else text[:99] + "…"
        typer.echo(f"{place:>4}  {hit['score']:>10.4f}  #{hit['corpus_id']:<6} {text}")
    typer.echo(f"({len(ranking)} of {len(docs)} documents; {note})", err=True)


def register(app: typer.Typer) -> None:
    """Add ``embedkit rerank`` to ``app``."""
    app.command("rerank")(rerank)
