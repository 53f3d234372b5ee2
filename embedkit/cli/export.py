"""``embedkit export``, the export group: ``export onnx`` (ONNX graphs verified against PyTorch, optional
quality-gated int8)."""

from __future__ import annotations

from pathlib import Path

import typer

export_app = typer.Typer(help="Export a model to other runtimes (ONNX).", no_args_is_help=True)


@export_app.command("onnx")
def export_onnx_command(
    model: str = typer.Argument(..., help="Local model folder, or 'minilm'."),
    dst: Path = typer.Argument(..., help="Destination: a complete model folder with onnx/ inside."),
    opset: int = typer.Option(17, help="ONNX opset."),
    quantize: str | None = typer.Option(None, help="int8: also write onnx/embedder_int8.onnx if it passes the gate."),
    min_cosine: float = typer.Option(0.99, help="int8 gate: mean cosine vs fp32 (built-in sample + --calibration)."),
    min_cosine_floor: float = typer.Option(0.95, help="int8 gate: minimum cosine over the same texts."),
    calibration: Path | None = typer.Option(
        None, help="Texts added to the built-in gate sample (.txt, one per line, or .jsonl)."),
    overwrite: bool = typer.Option(False, help="Replace DST if it exists (atomically)."),
    trust_pickle: bool = typer.Option(False, help="Allow full unpickling of .bin weights (trusted files only)."),
    sigmoid: bool = typer.Option(False, help="Rerankers: end the graph in a sigmoid (scores in 0..1; recorded)."),
) -> None:
    """Export MODEL to DST/onnx/model.onnx (transformer) and DST/onnx/embedder.onnx (ids -> final vector).

    A reranker (cross-encoder) gets DST/onnx/reranker.onnx instead: pair ids -> one score (logit, or --sigmoid).

    Example: embedkit export onnx my-bge my-bge-onnx --quantize int8
    """
    from ..export.onnx import export_onnx

    r = export_onnx(model, dst, opset=opset, quantize=quantize, min_cosine=min_cosine,
                    min_cosine_floor=min_cosine_floor, calibration=calibration, overwrite=overwrite,
                    trust_pickle=trust_pickle, sigmoid=sigmoid)
    if any(f.endswith("reranker.onnx") for f in r.files):
        _echo_reranker(r, sigmoid)
        return
    typer.echo(f"exported {r.path}: onnx/model.onnx + onnx/embedder.onnx (opset {r.opset}, inputs "
               f"{', '.join(r.inputs)}); max abs diff vs PyTorch {r.parity_max_abs_diff:.2e} ({r.seconds:.1f} s)")
    if r.int8 is not None:
        if r.int8["kept"]:
            typer.echo(f"int8: kept onnx/embedder_int8.onnx ({r.int8['settings']}): mean cosine "
                       f"{r.int8['mean_cosine']:.4f}, min {r.int8['min_cosine']:.4f} over {r.int8['texts']} texts")
        else:
            best = max(r.int8["tried"], key=lambda t: t["mean_cosine"])
            typer.echo(f"int8: NOT kept — best mean cosine {best['mean_cosine']:.4f} (min {best['min_cosine']:.4f}) "
                       f"is below the gate {min_cosine} / {min_cosine_floor}; the fp32 graph is the export")
    typer.echo(f"load it: Embedder({str(r.path)!r}, backend='onnx')")


def _echo_reranker(r, sigmoid: bool) -> None:  # noqa: ANN001 - an ExportReport
    typer.echo(f"exported {r.path}: onnx/reranker.onnx (pair ids -> {'sigmoid(logit)' if sigmoid else 'logit'}, "
               f"opset {r.opset}, inputs {', '.join(r.inputs)}); max abs diff vs PyTorch {r.parity_max_abs_diff:.2e} "
               f"({r.seconds:.1f} s)")
    if r.int8 is not None:
        best = r.int8 if r.int8["kept"] else min(r.int8["tried"], key=lambda t: t["max_abs_diff"])
        verdict = f"kept onnx/reranker_int8.onnx ({best['settings']})" if r.int8["kept"] else "NOT kept"
        typer.echo(f"int8: {verdict}: max |sigmoid diff| {best['max_abs_diff']:.4f}, Spearman {best['spearman']:.4f} "
                   f"(gate {r.int8['gate'][0]} / {r.int8['gate'][1]})")
    typer.echo(f"load it: Reranker({str(r.path)!r}, backend='onnx')")


def register(app: typer.Typer) -> None:
    """Add the ``embedkit export`` group (``export onnx``) to ``app``."""
    app.add_typer(export_app, name="export")
