"""Hostile paths against data: outputs that are inputs, interrupted folder swaps, stale siblings, racing saves."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from embedkit import _io
from embedkit._io import (
    DestinationExistsError,
    atomic_dir,
    atomic_write,
    refuse_overwriting_inputs,
    rename_exchange,
    stale_siblings,
)
from embedkit.checkpoint.manifest import verify_manifest
from embedkit.checkpoint.save import save
from embedkit.cli import main
from embedkit.errors import CheckpointError, DataError

ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
           PYTHONPATH=str(Path(__file__).resolve().parents[1]))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _folder(path: Path, tag: str) -> Path:
    (path / "sub").mkdir(parents=True)
    (path / "a.txt").write_text(f"{tag}\n")
    (path / "sub" / "b.txt").write_text(f"{tag} b\n")
    return path


# ---------------------------------------------------------------------- outputs that are inputs (CLI)
def _cli_refuses(argv, capsys, *words):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "hint:" in err
    for w in words:
        assert str(w) in err, (w, err)


def test_encode_refuses_its_input_as_output(tiny_bert, tmp_path, capsys):
    same = tmp_path / "same.txt"
    same.write_text("one\ntwo\n")
    _cli_refuses(["encode", str(tiny_bert), "-i", str(same), "-o", str(same)], capsys, "--output", same)
    assert same.read_text() == "one\ntwo\n"
    link = tmp_path / "link.npy"  # a symlink to the input counts as the input
    os.symlink(same, link)
    _cli_refuses(["encode", str(tiny_bert), "-i", str(same), "-o", str(link)], capsys, "--output", link, same)
    hard = tmp_path / "hard.npy"  # and so does a hard link
    os.link(same, hard)
    _cli_refuses(["encode", str(tiny_bert), "-i", str(same), "-o", str(hard)], capsys, "--output", hard)
    assert same.read_text() == "one\ntwo\n"


def test_encode_refuses_an_output_inside_the_model_folder(tiny_copy, tmp_path, capsys):
    model = tiny_copy("model")
    texts = tmp_path / "t.txt"
    texts.write_text("hello\n")
    before = _tree(model)
    _cli_refuses(["encode", str(model), "-i", str(texts), "-o", str(model / "model.safetensors")], capsys,
                 "--output", "model folder", model)
    _cli_refuses(["encode", str(model), "-i", str(texts), "-o", str(model / "vectors.npy")], capsys, "inside")
    assert _tree(model) == before


def test_eval_refuses_an_output_inside_the_data_folder(tiny_bert, tmp_path, capsys):
    data = tmp_path / "bench"
    data.mkdir()
    corpus = '{"id": "d1", "text": "the cat"}\n'
    (data / "corpus.jsonl").write_text(corpus)
    (data / "queries.jsonl").write_text('{"id": "q1", "text": "cat"}\n')
    (data / "qrels.jsonl").write_text('{"qid": "q1", "docid": "d1", "relevance": 1}\n')
    _cli_refuses(["eval", str(tiny_bert), "--data", str(data), "--output", str(data / "corpus.jsonl")], capsys,
                 "--output", data / "corpus.jsonl", "input folder")
    _cli_refuses(["eval", str(tiny_bert), "--data", str(data), "--output", str(tmp_path / "r.md"),
                  "--plot", str(tiny_bert / "plot.png")], capsys, "--plot", "model folder")
    assert (data / "corpus.jsonl").read_text() == corpus and not (tiny_bert / "plot.png").exists()


def test_mine_and_score_pairs_refuse_their_input_as_output(tmp_path, capsys, tiny_copy):
    train = tmp_path / "train.jsonl"
    content = json.dumps({"query": "q", "pos": ["p"], "neg": ["n"]}) + "\n"
    train.write_text(content)
    _cli_refuses(["mine", "minilm", "-i", str(train), "-o", str(train)], capsys, "--output", "also an input", train)
    link = tmp_path / "out.jsonl"
    os.symlink(train, link)
    _cli_refuses(["mine", "minilm", "-i", str(train), "-o", str(link)], capsys, "resolves to")
    _cli_refuses(["mine", "minilm", "-i", str(tmp_path), "-o", str(tmp_path / "mined.jsonl")], capsys,
                 "inside the input folder")
    reranker = tiny_copy("reranker")
    _cli_refuses(["score-pairs", str(reranker), "-i", str(train), "-o", str(train)], capsys, "also an input")
    _cli_refuses(["score-pairs", str(reranker), "-i", str(train), "-o", str(reranker / "s.jsonl")], capsys,
                 "model folder")
    assert train.read_text() == content


def test_save_and_convert_refuse_a_destination_holding_what_they_read(tiny_copy, tmp_path):
    parent = tmp_path / "out"
    src = tiny_copy("out/ckpt")  # the source lies inside the destination
    with pytest.raises(CheckpointError, match="contains the model folder"):
        save(src, parent, overwrite=True)
    assert (src / "config.json").is_file()
    from embedkit.checkpoint.convert import convert

    with pytest.raises(CheckpointError, match="--output"):
        convert(src, to="bin", output=parent, overwrite=True)
    assert (src / "config.json").is_file()
    tok = tiny_copy("tok")
    with pytest.raises(CheckpointError, match="tokenizer|model folder"):
        save(tiny_copy("m2"), tok / "nested", tokenizer=tok)


def test_slim_refuses_a_destination_holding_its_source(tiny_copy, tmp_path):
    from embedkit.checkpoint.slim import slim

    src = tiny_copy("out2/ckpt")
    with pytest.raises(CheckpointError, match="contains the model folder"):
        slim(src, tmp_path / "out2", overwrite=True)
    assert (src / "config.json").is_file()


def test_in_place_convert_keeps_dot_files(tiny_copy):
    from embedkit.checkpoint.convert import convert

    src = tiny_copy("dotted")
    (src / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    convert(src, to="bin")
    assert (src / ".gitattributes").read_text() == "*.safetensors filter=lfs\n"
    assert verify_manifest(src).ok


def test_refuse_overwriting_inputs_accepts_unrelated_paths(tmp_path):
    (tmp_path / "in.txt").write_text("x")
    out = refuse_overwriting_inputs(tmp_path / "out.npy", inputs=[tmp_path / "in.txt", None],
                                    model_dirs=[tmp_path / "model"])
    assert out == tmp_path / "out.npy"
    with pytest.raises(DataError, match="-o"):
        refuse_overwriting_inputs(tmp_path / "in.txt", inputs=[tmp_path / "in.txt"], flag="-o")


# ---------------------------------------------------------------------- folder swaps
def test_rename_exchange_swaps_two_folders(tmp_path):
    a, b = _folder(tmp_path / "a", "A"), _folder(tmp_path / "b", "B")
    if not rename_exchange(a, b):
        pytest.skip("this file system has no renameat2(RENAME_EXCHANGE)")
    assert (a / "a.txt").read_text() == "B\n" and (b / "a.txt").read_text() == "A\n"
    with pytest.raises(FileNotFoundError):
        rename_exchange(tmp_path / "absent", a)


def test_overwrite_swaps_in_the_new_folder_and_removes_the_old(tmp_path):
    dst = _folder(tmp_path / "model", "old")
    with atomic_dir(dst, overwrite=True) as tmp:
        _folder(tmp / "x", "unused")
        (tmp / "new.txt").write_text("new\n")
        assert (dst / "a.txt").read_text() == "old\n"  # the old folder stays whole while the new one is built
    assert sorted(_tree(dst)) == ["new.txt", "x/a.txt", "x/sub/b.txt"]
    assert os.listdir(tmp_path) == ["model"]  # no tmp/old sibling, no lock file left


def test_failed_block_leaves_the_destination_untouched(tmp_path):
    dst = _folder(tmp_path / "model", "old")
    with pytest.raises(RuntimeError):
        with atomic_dir(dst, overwrite=True) as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("boom")
    assert _tree(dst) == {"a.txt": b"old\n", "sub/b.txt": b"old b\n"} and os.listdir(tmp_path) == ["model"]


def test_two_step_fallback_is_recovered_by_the_next_run(tmp_path, monkeypatch):
    dst = _folder(tmp_path / "model", "old")
    monkeypatch.setattr(_io, "rename_exchange", lambda a, b: False)  # a file system without RENAME_EXCHANGE
    with atomic_dir(dst, overwrite=True) as tmp:
        (tmp / "a.txt").write_text("new\n")
    assert _tree(dst) == {"a.txt": b"new\n"} and os.listdir(tmp_path) == ["model"]
    # a kill between the two renames: the destination is missing, the old folder waits complete in .old-PID-*
    old = tmp_path / f".model.old-{_dead_pid()}-abcdef"
    os.rename(dst, old)
    half = tmp_path / f".model.tmp-{_dead_pid()}-123456"  # the new folder, half written
    half.mkdir()
    assert {p.name for p in stale_siblings(dst)} == {old.name, half.name}
    with pytest.raises(RuntimeError):
        with atomic_dir(dst, overwrite=True):
            assert _tree(dst) == {"a.txt": b"new\n"}  # put back before anything else happens
            raise RuntimeError("the next run fails too")
    assert _tree(dst) == {"a.txt": b"new\n"} and os.listdir(tmp_path) == ["model"]


def test_stale_siblings_of_dead_writers_are_removed_live_ones_kept(tmp_path, tiny_bert):
    dst = save(tiny_bert, tmp_path / "model", pooling="cls").path
    dead = _dead_pid()
    stale = [tmp_path / f".model.tmp-{dead}-aaaaaa", tmp_path / f".model.old-{dead}-bbbbbb"]
    for p in stale:
        _folder(p, "stale")
    live = tmp_path / f".model.tmp-{os.getppid()}-cccccc"  # the pytest runner's parent: alive
    live.mkdir()
    other = tmp_path / ".other.tmp-1-dddddd"  # not a sibling of this folder
    other.mkdir()
    assert stale_siblings(dst) == sorted(stale)
    from embedkit.checkpoint.inspect import inspect_folder

    steps = " ".join(inspect_folder(dst).next_steps)
    assert "stale temporary sibling" in steps and stale[0].name in steps
    save(tiny_bert, dst, pooling="mean", overwrite=True)
    assert not any(p.exists() for p in stale) and live.exists() and other.exists()
    assert verify_manifest(dst).ok
    # atomic_write's temporary files: a dead writer's are removed by the next write of that file
    left = tmp_path / f".report.md.{dead}-x1y2z3.tmp-embedkit"
    mine = tmp_path / f".report.md.{os.getpid()}-q9w8e7.tmp-embedkit"
    left.write_text("half")
    mine.write_text("half")
    with atomic_write(tmp_path / "report.md", "w") as fh:
        fh.write("done\n")
    assert not left.exists() and mine.exists() and (tmp_path / "report.md").read_text() == "done\n"


# ---------------------------------------------------------------------- racing writers
RACER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from embedkit._io import DestinationExistsError, atomic_dir
    dst, me, other = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    try:
        with atomic_dir(dst) as tmp:
            (tmp / "who.txt").write_text(me)
            (dst.parent / f"ready-{me}").touch()
            deadline = time.time() + 30
            while not (dst.parent / f"ready-{other}").exists() and time.time() < deadline:
                time.sleep(0.01)
    except DestinationExistsError as exc:
        print("EXISTS", exc.message, exc.hint)
    else:
        print("OK")
""")


def test_two_writers_racing_to_create_a_folder_exactly_one_wins(tmp_path):
    dst = tmp_path / "model"
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(dst), me, other], stdout=subprocess.PIPE,
                              text=True, env=ENV) for me, other in (("p1", "p2"), ("p2", "p1"))]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert sorted(o.split()[0] for o in outs) == ["EXISTS", "OK"], outs
    loser = next(o for o in outs if o.startswith("EXISTS"))
    assert "already exists" in loser and "--overwrite" in loser
    winner = "p1" if outs[0].startswith("OK") else "p2"
    assert (dst / "who.txt").read_text() == winner
    assert sorted(os.listdir(tmp_path)) == ["model", "ready-p1", "ready-p2"]


def test_two_save_processes_to_one_destination_exactly_one_succeeds(tiny_bert, tmp_path):
    dst = tmp_path / "saved"
    cmd = [sys.executable, "-m", "embedkit", "save", str(tiny_bert), str(dst), "--pooling", "mean"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    assert sorted(rc for rc, _, _ in results) == [0, 2], results
    _, _, err = next(r for r in results if r[0] == 2)
    assert "already exists" in err and "--overwrite" in err and "Traceback" not in err
    assert verify_manifest(dst).ok and sorted(os.listdir(tmp_path)) == ["saved"]


def test_destination_exists_error_is_a_checkpoint_error_and_a_file_exists_error(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(DestinationExistsError) as err:
        with atomic_dir(tmp_path / "d"):
            pass
    assert isinstance(err.value, CheckpointError) and isinstance(err.value, FileExistsError)
    assert "--overwrite" in err.value.hint


# ---------------------------------------------------------------------- SIGKILL (slow, small)
KILLED = textwrap.dedent("""
    import sys
    import safetensors.torch, torch, transformers
    import embedkit.checkpoint.manifest, embedkit.folder.loading, embedkit.checkpoint.card
    from embedkit.checkpoint.save import save
    src, dst = sys.argv[1:3]
    print("READY", flush=True)
    save(src, dst, pooling="mean", normalize=True, overwrite=True)
    print("DONE", flush=True)
""")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the exchange swap is Linux-only")
def test_sigkill_save_overwrite_always_leaves_a_complete_folder(tiny_bert, tmp_path):
    dst = tmp_path / "saved"
    seen = set()
    for delay in (0.05, 0.3, 0.6, 1.0, None):  # None: let it finish
        save(tiny_bert, dst, pooling="cls", normalize=True, overwrite=True)
        proc = subprocess.Popen([sys.executable, "-c", KILLED, str(tiny_bert), str(dst)], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, env=ENV)
        assert proc.stdout.readline().strip() == "READY"
        if delay is None:
            assert proc.wait(timeout=300) == 0
        else:
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert dst.is_dir(), f"destination missing after a kill at {delay}s"
        report = verify_manifest(dst)
        assert report.ok, f"partial destination after a kill at {delay}s: {report.problems}"
        pool = json.loads((dst / "1_Pooling" / "config.json").read_text())
        seen.add("mean" if pool["pooling_mode_mean_tokens"] else "cls")
    assert "mean" in seen  # the last one finished
    save(tiny_bert, dst, pooling="cls", normalize=True, overwrite=True)  # cleans what the kills left
    assert sorted(os.listdir(tmp_path)) == ["saved"]
