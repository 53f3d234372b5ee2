"""Fine-tuning arguments: dataclasses on top of ``transformers.TrainingArguments`` (CLI flags, JSON or YAML)."""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from transformers import TrainingArguments

from .._optional import require
from ..errors import ArgumentError, DataError, EmbedkitError
from .flag_compat import ALIASES, alias_help, translate

logger = logging.getLogger("embedkit")


@dataclass
class ModelArguments:
    """The model to fine-tune and its embedding recipe (``None``: resolved from the checkpoint, as in encoding)."""

    model_name_or_path: str = field(metadata={"help": "Local model folder (or 'minilm'). Never downloaded."})
    pooling: str | None = field(default=None, metadata={"help": "cls | mean | last_token."})
    normalize: bool | None = field(default=None, metadata={"help": "L2-normalize the vectors (true/false)."})
    query_instruction: str | None = field(default=None, metadata={"help": "Instruction put before each query."})
    query_instruction_format: str | None = field(default=None, metadata={"help": 'Format, e.g. "{}{}".'})
    passage_instruction: str | None = field(default=None, metadata={"help": "Instruction before each passage."})
    passage_instruction_format: str | None = field(default=None, metadata={"help": 'Format, e.g. "{}{}".'})
    query_max_length: int | None = field(default=None, metadata={"help": "Token limit for queries.",
                                                                 "aliases": ["--query_max_len"]})
    passage_max_length: int | None = field(default=None, metadata={"help": "Token limit for passages.",
                                                                   "aliases": ["--passage_max_len"]})
    reranker: bool = field(default=False, metadata={"help": "Train a cross-encoder reranker (FlagEmbedding's recipe; "
                                                    "an embedding model gets a fresh one-label head)."})
    max_length: int | None = field(default=None, metadata={"help": "--reranker: token limit of the joined (query, "
                                                            "passage) pair.", "aliases": ["--max_len"]})
    lora: bool = field(default=False, metadata={"help": "Train a LoRA adapter (peft) instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.1, metadata={"help": "LoRA dropout."})
    lora_target_modules: str | None = field(
        default=None, metadata={"help": "Comma-separated module names (default: chosen per architecture)."})
    merge_lora: bool = field(default=False, metadata={"help": "Also save the merged model (OUTPUT/merged)."})
    unified: bool = field(
        default=False, metadata={"help": "bge-m3: train dense, sparse and ColBERT together (heads from the model "
                                 "folder, or new ones)."})
    self_distill: bool = field(default=False, metadata={"help": "bge-m3 --unified: KL of each mode toward the "
                                                        "ensemble's distribution."})
    self_distill_start_step: int = field(default=-1, metadata={"help": "Step after which self-distillation starts."})
    trust_pickle: bool = field(default=False, metadata={"help": "Allow full unpickling of .bin weights."})


@dataclass
class DataArguments:
    """Training data (FlagEmbedding jsonl) and how groups are built."""

    train_data: list[str] = field(default_factory=list, metadata={"help": "jsonl files or folders."})
    train_group_size: int = field(default=8, metadata={"help": "1 positive + (N - 1) negatives per query."})
    skip_invalid: bool = field(default=False, metadata={"help": "Skip invalid rows (counted) instead of failing."})
    eval_data: str | None = field(
        default=None, metadata={"help": "BEIR-layout folder: retrieval metrics before and after training "
                                "(and every --eval_steps steps)."})
    eval_split: str = field(default="test", metadata={"help": "Split of --eval_data to use."})
    eval_retriever: str | None = field(
        default=None, metadata={"help": "--reranker with --eval_data: the embedding model that retrieves; the "
                                "reranker being trained reranks its top --eval_rerank_top_k (two-stage evaluation)."})
    eval_rerank_top_k: int = field(default=100, metadata={"help": "--reranker: documents per query reranked in the "
                                                          "two-stage evaluation."})


@dataclass
class EmbedkitTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus the contrastive-learning knobs."""

    temperature: float = field(default=0.02, metadata={"help": "Softmax temperature of the InfoNCE loss."})
    in_batch_negatives: bool = field(default=True, metadata={"help": "Use the other queries' passages too."})
    negatives_cross_device: bool = field(
        default=False, metadata={"help": "Gather passages from every process (torch.distributed) as negatives."})
    kd_loss: str = field(default="kl_div", metadata={"help": "Distillation when the data has scores: kl_div | none."})
    kd_weight: float = field(default=1.0, metadata={"help": "Weight of the distillation loss."})
    grad_cache_chunk: int | None = field(
        default=None, metadata={"help": "GradCache: encode in chunks of N sequences (large batches, small memory)."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep False: embedkit's collator needs them."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Train into a non-empty --output_dir: its previous checkpoint-* folders and "
                                         "metrics are removed first, so two runs never mix."})
    logging_steps: float = field(default=10, metadata={"help": "Log (and write metrics.jsonl) every N steps."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to save checkpoints: no | steps | epoch."})
    plot_loss: bool = field(default=True, metadata={"help": "Write loss_curve.png into the output folder."})

    def __post_init__(self) -> None:
        _default_cpu_distributed(self)
        super().__post_init__()


def _accelerator_present() -> bool:
    """Whether torch sees a GPU-like device a DDP process could run on (CUDA or XPU)."""
    import torch

    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or bool(xpu is not None and xpu.is_available())


def _default_cpu_distributed(args: TrainingArguments) -> None:
    """``torchrun`` (``WORLD_SIZE > 1``) on a machine without a GPU: DDP over gloo on the CPU.

    Without this the Trainer builds no process group of its own: every rank believes it is the main process (metrics
    twice, unsynchronised gradients, every rank writing the same checkpoint). Said once, by rank 0.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or args.use_cpu or _accelerator_present():
        return
    args.use_cpu = True
    if args.ddp_backend is None:
        args.ddp_backend = "gloo"
    if os.environ.get("RANK", "0") == "0":
        logger.info("%s processes and no GPU: distributed training on the CPU with the %s backend",
                    os.environ["WORLD_SIZE"], args.ddp_backend)


def _flatten(config: dict[str, Any]) -> list[str]:
    """A config dict -> CLI tokens (so CLI flags given after it win)."""
    tokens: list[str] = []
    for key, value in config.items():
        if value is None:
            continue
        flag = f"--{key}"
        if isinstance(value, bool):
            tokens += [flag, str(value).lower()]
        elif isinstance(value, (list, tuple)):
            tokens += [flag, *map(str, value)]
        elif isinstance(value, dict):
            tokens += [flag, json.dumps(value)]
        else:
            tokens += [flag, str(value)]
    return tokens


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON argument file (a flat mapping of argument names to values)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"config file {path} does not exist", hint="pass --config FILE.yaml|FILE.json")
    text = path.read_text(encoding="utf-8")
    yaml = require("yaml", "a YAML config file") if path.suffix.lower() in (".yaml", ".yml") else None
    try:
        if yaml is not None:
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # yaml / json errors
        raise DataError(f"{path}: cannot parse ({exc})", hint="a flat mapping of argument: value") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a mapping of argument names to values")
    return data


PROG = "embedkit finetune"

# `finetune --help`: embedkit's own arguments first, by group (fields not listed land in "other", so none is lost)
HELP_GROUPS: dict[str, list[str]] = {
    "model": ["model_name_or_path", "pooling", "normalize", "query_instruction", "query_instruction_format",
              "passage_instruction", "passage_instruction_format", "query_max_length", "passage_max_length",
              "trust_pickle"],
    "data": ["train_data", "train_group_size", "skip_invalid"],
    "loss": ["temperature", "in_batch_negatives", "negatives_cross_device", "kd_loss", "kd_weight"],
    "LoRA": ["lora", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "merge_lora"],
    "GradCache": ["grad_cache_chunk"],
    "bge-m3": ["unified", "self_distill", "self_distill_start_step"],
    "reranker": ["reranker", "max_length"],
    "eval": ["eval_data", "eval_split", "eval_retriever", "eval_rerank_top_k"],
    "output": ["plot_loss", "overwrite_output_dir"],
}
# the transformers.TrainingArguments people set most (embedkit's defaults shown where it changes them)
COMMON_TRAINING_ARGUMENTS = [
    "output_dir", "num_train_epochs", "max_steps", "per_device_train_batch_size", "learning_rate", "warmup_steps",
    "gradient_accumulation_steps", "bf16", "fp16", "gradient_checkpointing", "logging_steps", "save_strategy",
    "save_steps", "eval_steps", "resume_from_checkpoint", "seed",
]


class _Parser:
    """``HfArgumentParser`` whose usage errors raise :class:`ArgumentError` instead of printing and exiting."""

    @staticmethod
    def build(prog: str) -> Any:
        from transformers import HfArgumentParser

        class Parser(HfArgumentParser):
            def error(self, message: str) -> None:  # argparse's: print usage and exit 2
                raise ArgumentError(message, hint=f"run '{prog} --help'")

        parser = Parser((ModelArguments, DataArguments, EmbedkitTrainingArguments), prog=prog)
        parser.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                            help="YAML or JSON file of arguments; flags given after it win.")
        return parser


def _own_fields() -> dict[str, Any]:
    """embedkit's fields (the model and data dataclasses, and what EmbedkitTrainingArguments adds) by name."""
    base = {f.name for f in fields(TrainingArguments)}
    own = {f.name: f for cls in (ModelArguments, DataArguments) for f in fields(cls)}
    own.update({f.name: f for f in fields(EmbedkitTrainingArguments) if f.name not in base})
    return own


def _describe(f: Any, help_text: str | None = None) -> tuple[str, str]:
    """One ``--flag VALUE`` / description pair of the short help (type, default or "required" from the field)."""
    from dataclasses import MISSING

    kind = str(f.type)
    if f.name in ("model_name_or_path", "output_dir", "eval_data", "eval_retriever", "resume_from_checkpoint"):
        value = "PATH"
    elif "bool" in kind:
        value = "true|false"
    elif "list" in kind:
        value = "FILE [FILE ...]"
    else:
        value = next((v for k, v in (("int", "N"), ("float", "X")) if k in kind), "TEXT")
    description = help_text if help_text is not None else (f.metadata or {}).get("help", "")
    if f.name in ALIASES:
        description += f" (FlagEmbedding: --{ALIASES[f.name]})"
    if f.default is MISSING and f.default_factory is MISSING:
        description += " [required]"
    elif f.default not in (None, "", MISSING):
        description += f" [default: {str(f.default).lower() if isinstance(f.default, bool) else f.default}]"
    return f"--{f.name} {value}", description.strip()


def format_help(prog: str = PROG) -> str:
    """``finetune --help``: embedkit's argument groups, then the most used ``TrainingArguments``.

    ``--help-all`` (:func:`format_full_help`) lists every flag argparse knows.
    """
    import textwrap

    own = _own_fields()
    train_fields = {f.name: f for f in fields(EmbedkitTrainingArguments)}
    grouped = [name for names in HELP_GROUPS.values() for name in names]
    groups = dict(HELP_GROUPS)
    other = [name for name in own if name not in grouped]
    if other:
        groups["other"] = other
    lines = [
        f"usage: {prog} [--config FILE.yaml] --model_name_or_path PATH --train_data FILE [FILE ...]",
        " " * len(f"usage: {prog} ") + "--output_dir DIR [options]",
        "",
        *textwrap.wrap(
            "Fine-tune an embedder with contrastive learning (InfoNCE with hard, in-batch and cross-device negatives, "
            "distillation, LoRA, GradCache) on the Hugging Face Trainer. Flags may use dashes or underscores; "
            "--config supplies them from a YAML or JSON file, and flags given after it win. Multi-process: torchrun "
            "--nproc_per_node N -m embedkit.train ... (without a GPU: the gloo backend on the CPU).", 110),
    ]
    width = 38

    def block(title: str, pairs: list[tuple[str, str]]) -> None:
        lines.extend(["", f"{title}:"])
        for flag, text in pairs:
            wrapped = textwrap.wrap(text, 110 - width) or [""]
            if len(flag) + 2 > width:
                lines.append(f"  {flag}")
                lines.extend(" " * (width + 2) + w for w in wrapped)
            else:
                lines.append(f"  {flag.ljust(width)}{wrapped[0]}")
                lines.extend(" " * (width + 2) + w for w in wrapped[1:])

    for title, names in groups.items():
        block(title, [_describe(own[name]) for name in names if name in own])
    block("all transformers.TrainingArguments are accepted (--help-all lists them); the ones set most",
          [_describe(train_fields[name], help_text=_short_help(name)) for name in COMMON_TRAINING_ARGUMENTS
           if name in train_fields])
    block("FlagEmbedding's flags (aliases: next to embedkit's flag above; --help-all lists all of them)",
          alias_help(everything=False))
    block("help", [("--config FILE", "YAML or JSON file of arguments (flags given after it win)."),
                   ("-h, --help", "This help."),
                   ("--help-all", "Every flag, all of transformers.TrainingArguments too.")])
    lines.extend(["",
                  f"Example: {prog} --model_name_or_path minilm --train_data train.jsonl --output_dir out "
                  "--max_steps 100"])
    return "\n".join(lines)


_SHORT_HELP = {
    "output_dir": "Where checkpoints, metrics.jsonl and the final model (OUTPUT/model) go.",
    "num_train_epochs": "Passes over the training data.",
    "max_steps": "Stop after N optimizer steps (overrides --num_train_epochs).",
    "per_device_train_batch_size": "Queries per process per step (each with --train_group_size passages).",
    "learning_rate": "Peak learning rate (AdamW).",
    "warmup_steps": "Steps warming the learning rate up (below 1: a fraction of all steps).",
    "gradient_accumulation_steps": "Steps to accumulate before each optimizer step.",
    "bf16": "Train in bfloat16 mixed precision.",
    "fp16": "Train in float16 mixed precision (GPU).",
    "gradient_checkpointing": "Trade compute for memory.",
    "save_steps": "With --save_strategy steps: save every N steps.",
    "eval_steps": "With --eval_data: evaluate every N steps.",
    "resume_from_checkpoint": "Resume from OUTPUT/checkpoint-N.",
    "seed": "Random seed.",
}


def _short_help(name: str) -> str | None:
    return _SHORT_HELP.get(name)


def format_full_help(prog: str = PROG) -> str:
    """``finetune --help-all``: argparse's help of every flag (embedkit's and all of ``TrainingArguments``)."""
    pairs = "\n".join(f"  {flag.ljust(38)}{what}" for flag, what in alias_help())
    return f"{_Parser.build(prog).format_help()}\nFlagEmbedding's flags (translated before parsing):\n{pairs}"


def help_requested(argv: list[str], prog: str = PROG) -> str | None:
    """The help text ``argv`` asks for (``-h`` / ``--help``: the short one, ``--help-all``: everything), or ``None``."""
    if "--help-all" in argv or "--help_all" in argv:
        return format_full_help(prog)
    if "-h" in argv or "--help" in argv:
        return format_help(prog)
    return None


def parse_args(argv: list[str], prog: str = PROG) -> tuple[ModelArguments, DataArguments, EmbedkitTrainingArguments]:
    """Parse CLI tokens; ``--config FILE`` (YAML/JSON) supplies defaults that later flags override.

    Dashes and underscores are interchangeable in flag names (``--train-group-size`` = ``--train_group_size``).
    Unknown flags, missing or malformed values raise :class:`ArgumentError` (its hint: ``run 'PROG --help'``).

    Example:
        >>> parse_args(["--model_name_or_path", "minilm", "--train_data", "t.jsonl", "--output_dir", "out"])
    """
    argv = list(argv)
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise DataError("--config needs a file", hint="--config train.yaml")
        argv = _flatten(load_config_file(argv[i + 1])) + argv[:i] + argv[i + 2:]
    argv = translate([_normalize_flag(a) for a in argv])  # FlagEmbedding's names and values -> embedkit's
    parser = _Parser.build(prog)
    try:
        model_args, data_args, train_args, rest = parser.parse_args_into_dataclasses(
            args=argv, return_remaining_strings=True, look_for_args_file=False)
    except EmbedkitError:
        raise
    except ValueError as exc:  # TrainingArguments.__post_init__ checks (e.g. an unknown --save_strategy)
        raise ArgumentError(str(exc), hint=f"run '{prog} --help-all' for the valid values") from None
    if rest:
        raise _unknown(rest, parser, prog)
    if model_args.max_length is not None and not model_args.reranker:
        raise ArgumentError("--max_length (FlagEmbedding: --max_len) is the joined pair's token limit of "
                            "--reranker training; an embedder has --query_max_length / --passage_max_length",
                            hint="add --reranker to train a cross-encoder, or drop --max_length")
    if data_args.eval_retriever is not None and not model_args.reranker:
        raise ArgumentError("--eval_retriever is the retrieving embedder of --reranker training's two-stage "
                            "evaluation; an embedder's --eval_data evaluates the embedder itself",
                            hint="add --reranker to train a cross-encoder, or drop --eval_retriever")
    check_output_dir(train_args, given="--output_dir" in argv or any(a.startswith("--output_dir=") for a in argv))
    return model_args, data_args, train_args


def check_output_dir(train_args: EmbedkitTrainingArguments, *, given: bool = True) -> None:
    """``--output_dir`` is required, and a non-empty one is refused unless the run resumes from one of its
    checkpoints (``--resume_from_checkpoint``) or ``--overwrite_output_dir`` says to replace the earlier run.

    Only the main process checks (under torchrun, rank 0 may already be writing there when another rank parses).
    """
    if not given:
        raise ArgumentError("--output_dir is required: where checkpoints, metrics and the trained model go",
                            hint="e.g. --output_dir out/my-model (a new or empty folder)")
    if os.environ.get("RANK", "0") != "0" or train_args.resume_from_checkpoint or train_args.overwrite_output_dir:
        return
    out = Path(train_args.output_dir)
    if out.is_dir() and any(out.iterdir()):
        previous = sorted(p.name for p in out.iterdir())[:5]
        raise ArgumentError(
            f"--output_dir {out} is not empty ({', '.join(previous)}{', ...' if len(previous) == 5 else ''}): "
            "training into it would mix this run with an earlier one",
            hint="choose a new --output_dir, continue the earlier run with --resume_from_checkpoint "
                 f"{out}/checkpoint-N, or replace it with --overwrite_output_dir")
    if out.exists() and not out.is_dir():
        raise ArgumentError(f"--output_dir {out} is a file", hint="choose a folder path")


def _unknown(rest: list[str], parser: Any, prog: str) -> ArgumentError:
    """``unknown option --bogus``, with the closest known flag when there is one."""
    flag = next((t for t in rest if t.startswith("-")), rest[0]).split("=")[0]
    known = [o for action in parser._actions for o in action.option_strings if o.startswith("--")]
    close = difflib.get_close_matches(flag, known, n=1)
    message = f"unknown option {flag}" if flag.startswith("-") else f"unexpected value {flag!r}"
    if close:
        message += f". Did you mean {close[0]}?"
    return ArgumentError(message, hint=f"run '{prog} --help' (or --help-all for every TrainingArguments flag)")


def _normalize_flag(token: str) -> str:
    if not token.startswith("--"):
        return token
    name, eq, value = token[2:].partition("=")
    return "--" + name.replace("-", "_") + eq + value
