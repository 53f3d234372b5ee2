"""`embedkit inspect`: folder kinds, file classes, sizes, spec rules, next steps, JSON stability, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedkit.checkpoint.inspect import KINDS, SCHEMA_VERSION, inspect_folder
from embedkit.errors import CheckpointError
from embedkit.folder.layout import FILE_CLASSES

TOP_LEVEL_KEYS = {
    "schema_version", "path", "kind", "files", "classes", "total_bytes", "inference_bytes", "droppable_bytes",
    "droppable", "missing_for_inference", "model", "spec", "spec_error", "spec_assumed", "lora", "m3_heads",
    "checkpoints", "next_steps", "problems",
}

TRAINING_FILES = {
    "optimizer.pt": "training_state",
    "scheduler.pt": "training_state",
    "rng_state_0.pth": "rng_state",
    "trainer_state.json": "training_state",
    "training_args.bin": "training_state",
    "global_step5/zero_pp_rank_0_mp_rank_00_optim_states.pt": "zero_shards",
}


def _save_torch(path: Path, obj) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, str(path))


def _training_folder(tiny_copy) -> Path:
    import torch

    folder = tiny_copy("checkpoint-15")
    _save_torch(folder / "optimizer.pt", {"state": {0: {"exp_avg": torch.zeros(4)}}, "param_groups": []})
    _save_torch(folder / "scheduler.pt", {"last_epoch": 15})
    _save_torch(folder / "rng_state_0.pth", {"python": 1})
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 15, "log_history": []}))
    (folder / "training_args.bin").write_bytes(b"not really a pickle")
    _save_torch(folder / "global_step5" / "zero_pp_rank_0_mp_rank_00_optim_states.pt", {"x": torch.zeros(2)})
    return folder


def _files_by_path(report) -> dict[str, str]:
    return {f["path"]: f["class"] for f in report.files}


def _run_cli(argv, capsys) -> tuple[int, str, str]:
    from embedkit.cli import main

    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_training_checkpoint(tiny_copy):
    folder = _training_folder(tiny_copy)
    report = inspect_folder(folder)
    assert report.kind == "training_checkpoint"
    classes = _files_by_path(report)
    for rel, cls in TRAINING_FILES.items():
        assert classes[rel] == cls, rel
    assert classes["model.safetensors"] == "weights" and classes["config.json"] == "config"
    assert classes["vocab.txt"] == "tokenizer"
    assert set(report.droppable) == set(TRAINING_FILES)
    sizes = {f["path"]: f["size"] for f in report.files}
    assert report.droppable_bytes == sum(sizes[p] for p in TRAINING_FILES)
    assert report.total_bytes == sum(sizes.values())
    assert report.inference_bytes == report.total_bytes - report.droppable_bytes
    assert report.classes["training_state"]["count"] == 4
    assert report.missing_for_inference == []
    assert report.model["dtypes"] == ["float32"] and report.model["parameters"] > 0
    assert report.model["model_type"] == "bert" and report.model["hidden_size"] == 32
    assert any(step.startswith("embedkit slim") for step in report.next_steps)


def test_training_checkpoint_without_tokenizer(tiny_copy):
    folder = _training_folder(tiny_copy)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    report = inspect_folder(folder)
    assert report.kind == "training_checkpoint"
    assert report.missing_for_inference == ["tokenizer"]
    tok = next(i for i, s in enumerate(report.next_steps) if "tokenizer" in s and "base model" in s)
    slim = next(i for i, s in enumerate(report.next_steps) if s.startswith("embedkit slim"))
    assert tok < slim  # fix the folder first, so the slimmed copy is complete
    assert report.spec is not None and report.spec["pooling"]["value"] == "cls"  # spec still resolved from files


def test_lora_adapter(tmp_path):
    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "my-adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({
        "base_model_name_or_path": "BAAI/bge-small-en-v1.5", "peft_type": "LORA", "r": 8, "lora_alpha": 16,
        "target_modules": ["value", "query"],
    }))
    save_file({"base_model.model.encoder.layer.0.attention.self.query.lora_A.weight": torch.zeros(8, 32),
               "base_model.model.encoder.layer.0.attention.self.query.lora_B.weight": torch.zeros(32, 8)},
              str(folder / "adapter_model.safetensors"))
    report = inspect_folder(folder)
    assert report.kind == "lora_adapter"
    assert report.lora["base_model_name_or_path"] == "BAAI/bge-small-en-v1.5"
    assert (report.lora["r"], report.lora["lora_alpha"]) == (8, 16)
    assert report.lora["target_modules"] == ["query", "value"]
    assert report.lora["parameters"] == 2 * 8 * 32
    assert _files_by_path(report)["adapter_model.safetensors"] == "lora_adapter"
    assert "weights" in report.missing_for_inference
    assert report.spec is None and report.spec_error
    assert report.next_steps[0].startswith("embedkit merge BAAI/bge-small-en-v1.5 ")
    assert len(report.next_steps) == 1  # no "copy the tokenizer" noise: merge takes it from the base


def test_peft_training_checkpoint_suggests_merge(tmp_path):
    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "checkpoint-100"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/models/base", "r": 4}))
    save_file({"w": torch.zeros(4, 4)}, str(folder / "adapter_model.safetensors"))
    _save_torch(folder / "optimizer.pt", {"state": {}})
    (folder / "trainer_state.json").write_text("{}")
    report = inspect_folder(folder)
    assert report.kind == "training_checkpoint"
    assert report.next_steps[0].startswith("embedkit merge /models/base ")
    assert set(report.droppable) == {"optimizer.pt", "trainer_state.json"}


def test_minilm_sentence_transformers_model(minilm_dir):
    from embedkit.folder.safe_load import read_safetensors_header

    report = inspect_folder(minilm_dir)
    assert report.kind == "sentence_transformers_model"
    header = read_safetensors_header(minilm_dir / "model.safetensors")
    expected = 0
    for info in header.values():
        n = 1
        for d in info["shape"]:
            n *= d
        expected += n
    assert report.model["parameters"] == expected
    assert 22_700_000 <= report.model["parameters"] < 22_800_000
    assert "float32" in report.model["dtypes"]
    assert report.model["weight_format"] == "safetensors"
    assert report.model["architectures"] == ["BertModel"] and report.model["hidden_size"] == 384
    assert report.spec["pooling"] == {"value": "mean", "rule": "sentence-transformers (1_Pooling/config.json)"}
    assert report.spec_assumed == [] and report.missing_for_inference == [] and report.droppable == []
    assert not any("--pooling" in s for s in report.next_steps)
    assert any(s.startswith("embedkit manifest") for s in report.next_steps)


def test_tiny_bert_without_st_files_suggests_pooling(tiny_bert):
    report = inspect_folder(tiny_bert)
    assert report.kind == "full_model"
    assert report.spec_assumed == ["pooling", "normalize"]
    assert report.spec["pooling"]["rule"].startswith("assumed")
    assert any("--pooling" in s and s.startswith("no pooling recorded") for s in report.next_steps)


def test_family_matched_model_suggests_save_for_st_layout(tiny_copy):
    report = inspect_folder(tiny_copy("bge-small-en-v1.5"))
    assert report.kind == "full_model" and report.spec_assumed == []
    assert any(s.startswith("embedkit save") and "sentence-transformers" in s for s in report.next_steps)


def test_zero_shards_only(tmp_path, tiny_bert):
    import torch

    folder = tmp_path / "ds-ckpt"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_bert / "config.json").read_text())
    (folder / "latest").write_text("global_step5")
    (folder / "zero_to_fp32.py").write_text("# consolidate\n")
    _save_torch(folder / "global_step5" / "mp_rank_00_model_states.pt", {"x": torch.zeros(2)})
    _save_torch(folder / "global_step5" / "zero_pp_rank_0_mp_rank_00_optim_states.pt", {"x": torch.zeros(2)})
    report = inspect_folder(folder)
    assert report.kind == "deepspeed_checkpoint"
    assert "weights" in report.missing_for_inference
    assert report.droppable == []  # the shards are the only copy of the weights
    assert all(c == "zero_shards" for p, c in _files_by_path(report).items() if p != "config.json")
    assert any("embedkit slim" in s and "deepspeed" in s for s in report.next_steps)


def test_onnx_export(tmp_path, tiny_bert):
    folder = tmp_path / "onnx-export"
    folder.mkdir()
    for name in ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((tiny_bert / name).read_bytes())
    (folder / "onnx").mkdir()
    (folder / "onnx" / "model.onnx").write_bytes(b"\x08\x07fake onnx")
    report = inspect_folder(folder)
    assert report.kind == "onnx_export"
    assert _files_by_path(report)["onnx/model.onnx"] == "onnx"
    assert report.missing_for_inference == []
    assert report.spec is not None


def test_m3_heads(tiny_copy):
    import torch

    folder = tiny_copy("m3-like")
    _save_torch(folder / "colbert_linear.pt", {"weight": torch.zeros(4, 32), "bias": torch.zeros(4)})
    report = inspect_folder(folder)
    assert report.m3_heads == {"colbert_linear": True, "sparse_linear": False}
    _save_torch(folder / "sparse_linear.pt", {"weight": torch.zeros(1, 32), "bias": torch.zeros(1)})
    report = inspect_folder(folder)
    assert report.m3_heads == {"colbert_linear": True, "sparse_linear": True}
    assert _files_by_path(report)["sparse_linear.pt"] == "m3_heads"
    assert "sparse_linear.pt" not in report.droppable


def test_bin_weights_counted_with_weights_only(tmp_path, tiny_bert):
    from safetensors.torch import load_file

    folder = tmp_path / "bin-model"
    folder.mkdir()
    for name in ("config.json", "vocab.txt", "tokenizer_config.json"):
        (folder / name).write_bytes((tiny_bert / name).read_bytes())
    sd = load_file(str(tiny_bert / "model.safetensors"))
    _save_torch(folder / "pytorch_model.bin", sd)
    report = inspect_folder(folder)
    assert report.model["weight_format"] == "bin"
    assert report.model["parameters"] == sum(t.numel() for t in sd.values())
    assert report.model["parameters"] == inspect_folder(tiny_bert).model["parameters"]


def test_sharded_safetensors_with_missing_shard(tmp_path, tiny_bert):
    folder = tmp_path / "sharded"
    folder.mkdir()
    (folder / "config.json").write_bytes((tiny_bert / "config.json").read_bytes())
    (folder / "model-00001-of-00002.safetensors").write_bytes((tiny_bert / "model.safetensors").read_bytes())
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    report = inspect_folder(folder)
    assert report.model["weights_error"] and "model-00002-of-00002.safetensors" in report.model["weights_error"]
    assert "weights" in report.missing_for_inference
    (folder / "model-00002-of-00002.safetensors").write_bytes((tiny_bert / "model.safetensors").read_bytes())
    report = inspect_folder(folder)
    assert report.model["weights_error"] is None
    assert report.model["parameters"] == 2 * inspect_folder(tiny_bert).model["parameters"]


def test_invalid_config_json_is_reported(tiny_copy, capsys):
    folder = tiny_copy("broken-config")
    (folder / "config.json").write_text("{ this is not json")
    report = inspect_folder(folder)
    assert "invalid JSON" in report.model["config_error"]
    assert "config.json" in report.missing_for_inference
    assert report.spec is None and "invalid JSON" in report.spec_error
    assert any("config.json" in p for p in report.problems)
    assert any("fix config.json" in s for s in report.next_steps)
    rc, out, err = _run_cli(["inspect", str(folder)], capsys)  # report printed, then exit 2: not ready
    assert rc == 2 and "Traceback" not in out + err and "invalid JSON" in out and "not ready" in out
    assert "error:" in err and "config.json" in err and "ready for inference[/" not in out
    rc, out, _ = _run_cli(["inspect", str(folder), "--json"], capsys)
    assert rc == 2 and "invalid JSON" in json.loads(out)["model"]["config_error"]


def test_truncated_weights_reported(tiny_copy):
    folder = tiny_copy("truncated")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    report = inspect_folder(folder)
    assert report.model["weights_error"] and report.model["parameters"] is None
    assert "weights" in report.missing_for_inference


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    report = inspect_folder(tmp_path / "empty")
    assert report.kind == "empty" and report.files == [] and report.total_bytes == 0
    assert report.next_steps and "empty" in report.next_steps[0]


def test_training_output_folder_points_to_latest_checkpoint(tmp_path, tiny_bert):
    import shutil

    out = tmp_path / "run"
    for step in (5, 10):
        shutil.copytree(tiny_bert, out / f"checkpoint-{step}")
    report = inspect_folder(out)
    assert report.kind == "unknown" and report.checkpoints == ["checkpoint-5", "checkpoint-10"]
    assert any("checkpoint-10" in s and "embedkit inspect" in s for s in report.next_steps)


@pytest.mark.parametrize("what", ["missing", "file"])
def test_bad_path_raises(tmp_path, what):
    target = tmp_path / "nope"
    if what == "file":
        target.write_text("x")
    with pytest.raises(CheckpointError) as info:
        inspect_folder(target)
    assert info.value.hint


def test_cli_json_schema_and_stable(tiny_copy, capsys):
    folder = _training_folder(tiny_copy)
    rc1, out1, _ = _run_cli(["inspect", str(folder), "--json"], capsys)
    rc2, out2, _ = _run_cli(["inspect", str(folder), "--json"], capsys)
    assert rc1 == rc2 == 0
    assert out1 == out2
    data = json.loads(out1)
    assert set(data) == TOP_LEVEL_KEYS
    assert data["schema_version"] == SCHEMA_VERSION and data["kind"] in KINDS
    assert set(data["classes"]) <= set(FILE_CLASSES)
    assert all(set(f) == {"path", "class", "size"} for f in data["files"])
    assert data["spec"]["pooling"] == {"value": "cls", "rule": "assumed (BGE convention)"}
    assert data == inspect_folder(folder).to_dict()


def test_cli_human_output(tiny_copy, capsys):
    folder = _training_folder(tiny_copy)
    rc, out, _ = _run_cli(["inspect", str(folder)], capsys)
    assert rc == 0
    for text in ("training_checkpoint", "float32", "training_state", "pooling", "next steps", "embedkit slim"):
        assert text in out


def test_cli_not_a_folder(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("x")
    rc, _, err = _run_cli(["inspect", str(target)], capsys)
    assert rc == 2 and "error:" in err and "Traceback" not in err
    rc, _, err = _run_cli(["inspect", str(tmp_path / "missing")], capsys)
    assert rc == 2 and "error:" in err
