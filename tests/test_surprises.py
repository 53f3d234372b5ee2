"""Silent surprises a newcomer met (issue 13): each fixed behaviour with the test that would have caught it."""

import json

import numpy as np
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
