"""``embedkit finetune``: contrastive fine-tuning on the Hugging Face Trainer (flags, or --config FILE.yaml)."""

from __future__ import annotations

import os

import typer


def finetune_command(ctx: typer.Context) -> None:
    """Fine-tune an embedder (InfoNCE with hard, in-batch and cross-device negatives, distillation, LoRA, GradCache).

    Takes embedkit's flags and every transformers TrainingArguments flag: `embedkit finetune --help` lists embedkit's
    and the common ones, `--help-all` all of them. Multi-process: torchrun --nproc_per_node 2 -m embedkit.train ...

    Example: embedkit finetune --model_name_or_path minilm --train_data train.jsonl --output_dir out --max_steps 100
    """
    from ..train.arguments import help_requested, parse_args
    from ..train.trainer import run

    text = help_requested(list(ctx.args))
    if text is not None:
        typer.echo(text)
        return
    args = parse_args(list(ctx.args))
    if args[0].reranker:
        from ..train.rerank_trainer import run_reranker as run
    final = run(*args)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun: said once, by the main process
        typer.echo(f"trained model: {final}")


def register(app: typer.Typer) -> None:
    """Add ``embedkit finetune`` to ``app``: every argument passes through to the training argument parser."""
    app.command(
        "finetune",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
        add_help_option=False,
    )(finetune_command)
