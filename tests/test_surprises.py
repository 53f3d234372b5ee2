"""Silent surprises a newcomer met (issue 13): each fixed behaviour with the test that would have caught it."""

import json

import numpy as np
import pytest
from safetensors.torch import load_file

from embedkit import Embedder
from embedkit.checkpoint.convert import convert
from embedkit.checkpoint.manifest import verify_manifest
from embedkit.checkpoint.save import save
from embedkit.cli import main

TEXTS = ["hello world", "the quick brown fox", "中文 测试", ""]


# ---------------------------------------------------------------------- convert keeps every weight format
def test_in_place_convert_keeps_the_bin_that_save_format_both_wrote(tiny_bert, tmp_path, capsys):
    folder = tmp_path / "my-bge"
    save(tiny_bert, folder, pooling="cls", normalize=True, format="both")
    assert (folder / "pytorch_model.bin").is_file() and (folder / "model.safetensors").is_file()
    before = Embedder(folder, show_progress=False).encode(TEXTS)

    assert main(["convert", str(folder), "--max-shard-size", "30KB"]) == 0
    out = capsys.readouterr().out
    assert "kept bin" in out and "--drop-other-formats" in out
    names = {p.name for p in folder.iterdir()}
    assert "model.safetensors.index.json" in names and "pytorch_model.bin.index.json" in names
    assert any(n.startswith("pytorch_model-") and n.endswith(".bin") for n in names)  # re-sharded too
    assert verify_manifest(folder).ok
    assert np.array_equal(Embedder(folder, show_progress=False).encode(TEXTS), before)
    from embedkit.checkpoint.convert import read_weights

    st, _ = read_weights(folder, fmt="safetensors")
    pt, _ = read_weights(folder, fmt="bin")
    assert st.keys() == pt.keys() and all(np.array_equal(st[k].numpy(), pt[k].numpy()) for k in st)


def test_convert_to_adds_a_format_and_drop_other_formats_drops(tiny_bert, tmp_path, capsys):
    folder = tmp_path / "m"
    save(tiny_bert, folder, pooling="cls", normalize=True, format="both")
    report = convert(folder, dtype="bf16")
    assert report.formats == ["safetensors", "bin"] and report.kept_formats == ["bin"]
    assert report.dropped_formats == []
    assert str(load_file(folder / "model.safetensors")["embeddings.word_embeddings.weight"].dtype) == "torch.bfloat16"
    from embedkit.checkpoint.convert import read_weights

    assert {str(v.dtype) for v in read_weights(folder, fmt="bin")[0].values() if v.is_floating_point()} == {
        "torch.bfloat16"}  # the kept format is re-written in the new dtype, not left stale

    assert main(["convert", str(folder), "--to", "bin", "--drop-other-formats", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["formats"] == ["bin"] and report["dropped_formats"] == ["safetensors"]
    assert (folder / "pytorch_model.bin").is_file() and not (folder / "model.safetensors").exists()
    assert verify_manifest(folder).ok

    only_st = tmp_path / "st"
    save(tiny_bert, only_st, pooling="cls", normalize=True)
    report = convert(only_st, to="bin", output=tmp_path / "both")
    assert report.formats == ["bin", "safetensors"] and report.kept_formats == ["safetensors"]
    assert (tmp_path / "both" / "model.safetensors").is_file() and (tmp_path / "both" / "pytorch_model.bin").is_file()


# ---------------------------------------------------------------------- inspect's next steps run in order
def _commands(steps):
    """The shell commands in inspect's next steps: `embedkit ...` in backticks, or a step that starts with one
    (its explanation follows in parentheses)."""
    import re
    import shlex

    out = []
    for step in steps:
        quoted = re.findall(r"`(embedkit [^`]+)`", step)
        if quoted:
            out += [shlex.split(q) for q in quoted]
        elif step.startswith("embedkit "):
            words = shlex.split(step)
            cut = next((i for i, w in enumerate(words) if w.startswith("(")), len(words))
            out.append(words[:cut])
    return out


def _checkpoint_without_tokenizer(tiny_bert, folder, base=None):
    """A Trainer checkpoint as transformers 4 wrote it: config (naming the base), weights, training state, and
    neither tokenizer nor sentence-transformers files."""
    import shutil

    import torch

    folder.mkdir()
    cfg = json.loads((tiny_bert / "config.json").read_text())
    if base is not None:
        cfg["_name_or_path"] = str(base)
    (folder / "config.json").write_text(json.dumps(cfg))
    shutil.copy(tiny_bert / "model.safetensors", folder / "model.safetensors")
    torch.save({"state": {}}, folder / "optimizer.pt")
    torch.save({"last_epoch": 3}, folder / "scheduler.pt")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 5}))
    return folder


@pytest.mark.parametrize("recorded", [True, False])
def test_inspect_next_steps_without_tokenizer_succeed_in_order(tiny_bert, tmp_path, capsys, monkeypatch,
                                                                recorded):
    base = tmp_path / "base"
    save(tiny_bert, base, pooling="cls", normalize=True)
    ckpt = _checkpoint_without_tokenizer(tiny_bert, tmp_path / "checkpoint-5", base if recorded else None)
    assert main(["inspect", str(ckpt), "--json"]) == 0
    steps = json.loads(capsys.readouterr().out)["next_steps"]
    commands = _commands(steps)
    assert [c[1] for c in commands][:1] == ["slim"] and len(commands) >= 2  # slim, then save (no pooling recorded)
    for command in commands:
        if command[1] in ("slim", "save"):
            assert "--tokenizer" in command
    if recorded:
        assert not any("BASE_MODEL_FOLDER" in w for c in commands for w in c)
        assert any(str(base) in w for c in commands for w in c)
    else:
        assert any("BASE_MODEL_FOLDER" in s and "replace" in s for s in steps)  # the sentence that says so
        commands = [[str(base) if w == "BASE_MODEL_FOLDER" else w for w in c] for c in commands]
    monkeypatch.chdir(tmp_path)
    for command in commands:
        assert main(command[1:]) == 0, (command, capsys.readouterr())
    from embedkit.folder.layout import find_tokenizer_files

    assert find_tokenizer_files(tmp_path / "checkpoint-5-slim") and find_tokenizer_files(tmp_path / "checkpoint-5-st")


# ---------------------------------------------------------------------- fresh training checkpoints verify
def test_fresh_training_checkpoint_verifies(tiny_bert, tmp_path, capsys):
    from tests.train.test_finetune import _args, make_data

    data = make_data(tmp_path / "train.jsonl", n=32)
    out = tmp_path / "out"
    assert main(["finetune", *_args(tiny_bert, data, out, "--max_steps", "4", "--save_strategy", "steps",
                                    "--save_steps", "2", "--report_to", "none")]) == 0
    for step in (2, 4):
        ckpt = out / f"checkpoint-{step}"
        trainer_files = {"optimizer.pt", "scheduler.pt", "trainer_state.json"}
        assert trainer_files <= {p.name for p in ckpt.iterdir()}
        assert any(p.name.startswith("rng_state") for p in ckpt.iterdir())
        manifest = json.loads((ckpt / "embedkit-manifest.json").read_text())
        assert trainer_files <= set(manifest["files"])  # the manifest covers what the Trainer wrote after save()
        capsys.readouterr()
        assert main(["verify", str(ckpt)]) == 0, capsys.readouterr()


# ---------------------------------------------------------------------- eval: an unknown split is an error
def test_eval_unknown_split_is_an_error_listing_the_splits(tiny_bert, tmp_path, capsys):
    from embedkit.errors import DataError
    from embedkit.eval.data import available_splits, load_eval_data
    from tests.eval.test_eval import _bench

    custom = _bench(tmp_path / "custom")  # split-less queries.jsonl + qrels.jsonl: the default split "test"
    assert available_splits(custom) == ["test"]
    assert main(["eval", str(tiny_bert), "--data", str(custom), "--split", "dve", "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert "no split 'dve'" in err and "splits present: test (queries.jsonl + qrels.jsonl)" in err
    assert "--split test" in err

    beir = _bench(tmp_path / "beir", "beir", split="dev")
    _bench(tmp_path / "beir2", "beir", split="test")
    (beir / "qrels" / "test.tsv").write_bytes((tmp_path / "beir2" / "qrels" / "test.tsv").read_bytes())
    assert available_splits(beir) == ["dev", "test"]
    with pytest.raises(DataError, match="splits present: dev, test"):
        load_eval_data(beir, "dve")
    assert load_eval_data(beir, "dev").split == "dev"

    split = _bench(tmp_path / "split", "split", split="dev")  # dev_queries.jsonl + dev_qrels.jsonl
    with pytest.raises(DataError, match="no split 'test'; splits present: dev"):
        load_eval_data(split)
    assert set(load_eval_data(split, "dev").queries) == {"q1", "q2"}


# ---------------------------------------------------------------------- the int8 gate always sees the built-in sample
def test_int8_gate_includes_the_builtin_sample_whatever_calibration_adds(tiny_bert, tmp_path):
    pytest.importorskip("onnxruntime")
    from embedkit.export.onnx import export_onnx
    from embedkit.verify import SAMPLE_TEXTS  # the one sample the precision gate and parity also run

    builtin = SAMPLE_TEXTS
    src = tmp_path / "src"
    save(tiny_bert, src, pooling="cls", normalize=True)
    calibration = tmp_path / "two.txt"
    calibration.write_text("my first domain text\nmy second domain text\n", encoding="utf-8")
    report = export_onnx(src, tmp_path / "out", quantize="int8", min_cosine=0.0, min_cosine_floor=0.0,
                         calibration=calibration)
    assert report.int8["kept"] and report.int8["calibration_texts"] == 2
    assert report.int8["texts"] == len(builtin) + 2  # not just the 2 calibration texts
    info = json.loads((tmp_path / "out" / "onnx" / "export.json").read_text())
    assert info["parity"]["texts"] == len(builtin) + 2


# ---------------------------------------------------------------------- --precision auto says what it picked
def test_precision_auto_logs_choice_and_gate_once_and_encode_shows_it(minilm_dir, tmp_path, monkeypatch, caplog,
                                                                        capsys):
    import logging

    monkeypatch.setenv("EMBEDKIT_CACHE", str(tmp_path / "cache"))  # auto measures on this host, then caches
    with caplog.at_level(logging.INFO, logger="embedkit"):
        m = Embedder(minilm_dir, precision="auto", show_progress=False)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("precision:")]
    assert len(lines) == 1 and lines[0].startswith(f"precision: {m.precision} (auto: the fastest precision")
    assert "measured on this host: fp32" in lines[0] and "(cached)" not in lines[0]
    assert m.precision_summary.startswith(f"{m.precision} (auto, measured")

    caplog.clear()
    src = tmp_path / "texts.txt"
    src.write_text("hello world\nthe quick brown fox\n", encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="embedkit"):
        assert main(["encode", str(minilm_dir), "-i", str(src), "-o", str(tmp_path / "v.npy"), "--precision",
                     "auto", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "(2, 384) float32" in out and f"precision {m.precision} (auto, measured (cached)" in out
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("precision:")]
    assert len(lines) == 1 and "measured on this host (cached)" in lines[0]  # the measurement above, said once

    assert main(["encode", str(minilm_dir), "-i", str(src), "-o", str(tmp_path / "w.npy"), "--no-progress"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("precision fp32")


def test_precision_failed_gate_is_said_in_the_summary(tiny_bert, tmp_path, monkeypatch, caplog):
    import logging

    monkeypatch.setenv("EMBEDKIT_CACHE", str(tmp_path))
    with caplog.at_level(logging.INFO, logger="embedkit"):
        m = Embedder(tiny_bert, pooling="mean", precision="fp16", precision_gate=(1.0000001, 1.0),
                     show_progress=False)
    assert m.precision_summary == "fp32 (fp16 failed the gate)"
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("precision:")]
    assert len(lines) == 1 and "quality gate failed for fp16" in lines[0]
