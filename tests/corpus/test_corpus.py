"""Corpus encode to Parquet shards (issue 16, one machine): streamed input, the one Embedder path, quantized dtypes
as sentence-transformers defines them, a manifest after every shard, resume after SIGKILL, verify-output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from embedkit import Embedder  # noqa: E402
from embedkit.cli import main  # noqa: E402
from embedkit.corpus import encode_to_parquet, input_files, iter_chunks, read_manifest, verify_output  # noqa: E402
from embedkit.errors import DataError  # noqa: E402

WORDS = ("the quick brown fox jumps over lazy dog a long text that goes past max length short tabs and mixed spaces "
         "hello world what is bge cat query passage").split()


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 24)))) for _ in range(n)]


def _jsonl(path: Path, texts: list[str], ids: list | None = None) -> Path:
    ids = ids if ids is not None else [f"doc-{i}" for i in range(len(texts))]
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in zip(ids, texts, strict=True)),
                    encoding="utf-8")
    return path


def _vectors(out: Path) -> tuple[list, np.ndarray]:
    table = pq.read_table(sorted(out.glob("part-*.parquet")))
    emb = table.column("embedding").combine_chunks()
    width = emb.type.list_size
    return table.column("id").to_pylist(), emb.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)


@pytest.fixture(scope="module")
def tiny(tiny_bert):
    return Embedder(tiny_bert, batch_size=16)


def test_vectors_equal_encode_corpus_across_shards_and_chunks(tiny, tmp_path):
    texts = _texts(300)
    src = _jsonl(tmp_path / "corpus.jsonl", texts)
    out = tmp_path / "out"
    result = encode_to_parquet(tiny, src, out, id_field="id", shard_size=128, chunk_size=50)
    assert (result.rows, result.shards, result.written) == (300, 3, 3)
    schema = pq.read_schema(out / "part-00000.parquet")
    assert schema.field("embedding").type == pa.list_(pa.float32(), tiny.dim)  # fixed_size_list<float32>[dim]
    assert schema.field("id").type == pa.string()
    ids, vecs = _vectors(out)
    assert ids == [f"doc-{i}" for i in range(300)]
    np.testing.assert_allclose(vecs, tiny.encode_corpus(texts), atol=1e-6, rtol=0)
    manifest = read_manifest(out)
    assert manifest["complete"] and manifest["rows"] == 300
    assert [(s["start"], s["end"]) for s in manifest["shards"]] == [(0, 128), (128, 256), (256, 300)]
    assert manifest["spec"] == tiny.spec.to_dict() and manifest["input"]["files"][0]["size"] == src.stat().st_size
    assert verify_output(out)["problems"] == []


@pytest.mark.parametrize("dtype", ["int8", "uint8", "binary", "ubinary", "float16"])
def test_output_dtypes_equal_sentence_transformers_quantize_embeddings(tiny, tmp_path, dtype):
    from sentence_transformers.util.quantization import quantize_embeddings

    texts = _texts(150, seed=1)
    src = tmp_path / "corpus.txt"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    encode_to_parquet(tiny, src, out, shard_size=64, chunk_size=60, output_dtype=dtype, calibration_rows=50)
    ids, got = _vectors(out)
    assert ids == list(range(150))
    ref = tiny.encode_corpus(texts)
    if dtype == "float16":
        want = ref.astype(np.float16)
    elif dtype.endswith("int8"):
        manifest = read_manifest(out)
        assert manifest["quantization"]["calibration_rows"] == 50
        ranges = np.asarray(manifest["quantization"]["ranges"], dtype=np.float32)
        # the ranges stored are the calibration sample's (the first 50 rows); every shard uses them
        want = quantize_embeddings(ref, precision=dtype, calibration_embeddings=ref[:50])
        np.testing.assert_array_equal(quantize_embeddings(ref, precision=dtype, ranges=ranges), want)
    else:
        want = quantize_embeddings(ref, precision=dtype)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_refuses_a_plain_rerun_and_a_foreign_folder(tiny, tmp_path):
    src = _jsonl(tmp_path / "c.jsonl", _texts(20))
    out = tmp_path / "out"
    encode_to_parquet(tiny, src, out, shard_size=8)
    with pytest.raises(DataError, match="already holds an encode output") as exc:
        encode_to_parquet(tiny, src, out, shard_size=8)
    assert "--resume" in exc.value.hint
    again = encode_to_parquet(tiny, src, out, shard_size=8, resume=True)  # complete: nothing to do
    assert again.written == 0 and again.rows == 20
    (out / "part-00001.parquet").unlink()  # a finished run missing a shard: --resume writes it (and what follows)
    again = encode_to_parquet(tiny, src, out, shard_size=8, resume=True)
    assert (again.written, again.shards, again.rows) == (2, 3, 20) and verify_output(out)["problems"] == []
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty and holds no _embedkit.json"):
        encode_to_parquet(tiny, src, foreign, resume=True)


def test_resume_names_what_changed(tiny, tiny_bert, tmp_path):
    src = _jsonl(tmp_path / "c.jsonl", _texts(30))
    out = tmp_path / "out"
    encode_to_parquet(tiny, src, out, shard_size=10)
    with pytest.raises(DataError, match=r"spec\.normalize: true -> false"):
        encode_to_parquet(Embedder(tiny_bert, normalize=False), src, out, shard_size=10, resume=True)
    with pytest.raises(DataError, match="shard_size: 10 -> 15"):
        encode_to_parquet(tiny, src, out, shard_size=15, resume=True)
    with pytest.raises(DataError, match="output_dtype"):
        encode_to_parquet(tiny, src, out, shard_size=10, resume=True, output_dtype="int8")
    _jsonl(src, _texts(31))
    with pytest.raises(DataError, match=r"input file .*c\.jsonl changed"):
        encode_to_parquet(tiny, src, out, shard_size=10, resume=True)


def test_resume_of_a_different_model_names_the_fingerprint(tiny_copy, tmp_path):
    from tests.conftest import build_tiny_bert

    a = tiny_copy("model-a")
    src = _jsonl(tmp_path / "c.jsonl", _texts(12))
    out = tmp_path / "out"
    encode_to_parquet(Embedder(a), src, out, shard_size=5)
    b = build_tiny_bert(tmp_path / "model-b", seed=7)
    with pytest.raises(DataError, match="model fingerprint"):
        encode_to_parquet(Embedder(b), src, out, shard_size=5, resume=True)


def test_resume_skips_the_recorded_shards_and_redoes_the_rest(tiny, tmp_path):
    texts = _texts(60, seed=3)
    src = _jsonl(tmp_path / "c.jsonl", texts)
    straight = tmp_path / "straight"
    encode_to_parquet(tiny, src, straight, shard_size=16, chunk_size=7)
    out = tmp_path / "out"
    encode_to_parquet(tiny, src, out, shard_size=16, chunk_size=7)
    manifest = json.loads((out / "_embedkit.json").read_text())
    manifest["shards"] = manifest["shards"][:2]  # as if killed while shard 2 was in flight
    manifest["complete"], manifest["rows"] = False, None
    (out / "_embedkit.json").write_text(json.dumps(manifest))
    (out / "part-00003.parquet").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*")}
    result = encode_to_parquet(tiny, src, out, shard_size=16, chunk_size=7, resume=True)
    assert (result.written, result.shards, result.rows) == (2, 4, 60)
    assert all((out / n).stat().st_mtime_ns == before[n] for n in ("part-00000.parquet", "part-00001.parquet"))
    # chunks never cross a shard boundary, so the redone shards are batched (and rounded) as in a straight run
    hashes = [[s["sha256"] for s in read_manifest(d)["shards"]] for d in (out, straight)]
    assert hashes[0] == hashes[1]


KILL_CHILD = """
import sys
from embedkit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def kill_when_recorded(proc: subprocess.Popen, manifest_file: Path, *, shards: int, timeout: float) -> None:
    """SIGKILL ``proc`` (a real `embedkit encode`) once its manifest records ``shards`` shards, not after it ended."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if len(json.loads(manifest_file.read_text())["shards"]) >= shards:
                    break
            except (OSError, ValueError):  # not written yet, or caught mid-rename
                pass
            time.sleep(0.02)
        assert proc.poll() is None, "the encode finished (or failed) before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_a_straight_run(tiny_bert, tmp_path):
    """A real `embedkit encode` subprocess is SIGKILLed after its first shards are recorded; --resume finishes it
    and the folder equals an uninterrupted run, shard for shard."""
    texts = _texts(1000, seed=4)
    src = tmp_path / "corpus.txt"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    args = ["encode", str(tiny_bert), "-i", str(src), "--format", "parquet", "--shard-size", "50",
            "--batch-size", "4", "--passages"]
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.Popen([sys.executable, "-c", KILL_CHILD, *args, "-o", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when_recorded(proc, out / "_embedkit.json", shards=3, timeout=120)
    killed = read_manifest(out)
    assert not killed["complete"] and 3 <= len(killed["shards"]) < 20
    assert main(args + ["-o", str(out)]) == 2  # a plain re-run refuses
    assert main(args + ["-o", str(out), "--resume"]) == 0
    resumed = read_manifest(out)
    assert resumed["complete"] and resumed["rows"] == 1000 and len(resumed["shards"]) == 20
    assert resumed["shards"][: len(killed["shards"])] == killed["shards"]  # completed shards were kept, not redone
    assert verify_output(out)["problems"] == []
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # the killed run's temporary shard is gone
    straight = tmp_path / "straight"
    assert main(args + ["-o", str(straight)]) == 0
    assert [s["sha256"] for s in resumed["shards"]] == [s["sha256"] for s in read_manifest(straight)["shards"]]
    ids, vecs = _vectors(out)
    assert ids == list(range(1000))
    np.testing.assert_allclose(vecs, Embedder(tiny_bert).encode_corpus(texts), atol=1e-6, rtol=0)


def test_verify_output_finds_a_changed_and_a_missing_shard(tiny, tmp_path, capsys):
    src = _jsonl(tmp_path / "c.jsonl", _texts(40))
    out = tmp_path / "out"
    encode_to_parquet(tiny, src, out, shard_size=10)
    assert main(["verify-output", str(out)]) == 0
    assert "4 shard(s), 40 rows" in capsys.readouterr().out
    other = tmp_path / "other"
    encode_to_parquet(tiny, _jsonl(tmp_path / "d.jsonl", _texts(40, seed=9)), other, shard_size=10)
    (out / "part-00001.parquet").write_bytes((other / "part-00001.parquet").read_bytes())  # a valid, other shard
    (out / "part-00003.parquet").unlink()
    assert main(["verify-output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "part-00001.parquet: changed" in err and "part-00003.parquet: missing" in err
    assert "part-00000.parquet" not in err and "part-00002.parquet" not in err


def test_inputs_folder_glob_and_formats(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "a.txt").write_bytes(b"\xef\xbb\xbffirst\r\nsecond\n\nfourth")
    _jsonl(shards / "b.jsonl", ["x", "y"], ids=[1, 2])
    pq.write_table(pa.table({"text": ["p0", "p1", "p2"], "id": [10, 11, 12]}), shards / "c.parquet",
                   row_group_size=2)
    (shards / "_skip.txt").write_text("hidden\n")
    files = input_files(shards)
    assert [f.name for f in files] == ["a.txt", "b.jsonl", "c.parquet"]
    texts = [t for c in iter_chunks(files, 3) for t in c.texts]
    assert texts == ["first", "second", "", "fourth", "x", "y", "p0", "p1", "p2"]
    # resuming at row 6 skips a.txt and b.jsonl without parsing and starts inside the Parquet file
    assert [(c.start, c.texts) for c in iter_chunks(files, 5, start=7)] == [(7, ["p1", "p2"])]
    glob = input_files(str(shards / "*.parquet"))
    assert [(c.texts, c.ids) for c in iter_chunks(glob, 10, id_field="id")] == [(["p0", "p1", "p2"], [10, 11, 12])]
    with pytest.raises(DataError, match="matches no file"):
        input_files(str(tmp_path / "nothing-*.jsonl"))


def test_bad_rows_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok", "id": "a"}\n\n{"text": 3, "id": "b"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:3: field 'text' is int"):
        list(iter_chunks([bad], 10, id_field="id"))
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"text": "a", "id": "x"}\n{"text": "b", "id": 2}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"mixed\.jsonl:2: id 2 is int, earlier ids are str"):
        list(iter_chunks([mixed], 10, id_field="id"))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"broken\.jsonl:2: invalid JSON"):
        list(iter_chunks([broken], 10))
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"fine\ncaf\xe9\n")
    with pytest.raises(DataError, match=r"latin\.txt:2: not UTF-8"):
        list(iter_chunks([latin], 10))
    nulls = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"text": ["a", None]}), nulls)
    with pytest.raises(DataError, match=r"nulls\.parquet:row 2: column 'text' is NoneType"):
        list(iter_chunks([nulls], 10))
    with pytest.raises(DataError, match="no column 'body'"):
        list(iter_chunks([nulls], 10, text_field="body"))
    with pytest.raises(DataError, match="needs .jsonl or .parquet"):
        list(iter_chunks([latin], 10, id_field="id"))


def test_cli_parquet_options_and_format_choice(tiny_bert, tmp_path, capsys):
    src = _jsonl(tmp_path / "c.jsonl", _texts(25), ids=list(range(100, 125)))
    out = tmp_path / "vectors.parquet"  # the extension chooses Parquet
    assert main(["encode", str(tiny_bert), "-i", str(src), "-o", str(out), "--id-field", "id", "--queries",
                 "--shard-size", "10", "--output-dtype", "ubinary"]) == 0
    assert "25 rows in 3 shard(s)" in capsys.readouterr().out
    ids, vecs = _vectors(out)
    assert ids == list(range(100, 125)) and vecs.dtype == np.uint8 and vecs.shape == (25, 4)
    assert read_manifest(out)["options"]["kind"] == "queries"
    assert main(["encode", str(tiny_bert), "-i", str(src), "-o", str(tmp_path / "v.npy"), "--id-field", "id"]) == 2
    assert "apply to Parquet output" in capsys.readouterr().err
    assert main(["encode", str(tiny_bert), "-i", str(src), "-o", str(tmp_path / "o2"), "--format", "parquet",
                 "--output-dtype", "int4"]) == 2
    assert "unknown --output-dtype 'int4'" in capsys.readouterr().err
    assert main(["encode", str(tiny_bert), "-i", str(src), "-o", str(tmp_path / "v.npy")]) == 0  # .npy as before
    assert np.load(tmp_path / "v.npy").shape == (25, 32)


def test_m3_sparse_column_equals_lexical_weights(tmp_path_factory, tmp_path):
    from embedkit.m3 import M3Embedder
    from tests.m3.test_m3 import build_tiny_m3

    folder = build_tiny_m3(tmp_path_factory.mktemp("m3") / "tiny-bge-m3")
    texts = ["the cat sat", "a dog", "", "hello world, what is this?"] * 5
    src = tmp_path / "c.txt"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["encode", str(folder), "--m3", "--sparse", "--passages", "-i", str(src), "-o", str(out),
                 "--format", "parquet", "--shard-size", "8"]) == 0
    table = pq.read_table(sorted(out.glob("part-*.parquet")))
    assert table.schema.field("sparse").type == pa.list_(pa.struct([("index", pa.int32()), ("value", pa.float32())]))
    ref = M3Embedder(folder, return_sparse=True).encode_corpus(texts)
    for row, want in zip(table.column("sparse").to_pylist(), ref["lexical_weights"], strict=True):
        assert {str(e["index"]): e["value"] for e in row} == pytest.approx({k: float(v) for k, v in want.items()})
    np.testing.assert_allclose(_vectors(out)[1], ref["dense_vecs"], atol=1e-6, rtol=0)
