"""Hostile model folders (issue 11): every broken or malicious folder gives a CheckpointError naming the file (and
the tensor / entry), through the library and through `embedkit encode` / `inspect` / `convert` (exit 2, `error:`,
no traceback); no NaN vector is ever written and no pickle payload ever runs.

One fixture builder, :func:`make_hostile`, copies the tiny saved BERT from the conftest fixture into ``tmp_path`` and
applies one named corruption from :data:`CORRUPTIONS`.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest

from embedkit import Embedder
from embedkit.checkpoint.convert import convert
from embedkit.checkpoint.inspect import inspect_folder
from embedkit.cli import main
from embedkit.errors import CheckpointError

MARKER = "PWNED_MARKER"


class _Payload:
    """Unpickling this runs ``touch MARKER``: what a hostile checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malicious_pickle(path: Path, marker: Path) -> None:
    import torch

    torch.save({"weight": _Payload(marker)}, str(path))


# ---------------------------------------------------------------------- corruptions
def _edit_config(**changes):
    def apply(folder: Path) -> None:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        cfg.update(changes)
        (folder / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    return apply


def _edit_weights(fn):
    def apply(folder: Path) -> None:
        from safetensors.torch import load_file, save_file

        sd = load_file(str(folder / "model.safetensors"))
        fn(sd)
        save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return apply


WORD = "embeddings.word_embeddings.weight"
BIAS = "encoder.layer.1.output.dense.bias"


def _set(name, value):
    def fn(sd):
        sd[name] = value(sd[name]) if callable(value) else value
    return fn


def _poison(name, index, value):
    def fn(sd):
        sd[name][index] = value
    return fn


def _bad_offsets(folder: Path) -> None:
    """Header says one tensor is bigger than its data_offsets span (shape x dtype != span)."""
    path = folder / "model.safetensors"
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header[BIAS]["shape"] = [64]  # 256 bytes declared, 128 bytes of data
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


def _st_layout(folder: Path, pooling_path: str = "1_Pooling") -> None:
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": pooling_path, "type": "sentence_transformers.models.Pooling"}]
    (folder / "modules.json").write_text(json.dumps(modules), encoding="utf-8")


def _modules_escape(folder: Path) -> None:
    outside = folder.parent / "outside"  # a real Pooling config outside the folder: it must not be read
    outside.mkdir(exist_ok=True)
    (outside / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}))
    _st_layout(folder, "../outside")


def _pooling_bad_utf8(folder: Path) -> None:
    _st_layout(folder)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_bytes(b'{"pooling_mode_cls_token": true, "x": "\xff\xfe"}')


def _index_escape(folder: Path) -> None:
    outside = folder.parent / "elsewhere"
    outside.mkdir(exist_ok=True)
    shutil.move(str(folder / "model.safetensors"), outside / "model.safetensors")
    from safetensors import safe_open

    with safe_open(str(outside / "model.safetensors"), "pt") as fh:
        names = list(fh.keys())
    index = {"metadata": {}, "weight_map": {k: "../elsewhere/model.safetensors" for k in names}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")


def _malicious_colbert(folder: Path) -> None:
    import torch

    _malicious_pickle(folder / "colbert_linear.pt", folder.parent / MARKER)
    torch.save({"weight": torch.zeros(1, 32), "bias": torch.zeros(1)}, str(folder / "sparse_linear.pt"))


CORRUPTIONS = {
    # name: (apply, what the error must name, commands that must refuse it)
    "nan_weight": (_edit_weights(_poison(WORD, (3, 1), float("nan"))), ["model.safetensors", WORD],
                   ("encode", "inspect", "convert")),
    "inf_weight": (_edit_weights(_poison(BIAS, 0, float("inf"))), ["model.safetensors", BIAS],
                   ("encode", "inspect", "convert")),
    "int64_weight": (_edit_weights(_set(WORD, lambda t: (t * 100).long())), ["model.safetensors", WORD, "I64"],
                     ("encode", "inspect", "convert")),
    "missing_tensor": (_edit_weights(lambda sd: sd.pop(BIAS)), ["model.safetensors", BIAS, "1 missing"],
                       ("encode", "inspect", "convert")),
    "misshaped_tensor": (_edit_weights(_set(BIAS, lambda t: t[:7].clone())),
                         ["model.safetensors", f"{BIAS} (file [7] vs config [32])"],
                         ("encode", "inspect", "convert")),
    "bad_offsets": (_bad_offsets, ["model.safetensors", BIAS, "data_offsets"], ("encode", "inspect", "convert")),
    "hidden_size_str": (_edit_config(hidden_size="abc"), ["config.json", "hidden_size"],
                        ("encode", "inspect", "convert")),
    "layers_str": (_edit_config(num_hidden_layers="2"), ["config.json", "num_hidden_layers"],
                   ("encode", "inspect", "convert")),
    "heads_not_dividing": (_edit_config(num_attention_heads=5), ["config.json", "num_attention_heads"],
                           ("encode", "inspect", "convert")),
    "config_list": (lambda f: (f / "config.json").write_text("[1, 2, 3]"), ["config.json", "JSON object"],
                    ("encode", "inspect", "convert")),
    "config_invalid_json": (lambda f: (f / "config.json").write_text('{"hidden_size": 32,'),
                            ["config.json", "invalid JSON"], ("encode", "inspect", "convert")),
    "config_bad_utf8": (lambda f: (f / "config.json").write_bytes(b'{"model_type": "bert\xff"}'),
                        ["config.json", "UTF-8"], ("encode", "inspect", "convert")),
    "garbage_tokenizer": (lambda f: (f / "tokenizer.json").write_text("{garbage"), ["tokenizer"],
                          ("encode", "inspect")),
    "modules_escape": (_modules_escape, ["modules.json", "../outside", "outside the model folder"],
                       ("encode", "inspect")),
    "pooling_bad_utf8": (_pooling_bad_utf8, ["1_Pooling/config.json", "UTF-8"], ("encode", "inspect")),
    "index_escape": (_index_escape, ["model.safetensors.index.json", "../elsewhere", "outside the model folder"],
                     ("encode", "inspect", "convert")),
    "malicious_colbert": (_malicious_colbert, ["colbert_linear.pt", "unpickling"], ("encode_m3", "inspect")),
}


def make_hostile(base: Path, tmp_path: Path, case: str) -> Path:
    """Copy the tiny model ``base`` to ``tmp_path/models/<case>`` and apply the corruption named ``case``."""
    folder = tmp_path / "models" / case
    shutil.copytree(base, folder)
    CORRUPTIONS[case][0](folder)
    return folder


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _assert_clean_cli_error(rc: int, out: str, err: str, names: list[str]) -> None:
    assert rc == 2, (rc, out, err)
    assert "error:" in err and "Traceback" not in out + err
    assert "--debug for the full traceback" not in err  # a generic TypeError / ValueError, not a CheckpointError
    for name in names:
        assert name in err, (name, err)


def _assert_names(message: str, names: list[str]) -> None:
    for name in names:
        assert name in message, (name, message)


CASES = sorted(CORRUPTIONS)


@pytest.fixture
def texts(tmp_path) -> Path:
    path = tmp_path / "texts.txt"
    path.write_text("the quick brown fox\nhello world\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("case", CASES)
def test_library_refuses(case, tiny_bert, tmp_path):
    folder = make_hostile(tiny_bert, tmp_path, case)
    _, names, commands = CORRUPTIONS[case]
    if "encode" in commands:
        with pytest.raises(CheckpointError) as info:
            Embedder(folder, device="cpu", show_progress=False)
        _assert_names(info.value.message, names)
    if "encode_m3" in commands:
        from embedkit.m3 import M3Embedder

        with pytest.raises(CheckpointError) as info:
            M3Embedder(folder, device="cpu", show_progress=False, return_colbert=True)
        _assert_names(info.value.message, names)
    if "convert" in commands:
        with pytest.raises(CheckpointError) as info:
            convert(folder, output=tmp_path / "converted")
        _assert_names(info.value.message, names)
        assert not (tmp_path / "converted").exists()
    report = inspect_folder(folder)
    assert report.problems, report.to_dict()
    _assert_names(" | ".join(report.problems), [n.split("/")[-1] if n.endswith(".json") else n for n in names])
    assert not (tmp_path / "models" / MARKER).exists()


@pytest.mark.parametrize("case", CASES)
def test_cli_refuses(case, tiny_bert, tmp_path, texts, capsys):
    folder = make_hostile(tiny_bert, tmp_path, case)
    _, names, commands = CORRUPTIONS[case]
    out_npy = tmp_path / "vectors.npy"
    if "encode" in commands:
        _assert_clean_cli_error(*_cli(["encode", str(folder), "-i", str(texts), "-o", str(out_npy)], capsys), names)
        assert not out_npy.exists()  # no (NaN) vectors written
    if "encode_m3" in commands:
        out_npz = tmp_path / "out.npz"
        _assert_clean_cli_error(*_cli(["encode", str(folder), "--m3", "--colbert", "-i", str(texts), "-o",
                                       str(out_npz)], capsys), names)
        assert not out_npz.exists()
    if "convert" in commands:
        _assert_clean_cli_error(*_cli(["convert", str(folder), "--output", str(tmp_path / "conv")], capsys), names)
        assert not (tmp_path / "conv").exists()
        before = sorted(p.name for p in folder.iterdir())
        _assert_clean_cli_error(*_cli(["convert", str(folder), "--to", "bin"], capsys), names)  # in place
        assert sorted(p.name for p in folder.iterdir()) == before and not (folder / "embedkit-manifest.json").exists()
    rc, out, err = _cli(["inspect", str(folder)], capsys)
    _assert_clean_cli_error(rc, out, err, [])
    assert "not ready for inference" in out and "problem:" in out and "is ready for inference" not in out
    rc, out, err = _cli(["inspect", str(folder), "--json"], capsys)
    assert rc == 2 and json.loads(out)["problems"]
    assert not (tmp_path / "models" / MARKER).exists()


def test_clean_folder_still_loads_and_inspects_ready(tiny_bert, tmp_path, texts, capsys):
    """The checks refuse nothing a healthy folder holds (int buffers included)."""
    import numpy as np

    folder = tmp_path / "clean"
    shutil.copytree(tiny_bert, folder)
    rc, out, err = _cli(["encode", str(folder), "-i", str(texts), "-o", str(tmp_path / "v.npy")], capsys)
    assert rc == 0, err
    assert np.isfinite(np.load(tmp_path / "v.npy")).all()
    report = inspect_folder(folder)
    assert report.problems == []
    rc, out, _ = _cli(["inspect", str(folder)], capsys)
    assert rc == 0 and "not ready" not in out


def test_int_buffers_are_not_refused(tiny_bert, tmp_path):
    """``position_ids`` / ``token_type_ids`` are legitimately integer: compared with what the model expects."""
    import torch
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "buffers"
    shutil.copytree(tiny_bert, folder)
    sd = load_file(str(folder / "model.safetensors"))
    sd["embeddings.position_ids"] = torch.arange(128).unsqueeze(0)
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    assert Embedder(folder, device="cpu", show_progress=False).encode(["hello world"]).shape == (1, 32)
    assert inspect_folder(folder).problems == []


def test_hf_cache_style_symlinks_are_followed_inside(tiny_bert, tmp_path):
    """Entries are checked on their names: a snapshot whose files are symlinks to blobs elsewhere still loads."""
    blobs, snap = tmp_path / "blobs", tmp_path / "snapshots" / "abc"
    blobs.mkdir()
    snap.mkdir(parents=True)
    for f in tiny_bert.iterdir():
        shutil.copy2(f, blobs / f.name)
        (snap / f.name).symlink_to(blobs / f.name)
    assert Embedder(snap, device="cpu", show_progress=False).encode(["hello"]).shape == (1, 32)


def test_malicious_optimizer_refused_on_resume(tiny_bert, tmp_path, capsys):
    """`finetune --resume_from_checkpoint` refuses a checkpoint whose optimizer.pt needs full unpickling (before
    the Trainer touches it), names the file and points to --trust_pickle; legit Trainer files pass the check."""
    from embedkit.train.arguments import parse_args
    from embedkit.train.trainer import check_resume_checkpoint, run

    data = tmp_path / "train.jsonl"
    rows = [{"query": f"the {w}", "pos": [f"a {w} dog"], "neg": ["hello world"]} for w in ("cat", "fox", "bge", "dog")]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    args = ["--model_name_or_path", str(tiny_bert), "--pooling", "cls", "--train_data", str(data),
            "--per_device_train_batch_size", "2", "--train_group_size", "2", "--query_max_length", "8",
            "--passage_max_length", "8", "--report_to", "none"]
    out = tmp_path / "run"
    run(*parse_args([*args, "--output_dir", str(out), "--max_steps", "1", "--save_strategy", "steps",
                     "--save_steps", "1"]))
    ckpt = out / "checkpoint-1"
    assert (ckpt / "optimizer.pt").is_file()
    check_resume_checkpoint(ckpt)  # Trainer's own optimizer / scheduler / rng files load with weights_only

    marker = tmp_path / MARKER
    _malicious_pickle(ckpt / "optimizer.pt", marker)
    with pytest.raises(CheckpointError, match="optimizer.pt") as info:
        check_resume_checkpoint(ckpt)
    assert "--trust-pickle" in info.value.hint or "trust_pickle" in info.value.hint
    rc, out_, err = _cli(["finetune", *args, "--output_dir", str(tmp_path / "resumed"), "--max_steps", "2",
                          "--resume_from_checkpoint", str(ckpt)], capsys)
    _assert_clean_cli_error(rc, out_, err, ["optimizer.pt", "unpickling"])
    assert not marker.exists()
    rc, out_, err = _cli(["finetune", *args, "--output_dir", str(tmp_path / "r2"), "--max_steps", "2",
                          "--resume_from_checkpoint", str(tmp_path / "nope")], capsys)
    _assert_clean_cli_error(rc, out_, err, ["nope"])
