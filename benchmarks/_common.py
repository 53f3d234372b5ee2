"""Shared benchmark helpers: a deterministic offline text set, engine workers in their own processes, medians."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def make_texts(n: int = 2000, min_words: int = 5, max_words: int = 60, seed: int = 0) -> list[str]:
    """``n`` pseudo-sentences of real English word pieces (from the bundled MiniLM vocabulary), seeded."""
    from embedkit.models import minilm_path

    vocab = (minilm_path() / "vocab.txt").read_text(encoding="utf-8").split("\n")
    words = [w for w in vocab[2000:] if w.isalpha() and len(w) > 1]
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, size=rng.integers(min_words, max_words + 1))) for _ in range(n)]


def run_worker(script: Path, engine: str, args: list[str]) -> dict:
    """Run ``script --worker ENGINE ...`` in a fresh process; it prints one JSON line last."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_DISABLE_PROGRESS_BARS="1")
    proc = subprocess.run([sys.executable, str(script), "--worker", engine, *args], capture_output=True,
                          text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{engine} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_and_collect(script: Path, engine: str, args: list[str]) -> tuple[dict, np.ndarray]:
    """Run one worker that saves its vectors to ``--vectors-out``; return its JSON line and the vectors."""
    with tempfile.TemporaryDirectory(prefix="embedkit-bench-") as tmp:
        out = Path(tmp) / "vectors.npy"
        result = run_worker(script, engine, [*args, "--vectors-out", str(out)])
        return result, np.load(out)


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM). Not ``ru_maxrss``: Linux carries that over ``exec`` from the
    parent, so a worker would report the benchmark driver's peak instead of its own."""
    try:
        for line in open("/proc/self/status", encoding="ascii"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
