"""The real CLI, in process (main()) and once as a subprocess."""

import json
import subprocess
import sys

import numpy as np
import pytest

from embedkit import Embedder
from embedkit.cli import main


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "embedkit", "--help"], capture_output=True, text=True, check=True)
    for cmd in ("encode", "spec"):
        assert cmd in out.stdout


def test_encode_txt(tmp_path, minilm, capsys):
    src = tmp_path / "in.txt"
    src.write_text("hello world\n\n中文 测试\n", encoding="utf-8")
    out = tmp_path / "vecs.npy"
    assert main(["encode", "minilm", "--input", str(src), "--output", str(out), "--no-progress"]) == 0
    vecs = np.load(out)
    assert vecs.shape == (3, 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(vecs, minilm.encode(["hello world", "", "中文 测试"]), atol=1e-5)
    assert "wrote" in capsys.readouterr().out


def test_encode_jsonl_queries_with_instruction(tmp_path, minilm_dir):
    src = tmp_path / "q.jsonl"
    src.write_text('{"query": "what is a cat"}\n\n{"query": "dogs"}\n', encoding="utf-8")
    out = tmp_path / "q.npy"
    rc = main(["encode", str(minilm_dir), "-i", str(src), "-o", str(out), "--field", "query", "--queries",
               "--instruction", "query: ", "--max-length", "64", "--no-progress"])
    assert rc == 0
    ref = Embedder(minilm_dir, query_instruction="query: ", max_length=64).encode_queries(["what is a cat", "dogs"])
    np.testing.assert_allclose(np.load(out), ref, atol=1e-5)


def test_encode_bad_jsonl_names_file_and_line(tmp_path, capsys):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"text": "ok"}\n{"text": 3}\n', encoding="utf-8")
    out = tmp_path / "x.npy"
    assert main(["encode", "minilm", "-i", str(src), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{src}:2" in err and "hint:" in err and "Traceback" not in err
    assert not out.exists()


def test_encode_missing_model_exits_2_without_traceback(tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("x\n")
    assert main(["encode", "BAAI/bge-small-en-v1.5", "-i", str(src), "-o", str(tmp_path / "o.npy")]) == 2
    err = capsys.readouterr().err
    assert "offline" in err and "Traceback" not in err


def test_encode_keeps_previous_output_on_failure(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("x\n")
    out = tmp_path / "o.npy"
    out.write_bytes(b"previous")
    assert main(["encode", "minilm", "-i", str(src), "-o", str(out), "--pooling", "max"]) == 2
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "o.npy"]  # no temporary left behind


def test_encode_queries_and_passages_are_exclusive(tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("x\n")
    assert main(["encode", "minilm", "-i", str(src), "-o", str(tmp_path / "o.npy"), "--queries", "--passages"]) == 2
    assert "exclusive" in capsys.readouterr().err


def test_spec_json(capsys):
    assert main(["spec", "minilm", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["pooling"] == {"value": "mean", "rule": "sentence-transformers (1_Pooling/config.json)"}


def test_spec_table(capsys, tiny_bert):
    assert main(["spec", str(tiny_bert)]) == 0
    assert "assumed" in capsys.readouterr().out


def test_atomic_write_gives_ordinary_permissions(tmp_path):
    import os

    from embedkit._io import atomic_write

    with atomic_write(tmp_path / "f.txt", "w") as fh:
        fh.write("x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("name", ["vectors.csv", "vectors.json", "vectors"])
def test_encode_refuses_an_extension_it_does_not_write(tmp_path, capsys, name):
    src = tmp_path / "in.txt"
    src.write_text("a\nb\n")
    assert main(["encode", "minilm", "-i", str(src), "-o", str(tmp_path / name)]) == 2
    err = capsys.readouterr().err
    assert "writes a float32 .npy" in err and "hint: name it vectors.npy" in err
    assert not (tmp_path / name).exists()
