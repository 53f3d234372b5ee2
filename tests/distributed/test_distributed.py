"""Corpus encode on Ray Data (issue 16, many machines): a local Ray with 2 CPU actors writes the single-process
shards (same vectors, ids, manifest), a SIGKILLed driver resumes, and a bad row fails with file:line at the driver.

One local Ray instance is shared by the module (Ray start-up takes tens of seconds on a loaded 2-core machine);
Ray keeps its session files under /tmp/ray, nothing is written into the working directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("ray")
import pyarrow.parquet as pq  # noqa: E402

from embedkit import Embedder  # noqa: E402
from embedkit.cli import main  # noqa: E402
from embedkit.corpus import encode_to_parquet, read_manifest, verify_output  # noqa: E402
from embedkit.distributed import encode_dataset  # noqa: E402
from embedkit.errors import DataError  # noqa: E402
from tests.corpus.test_corpus import kill_when_recorded  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
WORDS = ("the quick brown fox jumps over lazy dog a long text that goes past max length short tabs and mixed spaces "
         "hello world what is bge cat query passage").split()


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 24)))) for _ in range(n)]


def _jsonl(path: Path, texts: list[str], first_id: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"doc-{first_id + i}", "text": t}) + "\n" for i, t in enumerate(texts)),
                    encoding="utf-8")
    return path


def _vectors(out: Path) -> tuple[list, np.ndarray]:
    table = pq.read_table(sorted(out.glob("part-*.parquet")))
    emb = table.column("embedding").combine_chunks()
    return table.column("id").to_pylist(), emb.flatten().to_numpy(zero_copy_only=False).reshape(-1, emb.type.list_size)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray (2 CPUs, no dashboard, no usage stats) for the module; its workers import this checkout."""
    import ray

    os.environ["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] = "0"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    if ray.is_initialized():
        ray.shutdown()
    context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield context.address_info["gcs_address"]
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny(tiny_bert):
    return Embedder(tiny_bert, batch_size=16)


def test_two_actors_equal_the_single_process_encode(local_ray, tiny, tiny_bert, tmp_path):
    """3000 texts in two .jsonl files, shards crossing the file boundary: ids in input order, vectors equal
    ``Embedder.encode_corpus`` <= 1e-6, and the manifest is the single-process one."""
    texts = _texts(3000)
    src = tmp_path / "in"
    src.mkdir()
    _jsonl(src / "a.jsonl", texts[:1300], 0)
    _jsonl(src / "b.jsonl", texts[1300:], 1300)
    out = tmp_path / "out"
    result = encode_dataset(tiny_bert, src, out, id_field="id", shard_size=700, chunk_size=300, workers=2,
                            batch_size=16)
    assert (result.rows, result.shards, result.written) == (3000, 5, 5)
    ids, vecs = _vectors(out)
    assert ids == [f"doc-{i}" for i in range(3000)]
    np.testing.assert_allclose(vecs, tiny.encode_corpus(texts), atol=1e-6, rtol=0)
    single = tmp_path / "single"
    encode_to_parquet(tiny, src, single, id_field="id", shard_size=700, chunk_size=300)
    ray_manifest, one = read_manifest(out), read_manifest(single)
    for key in ("spec", "options", "shard_size", "output_dtype", "dim", "width", "id_type", "rows", "complete"):
        assert ray_manifest[key] == one[key], key
    assert ray_manifest["model"]["fingerprint"] == one["model"]["fingerprint"]
    assert [(s["file"], s["start"], s["end"]) for s in ray_manifest["shards"]] == \
        [(s["file"], s["start"], s["end"]) for s in one["shards"]]
    assert verify_output(out)["problems"] == []
    assert pq.read_schema(out / "part-00000.parquet") == pq.read_schema(single / "part-00000.parquet")


def test_int8_txt_input_equals_the_single_process_output(local_ray, tiny, tiny_bert, tmp_path):
    """.txt input (ids are row numbers) with int8 output: the calibration ranges (first chunk, computed by the plan
    task) and the quantized vectors are the single-process ones."""
    src = tmp_path / "corpus.txt"
    src.write_text("\n".join(_texts(600, seed=2)) + "\n", encoding="utf-8")
    out, single = tmp_path / "out", tmp_path / "single"
    encode_dataset(tiny_bert, src, out, shard_size=256, chunk_size=100, output_dtype="int8", workers=2,
                   batch_size=16)
    encode_to_parquet(tiny, src, single, shard_size=256, chunk_size=100, output_dtype="int8")
    np.testing.assert_allclose(read_manifest(out)["quantization"]["ranges"],
                               read_manifest(single)["quantization"]["ranges"], atol=1e-6)
    (ids, vecs), (ids1, vecs1) = _vectors(out), _vectors(single)
    assert ids == ids1 == list(range(600))
    assert vecs.dtype == np.int8 and np.abs(vecs.astype(int) - vecs1.astype(int)).max() <= 1


def test_bad_row_fails_with_file_and_line_at_the_driver(local_ray, tiny_bert, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    _jsonl(src / "a.jsonl", _texts(40), 0)
    bad = src / "b.jsonl"
    lines = [json.dumps({"id": f"doc-{40 + i}", "text": t}) for i, t in enumerate(_texts(30, seed=1))]
    lines[6] = '{"id": "doc-46", "text": '  # line 7: truncated JSON
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        encode_dataset(tiny_bert, src, tmp_path / "out", id_field="id", shard_size=25, workers=2)
    assert f"{bad}:7: invalid JSON" in str(info.value)
    assert "Traceback" not in str(info.value) and "Ray" not in info.value.message
    assert not read_manifest(tmp_path / "out")["complete"]


def test_cli_refuses_ray_flags_without_parquet(tiny_bert, tmp_path, capsys):
    src = tmp_path / "t.txt"
    src.write_text("a\nb\n", encoding="utf-8")
    assert main(["encode", str(tiny_bert), "-i", str(src), "-o", str(tmp_path / "v.npy"), "--workers", "2"]) == 2
    assert "--workers" in capsys.readouterr().err
    assert main(["encode", str(tiny_bert), "-i", str(src), "-o", str(tmp_path / "v.npz"), "--ray", "--m3"]) == 2
    assert "a folder of Parquet shards" in capsys.readouterr().err
    assert main(["encode", str(tiny_bert), "-i", str(src), "-o", str(tmp_path / "out"), "--ray", "--m3",
                 "--colbert"]) == 2
    assert "--colbert" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_m3_sparse_on_ray_equals_the_single_process_output(local_ray, tmp_path_factory, tmp_path):
    """``--ray --m3 --sparse``: bge-m3's dense vectors and its lexical weights (the ``sparse`` column), from two
    actors, equal the single-process shards."""
    from embedkit.m3 import M3Embedder
    from tests.m3.test_m3 import build_tiny_m3

    folder = build_tiny_m3(tmp_path_factory.mktemp("m3") / "tiny-bge-m3")
    src = tmp_path / "c.txt"
    src.write_text("\n".join(_texts(90, seed=3)) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["encode", str(folder), "--m3", "--sparse", "--passages", "-i", str(src), "-o", str(out), "--ray",
                 "--ray-address", local_ray, "--workers", "2", "--shard-size", "40", "--no-progress"]) == 0
    single = tmp_path / "single"
    encode_to_parquet(M3Embedder(folder, return_sparse=True), src, single, kind="passages", shard_size=40,
                      sparse=True)
    got, want = pq.read_table(sorted(out.glob("part-*.parquet"))), pq.read_table(sorted(single.glob("part-*.parquet")))
    assert got.schema == want.schema and got.column("id").to_pylist() == list(range(90))
    for row, ref in zip(got.column("sparse").to_pylist(), want.column("sparse").to_pylist(), strict=True):
        assert [e["index"] for e in row] == [e["index"] for e in ref]
        # unnormalized weights (~1): fp32 summation order differs between 1 and 2 torch threads
        np.testing.assert_allclose([e["value"] for e in row], [e["value"] for e in ref], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_vectors(out)[1], _vectors(single)[1], atol=1e-6, rtol=0)
    assert read_manifest(out)["options"] == read_manifest(single)["options"]


KILL_CHILD = """
import sys
from embedkit.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigkill_the_driver_then_resume_completes_and_equals(local_ray, tiny, tiny_bert, tmp_path):
    """A real `embedkit encode --ray` driver (connected to the module's Ray) is SIGKILLed once shards are recorded;
    `--resume` keeps them, encodes the rest, and the output equals the single-process vectors."""
    texts = _texts(2000, seed=3)
    src = tmp_path / "corpus.txt"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    args = ["encode", str(tiny_bert), "-i", str(src), "-o", str(out), "--ray", "--ray-address", local_ray,
            "--workers", "2", "--shard-size", "50", "--batch-size", "4", "--passages", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-c", KILL_CHILD, *args], env=dict(os.environ), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when_recorded(proc, out / "_embedkit.json", shards=2, timeout=240)
    killed = read_manifest(out)
    assert not killed["complete"] and 2 <= len(killed["shards"]) < 40
    assert main(args) == 2  # a plain re-run refuses
    assert main(args + ["--resume"]) == 0
    resumed = read_manifest(out)
    assert resumed["complete"] and resumed["rows"] == 2000 and len(resumed["shards"]) == 40
    kept = {s["index"]: s for s in killed["shards"]}
    assert all(resumed["shards"][i] == s for i, s in kept.items())  # recorded shards were not redone
    assert verify_output(out)["problems"] == []
    ids, vecs = _vectors(out)
    assert ids == list(range(2000))
    np.testing.assert_allclose(vecs, tiny.encode_corpus(texts), atol=1e-6, rtol=0)
