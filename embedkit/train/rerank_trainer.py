"""``embedkit finetune --reranker``: FlagEmbedding's reranker recipe on the Hugging Face ``Trainer``.

Same command, data format, argument groups and config files as embedder fine-tuning; same outputs (checkpoints,
``metrics.jsonl``, loss curve, ``data_summary.json``, model card, manifest); DDP through torchrun as the embedder path.
No GradCache: a group of pairs is one forward.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ..errors import DataError
from ..folder.layout import check_model_folder, read_config
from ..folder.loading import load_tokenizer
from ..models import model_display_name, resolve_model_path
from ..rerank.spec import DEFAULT_MAX_LENGTH, RerankerSpec, is_reranker_config, load_reranker_spec
from ..spec import model_token_limit
from .arguments import DataArguments, EmbedkitTrainingArguments, ModelArguments
from .callbacks import MetricsCallback
from .data import load_train_data
from .dataset import GroupDataset, summarize_data
from .persist import ADAPTER_DIR, FINAL_MODEL_DIR, MERGED_DIR, check_resume_checkpoint
from .rerank_data import PairCollator, PairTexts, summary_spec
from .rerank_model import RerankerTrainingModel, apply_reranker_lora, load_reranker_model
from .rerank_persist import load_reranker_weights, save_reranker
from .trainer import EmbedkitTrainer, _prepare_output, check_ranks_in_sync

logger = logging.getLogger("embedkit")

# embedder-only arguments: refused with --reranker (never silently ignored)
_EMBEDDER_ONLY = ("pooling", "normalize", "passage_instruction", "passage_instruction_format")


class RerankerTrainer(EmbedkitTrainer):
    """``EmbedkitTrainer`` whose saves and resumes are a cross-encoder's (:mod:`embedkit.train.rerank_persist`)."""

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if self.args.should_save:
            inner = self.accelerator.unwrap_model(self.model)
            save_reranker(inner.encoder, Path(output_dir or self.args.output_dir), self.spec, self.processing_class)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        inner = self.accelerator.unwrap_model(model or self.model)
        load_reranker_weights(inner.encoder, Path(resume_from_checkpoint))


def build_reranker_spec(path: Path, model_args: ModelArguments) -> RerankerSpec:
    """The spec training tokenizes with, and the saved folder records: a cross-encoder folder's own (resolved as
    :class:`embedkit.Reranker` does), or FlagEmbedding's conventions for an embedding model."""
    overrides = {"max_length": model_args.max_length, "query_max_length": model_args.query_max_length,
                 "query_instruction": model_args.query_instruction,
                 "query_instruction_format": model_args.query_instruction_format}
    config = read_config(path)
    if is_reranker_config(config):
        return load_reranker_spec(path, overrides)
    limit = model_token_limit(path, config)
    given = {k: v for k, v in overrides.items() if v is not None}
    prov = {k: "argument" for k in given}
    prov.setdefault("truncation", "FlagEmbedding's reranker recipe (new head)")
    if "max_length" not in given:
        given["max_length"] = min(DEFAULT_MAX_LENGTH, limit) if limit else DEFAULT_MAX_LENGTH
        prov["max_length"] = f"default {DEFAULT_MAX_LENGTH} (FlagEmbedding's), capped at the model's limit"
    prov.setdefault("query_max_length", "default: 3/4 of max_length (FlagReranker's)")
    prov.update(activation="default for one label (CrossEncoder's)", num_labels="new one-label head")
    return RerankerSpec(truncation="flagembedding", provenance=prov, **given).validate(limit)


def _check_arguments(model_args: ModelArguments, data_args: DataArguments,
                     train_args: EmbedkitTrainingArguments) -> None:
    """Refuse what the reranker recipe does not do, naming the flag."""
    if data_args.train_group_size < 2:
        raise DataError("--reranker needs --train_group_size of at least 2 (1 positive + negatives): the loss is a "
                        "softmax over each group", hint="e.g. --train_group_size 8")
    given = [f"--{k}" for k in _EMBEDDER_ONLY if getattr(model_args, k) is not None]
    for flag, on in (("--unified", model_args.unified), ("--self_distill", model_args.self_distill),
                     ("--grad_cache_chunk", bool(train_args.grad_cache_chunk)),
                     ("--negatives_cross_device", train_args.negatives_cross_device),
                     ("--eval_data", bool(data_args.eval_data))):
        if on:
            given.append(flag)
    if given:
        raise DataError(f"{', '.join(given)} do(es) not apply to --reranker",
                        hint="a reranker scores (query, passage) pairs: drop embedder-only flags (pooling, "
                             "normalize, passage instruction, bge-m3, GradCache, cross-device negatives); two-stage "
                             "evaluation during reranker training is not implemented yet")
    if train_args.kd_loss not in ("kl_div", "none"):
        raise DataError(f"unknown --kd_loss {train_args.kd_loss!r}", hint="use kl_div or none")


def build_reranker_trainer(model_args: ModelArguments, data_args: DataArguments,
                           train_args: EmbedkitTrainingArguments) -> tuple[RerankerTrainer, dict[str, Any]]:
    """Validate, resolve the spec, load (or make) the cross-encoder, and wire up the trainer."""
    _check_arguments(model_args, data_args, train_args)
    if not torch.cuda.is_available():
        train_args.dataloader_pin_memory = False
    path = check_model_folder(resolve_model_path(model_args.model_name_or_path))
    model_args.model_name_or_path = str(path)
    spec = build_reranker_spec(path, model_args)
    passage_max = model_args.passage_max_length if spec.truncation == "flagembedding" else None
    if model_args.passage_max_length is not None and passage_max is None:
        raise DataError("--passage_max_len applies to the flagembedding truncation only",
                        hint=f"{path.name} truncates pairs longest_first (CrossEncoder); drop --passage_max_len")
    data = load_train_data(data_args.train_data, skip_invalid=data_args.skip_invalid)
    tokenizer = load_tokenizer(path)
    texts = PairTexts(spec, passage_max)
    summary = summarize_data(data, tokenizer, summary_spec(texts))
    summary["reranker"] = {"truncation": spec.truncation, "max_length": spec.max_length}
    encoder, fresh = load_reranker_model(path, trust_pickle=model_args.trust_pickle, seed=train_args.seed)
    summary["reranker"]["fresh_head"] = fresh
    encoder.train()
    if model_args.lora:
        encoder = apply_reranker_lora(encoder, model_args)
    model = RerankerTrainingModel(encoder, group_size=data_args.train_group_size,
                                  kd_loss=None if train_args.kd_loss == "none" else train_args.kd_loss,
                                  kd_weight=train_args.kd_weight)
    dataset = GroupDataset(data.examples, texts, data_args.train_group_size, seed=train_args.seed)
    collator = PairCollator(tokenizer, spec, passage_max)
    callbacks = [MetricsCallback(Path(train_args.output_dir), plot=train_args.plot_loss)]
    trainer = RerankerTrainer(model=model, args=train_args, train_dataset=dataset, data_collator=collator,
                              processing_class=tokenizer, callbacks=callbacks, spec=spec, eval_data=None)
    return trainer, summary


def run_reranker(model_args: ModelArguments, data_args: DataArguments, train_args: EmbedkitTrainingArguments
                 ) -> Path:
    """Train a cross-encoder; save it to ``OUTPUT/model`` (``OUTPUT/adapter`` [+ ``OUTPUT/merged``] with LoRA)."""
    if isinstance(train_args.resume_from_checkpoint, (str, Path)):
        check_resume_checkpoint(train_args.resume_from_checkpoint, trust_pickle=model_args.trust_pickle)
    trainer, summary = build_reranker_trainer(model_args, data_args, train_args)
    out = Path(train_args.output_dir)
    if trainer.is_world_process_zero():
        _prepare_output(out, summary, train_args)
    trainer.train(resume_from_checkpoint=train_args.resume_from_checkpoint)
    inner = trainer.accelerator.unwrap_model(trainer.model)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        check_ranks_in_sync(inner)
    final = out / (ADAPTER_DIR if model_args.lora else FINAL_MODEL_DIR)
    if trainer.is_world_process_zero():
        card = {"base_model": model_display_name(model_args.model_name_or_path),
                "training": {"recipe": "FlagEmbedding reranker (group cross-entropy, positive first)",
                             "data": ", ".join(summary["files"]), "rows": summary["rows"],
                             "steps": trainer.state.global_step, "group_size": data_args.train_group_size,
                             "fresh_head": summary["reranker"]["fresh_head"], "lora": model_args.lora}}
        encoder = inner.encoder
        save_reranker(encoder, final, trainer.spec, trainer.processing_class, card=card)
        if model_args.lora and model_args.merge_lora:
            save_reranker(encoder.merge_and_unload(), final.parent / MERGED_DIR, trainer.spec,
                          trainer.processing_class, card=card)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return final
