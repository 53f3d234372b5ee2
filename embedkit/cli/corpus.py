"""``embedkit verify-output``: check a folder written by ``embedkit encode --format parquet`` against its manifest."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import DataError


def verify_output(
    out_dir: Path = typer.Argument(..., help="The OUTPUT folder of `embedkit encode --format parquet`."),
) -> None:
    """Check every shard of OUT_DIR against _embedkit.json: present, same size and sha256, same row count, no gap.

    Exit 0 when all is well; 2 naming every changed or missing shard otherwise.

    Example: embedkit verify-output vectors/
    """
    from ..corpus import verify_output as check

    report = check(out_dir)
    if report["problems"]:
        raise DataError(f"{out_dir}: {len(report['problems'])} problem(s): " + "; ".join(report["problems"]),
                        hint="re-encode the damaged shards: `embedkit encode ... --resume` after deleting the "
                        "manifest's record of them, or a fresh run into a new folder")
    state = "complete" if report["complete"] else "incomplete (resume it with --resume)"
    typer.echo(f"{out_dir}: {report['shards']} shard(s), {report['rows']} rows, every sha256 and row count matches; "
               f"{state}")


def register(app: typer.Typer) -> None:
    """Add ``embedkit verify-output`` to ``app``."""
    app.command("verify-output")(verify_output)
