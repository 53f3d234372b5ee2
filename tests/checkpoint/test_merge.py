"""embedkit merge: a real LoRA adapter (short training run on the tiny BERT) merged, reloaded and compared with peft."""

import json
import shutil

import numpy as np
import pytest

from embedkit import CheckpointError, Embedder, EmbedderSpec
from embedkit.checkpoint.manifest import verify_manifest
from embedkit.checkpoint.merge import merge_lora
from embedkit.cli import main
from embedkit.train.arguments import parse_args
from embedkit.train.trainer import run
from embedkit.verify import SAMPLE_TEXTS
from tests.train.test_finetune import _args, make_data

TEXTS = ["the quick brown fox", "hello world cat", "", "  ", "中文 测试", "what is bge " * 30]
TOL = 1e-4


def _diff(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


def _train_adapter(model_dir, out, steps=10, *extra):
    data = make_data(out.parent / f"{out.name}-train.jsonl")
    return run(*parse_args(_args(model_dir, data, out, "--max_steps", str(steps), "--save_strategy", "no", "--lora",
                                 "--lora_r", "4", "--learning_rate", "1e-2", "--report_to", "none", *extra)))


def build_bert(folder, tokenizer_from, hidden_size=32, layers=2, seed=1):
    """A random tiny BERT with the given hidden size / depth, sharing the tokenizer of ``tokenizer_from``."""
    import torch
    from transformers import BertConfig, BertModel

    folder.mkdir(parents=True)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        if (tokenizer_from / name).is_file():
            shutil.copy2(tokenizer_from / name, folder / name)
    vocab_size = json.loads((tokenizer_from / "config.json").read_text())["vocab_size"]
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=layers,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=128)
    BertModel(config).eval().save_pretrained(str(folder))
    return folder


def _peft_reference(base_dir, adapter_dir, spec, texts):
    """Base + adapter through peft (unmerged), encoded with an explicitly written spec."""
    from peft import PeftModel
    from transformers import AutoModel, AutoTokenizer

    model = PeftModel.from_pretrained(AutoModel.from_pretrained(str(base_dir)), str(adapter_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(adapter_dir))
    emb = Embedder.from_model(model, tok, spec, show_progress=False)
    return emb.encode_queries(texts), emb.encode_corpus(texts)


@pytest.fixture(scope="module")
def adapter(tiny_bert, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "run"
    return _train_adapter(tiny_bert, out, 10, "--query_instruction", "query: ")


@pytest.fixture(scope="module")
def merged(tiny_bert, adapter, tmp_path_factory):
    dst = tmp_path_factory.mktemp("merged") / "tiny-merged"
    return dst, merge_lora(tiny_bert, adapter, dst)


def test_merged_vectors_equal_base_plus_adapter_and_differ_from_base(tiny_bert, adapter, merged):
    dst, report = merged
    assert report.path == dst and report.max_abs_diff <= TOL and report.num_texts == len(SAMPLE_TEXTS)
    assert report.base_max_abs_diff > 1e-3  # the training run really changed the vectors
    ours = Embedder(dst, show_progress=False)
    spec = EmbedderSpec(pooling="cls", normalize=True, query_instruction="query: ", query_max_length=16,
                        passage_max_length=24)
    ref_q, ref_p = _peft_reference(tiny_bert, adapter, spec, TEXTS)
    assert _diff(ours.encode_queries(TEXTS), ref_q) <= TOL
    assert _diff(ours.encode_corpus(TEXTS), ref_p) <= TOL
    base = Embedder(tiny_bert, pooling="cls", normalize=True, query_instruction="query: ", query_max_length=16,
                    passage_max_length=24, show_progress=False)
    assert _diff(ours.encode_queries(TEXTS), base.encode_queries(TEXTS)) > 1e-3


def test_spec_tokenizer_card_and_manifest_carried_over(merged):
    dst, report = merged
    spec = Embedder(dst, show_progress=False).spec
    assert (spec.pooling, spec.normalize, spec.query_instruction) == ("cls", True, "query: ")
    assert (spec.query_max_length, spec.passage_max_length) == (16, 24)
    assert spec.provenance["pooling"].startswith("saved embedkit spec")
    assert report.spec.provenance["pooling"].startswith("adapter ")
    assert (dst / "model.safetensors").is_file() and (dst / "tokenizer.json").is_file()
    assert not (dst / "adapter_config.json").exists()
    assert verify_manifest(dst).ok
    card = (dst / "README.md").read_text(encoding="utf-8")
    assert f"max abs diff {report.max_abs_diff:.2g}" in card and "LoRA adapter" in card
    assert report.lora["r"] == 4 and "query" in report.lora["target_modules"]


def test_bare_peft_adapter_falls_back_to_base_spec_and_tokenizer(tiny_bert, tmp_path, caplog):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    bare = tmp_path / "bare-adapter"
    model = get_peft_model(AutoModel.from_pretrained(str(tiny_bert)), LoraConfig(r=2, target_modules=["query"]))
    model.save_pretrained(str(bare))  # peft files only: no tokenizer, no spec
    report = merge_lora(tiny_bert, bare, tmp_path / "m")
    assert report.base_max_abs_diff == 0.0 and "does not change the vectors" in caplog.text  # B starts at zero
    spec = Embedder(tmp_path / "m", show_progress=False).spec
    assert (spec.pooling, spec.normalize, spec.query_max_length) == ("cls", True, 128)  # the base's (assumed)
    assert _diff(Embedder(tmp_path / "m", show_progress=False).encode(TEXTS),
                 Embedder(tiny_bert, show_progress=False).encode(TEXTS)) <= TOL


def test_adapter_of_another_model_is_refused_naming_the_mismatch(tiny_bert, tmp_path):
    other = build_bert(tmp_path / "wide-bert", tiny_bert, hidden_size=48)
    wide_adapter = _train_adapter(other, tmp_path / "wide-run", 2)
    dst = tmp_path / "m"
    with pytest.raises(CheckpointError) as info:
        merge_lora(tiny_bert, wide_adapter, dst)
    msg = str(info.value)
    assert "does not fit the base model" in msg and "hidden size 32" in msg and "hidden size 48" in msg
    assert str(other) in msg and "size mismatch" in msg and "r=4" in msg
    assert not dst.exists()


def test_adapter_with_layers_the_base_lacks_is_refused(tiny_bert, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    deep = build_bert(tmp_path / "deep-bert", tiny_bert, layers=4)
    model = get_peft_model(AutoModel.from_pretrained(str(deep)), LoraConfig(r=2, target_modules=["query"]))
    model.save_pretrained(str(tmp_path / "deep-adapter"))  # peft itself would silently drop layers 2 and 3
    with pytest.raises(CheckpointError, match=r"adapter tensors have no place in the base.*layer\.2"):
        merge_lora(tiny_bert, tmp_path / "deep-adapter", tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_missing_or_wrong_adapter_folder(tiny_bert, tmp_path):
    with pytest.raises(CheckpointError, match="no adapter folder"):
        merge_lora(tiny_bert, tmp_path / "nope", tmp_path / "m")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no adapter_config.json"):
        merge_lora(tiny_bert, tmp_path / "empty", tmp_path / "m")
    with pytest.raises(CheckpointError, match="looks like a full model") as info:
        merge_lora(tiny_bert, tiny_bert, tmp_path / "m")
    assert "embedkit save" in info.value.hint
    assert not (tmp_path / "m").exists()


def test_damaged_adapter_weights(tiny_bert, adapter, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(adapter, damaged)
    (damaged / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="cannot read the adapter") as info:
        merge_lora(tiny_bert, damaged, tmp_path / "m")
    assert "damaged" in info.value.hint and not (tmp_path / "m").exists()
    (damaged / "adapter_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no adapter weights"):
        merge_lora(tiny_bert, damaged, tmp_path / "m")


def test_destination_rules(tiny_bert, adapter, tmp_path):
    dst = tmp_path / "exists"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="already exists") as info:
        merge_lora(tiny_bert, adapter, dst)
    assert "--overwrite" in info.value.hint and (dst / "keep.txt").read_text() == "mine"
    with pytest.raises(CheckpointError, match="inside the source"):
        merge_lora(tiny_bert, adapter, adapter / "merged")
    # a failed verification leaves an existing destination untouched, even with overwrite
    with pytest.raises(CheckpointError, match="more than the tolerance 0"):
        merge_lora(tiny_bert, adapter, dst, overwrite=True, tolerance=0.0)
    assert (dst / "keep.txt").read_text() == "mine" and not (dst / "config.json").exists()
    merge_lora(tiny_bert, adapter, dst, overwrite=True, texts=["one text"])
    assert (dst / "config.json").is_file() and not (dst / "keep.txt").exists()


def test_cli_merge(tiny_bert, adapter, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("the quick brown fox\n\n中文 测试\n", encoding="utf-8")
    dst = tmp_path / "cli-merged"
    assert main(["merge", str(tiny_bert), str(adapter), str(dst), "--texts", str(texts)]) == 0
    out = capsys.readouterr().out
    assert "merged: vectors equal the adapter model's (max abs diff" in out and "over 3 texts" in out
    assert f"saved {dst}" in out and (dst / "model.safetensors").is_file()
    assert main(["merge", str(tiny_bert), str(adapter), str(dst)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "hint:" in err and "Traceback" not in err
    assert main(["merge", str(tiny_bert), str(tmp_path / "missing"), str(tmp_path / "x")]) == 2
    assert "no adapter folder" in capsys.readouterr().err
