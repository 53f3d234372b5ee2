"""FlagEmbedding's fine-tuning command lines run on embedkit with only the module name changed; every FlagEmbedding
argument is accepted (with its meaning) or refused by name."""

import dataclasses
import importlib
import importlib.util
import json
import logging
import runpy
import shlex
import sys
from pathlib import Path

import pytest
from transformers import TrainingArguments

from embedkit import Embedder
from embedkit.cli import main
from embedkit.errors import ArgumentError
from embedkit.train.arguments import format_full_help, format_help, parse_args
from embedkit.train.flag_compat import FLAGS
from tests.m3.test_m3 import build_tiny_m3

# FlagEmbedding 1.4's argument dataclasses: the embedder (encoder-only base uses these), bge-m3, decoder-only, ICL
# and reranker variants
FLAG_ARGUMENT_CLASSES = {
    "FlagEmbedding.abc.finetune.embedder.AbsArguments": [
        "AbsEmbedderModelArguments", "AbsEmbedderDataArguments", "AbsEmbedderTrainingArguments"],
    "FlagEmbedding.finetune.embedder.encoder_only.m3.arguments": [
        "EncoderOnlyEmbedderM3ModelArguments", "EncoderOnlyEmbedderM3TrainingArguments"],
    "FlagEmbedding.finetune.embedder.decoder_only.base.arguments": ["DecoderOnlyEmbedderModelArguments"],
    "FlagEmbedding.finetune.embedder.decoder_only.icl.arguments": [
        "DecoderOnlyEmbedderICLModelArguments", "DecoderOnlyEmbedderICLDataArguments"],
    "FlagEmbedding.abc.finetune.reranker.AbsArguments": [
        "AbsRerankerModelArguments", "AbsRerankerDataArguments", "AbsRerankerTrainingArguments"],
    "FlagEmbedding.finetune.reranker.decoder_only.base.arguments": ["RerankerModelArguments"],
    "FlagEmbedding.finetune.reranker.decoder_only.layerwise.arguments": ["RerankerModelArguments"],
}


def flagembedding_fields() -> dict[str, dataclasses.Field]:
    """Every argument FlagEmbedding's fine-tuning dataclasses add (TrainingArguments' own are embedkit's too)."""
    pytest.importorskip("FlagEmbedding")
    base = {f.name for f in dataclasses.fields(TrainingArguments)}
    found: dict[str, dataclasses.Field] = {}
    for module, names in FLAG_ARGUMENT_CLASSES.items():
        mod = importlib.import_module(module)
        for name in names:
            for f in dataclasses.fields(getattr(mod, name)):
                if f.name not in base:
                    found.setdefault(f.name, f)
    return found


def _cli(value) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _other_value(f: dataclasses.Field) -> list[str]:
    """A value different from FlagEmbedding's default, typed like the field."""
    kind = str(f.type)
    if "bool" in kind:
        return ["False" if f.default is True else "True"]
    if "List" in kind or "list" in kind or (f.metadata or {}).get("nargs") == "+":
        return ["q_proj", "v_proj"]
    if "int" in kind and "str" not in kind.replace("Optional", ""):
        return ["7"]
    if "float" in kind:
        return ["0.5"]
    return ["x"]


def _default(f: dataclasses.Field) -> list[str] | None:
    value = f.default if f.default is not dataclasses.MISSING else None
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    if value is None or value == [] or value == "":
        return None
    return _cli(value)


@pytest.fixture
def base_argv(tmp_path):
    data = tmp_path / "t.jsonl"
    data.write_text(json.dumps({"query": "q", "pos": ["p"]}) + "\n")
    return ["--model_name_or_path", "minilm", "--train_data", str(data), "--output_dir", str(tmp_path / "out")]


def test_every_flagembedding_argument_is_accepted_or_refused_by_name(base_argv):
    fields = flagembedding_fields()
    assert len(fields) > 50 and {"sub_batch_size", "unified_finetuning", "query_instruction_for_rerank"} <= set(fields)
    own = {f.name for f in dataclasses.fields(TrainingArguments)}
    outcome: dict[str, str] = {}
    for name, f in sorted(fields.items()):
        if name in ("model_name_or_path", "train_data"):
            continue
        tried = [v for v in (_default(f), _other_value(f)) if v is not None]
        for values in tried:
            try:
                parse_args([*base_argv, f"--{name}", *values])
                outcome.setdefault(name, "accepted")
            except ArgumentError as exc:
                assert f"--{name}" in exc.message, (name, exc.message)
                assert exc.hint, name
                outcome[name] = "refused" if outcome.get(name) != "accepted" else "default only"
    # an argument unknown to embedkit and not in the FLAGS table would have been 'unknown option' (refused too, but
    # not by FlagEmbedding's name with a reason): every FlagEmbedding name is either embedkit's own or in the table
    from embedkit.train.arguments import _own_fields

    unhandled = [n for n in fields if n not in FLAGS and n not in _own_fields() and n not in own]
    assert unhandled == []
    assert outcome["fix_encoder"] == "default only" and outcome["sentence_pooling_method"] == "accepted"
    assert outcome["query_instruction_for_rerank"] == "accepted" and outcome["start_layer"] == "refused"


def test_aliases_and_mapped_values(base_argv, caplog):
    with caplog.at_level(logging.WARNING, logger="embedkit"):
        m, d, t = parse_args([*base_argv, "--query_instruction_for_retrieval", "Represent: ",
                              "--query_instruction_format", "{}\\n{}", "--passage_instruction_for_retrieval", "P: ",
                              "--query_max_len", "16", "--passage_max_len", "24", "--sentence_pooling_method", "mean",
                              "--normalize_embeddings", "False", "--knowledge_distillation", "False",
                              "--kd_loss_type", "kl_div", "--warmup_ratio", "0.1", "--sub_batch_size", "4",
                              "--unified_finetuning", "True", "--use_self_distill", "--use_lora", "True",
                              "--lora_rank", "8", "--target_modules", "query", "value", "--save_merged_lora_model",
                              "True", "--cache_dir", "./cache/model", "--cache_path", "./cache/data",
                              "--pad_to_multiple_of", "8", "--overwrite_output_dir", "--fix_encoder", "False"])
    assert (m.query_instruction, m.query_instruction_format, m.passage_instruction) == ("Represent: ", "{}\n{}", "P: ")
    assert (m.query_max_length, m.passage_max_length, m.pooling, m.normalize) == (16, 24, "mean", False)
    assert (m.unified, m.self_distill, m.lora, m.lora_r, m.lora_target_modules, m.merge_lora) == (
        True, True, True, 8, "query,value", True)
    assert (t.kd_loss, t.warmup_steps, t.grad_cache_chunk, t.overwrite_output_dir) == ("none", 0.1, 4, True)
    notes = caplog.text
    for flag in ("--cache_dir", "--cache_path", "--pad_to_multiple_of", "--sub_batch_size"):
        assert f"FlagEmbedding flag {flag}" in notes
    assert d.train_data


def test_changed_meanings_are_noted_and_conflicts_refused(base_argv, caplog):
    with caplog.at_level(logging.WARNING, logger="embedkit"):
        _, _, t = parse_args([*base_argv, "--kd_loss_type", "m3_kd_loss", "--same_dataset_within_batch", "True",
                              "--small_threshold", "0", "--drop_threshold", "0"])
    assert t.kd_loss == "kl_div"
    assert "m3_kd_loss is approximated" in caplog.text and "batches mix rows of every training file" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="embedkit"):
        parse_args([*base_argv, "--sentence_pooling_method", "cls"])
    assert "--knowledge_distillation False to ignore them" in caplog.text
    with pytest.raises(ArgumentError, match="--query_max_len and --query_max_length are the same"):
        parse_args([*base_argv, "--query_max_length", "8", "--query_max_len", "16"])
    with pytest.raises(ArgumentError, match="--warmup_ratio 1.5"):
        parse_args([*base_argv, "--warmup_ratio", "1.5"])
    with pytest.raises(ArgumentError, match="--trust_remote_code"):
        parse_args([*base_argv, "--trust_remote_code"])
    with pytest.raises(ArgumentError, match="--start_layer is a FlagEmbedding argument embedkit does not implement"):
        parse_args([*base_argv, "--start_layer", "8"])
    with pytest.raises(ArgumentError, match="--max_length .FlagEmbedding: --max_len. is the joined pair"):
        parse_args([*base_argv, "--max_len", "512"])


def test_help_shows_the_aliases():
    short = " ".join(format_help().split())
    assert "(FlagEmbedding: --query_instruction_for_retrieval)" in short and "--warmup_ratio" in short
    assert "(FlagEmbedding: --unified_finetuning)" in short and "--query_instruction_for_rerank" not in short
    assert "--cache_dir ignored (offline)" in short
    full = format_full_help()
    assert "--query_instruction_for_rerank" in full and "--fix_encoder" in full


# ------------------------------------------------------------------- FlagEmbedding's README command lines, for real
def _rows(path: Path, n: int, **extra) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    words = "the quick brown fox jumps over lazy dog hello world cat what is bge".split()
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            w = [words[(i + k) % len(words)] for k in range(4)]
            row = {"query": " ".join(w[:2]), "pos": [" ".join(w)], "neg": [" ".join(w[::-1]), w[3]],
                   "pos_scores": [0.9], "neg_scores": [0.2, 0.1], **extra}
            fh.write(json.dumps(row) + "\n")


def example_data(root: Path) -> Path:
    """FlagEmbedding's examples/finetune/embedder/example_data layout: folders of jsonl, per-file type and prompt."""
    _rows(root / "retrieval" / "msmarco.jsonl", 12, prompt="Represent this sentence for searching relevant passages: ",
          type="normal")
    _rows(root / "sts" / "sts.jsonl", 8, prompt="Retrieve semantically similar text.", type="symmetric_sts")
    _rows(root / "classification-no_in_batch_neg" / "banking77.json", 8, prompt="Classify the intent.",
          type="symmetric_class")
    _rows(root / "clustering-no_in_batch_neg" / "arxiv.jsonl", 8, prompt="Identify the topic.",
          type="symmetric_clustering")
    return root


def _readme(command: str, module: str, model: Path, data: Path, out: Path) -> list[str]:
    """A README command line for this machine: the module name changed, the tiny model, local paths, lengths the tiny
    model has positions for, no fp16/DeepSpeed (CPU), and 2 steps."""
    argv = shlex.split(command)
    assert argv[:4] == ["torchrun", "--nproc_per_node", "2", "-m"]
    argv = [module, *argv[5:]]
    swaps = {"BAAI/bge-large-en-v1.5": str(model), "BAAI/bge-m3": str(model), "./example_data": str(data),
             "512": "32", "./test_encoder_only_base_bge-large-en-v1.5": str(out),
             "./test_encoder_only_m3_bge-m3_sd": str(out)}
    argv = [next((t.replace(k, v) for k, v in swaps.items() if t.startswith(k)), t) for t in argv]
    i = argv.index("--deepspeed")
    del argv[i:i + 2]
    argv.remove("--fp16")
    return [*argv, "--max_steps", "2", "--save_strategy", "no", "--report_to", "none"]


# examples/finetune/embedder/README.md of FlagEmbedding 1.4 (only the module name differs between the two tools)
BASE_EXAMPLE = """torchrun --nproc_per_node 2 -m FlagEmbedding.finetune.embedder.encoder_only.base
 --model_name_or_path BAAI/bge-large-en-v1.5 --cache_dir ./cache/model --train_data ./example_data/retrieval
 ./example_data/sts/sts.jsonl ./example_data/classification-no_in_batch_neg ./example_data/clustering-no_in_batch_neg
 --cache_path ./cache/data --train_group_size 8 --query_max_len 512 --passage_max_len 512 --pad_to_multiple_of 8
 --query_instruction_for_retrieval 'Represent this sentence for searching relevant passages: '
 --query_instruction_format '{}{}' --knowledge_distillation False
 --output_dir ./test_encoder_only_base_bge-large-en-v1.5 --overwrite_output_dir --learning_rate 1e-5 --fp16
 --num_train_epochs 2 --per_device_train_batch_size 2 --dataloader_drop_last True --warmup_ratio 0.1
 --gradient_checkpointing --deepspeed ../ds_stage0.json --logging_steps 1 --save_steps 1000 --negatives_cross_device
 --temperature 0.02 --sentence_pooling_method cls --normalize_embeddings True --kd_loss_type kl_div"""
M3_EXAMPLE = """torchrun --nproc_per_node 2 -m FlagEmbedding.finetune.embedder.encoder_only.m3
 --model_name_or_path BAAI/bge-m3 --cache_dir ./cache/model --train_data ./example_data/retrieval
 ./example_data/sts/sts.jsonl ./example_data/classification-no_in_batch_neg ./example_data/clustering-no_in_batch_neg
 --cache_path ./cache/data --train_group_size 8 --query_max_len 512 --passage_max_len 512 --pad_to_multiple_of 8
 --knowledge_distillation True --same_dataset_within_batch True --small_threshold 0 --drop_threshold 0
 --output_dir ./test_encoder_only_m3_bge-m3_sd --overwrite_output_dir --learning_rate 1e-5 --fp16
 --num_train_epochs 2 --per_device_train_batch_size 2 --dataloader_drop_last True --warmup_ratio 0.1
 --gradient_checkpointing --deepspeed ../ds_stage0.json --logging_steps 1 --save_steps 1000 --negatives_cross_device
 --temperature 0.02 --sentence_pooling_method cls --normalize_embeddings True --kd_loss_type m3_kd_loss
 --unified_finetuning True --use_self_distill True --fix_encoder False --self_distill_start_step 0"""


def test_encoder_only_base_example_runs_with_embedkit_finetune(tiny_bert, tmp_path, capsys):
    data, out = example_data(tmp_path / "example_data"), tmp_path / "run"
    (out / "checkpoint-5").mkdir(parents=True)  # an earlier run: --overwrite_output_dir removes it
    (out / "metrics.jsonl").write_text('{"step": 5, "loss": 9.0}\n')
    argv = _readme(BASE_EXAMPLE, "finetune", tiny_bert, data, out)
    assert main(argv) == 0
    final = out / "model"
    spec = Embedder(final, show_progress=False).spec
    assert (spec.pooling, spec.normalize, spec.query_max_length, spec.passage_max_length) == ("cls", True, 32, 32)
    assert spec.query_instruction == "Represent this sentence for searching relevant passages: "
    assert not (out / "checkpoint-5").exists() and '"loss": 9.0' not in (out / "metrics.jsonl").read_text()
    summary = json.loads((out / "data_summary.json").read_text())
    assert summary["rows"] == 36 and any(f.endswith("banking77.json") for f in summary["files"])


def test_bge_m3_unified_example_runs_with_python_m_embedkit_train(tmp_path, monkeypatch, caplog):
    model = build_tiny_m3(tmp_path / "tiny-m3")
    data, out = example_data(tmp_path / "example_data"), tmp_path / "run"
    argv = _readme(M3_EXAMPLE, "embedkit.train", model, data, out)
    # `python -m embedkit.train ...`, in this process (no second interpreter start-up)
    monkeypatch.setattr(sys, "argv", ["embedkit.train", *argv[1:]])
    with caplog.at_level(logging.WARNING, logger="embedkit"), pytest.raises(SystemExit) as done:
        runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
    assert done.value.code == 0
    for note in ("--cache_dir: ignored", "--same_dataset_within_batch: approximated", "m3_kd_loss is approximated"):
        assert note in caplog.text
    final = out / "model"
    assert (final / "colbert_linear.pt").is_file() and (final / "sparse_linear.pt").is_file()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in rows)


# examples/finetune/reranker/README.md of FlagEmbedding 1.4 (encoder-only base)
RERANKER_EXAMPLE = """torchrun --nproc_per_node 2 -m FlagEmbedding.finetune.reranker.encoder_only.base
 --model_name_or_path BAAI/bge-reranker-v2-m3 --cache_dir ./cache/model
 --train_data ./example_data/normal/examples.jsonl --cache_path ./cache/data --train_group_size 8
 --query_max_len 256 --passage_max_len 256 --pad_to_multiple_of 8 --knowledge_distillation False
 --output_dir ./test_encoder_only_base_bge-reranker-base --overwrite_output_dir --learning_rate 6e-5 --fp16
 --num_train_epochs 2 --per_device_train_batch_size 2 --gradient_accumulation_steps 1 --dataloader_drop_last True
 --warmup_ratio 0.1 --gradient_checkpointing --weight_decay 0.01 --deepspeed ../../ds_stage0.json --logging_steps 1
 --save_steps 1000"""


def test_reranker_example_runs_with_python_m_embedkit_train_reranker(tmp_path, monkeypatch, caplog):
    from embedkit import Reranker
    from tests.rerank.test_rerank import _build_bert

    model = _build_bert(tmp_path / "tiny-reranker")
    data, out = tmp_path / "example_data", tmp_path / "run"
    _rows(data / "normal" / "examples.jsonl", 12)
    argv = _readme(RERANKER_EXAMPLE.replace("BAAI/bge-reranker-v2-m3", "BAAI/bge-m3").replace(
        "./test_encoder_only_base_bge-reranker-base", "./test_encoder_only_m3_bge-m3_sd").replace(" 256", " 32"),
        "embedkit.train.reranker", model, data, out)
    monkeypatch.setattr(sys, "argv", ["embedkit.train.reranker", *argv[1:]])
    with caplog.at_level(logging.WARNING, logger="embedkit"), pytest.raises(SystemExit) as done:
        runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
    assert done.value.code == 0
    assert "--cache_dir: ignored" in caplog.text
    final = out / "model"
    reranker = Reranker(final, show_progress=False)
    assert reranker.spec.query_max_length == 32
    score = reranker.compute_score(("what is bge", "bge is an embedding model"))
    assert isinstance(score, float)


def test_reranker_flags_map_to_the_reranker_trainer(base_argv):
    m, d, t = parse_args([*base_argv, "--reranker", "--max_len", "48", "--query_instruction_for_rerank", "Q: ",
                          "--model_type", "encoder", "--sep_token", "|"])
    assert (m.max_length, m.query_instruction) == (48, "Q: ")
    for bad in (["--model_type", "decoder"], ["--start_layer", "8"], ["--passage_instruction_for_rerank", "P: "]):
        with pytest.raises(ArgumentError, match=bad[0]):
            parse_args([*base_argv, "--reranker", *bad])
