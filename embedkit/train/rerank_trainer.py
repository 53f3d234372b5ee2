"""``embedkit finetune --reranker``: FlagEmbedding's reranker recipe on the Hugging Face ``Trainer``.

Same command, data format, argument groups and config files as embedder fine-tuning; same outputs (checkpoints,
``metrics.jsonl``, loss curve, ``data_summary.json``, model card, manifest); DDP through torchrun as the embedder path.
No GradCache: a group of pairs is one forward.

With ``--eval_data DIR --eval_retriever EMBEDDER``, the model being trained is evaluated two-stage before and after
training (and every ``--eval_steps``): the embedder retrieves (once; it does not change), the cross-encoder reranks
each query's top ``--eval_rerank_top_k`` exactly as :func:`embedkit.eval.evaluate_two_stage` does with the saved
folder, so the "after" metrics equal that function's on ``OUTPUT/model``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import batching
from ..errors import DataError
from ..eval.data import EvalData, load_eval_data
from ..eval.rerank import TwoStageResult, rerank_run
from ..eval.retrieval import DEFAULT_KS, EvalResult, compute_metrics, main_metrics, plot_comparison, retrieve
from ..folder.layout import check_model_folder, read_config
from ..folder.loading import load_tokenizer
from ..models import model_display_name, resolve_model_path
from ..rerank.features import pair_features
from ..rerank.spec import DEFAULT_MAX_LENGTH, RerankerSpec, is_reranker_config, load_reranker_spec
from ..spec import model_token_limit
from .arguments import DataArguments, EmbedkitTrainingArguments, ModelArguments
from .callbacks import MetricsCallback, append_metrics
from .data import load_train_data
from .dataset import GroupDataset, summarize_data
from .persist import MERGED_DIR
from .rerank_data import PairCollator, PairTexts, summary_spec
from .rerank_model import RerankerTrainingModel, apply_reranker_lora, load_reranker_model
from .rerank_persist import load_reranker_weights, save_reranker
from .trainer import EmbedkitTrainer, train_steps

logger = logging.getLogger("embedkit")

# embedder-only arguments: refused with --reranker (never silently ignored)
_EMBEDDER_ONLY = ("pooling", "normalize", "passage_instruction", "passage_instruction_format")


class TrainingScorer:
    """The cross-encoder being trained as :func:`embedkit.eval.rerank.rerank_run` asks of a reranker: ``compute_score``
    of (query, passage) pairs, computed exactly as :meth:`embedkit.Reranker.compute_score` computes them on the saved
    folder (query instruction, the spec's pair tokenization, length-sorted batches, fp32 logit of label 0)."""

    def __init__(self, encoder: torch.nn.Module, tokenizer: Any, spec: RerankerSpec, batch_size: int = 64) -> None:
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.spec = spec
        self.batch_size = batch_size
        self.precision = "fp32"

    def compute_score(self, pairs: list[tuple[str, str]], *, batch_size: int | None = None,
                      show_progress: bool | None = None) -> list[float]:
        """The raw logit of each pair, in input order."""
        out = np.empty(len(pairs), dtype=np.float32)
        if not pairs:
            return []
        spec = self.spec
        features = pair_features(self.tokenizer, [spec.prepare_query(q) for q, _ in pairs], [p for _, p in pairs],
                                 truncation=spec.truncation, max_length=spec.max_length,
                                 query_max_length=spec.resolved_query_max_length)
        device = next(self.encoder.parameters()).device
        for rows, padded in batching.padded_batches(features, self.tokenizer, batch_size or self.batch_size):
            tensors = {k: torch.from_numpy(v).to(device) for k, v in padded.items()}
            with torch.inference_mode():
                out[rows] = self.encoder(**tensors).logits[:, 0].float().cpu().numpy()
        return [float(v) for v in out]


class RerankerTrainer(EmbedkitTrainer):
    """``EmbedkitTrainer`` whose saves and resumes are a cross-encoder's (:mod:`embedkit.train.rerank_persist`), and
    whose evaluation is two-stage (``--eval_retriever`` retrieves, the model being trained reranks)."""

    retriever: str | None = None
    rerank_top_k: int = 100
    _retrieval: tuple[dict[str, dict[str, float]], EvalResult] | None = None

    def retrieval_stage(self) -> tuple[dict[str, dict[str, float]], EvalResult]:
        """``(run, result)`` of the retriever alone on the eval data, computed once (the retriever does not train):
        each query's top ``max(max(ks), top_k)`` documents, as :func:`embedkit.eval.evaluate_two_stage` retrieves."""
        if self._retrieval is None:
            from ..embedder import Embedder

            t0 = time.perf_counter()
            data: EvalData = self.eval_data
            embedder = Embedder(self.retriever, show_progress=False)
            ks = DEFAULT_KS
            run, _ = retrieve(embedder, data, max(max(ks), self.rerank_top_k), cache_dir=None)
            cut = {q: dict(list(docs.items())[:max(ks)]) for q, docs in run.items()}
            result = EvalResult(model=model_display_name(self.retriever), data=data.summary(),
                                metrics=compute_metrics(data.qrels, cut, ks), ks=ks,
                                seconds=time.perf_counter() - t0, extra={"stage": "retrieval"})
            self._retrieval = (run, result)
        return self._retrieval

    def evaluate_retrieval(self, phase: str, step: int | None = None) -> TwoStageResult:
        """Two-stage metrics of the model as it is now (eval mode, the training spec); logged to ``metrics.jsonl``
        as ``{"phase": phase, "eval": {reranked metrics}, "retrieval": {retriever-only metrics}, "rerank_top_k"}``."""
        run, retrieval = self.retrieval_stage()
        encoder = self.accelerator.unwrap_model(self.model).encoder
        was_training = encoder.training
        encoder.eval()
        t0 = time.perf_counter()
        try:
            scorer = TrainingScorer(encoder, self.processing_class, self.spec,
                                    batch_size=self.args.per_device_eval_batch_size * 8)
            reranked_run, pairs = rerank_run(scorer, self.eval_data, run, self.rerank_top_k, show_progress=False)
        finally:
            encoder.train(was_training)
        reranked = EvalResult(model=f"{retrieval.model} + {phase} (top {self.rerank_top_k})",
                              data=retrieval.data, metrics=compute_metrics(self.eval_data.qrels, reranked_run,
                                                                           retrieval.ks),
                              ks=retrieval.ks, seconds=time.perf_counter() - t0,
                              extra={"stage": "rerank", "reranker": phase, "top_k": self.rerank_top_k,
                                     "pairs": pairs, "precision": "fp32"})
        result = TwoStageResult(retrieval=retrieval, reranked=reranked)
        self.eval_results[phase] = result
        line = {"step": self.state.global_step if step is None else step, "phase": phase, "eval": reranked.metrics,
                "retrieval": retrieval.metrics, "rerank_top_k": self.rerank_top_k}
        append_metrics(Path(self.args.output_dir) / "metrics.jsonl", line)
        main = {k: v for k, v in reranked.metrics.items() if k.endswith("@10")}
        logger.info("two-stage eval (%s, top %d): %s", phase, self.rerank_top_k,
                    ", ".join(f"{k} {v:.4f}" for k, v in main.items()))
        return result

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
                     ("--negatives_cross_device", train_args.negatives_cross_device)):
        if on:
            given.append(flag)
    if given:
        raise DataError(f"{', '.join(given)} do(es) not apply to --reranker",
                        hint="a reranker scores (query, passage) pairs: drop embedder-only flags (pooling, "
                             "normalize, passage instruction, bge-m3, GradCache, cross-device negatives)")
    if data_args.eval_data and not data_args.eval_retriever:
        raise DataError("--eval_data with --reranker needs --eval_retriever: the evaluation is two-stage (an "
                        "embedder retrieves, the reranker being trained reranks its top --eval_rerank_top_k)",
                        hint="e.g. --eval_retriever minilm (or your fine-tuned embedder's folder)")
    if data_args.eval_retriever and not data_args.eval_data:
        raise DataError("--eval_retriever is used by the two-stage evaluation of --eval_data, which is not given",
                        hint="add --eval_data DIR (a BEIR-layout folder), or drop --eval_retriever")
    if data_args.eval_rerank_top_k < 1:
        raise DataError(f"--eval_rerank_top_k must be at least 1, got {data_args.eval_rerank_top_k}",
                        hint="e.g. --eval_rerank_top_k 100")
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
    eval_data = None
    if data_args.eval_data:
        eval_data = load_eval_data(data_args.eval_data, data_args.eval_split)
        check_model_folder(resolve_model_path(data_args.eval_retriever))  # a bad retriever fails before training
    trainer = RerankerTrainer(model=model, args=train_args, train_dataset=dataset, data_collator=collator,
                              processing_class=tokenizer, callbacks=callbacks, spec=spec, eval_data=eval_data)
    trainer.retriever, trainer.rerank_top_k = data_args.eval_retriever, data_args.eval_rerank_top_k
    return trainer, summary


def run_reranker(model_args: ModelArguments, data_args: DataArguments, train_args: EmbedkitTrainingArguments
                 ) -> Path:
    """Train a cross-encoder; save it to ``OUTPUT/model`` (``OUTPUT/adapter`` [+ ``OUTPUT/merged``] with LoRA)."""
    trainer, summary, inner, final, evaluating = train_steps(build_reranker_trainer, model_args, data_args, train_args)
    out = Path(train_args.output_dir)
    if trainer.is_world_process_zero():
        card = {"base_model": model_display_name(model_args.model_name_or_path),
                "training": {"recipe": "FlagEmbedding reranker (group cross-entropy, positive first)",
                             "data": ", ".join(summary["files"]), "rows": summary["rows"],
                             "steps": trainer.state.global_step, "group_size": data_args.train_group_size,
                             "fresh_head": summary["reranker"]["fresh_head"], "lora": model_args.lora}}
        if evaluating:
            card["metrics"] = _before_after(trainer, out)
        encoder = inner.encoder
        save_reranker(encoder, final, trainer.spec, trainer.processing_class, card=card)
        if model_args.lora and model_args.merge_lora:
            save_reranker(encoder.merge_and_unload(), final.parent / MERGED_DIR, trainer.spec,
                          trainer.processing_class, card=card)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return final


def _before_after(trainer: RerankerTrainer, out: Path) -> dict[str, str]:
    """Evaluate the trained reranker two-stage, plot retrieval only / before / after, and return the model card's
    metrics table (reranked metrics, before -> after)."""
    after = trainer.evaluate_retrieval("after").reranked
    retrieval = trainer.eval_results["after"].retrieval
    before = trainer.eval_results.get("before")
    keys = main_metrics(after.metrics)
    if before is None:
        return {k: f"{after.metrics[k]:.4f}" for k in keys}
    before = before.reranked
    plot_comparison([retrieval, before, after], out / "eval_before_after.png",
                    labels=["retrieval only", "+ reranker before", "+ reranker after"],
                    title=f"Two-stage on {Path(str(after.data['folder'])).name} ({after.data['split']}), "
                          f"top {trainer.rerank_top_k} reranked")
    return {k: f"{before.metrics[k]:.4f} → {after.metrics[k]:.4f} ({after.metrics[k] - before.metrics[k]:+.4f}; "
               f"retrieval only {retrieval.metrics[k]:.4f})" for k in keys}
