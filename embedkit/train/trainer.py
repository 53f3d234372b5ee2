"""Fine-tuning on the Hugging Face ``Trainer``: DDP (torchrun), DeepSpeed, bf16/fp16, resume and logging come from the
ecosystem; embedkit adds the data, the loss, GradCache, and saving through :func:`embedkit.checkpoint.save`.
"""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .._io import atomic_dir, atomic_write
from .._optional import available, require
from ..batching import batches, length_sorted_order, pad_features
from ..checkpoint.convert import read_weights
from ..checkpoint.manifest import write_manifest
from ..checkpoint.save import save
from ..embedder import Embedder
from ..errors import CheckpointError, DataError, EmbedkitError
from ..eval.data import load_eval_data
from ..eval.retrieval import evaluate, main_metrics, plot_comparison
from ..folder.layout import check_model_folder
from ..folder.loading import load_model, load_tokenizer
from ..folder.safe_load import load_pickle, load_state_dict
from ..m3 import M3Heads
from ..models import resolve_model_path
from ..spec import EmbedderSpec, load_spec, write_sentence_transformers_files
from .arguments import DataArguments, EmbedkitTrainingArguments, ModelArguments, parse_args
from .data import LoadResult, TrainExample, load_train_data, sample_group
from .m3 import M3TrainingModel
from .model import EmbedderTrainingModel, grad_cache_step

logger = logging.getLogger("embedkit")

FINAL_MODEL_DIR = "model"
ADAPTER_DIR = "adapter"
MERGED_DIR = "merged"

# peft target modules per architecture (attention + feed-forward projections)
LORA_TARGETS = {
    "bert": ["query", "key", "value", "dense"],
    "roberta": ["query", "key", "value", "dense"],
    "xlm-roberta": ["query", "key", "value", "dense"],
    "mpnet": ["q", "k", "v", "o", "intermediate.dense", "output.dense"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


# ---------------------------------------------------------------------- data
class GroupDataset(torch.utils.data.Dataset):
    """Each item: the formatted query and ``group_size`` formatted passages (positive first), plus teacher scores."""

    def __init__(self, examples: list[TrainExample], spec: EmbedderSpec, group_size: int, seed: int = 42) -> None:
        self.examples = examples
        self.spec = spec
        self.group_size = group_size
        self.seed = seed
        self._calls = [0] * len(examples)
        self.pool = list(dict.fromkeys(p for ex in examples for p in ex.pos + ex.neg))
        self._warned_random = False

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ex = self.examples[i]
        rng = random.Random(self.seed * 1_000_003 + i * 7919 + self._calls[i])
        self._calls[i] += 1
        passages, scores, used_random = sample_group(ex, self.group_size, rng, self.pool)
        if used_random and not self._warned_random:
            self._warned_random = True
            logger.warning("some rows have no negatives (e.g. %s): drawing random passages from other rows",
                           ex.source)
        query = self.spec.prepare_query(ex.query, ex.prompt)
        passages = [self.spec.prepare_passage(p) for p in passages]
        return {"query": query, "passages": passages, "scores": scores}


@dataclass
class GroupCollator:
    """Tokenizes a batch of groups: queries at the query max length, passages at the passage max length.

    Each side is sorted by token length and cut into chunks of ``chunk_size`` sequences, each padded only to its own
    longest (the inference batching of :mod:`embedkit.batching`): less padding than one padded block, and the
    chunks GradCache needs. ``order`` maps the concatenated chunk outputs back to input order.
    """

    tokenizer: Any
    query_max_length: int
    passage_max_length: int
    chunk_size: int = 32

    def _side(self, texts: list[str], max_length: int) -> dict[str, Any]:
        enc = self.tokenizer(texts, truncation=True, max_length=max_length, padding=False)
        features = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        order = length_sorted_order([len(ids) for ids in features["input_ids"]])
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        side = getattr(self.tokenizer, "padding_side", "right")
        chunks = [{k: torch.from_numpy(v) for k, v in pad_features(features, rows, pad_id, side).items()}
                  for rows in batches(order, self.chunk_size)]
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return {"chunks": chunks, "order": torch.from_numpy(inverse)}

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {
            "query": self._side([it["query"] for it in items], self.query_max_length),
            "passage": self._side([p for it in items for p in it["passages"]], self.passage_max_length),
        }
        if all(it["scores"] is not None for it in items):
            batch["teacher_scores"] = torch.tensor([it["scores"] for it in items], dtype=torch.float32)
        return batch


def summarize_data(data: LoadResult, tokenizer: Any, spec: EmbedderSpec, sample: int = 2000) -> dict[str, Any]:
    """Rows, skipped, negatives per row, and token-length percentiles vs the max lengths (how much is truncated)."""
    rng = random.Random(0)
    rows = data.examples
    picked = rows if len(rows) <= sample else rng.sample(rows, sample)
    q_lens = [len(ids) for ids in tokenizer([spec.prepare_query(r.query, r.prompt) for r in picked],
                                            add_special_tokens=True)["input_ids"]]
    passages = [spec.prepare_passage(p) for r in picked for p in (r.pos + r.neg)[:4]]
    p_lens = [len(ids) for ids in tokenizer(passages, add_special_tokens=True)["input_ids"]] if passages else [0]
    negs = [len(r.neg) for r in rows]

    def pct(lens: list[int]) -> dict[str, int]:
        return {f"p{q}": int(np.percentile(lens, q)) for q in (50, 90, 99)} | {"max": int(max(lens))}

    return {
        "files": [str(f) for f in data.files], "rows": len(rows), "skipped": len(data.skipped),
        "negatives_per_row": {"min": min(negs), "mean": round(float(np.mean(negs)), 2), "max": max(negs),
                              "rows_without": sum(1 for n in negs if n == 0)},
        "with_teacher_scores": sum(1 for r in rows if r.has_scores),
        "query_tokens": pct(q_lens), "query_max_length": spec.query_max_length,
        "queries_truncated_pct": round(100 * float(np.mean([n > spec.query_max_length for n in q_lens])), 1),
        "passage_tokens": pct(p_lens), "passage_max_length": spec.passage_max_length,
        "passages_truncated_pct": round(100 * float(np.mean([n > spec.passage_max_length for n in p_lens])), 1),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The data summary as a few readable lines (printed before training starts)."""
    neg, q, p = summary["negatives_per_row"], summary["query_tokens"], summary["passage_tokens"]
    return "\n".join([
        f"training data: {summary['rows']} rows ({summary['skipped']} skipped) from {', '.join(summary['files'])}",
        f"  negatives per row: min {neg['min']}, mean {neg['mean']}, max {neg['max']} "
        f"({neg['rows_without']} rows without: random passages from other rows are used)",
        f"  rows with teacher scores: {summary['with_teacher_scores']}",
        f"  query tokens p50/p90/p99/max {q['p50']}/{q['p90']}/{q['p99']}/{q['max']} vs max length "
        f"{summary['query_max_length']}: {summary['queries_truncated_pct']}% truncated",
        f"  passage tokens p50/p90/p99/max {p['p50']}/{p['p90']}/{p['p99']}/{p['max']} vs max length "
        f"{summary['passage_max_length']}: {summary['passages_truncated_pct']}% truncated",
    ])


# ---------------------------------------------------------------------- callbacks
class MetricsCallback(TrainerCallback):
    """Appends every log to ``OUTPUT/metrics.jsonl`` and draws ``OUTPUT/loss_curve.png`` at the end."""

    def __init__(self, output_dir: Path, plot: bool = True) -> None:
        self.path = output_dir / "metrics.jsonl"
        self.plot = plot

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 - Trainer's callback signature
        if state.is_world_process_zero and logs:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if state.is_world_process_zero and self.plot:
            plot_loss_curve(self.path, self.path.parent / "loss_curve.png")


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


# ---------------------------------------------------------------------- trainer
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
        path = Path(self.args.output_dir) / "metrics.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")
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


def save_trained(model: EmbedderTrainingModel, folder: Path, spec: EmbedderSpec, tokenizer: Any,
                 card: dict[str, Any] | None = None) -> None:
    """Save the encoder (or LoRA adapter) through :func:`embedkit.checkpoint.save` so it encodes as it was trained."""
    encoder = model.encoder
    if _is_peft(encoder):
        save_adapter(encoder, folder, spec, tokenizer)
        return
    save(encoder, folder, spec=spec, tokenizer=tokenizer, overwrite=True, card=card,
         m3_heads=getattr(model, "heads", None))


def save_adapter(encoder: Any, folder: Path, spec: EmbedderSpec, tokenizer: Any) -> None:
    """A LoRA adapter folder (peft files + tokenizer + the spec as sentence-transformers files), atomically."""
    with atomic_dir(folder, overwrite=True) as tmp:
        encoder.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        write_sentence_transformers_files(tmp, spec, int(encoder.base_model.model.config.hidden_size))
        write_manifest(tmp)


def load_trained_weights(model: EmbedderTrainingModel, folder: Path) -> None:
    """Resume: load the encoder (or adapter) weights written by :func:`save_trained` from ``folder``."""
    if _is_peft(model.encoder):
        from peft import set_peft_model_state_dict

        files = [folder / "adapter_model.safetensors", folder / "adapter_model.bin"]
        found = next((f for f in files if f.is_file()), None)
        if found is None:
            raise EmbedkitError(f"{folder} holds no adapter weights to resume from")
        set_peft_model_state_dict(model.encoder, load_state_dict(found))
        return
    state, _ = read_weights(folder)
    if getattr(model, "heads", None) is not None:
        saved = M3Heads.from_folder(folder, int(model.encoder.config.hidden_size))
        model.heads.load_state_dict(saved.state_dict())
    missing, unexpected = model.encoder.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("pooler.", "embeddings.position_ids"))]
    if missing or unexpected:
        raise EmbedkitError(f"cannot resume from {folder}: {len(missing)} missing / {len(unexpected)} unexpected "
                            f"tensors (e.g. {(missing or unexpected)[:3]})", hint="resume from a checkpoint of the "
                            "same model and the same --lora setting")


def _is_peft(model: Any) -> bool:
    return available("peft") and isinstance(model, require("peft").PeftModel)


# ---------------------------------------------------------------------- building and running
def build_spec(model_args: ModelArguments) -> EmbedderSpec:
    """The one recipe: resolved from the checkpoint + arguments exactly as :class:`embedkit.Embedder` does."""
    overrides = {k: getattr(model_args, k) for k in (
        "pooling", "normalize", "query_instruction", "query_instruction_format", "passage_instruction",
        "passage_instruction_format", "query_max_length", "passage_max_length")}
    return load_spec(model_args.model_name_or_path, overrides)


def apply_lora(encoder: Any, model_args: ModelArguments) -> Any:
    """Wrap ``encoder`` in a peft LoRA model (target modules chosen per architecture unless given)."""
    peft = require("peft", "--lora")
    if model_args.lora_target_modules:
        targets = [t.strip() for t in model_args.lora_target_modules.split(",") if t.strip()]
    else:
        model_type = getattr(encoder.config, "model_type", "")
        if model_type not in LORA_TARGETS:
            raise EmbedkitError(f"no default LoRA target modules for model type {model_type!r}",
                                hint="pass --lora_target_modules name1,name2 (module names of the attention layers)")
        targets = LORA_TARGETS[model_type]
    config = peft.LoraConfig(r=model_args.lora_r, lora_alpha=model_args.lora_alpha,
                             lora_dropout=model_args.lora_dropout, target_modules=targets, bias="none")
    return peft.get_peft_model(encoder, config)


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
    encoder = load_model(path, trust_pickle=model_args.trust_pickle)
    if model_args.lora:
        encoder = apply_lora(encoder, model_args)
    common = dict(group_size=data_args.train_group_size, temperature=train_args.temperature,
                  in_batch_negatives=train_args.in_batch_negatives,
                  negatives_cross_device=train_args.negatives_cross_device,
                  kd_loss=None if train_args.kd_loss == "none" else train_args.kd_loss, kd_weight=train_args.kd_weight)
    if model_args.unified:
        model = _m3_model(encoder, path, spec, tokenizer, model_args, train_args, common)
    else:
        model = EmbedderTrainingModel(encoder, spec, **common)
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


_RESUME_PICKLE_SUFFIXES = (".pt", ".pth", ".bin")
_RESUME_NOT_LOADED = ("training_args.bin",)  # written by Trainer, never read back on resume


def check_resume_checkpoint(folder: str | Path, *, trust_pickle: bool = False) -> Path:
    """Refuse to resume from ``folder`` when one of its ``.pt`` / ``.pth`` / ``.bin`` files (optimizer, scheduler,
    scaler, RNG state, DeepSpeed shards...) needs more than ``torch.load(weights_only=True)``: such a file can run
    code when the Trainer (or DeepSpeed) loads it. ``trust_pickle`` skips the check. Returns the folder.

    Raises :class:`~embedkit.errors.CheckpointError` naming the file, or the folder when it does not exist.
    """
    from transformers.trainer_pt_utils import safe_globals


    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"--resume_from_checkpoint {folder}: no such checkpoint folder",
                              hint="pass a checkpoint-N folder written by a previous run (under --output_dir)")
    if trust_pickle:
        return folder
    for path in sorted(folder.rglob("*")):
        if path.suffix in _RESUME_PICKLE_SUFFIXES and path.name not in _RESUME_NOT_LOADED and path.is_file():
            with safe_globals():  # the numpy types Trainer itself allows for RNG states
                load_pickle(path)  # CheckpointError naming the file when it needs full unpickling
    return folder


def _remove_previous_run(out: Path) -> None:
    """``--overwrite_output_dir``: remove an earlier run's checkpoints and metrics so the two runs never mix (its
    final model folders are replaced atomically when this run saves)."""
    import shutil

    old = sorted(p for p in out.glob("checkpoint-*") if p.is_dir()) + [p for p in (out / "metrics.jsonl",)
                                                                        if p.is_file()]
    if old:
        logger.warning("--overwrite_output_dir: removing the earlier run's %s from %s",
                       ", ".join(p.name for p in old), out)
    for p in old:
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def run(model_args: ModelArguments, data_args: DataArguments, train_args: EmbedkitTrainingArguments) -> Path:
    """Train, then save the final model to ``OUTPUT/model`` (and ``OUTPUT/adapter`` / ``OUTPUT/merged`` with LoRA).

    A ``--resume_from_checkpoint`` folder is checked first (:func:`check_resume_checkpoint`)."""
    if isinstance(train_args.resume_from_checkpoint, (str, Path)):
        check_resume_checkpoint(train_args.resume_from_checkpoint, trust_pickle=model_args.trust_pickle)
    trainer, summary = build_trainer(model_args, data_args, train_args)
    out = Path(train_args.output_dir)
    if trainer.is_world_process_zero():
        logger.info("%s", format_summary(summary))
        if train_args.overwrite_output_dir and not train_args.resume_from_checkpoint:
            _remove_previous_run(out)
        out.mkdir(parents=True, exist_ok=True)

        with atomic_write(out / "data_summary.json", "w") as fh:
            json.dump(summary, fh, indent=2)
    evaluating = trainer.eval_data is not None and trainer.is_world_process_zero()
    if evaluating and not train_args.resume_from_checkpoint:
        trainer.evaluate_retrieval("before", 0)
    trainer.train(resume_from_checkpoint=train_args.resume_from_checkpoint)
    inner = trainer.accelerator.unwrap_model(trainer.model)
    sharded = getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False)
    if torch.distributed.is_available() and torch.distributed.is_initialized() and not sharded:
        check_ranks_in_sync(inner)
    final = out / (ADAPTER_DIR if model_args.lora else FINAL_MODEL_DIR)
    if trainer.is_world_process_zero():
        card = {"training": {"data": ", ".join(summary["files"]), "rows": summary["rows"],
                             "steps": trainer.state.global_step, "group_size": data_args.train_group_size,
                             "temperature": train_args.temperature, "lora": model_args.lora},
                "base_model": model_args.model_name_or_path}
        if evaluating:
            card["metrics"] = _before_after(trainer, out)
        if model_args.lora:
            save_adapter(inner.encoder, final, trainer.spec, trainer.processing_class)
            if model_args.merge_lora:
                merged = inner.encoder.merge_and_unload()
                save(merged, out / MERGED_DIR, spec=trainer.spec, tokenizer=trainer.processing_class,
                     overwrite=True, card=card)
        else:
            save_trained(inner, final, trainer.spec, trainer.processing_class, card=card)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return final


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


def main(argv: list[str] | None = None) -> int:
    """``python -m embedkit.train ...`` / ``torchrun ... -m embedkit.train ...`` / ``embedkit finetune ...``."""
    import sys


    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        final = run(*parse_args(sys.argv[1:] if argv is None else argv))
    except EmbedkitError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"trained model: {final}")
    return 0
