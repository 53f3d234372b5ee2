"""Parity of an embedder: the same texts through every way of loading a model, compared; disagreements diagnosed.

Engines (each only when available): embedkit's PyTorch backend (the reference), the ONNX export (fp32 and int8),
sentence-transformers (when installed and the folder has its layout), FlagEmbedding's ``FlagModel`` (when
installed; cls / mean pooling), and the standalone recipe (:mod:`embedkit.recipe`, run as a script in a fresh
Python process: see :func:`run_recipe`). Each encodes queries (with the query instruction) and passages. When an
engine disagrees with the reference, embedkit re-encodes with one spec field changed at a time (pooling,
normalization, instruction, max length, fp16) and says which change explains it.

A cross-encoder folder (``*ForSequenceClassification``) is checked by
:func:`embedkit.parity.reranker.check_reranker_parity` instead.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EmbedkitError
from ..folder.layout import check_model_folder
from ..folder.onnx_files import EMBEDDER_FILE, EMBEDDER_INT8_FILE
from ..models import resolve_model_path
from ..recipe import recipe
from ..rerank.spec import is_reranker_folder
from ..spec import POOLING_MODES, EmbedderSpec
from ..verify import SAMPLE_TEXTS, compare
from .report import EngineCheck, ParityReport, in_engine_order, restrict_engines, run_engines
from .reranker import check_reranker_parity

logger = logging.getLogger("embedkit")

Encoder = Callable[[list[str], str], np.ndarray]  # (texts, side: "query" | "passage") -> vectors

RECIPE_TIMEOUT = 600.0
"""Seconds :func:`run_recipe` gives the recipe process (loading torch + transformers and the model, encoding)."""

# Imports the recipe file as a module (so its ``__main__`` demo does not run) and writes the vectors as .npy files.
# Every input is a path given on the command line: no value is pasted into this code.
_RECIPE_RUNNER = """\
import importlib.util
import json
import sys

import numpy as np

recipe_file, texts_file, queries_file, passages_file = sys.argv[1:5]
spec = importlib.util.spec_from_file_location("embedkit_recipe", recipe_file)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
with open(texts_file, encoding="utf-8") as fh:
    texts = json.load(fh)
np.save(queries_file, module.encode_queries(texts).float().numpy(), allow_pickle=False)
np.save(passages_file, module.encode_passages(texts).float().numpy(), allow_pickle=False)
"""


def _compare(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """One cell of the parity matrix (:func:`embedkit.verify.compare`)."""
    c = compare(a, b)
    return {"max_abs_diff": c.max_abs_diff, "min_cosine": c.min_cosine}


def _both_sides(encode: Encoder, texts: list[str]) -> np.ndarray:
    return np.concatenate([encode(texts, "query"), encode(texts, "passage")])


# ---------------------------------------------------------------------- engines
def _embedkit_engine(embedder: Any) -> Encoder:
    return lambda texts, side: (embedder.encode_queries if side == "query" else embedder.encode_corpus)(texts)


def _st_engine(folder: Path, spec: EmbedderSpec) -> Encoder:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    if spec.truncate_dim:
        st.truncate_dim = spec.truncate_dim

    def encode(texts: list[str], side: str) -> np.ndarray:
        name = "query" if side == "query" else "document"
        prompt_name = name if st.prompts.get(name) else None
        return np.asarray(st.encode(texts, prompt_name=prompt_name, convert_to_numpy=True, show_progress_bar=False))

    return encode


def _flag_engine(folder: Path, spec: EmbedderSpec) -> Encoder:
    from FlagEmbedding import FlagModel

    kwargs: dict[str, Any] = {}
    if spec.passage_instruction is not None:
        kwargs |= {"passage_instruction_for_retrieval": spec.passage_instruction,
                   "passage_instruction_format": spec.passage_instruction_format}
    with contextlib.redirect_stderr(io.StringIO()):
        model = FlagModel(str(folder), pooling_method=spec.pooling, normalize_embeddings=spec.normalize,
                          use_fp16=False, devices="cpu", query_instruction_for_retrieval=spec.query_instruction,
                          query_instruction_format=spec.query_instruction_format,
                          query_max_length=spec.query_max_length, passage_max_length=spec.passage_max_length,
                          truncate_dim=spec.truncate_dim, **kwargs)

    def encode(texts: list[str], side: str) -> np.ndarray:
        fn = model.encode_queries if side == "query" else model.encode_corpus
        return np.asarray(fn(texts), dtype=np.float32)

    return encode


def run_recipe(code: str, texts: list[str], *, timeout: float = RECIPE_TIMEOUT) -> dict[str, np.ndarray]:
    """Run the recipe script ``code`` on ``texts`` in a fresh Python process: ``{"query": ..., "passage": ...}``.

    The script, the texts (JSON) and the vectors (``.npy``) live in a private temporary folder, which is also the
    process's working directory; nothing is executed in this process and nothing is left behind.

    Example:
        >>> from embedkit.recipe import recipe
        >>> run_recipe(recipe("minilm"), ["hello"])["query"].shape
        (1, 384)
    """
    with tempfile.TemporaryDirectory(prefix="embedkit-recipe-") as tmp:
        work = Path(tmp)
        files = {"recipe": work / "embedkit_recipe.py", "runner": work / "run_recipe.py",
                 "texts": work / "texts.json", "query": work / "queries.npy", "passage": work / "passages.npy"}
        files["recipe"].write_text(code, encoding="utf-8")
        files["runner"].write_text(_RECIPE_RUNNER, encoding="utf-8")
        files["texts"].write_text(json.dumps(list(texts)), encoding="utf-8")
        cmd = [sys.executable, str(files["runner"]), str(files["recipe"]), str(files["texts"]),
               str(files["query"]), str(files["passage"])]
        try:
            env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")  # the recipe loads a local folder
            proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, errors="replace", timeout=timeout,
                                  check=False, env=env)
        except subprocess.TimeoutExpired:
            raise EmbedkitError(
                f"the recipe script did not finish within {timeout:g} s",
                hint="run `embedkit recipe MODEL > r.py && python r.py` to see where it stops") from None
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            raise EmbedkitError(f"the recipe script failed (exit {proc.returncode}): "
                                f"{lines[-1][:300] if lines else 'no error output'}",
                                hint="run `embedkit recipe MODEL > r.py && python r.py` to see the whole error")
        return {side: np.load(files[side], allow_pickle=False).astype(np.float32, copy=False)
                for side in ("query", "passage")}


def _recipe_engine(folder: Path) -> Encoder:
    """The standalone recipe, run by :func:`run_recipe` once per list of texts (both sides in one process)."""
    code = recipe(folder)
    cache: dict[tuple[str, ...], dict[str, np.ndarray]] = {}

    def encode(texts: list[str], side: str) -> np.ndarray:
        key = tuple(texts)
        if key not in cache:
            cache.clear()
            cache[key] = run_recipe(code, list(texts))
        return cache[key][side]

    return encode


# ---------------------------------------------------------------------- diagnosis
def _variants(spec: EmbedderSpec, folder: Path) -> list[tuple[str, EmbedderSpec | None]]:
    """One-field changes of the spec that commonly explain a mismatch (``None`` spec = fp16 weights)."""
    out: list[tuple[str, EmbedderSpec | None]] = []
    for mode in POOLING_MODES:
        if mode != spec.pooling:
            out.append((f"pooling={mode!r} (the spec says {spec.pooling!r})", dataclasses.replace(spec, pooling=mode)))
    out.append((f"normalize={not spec.normalize} (the spec says {spec.normalize})",
                dataclasses.replace(spec, normalize=not spec.normalize)))
    if spec.query_instruction is not None:
        out.append((f"no query instruction (the spec has {spec.query_instruction!r})",
                    dataclasses.replace(spec, query_instruction=None)))
    if spec.passage_instruction is not None:
        out.append((f"no passage instruction (the spec has {spec.passage_instruction!r})",
                    dataclasses.replace(spec, passage_instruction=None)))
    lengths = {128, 256, 512, 8192} - {spec.query_max_length}
    sbert = folder / "sentence_bert_config.json"
    if sbert.is_file():
        import json

        with contextlib.suppress(ValueError, KeyError, TypeError):
            lengths.add(int(json.loads(sbert.read_text())["max_seq_length"]))
    for n in sorted(lengths):
        out.append((f"max_length={n} (the spec says {spec.query_max_length}/{spec.passage_max_length})",
                    dataclasses.replace(spec, query_max_length=n, passage_max_length=n)))
    if spec.truncate_dim is not None:
        out.append((f"no truncation (the spec says truncate_dim={spec.truncate_dim})",
                    dataclasses.replace(spec, truncate_dim=None)))
    out.append(("fp16 weights (the reference is fp32)", None))
    return out


def diagnose(reference: Any, target: np.ndarray, texts: list[str], folder: Path, tolerance: float) -> list[str]:
    """Which one-field change of the reference's spec reproduces ``target`` (queries then passages)."""
    import torch

    # lazy: pulls in torch; embedkit.parity stays importable without it (fast CLI start)
    from ..embedder import Embedder

    model, tokenizer, spec = reference.backend.model, reference.tokenizer, reference.spec
    found = []
    for label, variant in _variants(spec, folder):
        if variant is None:
            half = copy.deepcopy(model).to(torch.float16)
            candidate = Embedder.from_model(half, tokenizer, spec)
            tol = max(tolerance, 2e-3)  # fp16 rounding: close, not exact
        else:
            limit = reference.model_max_length
            if limit and max(variant.query_max_length, variant.passage_max_length) > limit:
                continue
            candidate = Embedder.from_model(model, tokenizer, variant)
            tol = tolerance
        try:
            vecs = _both_sides(_embedkit_engine(candidate), texts)
        except Exception:  # noqa: BLE001 - a variant that cannot run explains nothing
            continue
        if vecs.shape == target.shape and np.abs(vecs - target).max() <= tol:
            found.append(label)
    return found


def _engines(folder: Path, reference: Any) -> tuple[dict[str, Callable[[], Encoder]], dict[str, str]]:
    """The engines this folder and environment have (builders, by name; ``embedkit-torch`` is ``reference``) and
    why each missing one is missing."""
    import importlib.util

    # lazy: pulls in torch; embedkit.parity stays importable without it (fast CLI start)
    from ..embedder import Embedder

    spec = reference.spec
    candidates: dict[str, Callable[[], Encoder]] = {"embedkit-torch": lambda: _embedkit_engine(reference)}
    skipped: dict[str, str] = {}
    if (folder / EMBEDDER_FILE).is_file():
        candidates["embedkit-onnx"] = lambda: _embedkit_engine(Embedder(folder, backend="onnx", show_progress=False))
    else:
        skipped["embedkit-onnx"] = "no ONNX export in the folder (embedkit export onnx)"
    if (folder / EMBEDDER_INT8_FILE).is_file():
        candidates["embedkit-onnx-int8"] = lambda: _embedkit_engine(
            Embedder(folder, backend="onnx", precision="int8", show_progress=False))
    if importlib.util.find_spec("sentence_transformers") is None:
        skipped["sentence-transformers"] = "not installed"
    elif not (folder / "modules.json").is_file():
        skipped["sentence-transformers"] = "the folder has no sentence-transformers layout (embedkit save)"
    else:
        candidates["sentence-transformers"] = lambda: _st_engine(folder, spec)
    if importlib.util.find_spec("FlagEmbedding") is None:
        skipped["flagembedding"] = "not installed"
    elif spec.pooling not in ("cls", "mean"):
        skipped["flagembedding"] = f"FlagModel has no {spec.pooling} pooling"
    else:
        candidates["flagembedding"] = lambda: _flag_engine(folder, spec)
    candidates["recipe"] = lambda: _recipe_engine(folder)
    return candidates, skipped


# ---------------------------------------------------------------------- the run
def check_parity(model: str | Path, texts: list[str] | None = None, *, tolerance: float = 1e-5,
                 int8_min_cosine: float = 0.95, diagnose_mismatches: bool = True,
                 engines: tuple[str, ...] | None = None) -> ParityReport:
    """Run ``texts`` through every available way of loading ``model`` and compare with embedkit (PyTorch).

    fp32 engines pass when their max abs diff is ≤ ``tolerance``; the int8 graph when its minimum cosine is
    ≥ ``int8_min_cosine``. ``engines`` restricts the run (names as in the report).

    Example:
        >>> report = check_parity("my-bge")
        >>> report.ok, [c.diagnosis for c in report.checks if not c.passed]
    """
    # lazy: pulls in torch; embedkit.parity stays importable without it (fast CLI start)
    from ..embedder import Embedder

    folder = check_model_folder(resolve_model_path(model))
    if is_reranker_folder(folder):
        return check_reranker_parity(folder, texts, tolerance=tolerance, engines=engines)
    texts = list(texts or SAMPLE_TEXTS)
    reference = Embedder(folder, device="cpu", show_progress=False)
    candidates, skipped = _engines(folder, reference)
    candidates = restrict_engines(candidates, skipped, engines)

    checks: list[EngineCheck] = []
    vectors: dict[str, np.ndarray] = run_engines(
        {name: (lambda build=build: _both_sides(build(), texts)) for name, build in candidates.items()}, checks)
    matrix = {a: {b: _compare(va, vb) for b, vb in vectors.items()} for a, va in vectors.items()}
    for name, vecs in vectors.items():
        if name == "embedkit-torch":
            continue
        m = matrix["embedkit-torch"][name]
        if name.endswith("int8"):
            passed, tol = m["min_cosine"] >= int8_min_cosine, f"min cosine >= {int8_min_cosine}"
        else:
            passed, tol = m["max_abs_diff"] <= tolerance, f"max abs diff <= {tolerance:g}"
        check = EngineCheck(name, m["max_abs_diff"], m["min_cosine"], passed, tol)
        if not passed and diagnose_mismatches and not name.endswith("int8"):
            explained = diagnose(reference, vecs, texts, folder, tolerance)
            check.diagnosis = [f"{name} matches embedkit with {e}" for e in explained] or [
                "no single spec change explains it (different weights, tokenizer or a custom module?)"]
        checks.append(check)
    order = list(vectors)
    return ParityReport(model=str(folder), engines=order, texts=len(texts), matrix=matrix,
                        checks=in_engine_order(checks, order), skipped=skipped)
