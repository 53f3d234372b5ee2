"""``embedkit finetune``: contrastive fine-tuning on the Hugging Face Trainer (flags, or --config FILE.yaml)."""

from __future__ import annotations

import typer

from .app import app


@app.command(
    "finetune",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def finetune_command(ctx: typer.Context) -> None:
    """Fine-tune an embedder (InfoNCE with hard, in-batch and cross-device negatives, distillation, LoRA, GradCache).

    Takes every transformers TrainingArguments flag plus embedkit's; run `embedkit finetune --help` for the list.
    Multi-process: torchrun --nproc_per_node 2 -m embedkit.train ...

    Example: embedkit finetune --model_name_or_path minilm --train_data train.jsonl --output_dir out --max_steps 100
    """
    from ..train.arguments import parse_args
    from ..train.trainer import run

    try:
        args = parse_args(list(ctx.args))
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        raise typer.Exit(int(exc.code or 0)) from None
    final = run(*args)
    typer.echo(f"trained model: {final}")
