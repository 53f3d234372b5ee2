"""Fine-tuning on the Hugging Face ``Trainer``: DDP (torchrun), DeepSpeed, bf16/fp16, resume and logging come from the
ecosystem; embedkit adds the data, the loss, GradCache, and saving through :func:`embedkit.checkpoint.save`.

The pieces live in their own modules (dataset, collate, callbacks, persist, lora) and are re-exported here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .._io import atomic_write
from ..checkpoint.manifest import write_manifest
from ..checkpoint.save import save
from ..embedder import Embedder
from ..errors import DataError
from ..eval.data import load_eval_data
from ..eval.retrieval import evaluate, main_metrics, plot_comparison
from ..folder.layout import check_model_folder
from ..folder.loading import load_model, load_tokenizer
from ..m3 import M3Heads
from ..models import resolve_model_path
from ..spec import EmbedderSpec, load_spec
from .arguments import DataArguments, EmbedkitTrainingArguments, ModelArguments
from .callbacks import MetricsCallback, RetrievalEvalCallback, append_metrics, plot_loss_curve
from .collate import GroupCollator
from .data import load_train_data
from .dataset import GroupDataset, format_summary, summarize_data
from .lora import LORA_TARGETS, apply_lora
from .m3 import M3TrainingModel
from .model import EmbedderTrainingModel, grad_cache_step
from .persist import (
    ADAPTER_DIR,
    FINAL_MODEL_DIR,
    MERGED_DIR,
    check_resume_checkpoint,
    load_trained_weights,
    remove_previous_run,
    save_adapter,
    save_trained,
)

logger = logging.getLogger("embedkit")

__all__ = [
    "ADAPTER_DIR", "FINAL_MODEL_DIR", "LORA_TARGETS", "MERGED_DIR", "EmbedkitTrainer", "GroupCollator",
    "GroupDataset", "MetricsCallback", "RetrievalEvalCallback", "apply_lora", "build_spec", "build_trainer",
    "check_ranks_in_sync", "check_resume_checkpoint", "format_summary", "load_trained_weights", "plot_loss_curve",
    "run", "save_adapter", "save_trained", "summarize_data",
]


class EmbedkitTrainer(Trainer):
    """``Trainer`` with the contrastive loss, GradCache, and embedkit's saving and resuming."""

    def __init__(self, *args: Any, spec: EmbedderSpec, eval_data: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spec = spec
        self.eval_data = eval_data
        self.eval_results: dict[str, Any] = {}
        if eval_data is not None:
            steps = self.args.eval_steps if self.args.eval_steps and self.args.eval_steps >= 1 else None
            self.add_callback(RetrievalEvalCallback(self.evaluate_retrieval, int(steps) if steps else None))

    def evaluate_retrieval(self, phase: str, step: int | None = None) -> Any:
        """Retrieval metrics of the model as it is now (in eval mode, with the training spec); logged to
        ``metrics.jsonl`` as ``{"phase": phase, "eval": {...}}``."""
        encoder = self.accelerator.unwrap_model(self.model).encoder
        was_training = encoder.training
        encoder.eval()
        try:
            embedder = Embedder.from_model(encoder, self.processing_class, self.spec,
                                           batch_size=self.args.per_device_eval_batch_size * 8, show_progress=False)
            result = evaluate(embedder, self.eval_data, cache_dir=None, name=phase)
        finally:
            encoder.train(was_training)
        self.eval_results[phase] = result
        line = {"step": self.state.global_step if step is None else step, "phase": phase, "eval": result.metrics}
        append_metrics(Path(self.args.output_dir) / "metrics.jsonl", line)
        main = {k: v for k, v in result.metrics.items() if k.endswith("@10")}
        logger.info("retrieval eval (%s): %s", phase, ", ".join(f"{k} {v:.4f}" for k, v in main.items()))
        return result

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
        outputs = model(**inputs)
        return (outputs["loss"], outputs) if return_outputs else outputs["loss"]

    def training_step(self, model, inputs, num_items_in_batch=None):  # noqa: ANN001
        if not self.args.grad_cache_chunk:
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        inputs = self._prepare_inputs(inputs)
        inner = self.accelerator.unwrap_model(model)
        loss = grad_cache_step(inner, inputs, backward=self.accelerator.backward,
                               loss_scale=1.0 / self.current_gradient_accumulation_steps,
                               autocast=self.compute_loss_context_manager)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world = torch.distributed.get_world_size()
            for p in inner.parameters():  # DDP's hooks are bypassed by the chunked re-forward: reduce by hand
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= world
        return loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        inner = self.accelerator.unwrap_model(self.model)
        for key, value in getattr(inner, "last_stats", {}).items():
            logs.setdefault(key, value)
        super().log(logs, *args, **kwargs)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        # every rank calls this; only rank 0 writes. The others wait, so the per-rank files the Trainer adds next
        # (rng_state_N.pth) land in the finished folder instead of one the atomic rename then replaces
        if self.args.should_save:
            output_dir = output_dir or self.args.output_dir
            save_trained(self.accelerator.unwrap_model(self.model), Path(output_dir), self.spec, self.processing_class)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """The Trainer's checkpoint save (model, optimizer, scheduler, RNG, ``trainer_state.json``), then the
        manifest again, so it covers every file of the fresh ``checkpoint-N`` and ``embedkit verify`` passes."""
        super()._save_checkpoint(model, trial)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()  # every rank has written its RNG state before the manifest hashes it
        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save and folder.is_dir():
            write_manifest(folder, show_progress=False)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        inner = self.accelerator.unwrap_model(model or self.model)
        load_trained_weights(inner, Path(resume_from_checkpoint))


# ---------------------------------------------------------------------- building and running
def build_spec(model_args: ModelArguments) -> EmbedderSpec:
    """The one recipe: resolved from the checkpoint + arguments exactly as :class:`embedkit.Embedder` does."""
    overrides = {k: getattr(model_args, k) for k in (
        "pooling", "normalize", "query_instruction", "query_instruction_format", "passage_instruction",
        "passage_instruction_format", "query_max_length", "passage_max_length")}
    return load_spec(model_args.model_name_or_path, overrides)


def build_trainer(model_args: ModelArguments, data_args: DataArguments, train_args: EmbedkitTrainingArguments,
                  ) -> tuple[EmbedkitTrainer, dict[str, Any]]:
    """Validate the data, resolve the spec, load the model, and wire up the trainer. Returns it and the summary."""
    if data_args.train_group_size < 1:
        raise DataError("--train_group_size must be at least 1")
    if not torch.cuda.is_available():
        train_args.dataloader_pin_memory = False  # nothing to pin to; avoids a warning per epoch
    if train_args.kd_loss not in ("kl_div", "none"):
        raise DataError(f"unknown --kd_loss {train_args.kd_loss!r}", hint="use kl_div or none")
    path = check_model_folder(resolve_model_path(model_args.model_name_or_path))
    model_args.model_name_or_path = str(path)
    spec = build_spec(model_args)
    data = load_train_data(data_args.train_data, skip_invalid=data_args.skip_invalid)
    tokenizer = load_tokenizer(path)
    summary = summarize_data(data, tokenizer, spec)
    model = _training_model(path, spec, tokenizer, model_args, data_args, train_args)
    dataset = GroupDataset(data.examples, spec, data_args.train_group_size, seed=train_args.seed)
    chunk = train_args.grad_cache_chunk or train_args.per_device_train_batch_size
    if model_args.unified:
        chunk = 1 << 30  # one chunk per side: ColBERT vectors keep one padded width
    collator = GroupCollator(tokenizer, spec.query_max_length, spec.passage_max_length, chunk_size=chunk)
    callbacks = [MetricsCallback(Path(train_args.output_dir), plot=train_args.plot_loss)]
    eval_data = None
    if data_args.eval_data:
        eval_data = load_eval_data(data_args.eval_data, data_args.eval_split)
    trainer = EmbedkitTrainer(model=model, args=train_args, train_dataset=dataset, data_collator=collator,
                              processing_class=tokenizer, callbacks=callbacks, spec=spec, eval_data=eval_data)
    return trainer, summary


def _training_model(path: Path, spec: EmbedderSpec, tokenizer: Any, model_args: ModelArguments,
                    data_args: DataArguments, train_args: EmbedkitTrainingArguments) -> torch.nn.Module:
    """The encoder (LoRA-wrapped with ``--lora``) inside the training model: plain, or bge-m3's with ``--unified``."""
    encoder = load_model(path, trust_pickle=model_args.trust_pickle)
    if model_args.lora:
        encoder = apply_lora(encoder, model_args)
    common = dict(group_size=data_args.train_group_size, temperature=train_args.temperature,
                  in_batch_negatives=train_args.in_batch_negatives,
                  negatives_cross_device=train_args.negatives_cross_device,
                  kd_loss=None if train_args.kd_loss == "none" else train_args.kd_loss, kd_weight=train_args.kd_weight)
    if model_args.unified:
        return _m3_model(encoder, path, spec, tokenizer, model_args, train_args, common)
    return EmbedderTrainingModel(encoder, spec, **common)


def _m3_model(encoder: Any, path: Path, spec: EmbedderSpec, tokenizer: Any, model_args: ModelArguments,
              train_args: EmbedkitTrainingArguments, common: dict[str, Any]) -> Any:
    """The unified bge-m3 model: the folder's heads (or new ones, said once)."""
    if model_args.lora:
        raise DataError("--unified with --lora is not supported yet", hint="train all weights with --unified")
    if train_args.grad_cache_chunk:
        raise DataError("--unified with --grad_cache_chunk is not supported yet",
                        hint="lower --per_device_train_batch_size instead")
    hidden = int(encoder.config.hidden_size)
    heads = M3Heads.from_folder(path, hidden, trust_pickle=model_args.trust_pickle)
    fresh = M3Heads.create(hidden)
    missing = [n for n in ("sparse_linear", "colbert_linear") if getattr(heads, n) is None]
    for name in missing:
        setattr(heads, name, getattr(fresh, name))
    if missing:
        logger.warning("%s has no %s: starting %s from random initialization", path, " or ".join(missing),
                       "them" if len(missing) > 1 else "it")
    heads.train()
    return M3TrainingModel(encoder, heads, spec, tokenizer, self_distill=model_args.self_distill,
                           self_distill_start_step=model_args.self_distill_start_step, **common)


def train_steps(build: Callable[..., tuple[Any, dict[str, Any]]], model_args: ModelArguments,
                data_args: DataArguments, train_args: EmbedkitTrainingArguments
                ) -> tuple[Any, dict[str, Any], Any, Path, bool]:
    """What every fine-tuning run (embedder, bge-m3, reranker) does before saving: check a
    ``--resume_from_checkpoint`` folder (:func:`check_resume_checkpoint`), ``build`` the trainer, prepare OUTPUT
    (main process), evaluate "before", train, check that every process ended with the same weights.

    Returns ``(trainer, data summary, unwrapped model, final folder, evaluating)``."""
    if isinstance(train_args.resume_from_checkpoint, (str, Path)):
        check_resume_checkpoint(train_args.resume_from_checkpoint, trust_pickle=model_args.trust_pickle)
    trainer, summary = build(model_args, data_args, train_args)
    out = Path(train_args.output_dir)
    if trainer.is_world_process_zero():
        _prepare_output(out, summary, train_args)
    evaluating = trainer.eval_data is not None and trainer.is_world_process_zero()
    if evaluating and not train_args.resume_from_checkpoint:
        trainer.evaluate_retrieval("before", 0)
    trainer.train(resume_from_checkpoint=train_args.resume_from_checkpoint)
    inner = trainer.accelerator.unwrap_model(trainer.model)
    sharded = getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False)
    if torch.distributed.is_available() and torch.distributed.is_initialized() and not sharded:
        check_ranks_in_sync(inner)
    return trainer, summary, inner, out / (ADAPTER_DIR if model_args.lora else FINAL_MODEL_DIR), evaluating


def run(model_args: ModelArguments, data_args: DataArguments, train_args: EmbedkitTrainingArguments) -> Path:
    """Train, then save the final model to ``OUTPUT/model`` (and ``OUTPUT/adapter`` / ``OUTPUT/merged`` with LoRA).

    A ``--resume_from_checkpoint`` folder is checked first (:func:`check_resume_checkpoint`)."""
    trainer, summary, inner, final, evaluating = train_steps(build_trainer, model_args, data_args, train_args)
    out = Path(train_args.output_dir)
    if trainer.is_world_process_zero():
        card = {"training": {"data": ", ".join(summary["files"]), "rows": summary["rows"],
                             "steps": trainer.state.global_step, "group_size": data_args.train_group_size,
                             "temperature": train_args.temperature, "lora": model_args.lora},
                "base_model": model_args.model_name_or_path}
        if evaluating:
            card["metrics"] = _before_after(trainer, out)
        _save_final(trainer, inner, final, card, model_args)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return final


def _prepare_output(out: Path, summary: dict[str, Any], train_args: EmbedkitTrainingArguments) -> None:
    """Main process, before training: log the data summary, clear an earlier run (``--overwrite_output_dir``), write
    ``data_summary.json``."""
    logger.info("%s", format_summary(summary))
    if train_args.overwrite_output_dir and not train_args.resume_from_checkpoint:
        remove_previous_run(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "data_summary.json", "w") as fh:
        json.dump(summary, fh, indent=2)


def _save_final(trainer: EmbedkitTrainer, inner: Any, final: Path, card: dict[str, Any],
                model_args: ModelArguments) -> None:
    """Main process, after training: the model (or the LoRA adapter, and the merged model with ``--merge_lora``)."""
    if model_args.lora:
        save_adapter(inner.encoder, final, trainer.spec, trainer.processing_class)
        if model_args.merge_lora:
            merged = inner.encoder.merge_and_unload()
            save(merged, final.parent / MERGED_DIR, spec=trainer.spec, tokenizer=trainer.processing_class,
                 overwrite=True, card=card)
    else:
        save_trained(inner, final, trainer.spec, trainer.processing_class, card=card)


def check_ranks_in_sync(model: torch.nn.Module) -> bool:
    """After DDP training every process holds the same weights (bit for bit: the same averaged gradients, the same
    optimizer); compare a per-tensor fingerprint across processes and say so (a warning when they differ, e.g. for
    processes that never formed one DDP group). Returns whether they agree."""
    world = torch.distributed.get_world_size()
    local = torch.stack([torch.stack([p.detach().double().sum(), p.detach().double().square().sum()])
                         for p in model.parameters()]).to(_collective_device())
    parts = [torch.empty_like(local) for _ in range(world)]
    torch.distributed.all_gather(parts, local)
    gap = max(float((part - local).abs().max()) for part in parts)
    if gap > 0:
        logger.warning("the %d training processes ended with different weights (fingerprint gap %.3g): gradients "
                       "were not synchronised; the model saved is rank 0's", world, gap)
    elif torch.distributed.get_rank() == 0:
        logger.info("weights identical on all %d processes", world)
    return gap == 0


def _collective_device() -> torch.device:
    """Where tensors for a collective live: the current GPU with nccl, else the CPU."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _before_after(trainer: EmbedkitTrainer, out: Path) -> dict[str, str]:
    """Evaluate the trained model, plot before vs after, and return the model-card metrics table."""
    after = trainer.evaluate_retrieval("after")
    before = trainer.eval_results.get("before")
    if before is None:
        return {k: f"{v:.4f}" for k, v in after.metrics.items() if k in main_metrics(after.metrics)}
    plot_comparison([before, after], out / "eval_before_after.png", labels=["before", "after"],
                    title=f"Retrieval on {Path(str(after.data['folder'])).name} ({after.data['split']})")
    return {k: f"{before.metrics[k]:.4f} → {after.metrics[k]:.4f} ({after.metrics[k] - before.metrics[k]:+.4f})"
            for k in main_metrics(after.metrics)}
