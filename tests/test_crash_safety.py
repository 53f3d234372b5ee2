"""SIGKILL save / convert / slim at many points: the destination is complete-old, complete-new or (for a new
destination) absent; an existing destination is never absent on Linux (renameat2 exchange), and the next run
removes whatever the kills left next to it."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from embedkit._io import stale_siblings
from embedkit.checkpoint.manifest import verify_manifest
from embedkit.checkpoint.save import save

pytestmark = pytest.mark.slow

# The child imports everything first, prints READY, then runs the operation: kills land inside the operation.
CHILD = textwrap.dedent("""
    import sys
    import safetensors.torch, torch, transformers  # warm up the imports: kills must land in the operation
    from transformers import AutoModel, AutoTokenizer, BertModel
    import embedkit.checkpoint.manifest, embedkit.folder.loading, embedkit.embedder, embedkit.checkpoint.card
    from embedkit.checkpoint.convert import convert
    from embedkit.checkpoint.save import save
    from embedkit.checkpoint.slim import slim
    op, src, dst = sys.argv[1:4]
    print("READY", flush=True)
    if op == "save":
        save(src, dst, pooling="mean", normalize=True, overwrite=True)
    elif op == "convert":
        convert(dst, to="bin")
    elif op == "slim":
        slim(src, dst)
    print("DONE", flush=True)
""")
DELAYS = (0.03, 0.25, 5.0)  # the last one lets it finish (tests/test_hostile_dataloss.py kills more points)


def _run_and_kill(op, src, dst, delay):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    proc = subprocess.Popen([sys.executable, "-c", CHILD, op, str(src), str(dst)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)
    assert proc.stdout.readline().strip() == "READY"
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _state(dst):
    """'absent', or the complete folder's distinguishing feature; fails on anything partial."""
    if not dst.exists():
        return "absent"
    report = verify_manifest(dst)
    assert report.ok, f"partial destination after kill: {report.problems}"
    if (dst / "pytorch_model.bin").exists():
        return "bin"
    import json

    return json.loads((dst / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"] and "mean" or "cls"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the exchange swap is Linux-only")
def test_kill_save_overwrite(tiny_bert, tmp_path):
    dst = tmp_path / "saved"
    seen = set()
    for delay in DELAYS:
        if not dst.exists():
            save(tiny_bert, dst, pooling="cls", normalize=True)
        _run_and_kill("save", tiny_bert, dst, delay)
        seen.add(_state(dst))
        if "mean" in seen:
            save(tiny_bert, dst, pooling="cls", normalize=True, overwrite=True)
    assert seen <= {"cls", "mean"} and "mean" in seen  # never absent: the old folder is swapped, not moved away
    save(tiny_bert, dst, pooling="cls", normalize=True, overwrite=True)
    assert stale_siblings(dst) == [] and sorted(os.listdir(tmp_path)) == ["saved"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the exchange swap is Linux-only")
def test_kill_convert_in_place(tiny_bert, tmp_path):
    dst = tmp_path / "model"
    seen = set()
    for delay in DELAYS:
        if not dst.exists() or (dst / "pytorch_model.bin").exists():
            save(tiny_bert, dst, pooling="cls", normalize=True, overwrite=True)
        _run_and_kill("convert", tiny_bert, dst, delay)
        seen.add(_state(dst))
    assert seen <= {"cls", "bin"} and "bin" in seen
    save(tiny_bert, dst, pooling="cls", normalize=True, overwrite=True)
    assert stale_siblings(dst) == [] and sorted(os.listdir(tmp_path)) == ["model"]


def test_kill_slim(tiny_bert, tmp_path):
    from tests.checkpoint.test_convert_slim import make_training_checkpoint

    ckpt = make_training_checkpoint(tiny_bert, tmp_path / "checkpoint-3")
    states = []
    for i, delay in enumerate(DELAYS):
        dst = tmp_path / f"slim-{i}"
        _run_and_kill("slim", ckpt, dst, delay)
        states.append(_state(dst))
    assert set(states) <= {"absent", "cls"} and states[-1] == "cls"
