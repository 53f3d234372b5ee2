"""FlagEmbedding's fine-tuning flags, translated to embedkit's before parsing.

A FlagEmbedding command line (``torchrun -m FlagEmbedding.finetune.embedder.encoder_only.base ...`` or ``...m3``) runs
as ``torchrun -m embedkit.train ...`` unchanged. Every argument of FlagEmbedding 1.4's argument dataclasses (embedder,
bge-m3, decoder-only, ICL and reranker variants) is handled here, one of four ways:

- **alias**: embedkit has the same setting under another name (``--query_instruction_for_retrieval`` ->
  ``--query_instruction``); both names work, ``--help`` shows the alias.
- **mapped**: the value is translated (``--knowledge_distillation False`` -> ``--kd_loss none``, ``--warmup_ratio`` ->
  ``--warmup_steps``, which transformers 5 reads as a ratio below 1).
- **noted**: accepted, but ignored or approximated; a warning says so and why (``--cache_dir`` offline).
- **refused**: embedkit does not implement it (or only its default value): :class:`ArgumentError` naming the flag,
  why, and what to use instead.

Arguments with the same name in both (``--temperature``, ``--train_group_size``, ``--negatives_cross_device``,
``--self_distill_start_step``, ``--lora_alpha``, every ``TrainingArguments`` flag...) need no translation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ArgumentError

logger = logging.getLogger("embedkit")

_TRUE = {"true", "yes", "t", "y", "1"}
_FALSE = {"false", "no", "f", "n", "0"}


@dataclass(frozen=True)
class Flag:
    """One FlagEmbedding argument: how its value is read (``bool`` / ``value`` / ``list``) and what it becomes."""

    name: str
    kind: str
    handle: Callable[[str, list[str]], list[str]]  # (flag, values) -> embedkit tokens (or raise / note)
    summary: str  # for the --help table: "--query_instruction", "ignored (offline)", "false only", "refused"


def _note(flag: str, text: str) -> None:
    logger.warning("FlagEmbedding flag --%s: %s", flag, text)


def _bool(flag: str, values: list[str]) -> bool:
    if not values:
        return True
    v = values[0].lower()
    if v in _TRUE | _FALSE:
        return v in _TRUE
    raise ArgumentError(f"--{flag} expects true or false, got {values[0]!r}", hint=f"--{flag} True")


def _one(flag: str, values: list[str]) -> str:
    if len(values) != 1:
        raise ArgumentError(f"--{flag} expects one value", hint=f"--{flag} VALUE")
    return values[0]


def _refuse(flag: str, why: str, instead: str) -> None:
    raise ArgumentError(f"--{flag} is a FlagEmbedding argument embedkit does not implement: {why}", hint=instead)


def alias(target: str, kind: str = "value") -> Callable[[str, list[str]], list[str]]:
    """Same meaning, embedkit's name ``target``."""
    def handle(flag: str, values: list[str]) -> list[str]:
        if kind == "bool":
            return [f"--{target}", str(_bool(flag, values)).lower()]
        if kind == "list":
            return [f"--{target}", *values]
        return [f"--{target}", _one(flag, values)]
    return handle


def ignored(why: str) -> Callable[[str, list[str]], list[str]]:
    """Accepted and ignored, with a warning saying why."""
    def handle(flag: str, values: list[str]) -> list[str]:
        _note(flag, f"ignored ({why})")
        return []
    return handle


def default_only(accepts: Callable[[list[str]], bool], why: str, instead: str
                 ) -> Callable[[str, list[str]], list[str]]:
    """FlagEmbedding's default value (a no-op) is accepted; any other value is refused naming the flag."""
    def handle(flag: str, values: list[str]) -> list[str]:
        if accepts(values):
            return []
        _refuse(flag, why, instead)
        return []
    return handle


def refused(why: str, instead: str) -> Callable[[str, list[str]], list[str]]:
    """Always an error naming the flag."""
    def handle(flag: str, values: list[str]) -> list[str]:
        _refuse(flag, why, instead)
        return []
    return handle


def _is_false(values: list[str]) -> bool:
    return bool(values) and values[0].lower() in _FALSE


def _is_zero(values: list[str]) -> bool:
    return len(values) == 1 and values[0].strip() in ("0", "0.0")


def _is(*accepted: str) -> Callable[[list[str]], bool]:
    return lambda values: [v.lower() for v in values] in ([a.lower()] for a in accepted)


def _format(flag: str, values: list[str]) -> list[str]:
    # FlagEmbedding turns a literal "\n" typed on the command line into a newline
    return [f"--{flag}", _one(flag, values).replace("\\n", "\n")]


def _knowledge_distillation(flag: str, values: list[str]) -> list[str]:
    return [] if _bool(flag, values) else ["--kd_loss", "none"]


def _kd_loss_type(flag: str, values: list[str]) -> list[str]:
    value = _one(flag, values)
    if value == "kl_div":
        return []  # embedkit's default; --knowledge_distillation decides whether it is used
    if value == "m3_kd_loss":
        _note(flag, "m3_kd_loss is approximated by kl_div: cross-entropy of the student's scores against "
                    "softmax(teacher scores) over each query's group (FlagEmbedding's m3_kd_loss weights one "
                    "cross-entropy per passage by its teacher probability); the gradient points the same way")
        return []
    raise ArgumentError(f"--{flag} {value!r}: FlagEmbedding accepts kl_div or m3_kd_loss", hint=f"--{flag} kl_div")


def _sub_batch_size(flag: str, values: list[str]) -> list[str]:
    try:
        n = int(_one(flag, values))
    except ValueError:
        raise ArgumentError(f"--{flag} expects an integer, got {values[0]!r}", hint=f"--{flag} 32") from None
    if n <= 0:
        return []
    _note(flag, f"encoding in chunks of {n} with GradCache (--grad_cache_chunk {n}): the same loss and gradients "
                "as FlagEmbedding's sub-batches, in less memory")
    return ["--grad_cache_chunk", str(n)]


def _warmup_ratio(flag: str, values: list[str]) -> list[str]:
    value = _one(flag, values)
    try:
        ratio = float(value)
    except ValueError:
        raise ArgumentError(f"--{flag} expects a number in [0, 1), got {value!r}", hint=f"--{flag} 0.1") from None
    if not 0 <= ratio < 1:
        raise ArgumentError(f"--{flag} {value}: a ratio must be in [0, 1)", hint="--warmup_steps N for N steps")
    return ["--warmup_steps", value]  # transformers 5 reads a --warmup_steps below 1 as a ratio of the total steps


def _same_dataset(flag: str, values: list[str]) -> list[str]:
    if _bool(flag, values):
        _note(flag, "approximated: embedkit batches mix rows of every training file (FlagEmbedding draws each batch "
                    "from one file, halves the batch and prompts passages for 'symmetric' types, and turns in-batch "
                    "negatives off for '*no_in_batch_neg' paths); to keep tasks apart, fine-tune on each file "
                    "separately (--no_in_batch_negatives where FlagEmbedding turns them off)")
    return []


def _target_modules(flag: str, values: list[str]) -> list[str]:
    if not values:
        raise ArgumentError(f"--{flag} expects module names", hint=f"--{flag} q_proj v_proj")
    return ["--lora_target_modules", ",".join(v.strip(",") for v in values)]


_OFFLINE = "embedkit never downloads: models are local folders and data are read in place"
_DECODER = ("decoder-only (LLM / layerwise) rerankers are not trained by embedkit; 'embedkit finetune --reranker' "
            "trains encoder cross-encoders")
_ICL = "in-context-learning embedders (bge-en-icl) are not trained by embedkit"

FLAGS: dict[str, Flag] = {f.name: f for f in [
    # AbsEmbedderModelArguments (and the reranker's)
    Flag("config_name", "value", refused("embedkit reads config.json from the model folder",
                                         "put the config into the --model_name_or_path folder"), "refused"),
    Flag("tokenizer_name", "value", refused("embedkit reads the tokenizer from the model folder",
                                            "copy the tokenizer files into the --model_name_or_path folder"),
         "refused"),
    Flag("cache_dir", "value", ignored(_OFFLINE), "ignored (offline)"),
    Flag("trust_remote_code", "bool", default_only(_is_false,
                                                   "embedkit never runs code shipped in a model folder",
                                                   "use a model of a transformers architecture"), "false only"),
    Flag("use_fast_tokenizer", "bool", default_only(lambda v: not _is_false(v), "embedkit loads the fast tokenizer",
                                                    "drop --use_fast_tokenizer False"), "true only"),
    Flag("token", "value", ignored(_OFFLINE), "ignored (offline)"),
    # AbsEmbedderDataArguments
    Flag("cache_path", "value", ignored(_OFFLINE + "; no datasets cache is written"), "ignored (offline)"),
    Flag("query_max_len", "value", alias("query_max_length"), "--query_max_length"),
    Flag("passage_max_len", "value", alias("passage_max_length"), "--passage_max_length"),
    Flag("pad_to_multiple_of", "value",
         ignored("embedkit pads each length-sorted chunk to its own longest sequence; padding further only changes "
                 "speed, never the vectors"), "ignored (padding only)"),
    Flag("max_example_num_per_dataset", "value", default_only(
        _is("100000000"), "rows are not subsampled per file", "cut the files down first (e.g. shuf -n N)"),
         "default only"),
    Flag("query_instruction_for_retrieval", "value", alias("query_instruction"), "--query_instruction"),
    Flag("query_instruction_format", "value", _format, "same name (\\n is a newline)"),
    Flag("knowledge_distillation", "bool", _knowledge_distillation, "False -> --kd_loss none"),
    Flag("passage_instruction_for_retrieval", "value", alias("passage_instruction"), "--passage_instruction"),
    Flag("passage_instruction_format", "value", _format, "same name (\\n is a newline)"),
    Flag("shuffle_ratio", "value", default_only(_is_zero, "passages are never shuffled",
                                                "drop --shuffle_ratio"), "0 only"),
    Flag("same_dataset_within_batch", "bool", _same_dataset, "noted: batches mix files"),
    Flag("small_threshold", "value", default_only(_is_zero, "small files are not merged into one batch source "
                                                  "(batches mix every file)", "drop --small_threshold"), "0 only"),
    Flag("drop_threshold", "value", default_only(_is_zero, "no training file is dropped",
                                                 "remove small files from --train_data"), "0 only"),
    # AbsEmbedderTrainingArguments
    Flag("fix_position_embedding", "bool", default_only(lambda v: _is_false(v), "every weight is trained",
                                                        "drop the flag, or train a LoRA adapter (--lora)"),
         "false only"),
    Flag("sentence_pooling_method", "value", alias("pooling"), "--pooling"),
    Flag("normalize_embeddings", "bool", alias("normalize", "bool"), "--normalize"),
    Flag("sub_batch_size", "value", _sub_batch_size, "--grad_cache_chunk"),
    Flag("kd_loss_type", "value", _kd_loss_type, "kl_div (m3_kd_loss noted)"),
    Flag("use_mrl", "bool", default_only(_is_false, "Matryoshka (MRL) training is not implemented",
                                         "train without it; truncate at encoding time with the spec's truncate_dim"),
         "false only"),
    Flag("mrl_dims", "list", default_only(lambda v: not v, "Matryoshka (MRL) training is not implemented",
                                          "drop --mrl_dims"), "empty only"),
    # bge-m3 (EncoderOnlyEmbedderM3*)
    Flag("colbert_dim", "value", default_only(_is("-1"), "the ColBERT head is hidden_size wide, as bge-m3's",
                                              "drop --colbert_dim"), "-1 only"),
    Flag("unified_finetuning", "bool", alias("unified", "bool"), "--unified"),
    Flag("use_self_distill", "bool", alias("self_distill", "bool"), "--self_distill"),
    Flag("fix_encoder", "bool", default_only(_is_false, "training only the bge-m3 heads is not implemented",
                                             "drop --fix_encoder (the encoder is trained too)"), "false only"),
    # decoder-only embedders (LoRA)
    Flag("use_lora", "bool", alias("lora", "bool"), "--lora"),
    Flag("lora_rank", "value", alias("lora_r"), "--lora_r"),
    Flag("target_modules", "list", _target_modules, "--lora_target_modules (comma-joined)"),
    Flag("save_merged_lora_model", "bool", alias("merge_lora", "bool"), "--merge_lora"),
    Flag("only_merge_lora_model", "bool", default_only(_is_false, "merging without training is another command",
                                                       "embedkit merge ADAPTER OUT --base BASE"), "false only"),
    Flag("peft_model_path", "value", default_only(_is(""), "training does not start from an existing adapter",
                                                  "merge it first: embedkit merge"), "empty only"),
    Flag("from_peft", "value", refused("training does not start from an existing adapter",
                                       "merge it first: embedkit merge"), "refused"),
    Flag("raw_peft", "list", refused("training does not start from an existing adapter",
                                     "merge it first: embedkit merge"), "refused"),
    Flag("modules_to_save", "list", refused("LoRA trains the target modules only", "drop --modules_to_save"),
         "refused"),
    Flag("use_flash_attn", "bool", default_only(_is_false, "the attention implementation is the model's default",
                                                "drop --use_flash_attn"), "false only"),
    Flag("use_slow_tokenizer", "bool", default_only(_is_false, "embedkit loads the fast tokenizer",
                                                    "drop --use_slow_tokenizer"), "false only"),
    Flag("additional_special_tokens", "list", refused("the tokenizer is used as saved",
                                                      "add the tokens to the model folder's tokenizer first"),
         "refused"),
    # ICL embedders
    *[Flag(name, kind, refused(_ICL, "drop the flag"), "refused") for name, kind in (
        ("example_query_max_len", "value"), ("example_passage_max_len", "value"),
        ("retrieval_use_examples", "bool"), ("icl_suffix_str", "value"))],
    # rerankers (embedkit finetune --reranker: FlagEmbedding's encoder-only reranker recipe)
    Flag("query_instruction_for_rerank", "value", alias("query_instruction"), "--query_instruction (--reranker)"),
    Flag("passage_instruction_for_rerank", "value",
         refused("embedkit's reranker joins the passage as it is (no passage instruction)",
                 "drop the flag, or put the instruction into the passages of the data"), "refused"),
    Flag("max_len", "value", alias("max_length"), "--max_length (--reranker)"),
    Flag("sep_token", "value", ignored("only FlagEmbedding's decoder-only (LLM) rerankers join with it; an encoder "
                                       "cross-encoder joins query and passage with its tokenizer's separator"),
         "ignored (decoder-only rerankers)"),
    Flag("model_type", "value", default_only(lambda v: v == ["encoder"], _DECODER, "drop --model_type or pass encoder"),
         "encoder only"),
    *[Flag(name, kind, refused(_DECODER, "drop the flag"), "refused (decoder-only rerankers)") for name, kind in (
        ("start_layer", "value"), ("head_multi", "bool"), ("head_type", "value"))],
    # transformers < 5 arguments FlagEmbedding scripts pass
    Flag("warmup_ratio", "value", _warmup_ratio, "--warmup_steps (a value below 1 is a ratio)"),
]}

ALIASES: dict[str, str] = {"query_instruction": "query_instruction_for_retrieval",
                           "passage_instruction": "passage_instruction_for_retrieval",
                           "query_max_length": "query_max_len", "passage_max_length": "passage_max_len",
                           "pooling": "sentence_pooling_method", "normalize": "normalize_embeddings",
                           "unified": "unified_finetuning", "self_distill": "use_self_distill",
                           "grad_cache_chunk": "sub_batch_size", "lora": "use_lora", "lora_r": "lora_rank",
                           "lora_target_modules": "target_modules", "merge_lora": "save_merged_lora_model",
                           "kd_loss": "kd_loss_type / knowledge_distillation", "warmup_steps": "warmup_ratio"}
"""embedkit's name -> FlagEmbedding's (shown by ``--help``)."""


def _values(argv: list[str], i: int, kind: str) -> tuple[list[str], int]:
    """The values of the flag at ``argv[i]`` (``--name=value`` or following tokens) and the next index."""
    name, eq, value = argv[i].partition("=")
    if eq:
        return [value], i + 1
    j = i + 1
    if kind == "bool":
        if j < len(argv) and argv[j].lower() in _TRUE | _FALSE:
            return [argv[j]], j + 1
        return [], j
    if kind == "list":
        while j < len(argv) and not argv[j].startswith("--"):
            j += 1
        return argv[i + 1:j], j
    if j >= len(argv) or (argv[j].startswith("--") and len(argv[j]) > 2):
        raise ArgumentError(f"{name} expects a value", hint=f"{name} VALUE")
    return [argv[j]], j + 1


def translate(argv: list[str]) -> list[str]:
    """FlagEmbedding flags in ``argv`` (underscored, see ``_normalize_flag``) -> embedkit's; notes are logged.

    Raises :class:`ArgumentError` naming a flag embedkit does not implement, or one given under both names.

    Example:
        >>> translate(["--query_instruction_for_retrieval", "q: ", "--knowledge_distillation", "False"])
        ['--query_instruction', 'q: ', '--kd_loss', 'none']
    """
    out: list[str] = []
    given_own = {t[2:].partition("=")[0] for t in argv if t.startswith("--") and t[2:].partition("=")[0] in ALIASES}
    seen: set[str] = set()
    i = 0
    while i < len(argv):
        token = argv[i]
        name = token[2:].partition("=")[0] if token.startswith("--") else ""
        flag = FLAGS.get(name)
        if flag is None:
            out.append(token)
            i += 1
            continue
        seen.add(name)
        values, i = _values(argv, i, flag.kind)
        tokens = flag.handle(name, values)
        target = tokens[0][2:] if tokens and tokens[0].startswith("--") else None
        if target in given_own and target != name:
            raise ArgumentError(f"--{name} and --{target} are the same argument (FlagEmbedding's name and "
                                "embedkit's)", hint="give it once")
        out.extend(tokens)
    if seen and not seen & {"knowledge_distillation", "kd_loss_type"} and "kd_loss" not in given_own:
        logger.warning("FlagEmbedding flags in use: note that embedkit distills from pos_scores/neg_scores whenever "
                       "the training data has them (FlagEmbedding only with --knowledge_distillation True); pass "
                       "--knowledge_distillation False to ignore them")
    return out


def alias_help(everything: bool = True) -> list[tuple[str, str]]:
    """``(FlagEmbedding flag, what embedkit does with it)`` pairs for ``--help-all``; without ``everything`` (for
    ``--help``) only the accepted flags that are not aliases (``--help`` shows those next to embedkit's flag)."""
    return [(f"--{f.name}", f.summary) for f in FLAGS.values()
            if everything or not (f.summary.startswith(("refused", "--")) or f.summary.endswith(" only"))]
