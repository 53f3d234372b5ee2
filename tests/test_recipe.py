"""embedkit recipe: the printed script, run without embedkit in a subprocess, gives embedkit's vectors exactly."""

import json
import random
import subprocess
import sys

import numpy as np
import pytest

from embedkit import Embedder
from embedkit.checkpoint.save import save
from embedkit.cli import main
from embedkit.recipe import PLACEHOLDER_PATH, recipe, recipe_from_spec
from tests.conftest import HOSTILE_TEXTS

TOL = 1e-5
TEXTS = HOSTILE_TEXTS + ["The QUICK Brown Fox: MIXED case", "中文", "what is bge? " * 80]

# Runs each recipe file imported as a module (embedkit blocked), then one of them as a script.
DRIVER = r'''
import importlib.util, json, runpy, sys
import numpy as np

sys.modules["embedkit"] = None  # the recipe must not need embedkit
jobs = json.load(open(sys.argv[1], encoding="utf-8"))
for i, job in enumerate(jobs):
    spec = importlib.util.spec_from_file_location(f"recipe_{i}", job["recipe"])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    np.save(job["out"] + ".q.npy", module.encode_queries(job["texts"]).numpy())
    np.save(job["out"] + ".p.npy", module.encode_passages(job["texts"]).numpy())
    np.save(job["out"] + ".empty.npy", module.encode_queries([]).numpy())
runpy.run_path(jobs[0]["recipe"], run_name="__main__")
'''


def _cased_tokenizer(tiny_bert):
    """The tiny vocabulary without lower-casing: upper-case words become [UNK] unless the spec lower-cases."""
    from transformers import BertTokenizerFast

    return BertTokenizerFast(vocab=str(tiny_bert / "vocab.txt"), do_lower_case=False, model_max_length=128)


def _left_padding_tokenizer(tiny_bert):
    from transformers import AutoTokenizer

    # (transformers 5 does not save a `tok.padding_side = "left"` set after loading; passed here, it is saved)
    return AutoTokenizer.from_pretrained(str(tiny_bert), padding_side="left")


def _many_texts(n=300, seed=0):
    """More texts than one batch, of varied lengths: batching and padding must match embedkit's."""
    rng = random.Random(seed)
    words = "the quick brown fox jumps over lazy dog hello world cat 中文".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(0, 40))) for _ in range(n)]


VARIANTS = {
    "cls-norm-query": dict(pooling="cls", normalize=True, query_instruction="query: ", max_length=48),
    "mean-raw-truncdim": dict(pooling="mean", normalize=False, truncate_dim=16, max_length=20),
    "last-instruct-lower": dict(pooling="last_token", normalize=True, query_instruction="Given a question, find it",
                                query_instruction_format="Instruct: {}\\nQuery: {}", passage_instruction="passage: ",
                                query_max_length=12, passage_max_length=30, do_lower_case=True, truncate_dim=24),
    "last-left-padding": dict(pooling="last_token", normalize=True, max_length=64),
}


@pytest.fixture(scope="module")
def results(tiny_bert, minilm_dir, tmp_path_factory):
    """Every variant saved, its recipe written and run in one subprocess; ``{name: (folder, q, p, stdout)}``."""
    tmp = tmp_path_factory.mktemp("recipe")
    folders = {"minilm": minilm_dir}
    for name, kwargs in VARIANTS.items():
        tokenizer = {"last-instruct-lower": _cased_tokenizer,
                     "last-left-padding": _left_padding_tokenizer}.get(name, lambda _: None)(tiny_bert)
        save(tiny_bert, tmp / name, tokenizer=tokenizer, **kwargs)
        folders[name] = tmp / name
    jobs = []
    for name, folder in folders.items():
        (tmp / f"{name}.py").write_text(recipe(folder), encoding="utf-8")
        texts = TEXTS + (_many_texts() if name == "last-left-padding" else [])
        jobs.append({"recipe": str(tmp / f"{name}.py"), "texts": texts, "out": str(tmp / name) + "-out"})
    (tmp / "jobs.json").write_text(json.dumps(jobs), encoding="utf-8")
    (tmp / "driver.py").write_text(DRIVER, encoding="utf-8")
    proc = subprocess.run([sys.executable, str(tmp / "driver.py"), str(tmp / "jobs.json")], capture_output=True,
                          text=True, cwd=tmp, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {name: (folders[name], job["texts"], np.load(job["out"] + ".q.npy"), np.load(job["out"] + ".p.npy"),
                   np.load(job["out"] + ".empty.npy"), proc.stdout) for name, job in zip(folders, jobs, strict=True)}


@pytest.mark.parametrize("name", ["minilm", *VARIANTS])
def test_recipe_reproduces_embedkit_vectors(results, name):
    folder, texts, q, p, empty, _ = results[name]
    ours = Embedder(folder, show_progress=False)
    assert q.shape == p.shape == (len(texts), ours.dim) and empty.shape == (0, ours.dim)
    assert float(np.abs(q - ours.encode_queries(texts)).max()) <= TOL
    assert float(np.abs(p - ours.encode_corpus(texts)).max()) <= TOL


def test_variants_exercise_what_they_claim(results):
    minilm = Embedder(results["minilm"][0], show_progress=False).spec
    assert (minilm.pooling, minilm.normalize, minilm.query_max_length) == ("mean", True, 256)
    folder = results["last-instruct-lower"][0]
    lower, cased = Embedder(folder, show_progress=False), Embedder(folder, show_progress=False)
    assert lower.spec.do_lower_case and lower.spec.query_instruction_format == "Instruct: {}\\nQuery: {}"
    cased.spec.do_lower_case = False
    texts = ["The QUICK Brown Fox: MIXED case"]
    assert float(np.abs(lower.encode(texts) - cased.encode(texts)).max()) > 1e-3  # lower-casing matters here
    left = Embedder(results["last-left-padding"][0], show_progress=False)
    assert left.tokenizer.padding_side == "left"
    code = (folder.parent / "last-instruct-lower.py").read_text(encoding="utf-8")
    assert "'Instruct: {}\\nQuery: {}'" in code and ".lower()" in code and "TRUNCATE_DIM = 24" in code
    assert "QUERY_MAX_LENGTH = 12" in code and "PASSAGE_MAX_LENGTH = 30" in code


def test_recipe_runs_as_a_script(results):
    stdout = results["minilm"][-1]
    assert "queries: (2, 384) passages: (2, 384)" in stdout and "scores:" in stdout


def test_recipe_path_and_placeholder(minilm_dir):
    code = recipe(minilm_dir)
    assert f"MODEL_PATH = {str(minilm_dir.resolve())!r}" in code
    assert "padding=True, truncation=True, max_length=max_length" in code
    placeholder = recipe(minilm_dir, placeholder=True)
    assert f"MODEL_PATH = {PLACEHOLDER_PATH!r}" in placeholder and str(minilm_dir) not in placeholder


def test_model_card_uses_the_same_recipe(results):
    folder = results["cls-norm-query"][0]
    card = (folder / "README.md").read_text(encoding="utf-8")
    spec = Embedder(folder, show_progress=False).spec
    assert recipe_from_spec(spec, PLACEHOLDER_PATH, name=folder.name).rstrip("\n") in card
    assert "### transformers" in card and "### sentence-transformers" in card and "### FlagEmbedding" in card


def test_cli_recipe(results, tmp_path, capsys):
    folder = results["mean-raw-truncdim"][0]
    assert main(["recipe", str(folder)]) == 0
    printed = capsys.readouterr().out
    assert printed == recipe(folder) and "\x1b[" not in printed
    out = tmp_path / "embed.py"
    assert main(["recipe", str(folder), "--output", str(out), "--path-placeholder"]) == 0
    assert out.read_text(encoding="utf-8") == recipe(folder, placeholder=True)
    assert main(["recipe", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "no model folder" in err and "hint:" in err
