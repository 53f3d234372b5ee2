"""Trainer callbacks: every log line to ``metrics.jsonl`` (+ the loss curve plot), retrieval eval every N steps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from .._io import atomic_write
from .._optional import require


class MetricsCallback(TrainerCallback):
    """Appends every log to ``OUTPUT/metrics.jsonl`` and draws ``OUTPUT/loss_curve.png`` at the end."""

    def __init__(self, output_dir: Path, plot: bool = True) -> None:
        self.path = output_dir / "metrics.jsonl"
        self.plot = plot

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 - Trainer's callback signature
        if state.is_world_process_zero and logs:
            append_metrics(self.path, {"step": state.global_step, "epoch": state.epoch, **logs})

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if state.is_world_process_zero and self.plot:
            plot_loss_curve(self.path, self.path.parent / "loss_curve.png")


def append_metrics(path: Path, line: dict[str, Any]) -> None:
    """Append one JSON line to ``metrics.jsonl`` (its folder created when missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")


def plot_loss_curve(metrics_path: Path, png: Path) -> Path | None:
    """Loss per step from ``metrics.jsonl`` as a PNG (written atomically); ``None`` when there is nothing to plot."""
    if not metrics_path.is_file():
        return None
    points = [json.loads(line) for line in metrics_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    points = [(p["step"], p["loss"]) for p in points if "loss" in p]
    if not points:
        return None
    matplotlib = require("matplotlib", "the loss curve plot")
    matplotlib.use("Agg")
    plt = require("matplotlib.pyplot", "the loss curve plot")

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("embedkit fine-tuning")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_write(png) as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)
    return png


class RetrievalEvalCallback(TrainerCallback):
    """Evaluates the model being trained on a retrieval benchmark every ``eval_steps`` steps (main process only)."""

    def __init__(self, evaluate_fn: Any, eval_steps: int | None) -> None:
        self.evaluate_fn = evaluate_fn
        self.eval_steps = eval_steps

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001 - Trainer's callback signature
        if self.eval_steps and state.global_step % self.eval_steps == 0 and state.global_step < state.max_steps:
            if state.is_world_process_zero:
                self.evaluate_fn(f"step-{state.global_step}", state.global_step)
