"""``embedkit release SRC DST``: a training output -> a verified, documented, signed release folder."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def release_command(
    src: Path = typer.Argument(..., help="Training output: checkpoint-N/, a model folder, or a LoRA adapter folder."),
    dst: Path = typer.Argument(..., help="The release folder to write (atomically; must not exist unless "
                               "--overwrite)."),
    base: str | None = typer.Option(None, "--base", help="Base model folder: what a LoRA adapter merges onto, and "
                                    "where a missing tokenizer comes from (default: the base the folder records, "
                                    "when it is a local folder)."),
    pooling: str | None = typer.Option(None, "--pooling", help="cls | mean | last_token, as the model was trained."),
    normalize: bool | None = typer.Option(None, "--normalize/--no-normalize", help="L2-normalize the vectors."),
    query_instruction: str | None = typer.Option(None, "--query-instruction", help="Text put before each query."),
    passage_instruction: str | None = typer.Option(None, "--passage-instruction",
                                                   help="Text put before each passage."),
    query_max_length: int | None = typer.Option(None, "--query-max-length", min=1, help="Query token limit."),
    passage_max_length: int | None = typer.Option(None, "--passage-max-length", min=1, help="Passage token limit."),
    accept_assumed_spec: bool = typer.Option(False, "--accept-assumed-spec", help="Release with the BGE convention "
                                             "(CLS, normalized) when nothing records the recipe."),
    onnx: bool | None = typer.Option(None, "--onnx/--no-onnx", help="Export ONNX (default: when onnxruntime is "
                                     "installed)."),
    int8: bool = typer.Option(False, "--int8", help="Also an int8 ONNX graph, kept only when it passes the gate."),
    dtype: str | None = typer.Option(None, "--dtype", help="fp32 | fp16 | bf16 (default: keep)."),
    fmt: str = typer.Option("safetensors", "--format", help="safetensors | bin | both."),
    sign: str | None = typer.Option(None, "--sign", metavar="KEY", help="ed25519 private key: sign the manifest."),
    eval_data: str | None = typer.Option(None, "--eval", metavar="DATA", help="Retrieval benchmark folder: metrics "
                                         "of the release in RELEASE.md."),
    eval_split: str = typer.Option("test", "--eval-split", help="Split of --eval DATA."),
    baseline: str | None = typer.Option(None, "--baseline", metavar="MODEL", help="Also evaluate MODEL on --eval "
                                        "DATA, for a before/after comparison."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace DST if it exists (atomically)."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow full unpickling of .bin weights "
                                      "(trusted files only)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON (the plan goes to stderr)."),
) -> None:
    """Release SRC as DST: merge / slim, save with its spec, convert, export ONNX, check parity across every
    loader, evaluate, write RELEASE.md and a manifest. Prints the plan first; DST appears only when every check
    passed. Re-running after a failure reuses the steps whose inputs did not change.

    Example: embedkit release out/checkpoint-15478 releases/bge-small-ft --pooling cls --sign release.key
    """
    from ..release import ReleaseOptions, plan_release, run_release

    options = ReleaseOptions(
        base=base, pooling=pooling, normalize=normalize, query_instruction=query_instruction,
        passage_instruction=passage_instruction, query_max_length=query_max_length,
        passage_max_length=passage_max_length, accept_assumed_spec=accept_assumed_spec, onnx=onnx, int8=int8,
        dtype=dtype, format=fmt, sign=sign, eval_data=eval_data, eval_split=eval_split, baseline=baseline,
        overwrite=overwrite, trust_pickle=trust_pickle)
    plan = plan_release(src, dst, options)
    for line in plan.lines():
        typer.echo(line, err=as_json)
    report = run_release(plan, on_step=lambda name: typer.echo(f"... {name}", err=True))
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, default=str))
        return
    passed = [c["engine"] for c in report.parity["checks"] if c["passed"]]
    typer.echo(f"released {report.dst}: {len(report.files)} files, parity ok with embedkit-torch for "
               f"{', '.join(passed) or 'no other engine'}; see {report.dst / 'RELEASE.md'}")
    typer.echo(f"verify: {report.snippets['verify']}")


def register(app: typer.Typer) -> None:
    """Add ``embedkit release`` to ``app``."""
    app.command("release")(release_command)
