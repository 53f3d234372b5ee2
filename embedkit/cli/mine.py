"""``embedkit mine`` (hard negatives) and ``embedkit score-pairs`` (teacher scores from a cross-encoder)."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def mine_command(
    model: str = typer.Argument(..., help="Local embedding model folder, or 'minilm' for the bundled MiniLM."),
    input: list[Path] = typer.Option(..., "--input", "-i", help="Training jsonl file or folder (repeatable)."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the mined jsonl (atomically)."),
    candidate_pool: Path | None = typer.Option(
        None, "--candidate-pool", help='jsonl of {"text": ...} lines (default: every pos/neg of the input).'),
    range_: str = typer.Option("10-210", "--range", help="Rank window START-END to sample negatives from."),
    negative_number: int = typer.Option(15, "--negative-number", min=1, help="Negatives per row."),
    batch_size: int = typer.Option(256, "--batch-size", "-b", min=1, help="Texts per forward pass."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampling."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Skip (and count) invalid rows."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    progress: bool | None = typer.Option(
        None, "--progress/--no-progress", help="Progress bars (default: on in a terminal for long inputs)."),
) -> None:
    """Mine hard negatives with MODEL: each row's 'neg' becomes passages ranked START..END for its query.

    Positives and the query itself are never negatives; rows with too few candidates are topped up with random
    pool passages (counted). pos_scores/neg_scores are dropped: re-score with `embedkit score-pairs`.

    Example: embedkit mine minilm --input train.jsonl --output train.mined.jsonl --range 10-210 --negative-number 15
    """
    from ..models import resolve_model_path
    from ..train.mine import mine_hard_negatives, parse_range

    window = parse_range(range_)
    report = mine_hard_negatives(resolve_model_path(model), input, output, candidate_pool=candidate_pool,
                                 range=window, negative_number=negative_number, batch_size=batch_size, seed=seed,
                                 skip_invalid=skip_invalid, show_progress=progress)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, sort_keys=True, ensure_ascii=False))
        return
    extra = f", {report.skipped_rows} invalid rows skipped" if report.skipped_rows else ""
    extra += f", scores dropped on {report.dropped_scores_rows} rows" if report.dropped_scores_rows else ""
    extra += f", {report.short_rows} rows short" if report.short_rows else ""
    typer.echo(f"wrote {report.output}: {report.rows} rows, {report.negative_number} negatives each from ranks "
               f"{window[0]}-{window[1]} of {report.pool_size} passages; {report.topped_up_rows} rows topped up "
               f"with random passages{extra}")


def score_pairs_command(
    reranker: Path = typer.Argument(..., help="Local cross-encoder (reranker) folder."),
    input: list[Path] = typer.Option(..., "--input", "-i", help="Training jsonl file or folder (repeatable)."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the scored jsonl (atomically)."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", min=1, help="Pairs per forward pass."),
    max_length: int | None = typer.Option(
        None, "--max-length", min=1, help="Token limit of a query+passage pair (default: 512 or the model's)."),
    device: str | None = typer.Option(None, help="cpu | cuda | cuda:N (default: cuda when available)."),
    trust_pickle: bool = typer.Option(False, help="Allow full unpickling of .bin weights (runs code: trusted only)."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Skip (and count) invalid rows."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    progress: bool | None = typer.Option(
        None, "--progress/--no-progress", help="Progress bar (default: on in a terminal for long inputs)."),
) -> None:
    """Fill pos_scores/neg_scores of every row with RERANKER's scores (teacher scores for distillation).

    Example: embedkit score-pairs ./bge-reranker-base --input train.mined.jsonl --output train.scored.jsonl
    """
    from ..train.mine import score_pairs

    report = score_pairs(reranker, input, output, batch_size=batch_size, max_length=max_length, device=device,
                         trust_pickle=trust_pickle, skip_invalid=skip_invalid, show_progress=progress)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, sort_keys=True, ensure_ascii=False))
        return
    extra = f", {report.skipped_rows} invalid rows skipped" if report.skipped_rows else ""
    typer.echo(f"wrote {report.output}: {report.pairs} pairs of {report.rows} rows scored by {report.model} "
               f"(max length {report.max_length}){extra}")


def register(app: typer.Typer) -> None:
    """Add ``embedkit mine``, ``embedkit score-pairs`` to ``app``."""
    app.command("mine")(mine_command)
    app.command("score-pairs")(score_pairs_command)
