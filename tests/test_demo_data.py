"""The numpy docstring -> code demo dataset: deterministic, leak-free, valid, and substantial."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from embedkit.demo_data import (
    SMALL_MAX_CORPUS,
    SMALL_MAX_QUERIES,
    SMALL_MAX_TRAIN,
    DatasetInfo,
    build_numpy_dataset,
    code_without_docstring,
    collect_pairs,
    is_test_module,
    owner_module,
    short_description,
)
from embedkit.train.data import load_train_data

FILES = ("train.jsonl", "dataset.json", "test/corpus.jsonl", "test/queries.jsonl", "test/qrels.jsonl")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _collapse(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, DatasetInfo]:
    root = tmp_path_factory.mktemp("demo-data")
    return {small: build_numpy_dataset(root / ("small" if small else "full"), small=small, seed=0)
            for small in (False, True)}


@pytest.mark.parametrize("small", [False, True])
def test_deterministic_byte_identical(built: dict[bool, DatasetInfo], tmp_path: Path, small: bool) -> None:
    again = build_numpy_dataset(tmp_path / "again", small=small, seed=0)
    for name in FILES:
        assert (again.out_dir / name).read_bytes() == (built[small].out_dir / name).read_bytes(), name


def test_seed_changes_the_small_sample(built: dict[bool, DatasetInfo], tmp_path: Path) -> None:
    other = build_numpy_dataset(tmp_path / "seed1", small=True, seed=1)
    assert other.train_file.read_bytes() != built[True].train_file.read_bytes()
    assert json.loads(other.dataset_file.read_text())["seed"] == 1


@pytest.mark.parametrize("small", [False, True])
def test_no_function_in_both_splits(built: dict[bool, DatasetInfo], small: bool) -> None:
    info = built[small]
    train = _jsonl(info.train_file)
    corpus = _jsonl(info.test_dir / "corpus.jsonl")
    queries = _jsonl(info.test_dir / "queries.jsonl")
    train_passages = {p for row in train for p in row["pos"] + row["neg"]}
    assert not train_passages & {doc["text"] for doc in corpus}
    assert not {row["query"] for row in train} & {q["text"] for q in queries}
    assert all(is_test_module(doc["title"]) for doc in corpus)  # "module.qualname" under a test module
    assert not set(info.train_modules) & set(info.test_modules)
    titles = [doc["title"] for doc in corpus]
    assert len(titles) == len(set(titles))


def test_pairs_attributed_once_and_split_by_owner_module() -> None:
    pairs = collect_pairs()
    idents = [p.ident for p in pairs]
    assert len(idents) == len(set(idents))
    assert len({p.query for p in pairs}) == len(pairs)
    assert len({p.passage for p in pairs}) == len(pairs)
    assert idents.count("numpy.linalg.norm") == 1
    assert all(p.ident.startswith(p.module + ".") and not any(s.startswith("_") for s in p.module.split("."))
               for p in pairs)
    order = [(p.module, p.ident) for p in pairs]
    assert order == sorted(order)


@pytest.mark.parametrize("small", [False, True])
def test_passages_hold_code_without_docstrings(built: dict[bool, DatasetInfo], small: bool) -> None:
    info = built[small]
    pairs = [(row["query"], row["pos"][0]) for row in _jsonl(info.train_file)]
    corpus = {doc["id"]: doc["text"] for doc in _jsonl(info.test_dir / "corpus.jsonl")}
    qrels = {r["qid"]: r["docid"] for r in _jsonl(info.test_dir / "qrels.jsonl")}
    pairs += [(q["text"], corpus[qrels[q["id"]]]) for q in _jsonl(info.test_dir / "queries.jsonl")]
    for query, passage in pairs:
        assert passage.startswith(("def ", "async def ")), passage[:80]
        assert len(passage) <= 1500
        assert query not in _collapse(passage)
        lines = passage.splitlines()
        end = next(i for i, line in enumerate(lines) if line.rstrip().endswith(":"))  # end of the signature
        assert end + 1 < len(lines), passage
        assert not lines[end + 1].strip().lstrip("rRbBuU").startswith(('"""', "'''")), passage[:200]
        assert "Parameters\n" not in passage and "\n\n" not in passage
        assert len(query.split()) >= 4 and query == _collapse(query)
        assert not query.lower().startswith(("deprecated", "alias"))


@pytest.mark.parametrize("small", [False, True])
def test_counts_ids_and_train_rows_valid(built: dict[bool, DatasetInfo], small: bool) -> None:
    info = built[small]
    meta = json.loads(info.dataset_file.read_text(encoding="utf-8"))
    corpus = _jsonl(info.test_dir / "corpus.jsonl")
    queries = _jsonl(info.test_dir / "queries.jsonl")
    qrels = _jsonl(info.test_dir / "qrels.jsonl")
    train = _jsonl(info.train_file)
    assert (meta["n_train"], meta["n_test_queries"], meta["n_corpus"]) == (len(train), len(queries), len(corpus))
    assert (info.n_train, info.n_test_queries, info.n_corpus) == (len(train), len(queries), len(corpus))
    assert meta["small"] is small and meta["seed"] == 0 and meta["numpy_version"]
    assert meta["train_modules"] == info.train_modules and meta["test_modules"] == info.test_modules
    assert json.loads(json.dumps(info.to_dict()))["n_train"] == info.n_train

    doc_ids = {d["id"] for d in corpus}
    query_ids = {q["id"] for q in queries}
    assert len(doc_ids) == len(corpus) and len(query_ids) == len(queries)
    assert all(set(d) == {"id", "title", "text"} and d["id"].startswith("doc-") for d in corpus)
    assert all(set(q) == {"id", "text"} and q["id"].startswith("q-") for q in queries)
    assert {r["qid"] for r in qrels} == query_ids and len(qrels) == len(queries)
    assert all(r["docid"] in doc_ids and r["relevance"] == 1 for r in qrels)

    loaded = load_train_data(info.train_file)
    assert len(loaded.examples) == len(train) and not loaded.skipped
    for ex in loaded.examples:
        assert len(ex.pos) == 1 and len(ex.neg) == 3
        assert ex.pos[0] not in ex.neg and len(set(ex.neg)) == 3


def test_sizes(built: dict[bool, DatasetInfo]) -> None:
    full, small = built[False], built[True]
    assert full.n_train >= 300 and full.n_test_queries >= 80
    assert full.n_corpus == full.n_test_queries
    assert 0.15 <= full.n_test_queries / (full.n_train + full.n_test_queries) <= 0.4
    assert 0 < small.n_train <= SMALL_MAX_TRAIN and 0 < small.n_test_queries <= SMALL_MAX_QUERIES
    assert small.n_test_queries <= small.n_corpus <= SMALL_MAX_CORPUS
    assert small.n_train == SMALL_MAX_TRAIN and small.n_test_queries == SMALL_MAX_QUERIES
    assert set(small.test_modules) <= set(full.test_modules)


def test_no_deprecation_warnings_leak() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        collect_pairs()
    assert not [w for w in caught if issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning))]


def test_helpers() -> None:
    assert owner_module("numpy._core.fromnumeric") == "numpy"
    assert owner_module("numpy.testing._private.utils") == "numpy.testing"
    assert owner_module("numpy.linalg") == "numpy.linalg"
    assert short_description("Add two arrays elementwise, fast.\n\nMore text.") == "Add two arrays elementwise, fast."
    assert short_description("f(a, b)\n\nAdd two  arrays\n  elementwise.") == "Add two arrays elementwise."
    assert short_description("Too short.") is None
    assert short_description("Deprecated since 2.0, use g instead.") is None
    assert short_description(None) is None

    def sample(a: int,
               b: int = 2) -> int:
        """Add things.

        Long text.
        """

        c = a + b

        return c

    def only_doc() -> None:
        """Nothing else."""

    expected = "def sample(a: int,\n           b: int = 2) -> int:\n    c = a + b\n    return c"
    assert code_without_docstring(sample) == expected
    assert code_without_docstring(only_doc) == "def only_doc() -> None:\n    pass"
    assert code_without_docstring(len) is None
