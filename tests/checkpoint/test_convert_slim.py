"""embedkit convert and embedkit slim on real files."""

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from embedkit import CheckpointError, Embedder
from embedkit.checkpoint.convert import convert, parse_size
from embedkit.checkpoint.manifest import verify_manifest
from embedkit.checkpoint.save import save
from embedkit.checkpoint.slim import slim
from embedkit.cli import main

TEXTS = ["hello world", "the quick brown fox", "中文 测试", ""]


@pytest.fixture
def model_dir(tiny_bert, tmp_path):
    dst = tmp_path / "model"
    save(tiny_bert, dst, pooling="cls", normalize=True)
    return dst


def test_safetensors_to_bin_is_exact_and_loads(model_dir, tmp_path):
    from transformers import AutoModel

    out = tmp_path / "as-bin"
    report = convert(model_dir, to="bin", output=out, drop_other_formats=True)
    assert report.exact and report.max_abs_diff == 0.0 and report.format == "bin"
    assert (out / "pytorch_model.bin").is_file() and not (out / "model.safetensors").exists()
    AutoModel.from_pretrained(str(out), local_files_only=True)
    assert np.array_equal(Embedder(out, show_progress=False).encode(TEXTS),
                          Embedder(model_dir, show_progress=False).encode(TEXTS))
    assert verify_manifest(out).ok
    back = convert(out, to="safetensors", output=tmp_path / "back")
    assert back.exact
    a, b = load_file(model_dir / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bf16_conversion_reports_diff_and_cosine(model_dir, tmp_path):
    report = convert(model_dir, dtype="bf16", output=tmp_path / "bf16")
    assert report.dtype == "bfloat16" and not report.exact
    assert 0 < report.max_abs_diff < 0.01
    assert report.embedding_cosine_min >= 0.999
    cfg = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert cfg["dtype"] == "bfloat16"
    assert report.bytes_after < report.bytes_before


def test_sharding_and_in_place(model_dir):
    before = Embedder(model_dir, show_progress=False).encode(TEXTS)
    report = convert(model_dir, max_shard_size="30KB")
    assert report.path == model_dir and report.exact
    shards = sorted(p.name for p in model_dir.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and (model_dir / "model.safetensors.index.json").is_file()
    assert not (model_dir / "model.safetensors").exists()
    assert np.array_equal(Embedder(model_dir, show_progress=False).encode(TEXTS), before)
    assert verify_manifest(model_dir).ok
    assert sorted(p.name for p in model_dir.parent.iterdir()) == ["model"]  # no temporary left


def test_a_changed_shard_changes_every_fingerprint(model_dir):
    """Regression: the sharded folder's fingerprints hashed only the *.index.json, so a changed shard went unnoticed
    (the ONNX export's "made from these weights" check and the eval corpus-cache key)."""
    from embedkit.checkpoint.manifest import MANIFEST_NAME
    from embedkit.folder.fingerprint import model_fingerprint, weights_fingerprint

    convert(model_dir, max_shard_size="30KB")
    (model_dir / MANIFEST_NAME).unlink()  # model_fingerprint prefers the manifest; test the weight files themselves
    shards = sorted(model_dir.glob("model-*-of-*.safetensors"))
    hashes, fingerprint = weights_fingerprint(model_dir), model_fingerprint(model_dir)
    assert {s.name for s in shards} <= set(hashes)
    data = bytearray(shards[-1].read_bytes())
    data[-1] ^= 0x01  # one bit of the last tensor of the last shard; the index is untouched
    shards[-1].write_bytes(bytes(data))
    os.utime(shards[-1], ns=(shards[-1].stat().st_atime_ns, shards[-1].stat().st_mtime_ns + 10**9))
    assert weights_fingerprint(model_dir) != hashes
    assert model_fingerprint(model_dir) != fingerprint


def test_convert_fits_the_tensors_it_read_to_the_config_without_a_second_read(model_dir):
    """convert reads the weights once: the fit check (the inference loader's checks) runs on the tensors read, so a
    tensor changed after reading is what gets refused, not what the file on disk holds."""
    from embedkit.checkpoint.convert import check_weights_fit, read_weights

    state, fmt = read_weights(model_dir)
    check_weights_fit(model_dir, state_dict=state)  # fits
    bias = next(k for k in state if k.endswith("LayerNorm.bias"))
    state[bias] = state[bias][:7].clone()
    with pytest.raises(CheckpointError, match=r"\(file \[7\] vs config \[32\]\)"):
        check_weights_fit(model_dir, state_dict=state)
    check_weights_fit(model_dir)  # the file itself still fits: the check above used the tensors given


def test_parse_size():
    assert parse_size("2GB") == 2 * 1024**3 and parse_size("500MB") == 500 * 1024**2 and parse_size(10) == 10
    with pytest.raises(CheckpointError):
        parse_size("lots")


def test_convert_output_exists_and_bad_target(model_dir, tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(CheckpointError, match="already exists"):
        convert(model_dir, to="bin", output=tmp_path / "taken")
    with pytest.raises(CheckpointError, match="unknown target"):
        convert(model_dir, to="onnx")


def test_cli_convert_json(model_dir, tmp_path, capsys):
    assert main(["convert", str(model_dir), "--to", "bin", "-o", str(tmp_path / "c"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["exact"] is True and report["format"] == "bin"


# ---------------------------------------------------------------------- slim
def make_training_checkpoint(src, folder, with_tokenizer=True):
    import shutil

    shutil.copytree(src, folder)
    if not with_tokenizer:
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
            (folder / name).unlink(missing_ok=True)
    torch.save({"state": {0: {"exp_avg": torch.zeros(1000)}}}, folder / "optimizer.pt")
    torch.save({"last_epoch": 3}, folder / "scheduler.pt")
    torch.save({"python": 1}, folder / "rng_state_0.pth")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 5}))
    (folder / "training_args.bin").write_bytes(b"\x80\x04pickled-args")
    (folder / "global_step5").mkdir()
    (folder / "global_step5" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"0" * 4096)
    return folder


def test_slim_training_checkpoint(tiny_bert, tmp_path, capsys):
    ckpt = make_training_checkpoint(tiny_bert, tmp_path / "checkpoint-5")
    report = slim(ckpt, tmp_path / "slim")
    assert set(report.dropped) == {"optimizer.pt", "scheduler.pt", "rng_state_0.pth", "trainer_state.json",
                                   "training_args.bin", "global_step5/zero_pp_rank_0_mp_rank_00_optim_states.pt"}
    assert report.bytes_saved > 4000
    out = tmp_path / "slim"
    assert (out / "modules.json").is_file() and (out / "README.md").is_file() and verify_manifest(out).ok
    assert not (out / "optimizer.pt").exists()
    assert np.allclose(Embedder(out, show_progress=False).encode(TEXTS),
                       Embedder(tiny_bert, show_progress=False).encode(TEXTS), atol=1e-6)
    rc = main(["slim", str(ckpt), str(tmp_path / "slim2")])
    assert rc == 0 and "saved" in capsys.readouterr().out


def test_slim_needs_tokenizer_then_takes_it_from_base(tiny_bert, tmp_path):
    ckpt = make_training_checkpoint(tiny_bert, tmp_path / "checkpoint-9", with_tokenizer=False)
    with pytest.raises(CheckpointError, match="no tokenizer") as info:
        slim(ckpt, tmp_path / "out")
    assert "--tokenizer" in info.value.hint and not (tmp_path / "out").exists()
    report = slim(ckpt, tmp_path / "out", tokenizer=tiny_bert)
    assert "tokenizer.json" in report.kept


def test_slim_zero_only_names_deepspeed(tiny_bert, tmp_path):
    ckpt = make_training_checkpoint(tiny_bert, tmp_path / "checkpoint-zero")
    (ckpt / "model.safetensors").unlink()
    try:
        import deepspeed  # noqa: F401
        pytest.skip("deepspeed is installed here")
    except ImportError:
        pass
    with pytest.raises(CheckpointError, match="deepspeed") as info:
        slim(ckpt, tmp_path / "out")
    assert "pip install deepspeed" in info.value.hint and not (tmp_path / "out").exists()


def test_slim_lora_adapter_points_to_merge(tmp_path):
    ad = tmp_path / "adapter"
    ad.mkdir()
    (ad / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "bge", "r": 8}))
    (ad / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="LoRA adapter") as info:
        slim(ad, tmp_path / "out")
    assert "embedkit merge" in info.value.hint
