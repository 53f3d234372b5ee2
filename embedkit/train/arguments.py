"""Fine-tuning arguments: dataclasses on top of ``transformers.TrainingArguments`` (CLI flags, JSON or YAML)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainingArguments

from ..errors import DataError

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
    query_max_length: int | None = field(default=None, metadata={"help": "Token limit for queries."})
    passage_max_length: int | None = field(default=None, metadata={"help": "Token limit for passages."})
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
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # yaml / json errors
        raise DataError(f"{path}: cannot parse ({exc})", hint="a flat mapping of argument: value") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a mapping of argument names to values")
    return data


def parse_args(argv: list[str]) -> tuple[ModelArguments, DataArguments, EmbedkitTrainingArguments]:
    """Parse CLI tokens; ``--config FILE`` (YAML/JSON) supplies defaults that later flags override.

    Dashes and underscores are interchangeable in flag names (``--train-group-size`` = ``--train_group_size``).

    Example:
        >>> parse_args(["--model_name_or_path", "minilm", "--train_data", "t.jsonl", "--output_dir", "out"])
    """
    from transformers import HfArgumentParser

    argv = list(argv)
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise DataError("--config needs a file", hint="--config train.yaml")
        argv = _flatten(load_config_file(argv[i + 1])) + argv[:i] + argv[i + 2:]
    argv = [_normalize_flag(a) for a in argv]
    parser = HfArgumentParser((ModelArguments, DataArguments, EmbedkitTrainingArguments))
    model_args, data_args, train_args = parser.parse_args_into_dataclasses(args=argv)
    return model_args, data_args, train_args


def _normalize_flag(token: str) -> str:
    if not token.startswith("--"):
        return token
    name, eq, value = token[2:].partition("=")
    return "--" + name.replace("-", "_") + eq + value
