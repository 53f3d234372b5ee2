"""A small, real-text retrieval dataset built offline from the installed ``numpy`` package.

Each public Python function (or method of a public Python class) of numpy that has a docstring and readable source
becomes one pair: the **query** is the docstring's short description ("Compute the qr factorization of a matrix.")
and the **passage** is the function's code with the docstring removed (``def`` line(s) and body). Retrieving the
code for a description is a task all-MiniLM-L6-v2 does passably out of the box and measurably better after a short
fine-tune, which is what ``make demo`` shows.

The split is by module, so nothing leaks: every function is attributed once, to its public owner module
(``__module__`` with private parts such as ``._core`` cut off), and the modules in :data:`TEST_MODULES` go to test.

Output (every file written atomically)::

    out_dir/
      train.jsonl          {"query": description, "pos": [code], "neg": [3 random train passages]}
      test/corpus.jsonl    {"id": "doc-<n>", "title": "<module.qualname>", "text": code}
      test/queries.jsonl   {"id": "q-<n>", "text": description}
      test/qrels.jsonl     {"qid": "q-<n>", "docid": "doc-<n>", "relevance": 1}
      dataset.json         counts, modules per split, numpy version, seed, small flag

Example:
    >>> info = build_numpy_dataset("demo-data", small=True)
    >>> info.n_train, info.n_test_queries, info.n_corpus
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import logging
import random
import re
import textwrap
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._io import atomic_write
from .errors import DataError

logger = logging.getLogger("embedkit")

#: Modules walked, in this order (missing ones are skipped quietly). Deprecated aliases (``numpy.core``,
#: ``numpy.linalg.linalg``...) and build tooling (``numpy.distutils``, ``numpy.f2py``) are left out on purpose.
MODULES: tuple[str, ...] = (
    "numpy",
    "numpy.char",
    "numpy.ctypeslib",
    "numpy.emath",
    "numpy.fft",
    "numpy.lib",
    "numpy.lib.array_utils",
    "numpy.lib.format",
    "numpy.lib.introspect",
    "numpy.lib.mixins",
    "numpy.lib.npyio",
    "numpy.lib.recfunctions",
    "numpy.lib.scimath",
    "numpy.lib.stride_tricks",
    "numpy.lib.user_array",
    "numpy.linalg",
    "numpy.ma",
    "numpy.ma.core",
    "numpy.ma.extras",
    "numpy.ma.mrecords",
    "numpy.ma.testutils",
    "numpy.matlib",
    "numpy.matrixlib",
    "numpy.polynomial",
    "numpy.polynomial.chebyshev",
    "numpy.polynomial.hermite",
    "numpy.polynomial.hermite_e",
    "numpy.polynomial.laguerre",
    "numpy.polynomial.legendre",
    "numpy.polynomial.polynomial",
    "numpy.polynomial.polyutils",
    "numpy.random",
    "numpy.rec",
    "numpy.strings",
    "numpy.testing",
)

#: Owner modules (and their submodules) that form the test split; everything else is train.
TEST_MODULES: tuple[str, ...] = ("numpy.fft", "numpy.linalg", "numpy.polynomial")

MAX_PASSAGE_CHARS = 1500
MIN_QUERY_WORDS = 4
N_NEGATIVES = 3
SMALL_MAX_TRAIN = 120
SMALL_MAX_QUERIES = 40
SMALL_MAX_CORPUS = 120

_SKIP_DESCRIPTION = re.compile(r"^(deprecated|alias|\.\. deprecated|see also|this function is deprecated)", re.I)
# numpydoc's "name(args)" header lines (C-level and some Python functions), stripped from the description
_SIGNATURE = re.compile(r"^[\w.]+\([^()]*(?:\([^()]*\)[^()]*)*\)(?:\s*->\s*\S+)?\s*")
MAX_QUERY_CHARS = 300


@dataclass(frozen=True)
class DocPair:
    """One function: its identity, owner module, description (query) and code (passage)."""

    ident: str  # "module.qualname"
    module: str
    query: str
    passage: str


@dataclass
class DatasetInfo:
    """What :func:`build_numpy_dataset` wrote."""

    out_dir: Path
    train_file: Path
    test_dir: Path
    dataset_file: Path
    n_train: int
    n_test_queries: int
    n_corpus: int
    train_modules: list[str] = field(default_factory=list)
    test_modules: list[str] = field(default_factory=list)
    numpy_version: str = ""
    seed: int = 0
    small: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view (paths as strings)."""
        return {
            "out_dir": str(self.out_dir),
            "train_file": str(self.train_file),
            "test_dir": str(self.test_dir),
            "dataset_file": str(self.dataset_file),
            "n_train": self.n_train,
            "n_test_queries": self.n_test_queries,
            "n_corpus": self.n_corpus,
            "train_modules": list(self.train_modules),
            "test_modules": list(self.test_modules),
            "numpy_version": self.numpy_version,
            "seed": self.seed,
            "small": self.small,
        }


# ---------------------------------------------------------------------------------------------- extraction
def owner_module(module: str) -> str:
    """The public part of a module name: ``numpy._core.fromnumeric`` -> ``numpy``, ``numpy.testing._private.utils``
    -> ``numpy.testing``."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_"):
            return ".".join(parts[:i]) or module
    return module


def is_test_module(module: str) -> bool:
    """Whether an owner module belongs to the test split."""
    return any(module == m or module.startswith(m + ".") for m in TEST_MODULES)


def short_description(doc: str | None) -> str | None:
    """The docstring's first paragraph, whitespace-collapsed (a leading ``name(args)`` header skipped, capped at
    :data:`MAX_QUERY_CHARS` on a sentence boundary); ``None`` when too short or a deprecation / alias note."""
    if not doc:
        return None
    text = ""
    for paragraph in re.split(r"\n\s*\n", inspect.cleandoc(doc).strip())[:3]:
        text = " ".join(paragraph.split())
        while (match := _SIGNATURE.match(text)) and match.end() > 0:
            text = text[match.end():]
        if text:
            break
    if len(text) > MAX_QUERY_CHARS:  # keep whole sentences
        cut = text.rfind(". ", 0, MAX_QUERY_CHARS)
        text = text[:cut + 1] if cut > 0 else text[:MAX_QUERY_CHARS].rsplit(" ", 1)[0]
    if len(text.split()) < MIN_QUERY_WORDS or _SKIP_DESCRIPTION.match(text):
        return None
    if text.startswith((".. ", "Parameters", "----")):
        return None
    return text


def code_without_docstring(func: Any) -> str | None:
    """``def`` line(s) + body of ``func`` without decorators or docstring: dedented, blank lines dropped, capped at
    :data:`MAX_PASSAGE_CHARS` (on a line boundary). ``None`` when the source cannot be read or parsed."""
    try:
        source = textwrap.dedent(inspect.getsource(func))
    except (OSError, TypeError):
        return None
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    node = tree.body[0] if tree.body else None
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or not node.body:
        return None
    lines = source.splitlines()
    first = node.body[0]
    if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)):
        if first.lineno == node.lineno:  # "def f(): '''doc'''; ..." -- not worth handling
            return None
        kept = lines[node.lineno - 1:first.lineno - 1] + lines[first.end_lineno:]
        if len(node.body) == 1:
            kept.append(" " * first.col_offset + "pass")
    else:
        kept = lines[node.lineno - 1:]
    kept = [line.rstrip() for line in kept if line.strip()]
    code = textwrap.dedent("\n".join(kept))
    if len(code) > MAX_PASSAGE_CHARS:
        cut = code.rfind("\n", 0, MAX_PASSAGE_CHARS)
        code = code[:cut if cut > 0 else MAX_PASSAGE_CHARS]
    return code or None


def _unwrap(obj: Any) -> Any:
    try:
        return inspect.unwrap(obj)
    except ValueError:  # a wrapper cycle
        return obj


def _is_numpy(name: Any) -> bool:
    return isinstance(name, str) and (name == "numpy" or name.startswith("numpy."))


def _public_names(mod: Any) -> list[str]:
    names = getattr(mod, "__all__", None)
    if not isinstance(names, (list, tuple)):
        names = [n for n in vars(mod) if not n.startswith("_")]
    return sorted({n for n in names if isinstance(n, str) and not n.startswith("_")})


def _candidates() -> Iterator[tuple[str, str, Any, str | None]]:
    """``(identity, owner module, python function, docstring)`` for everything walked (duplicates included)."""
    for modname in MODULES:
        try:
            mod = importlib.import_module(modname)
        except Exception:  # noqa: BLE001 -- a module missing from this numpy version is skipped quietly
            continue
        for name in _public_names(mod):
            try:
                obj = getattr(mod, name)
            except Exception:  # noqa: BLE001 -- lazy attributes that raise on access
                continue
            if inspect.isclass(obj):
                if not _is_numpy(getattr(obj, "__module__", None)):
                    continue
                owner = owner_module(obj.__module__)
                for attr, member in sorted(vars(obj).items()):
                    if attr.startswith("_"):
                        continue
                    if isinstance(member, (staticmethod, classmethod)):
                        member = member.__func__
                    func = _unwrap(member)
                    if inspect.isfunction(func) and _is_numpy(func.__module__):
                        yield f"{owner}.{func.__qualname__}", owner, func, member.__doc__ or func.__doc__
            elif callable(obj) and _is_numpy(getattr(obj, "__module__", None)):
                func = _unwrap(obj)
                if inspect.isfunction(func):
                    owner = owner_module(obj.__module__)
                    yield f"{owner}.{func.__qualname__}", owner, func, obj.__doc__ or func.__doc__


def collect_pairs() -> list[DocPair]:
    """Every usable (description, code) pair of the installed numpy, in a stable order (module, then name).

    Identical queries or passages are deduplicated, keeping the first; a query that appears verbatim inside its own
    passage (a docstring copied into a comment) is dropped.
    """
    found: dict[str, DocPair] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        for ident, owner, func, doc in _candidates():
            if ident in found:
                continue
            query = short_description(doc)
            if query is None:
                continue
            passage = code_without_docstring(func)
            if passage is None or query in " ".join(passage.split()):
                continue
            found[ident] = DocPair(ident=ident, module=owner, query=query, passage=passage)
    pairs: list[DocPair] = []
    seen_q: set[str] = set()
    seen_p: set[str] = set()
    for pair in sorted(found.values(), key=lambda p: (p.module, p.ident)):
        if pair.query in seen_q or pair.passage in seen_p:
            continue
        seen_q.add(pair.query)
        seen_p.add(pair.passage)
        pairs.append(pair)
    return pairs


# ---------------------------------------------------------------------------------------------- writing
def _sample(items: list[DocPair], k: int, rng: random.Random) -> list[DocPair]:
    """``k`` items (all when fewer), kept in their original order."""
    if len(items) <= k:
        return list(items)
    keep = sorted(rng.sample(range(len(items)), k))
    return [items[i] for i in keep]


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_write(path, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def build_numpy_dataset(out_dir: str | Path, *, small: bool = False, seed: int = 0) -> DatasetInfo:
    """Build the numpy docstring -> code retrieval dataset into ``out_dir`` (see the module docstring for the layout).

    ``small`` keeps at most :data:`SMALL_MAX_TRAIN` train rows, :data:`SMALL_MAX_QUERIES` test queries and a corpus
    of at most :data:`SMALL_MAX_CORPUS` documents (every relevant one, plus sampled distractors), for tests and CI.
    The same numpy and ``seed`` give byte-identical files.

    Example:
        >>> info = build_numpy_dataset("demo-data", small=True, seed=0)
        >>> info.train_file, info.test_dir
    """
    import numpy

    out_dir = Path(out_dir)
    rng = random.Random(seed)
    pairs = collect_pairs()
    train = [p for p in pairs if not is_test_module(p.module)]
    test = [p for p in pairs if is_test_module(p.module)]
    if len(train) < N_NEGATIVES + 1 or not test:
        raise DataError(f"numpy {numpy.__version__} yielded too few documented functions "
                        f"({len(train)} train, {len(test)} test)",
                        hint="install a regular numpy build (with its Python sources), e.g. numpy>=1.26")

    corpus = test
    queries = test
    if small:
        train = _sample(train, SMALL_MAX_TRAIN, rng)
        queries = _sample(test, SMALL_MAX_QUERIES, rng)
        chosen = {p.ident for p in queries}
        others = [p for p in test if p.ident not in chosen]
        extra = _sample(others, max(0, SMALL_MAX_CORPUS - len(queries)), rng)
        keep = chosen | {p.ident for p in extra}
        corpus = [p for p in test if p.ident in keep]

    train_rows = []
    for i, pair in enumerate(train):
        others = rng.sample(range(len(train) - 1), N_NEGATIVES)
        neg = [train[j if j < i else j + 1].passage for j in others]
        train_rows.append({"query": pair.query, "pos": [pair.passage], "neg": neg})

    doc_id = {p.ident: f"doc-{n}" for n, p in enumerate(corpus)}
    corpus_rows = [{"id": doc_id[p.ident], "title": p.ident, "text": p.passage} for p in corpus]
    query_rows = [{"id": f"q-{n}", "text": p.query} for n, p in enumerate(queries)]
    qrels_rows = [{"qid": f"q-{n}", "docid": doc_id[p.ident], "relevance": 1} for n, p in enumerate(queries)]

    train_file = out_dir / "train.jsonl"
    test_dir = out_dir / "test"
    dataset_file = out_dir / "dataset.json"
    _write_jsonl(train_file, train_rows)
    _write_jsonl(test_dir / "corpus.jsonl", corpus_rows)
    _write_jsonl(test_dir / "queries.jsonl", query_rows)
    _write_jsonl(test_dir / "qrels.jsonl", qrels_rows)

    info = DatasetInfo(
        out_dir=out_dir,
        train_file=train_file,
        test_dir=test_dir,
        dataset_file=dataset_file,
        n_train=len(train_rows),
        n_test_queries=len(query_rows),
        n_corpus=len(corpus_rows),
        train_modules=sorted({p.module for p in train}),
        test_modules=sorted({p.module for p in corpus}),
        numpy_version=numpy.__version__,
        seed=seed,
        small=small,
    )
    meta = {k: v for k, v in info.to_dict().items() if k not in ("out_dir", "train_file", "test_dir", "dataset_file")}
    meta = {"name": "numpy-docstring-to-code", "train_file": "train.jsonl", "test_dir": "test", **meta}
    with atomic_write(dataset_file, "w") as fh:
        fh.write(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    logger.info("numpy %s dataset: %d train rows, %d test queries, %d corpus docs -> %s", numpy.__version__,
                info.n_train, info.n_test_queries, info.n_corpus, out_dir)
    return info


__all__ = ["DatasetInfo", "DocPair", "MODULES", "TEST_MODULES", "build_numpy_dataset", "collect_pairs"]
