"""Retrieval evaluation data: BEIR / FlagEmbedding custom layouts, validated with ``file:line`` errors.

Accepted layouts in a folder (``SPLIT`` defaults to ``test``):

- corpus: ``corpus.jsonl`` — ``{"id" | "_id", "title"?, "text"}``;
- queries: ``SPLIT_queries.jsonl`` or ``queries.jsonl`` — ``{"id" | "_id", "text"}``;
- qrels: ``SPLIT_qrels.jsonl`` or ``qrels.jsonl`` — ``{"qid", "docid", "relevance"}``, or BEIR's
  ``qrels/SPLIT.tsv`` — ``query-id<TAB>corpus-id<TAB>score`` with a header line.

The split-less ``queries.jsonl`` / ``qrels.jsonl`` pair is the default split ``test``; any other split needs its
own ``SPLIT_qrels.jsonl``, ``qrels/SPLIT.tsv`` or ``SPLIT_queries.jsonl``. An unknown split is an error that lists
the splits present (never a silent fall back to the split-less files under another name).

Queries without any relevant document are dropped (as BEIR does) and counted.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..textio import iter_jsonl, read_lines


@dataclass
class EvalData:
    """A loaded retrieval benchmark."""

    folder: Path
    split: str
    corpus: dict[str, str]  # doc id -> text (title + text)
    queries: dict[str, str]  # query id -> text (only queries with judgements)
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: relevance}
    files: dict[str, Path] = field(default_factory=dict)
    dropped_queries: int = 0

    def corpus_hash(self) -> str:
        """sha256 over the corpus ids and texts, in order (the key of the embedding cache)."""
        h = hashlib.sha256()
        for doc_id, text in self.corpus.items():
            h.update(doc_id.encode("utf-8") + b"\x00" + text.encode("utf-8") + b"\x01")
        return h.hexdigest()

    def summary(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "split": self.split, "corpus": len(self.corpus),
                "queries": len(self.queries), "qrels": sum(len(v) for v in self.qrels.values()),
                "dropped_queries": self.dropped_queries, "files": {k: str(v) for k, v in self.files.items()}}


def _jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    return list(iter_jsonl(path, what="evaluation file"))


def _id(obj: dict[str, Any], path: Path, lineno: int) -> str:
    value = obj.get("id", obj.get("_id"))
    if value is None or isinstance(value, (dict, list, bool)):
        raise DataError(f"{path}:{lineno}: missing 'id' (or '_id')", hint='each line needs {"id": ..., "text": ...}')
    return str(value)


def _text(obj: dict[str, Any], key: str, path: Path, lineno: int, required: bool = True) -> str:
    value = obj.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        what = "missing" if value is None else f"is {type(value).__name__}, expected a string"
        raise DataError(f"{path}:{lineno}: '{key}' {what}")
    return value


def _pick(folder: Path, names: list[str], what: str) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{folder}: no {what} file (looked for {', '.join(names)})",
                    hint="use the BEIR / FlagEmbedding layout: corpus.jsonl, queries.jsonl, qrels.jsonl "
                    "(or qrels/SPLIT.tsv)")


DEFAULT_SPLIT = "test"


def available_splits(folder: str | Path) -> list[str]:
    """The splits ``folder`` holds judgements for (sorted): ``SPLIT_qrels.jsonl``, ``qrels/SPLIT.tsv``,
    ``SPLIT_queries.jsonl`` (with the split-less ``qrels.jsonl``), and ``test`` for the split-less pair."""
    folder = Path(folder)
    splits = {p.name[: -len("_qrels.jsonl")] for p in folder.glob("*_qrels.jsonl") if p.is_file()}
    splits |= {p.stem for p in (folder / "qrels").glob("*.tsv") if p.is_file()}
    if (folder / "qrels.jsonl").is_file():
        splits.add(DEFAULT_SPLIT)
        splits |= {p.name[: -len("_queries.jsonl")] for p in folder.glob("*_queries.jsonl") if p.is_file()}
    return sorted(s for s in splits if s)


def _check_split(folder: Path, split: str) -> None:
    """:class:`DataError` listing the splits present when ``split`` is not one of them."""
    present = available_splits(folder)
    if not present or split in present:
        return  # no judgements at all: the missing-file error below says what to add
    unsplit = " (queries.jsonl + qrels.jsonl)" if (folder / "qrels.jsonl").is_file() else ""
    listed = ", ".join(f"{s}{unsplit}" if s == DEFAULT_SPLIT else s for s in present)
    raise DataError(f"{folder}: no split {split!r}; splits present: {listed}",
                    hint=f"pass --split {present[0]}" + (" (or another listed split)" if len(present) > 1 else "")
                    + f", or add {split}_queries.jsonl + {split}_qrels.jsonl (or qrels/{split}.tsv)")


def load_eval_data(folder: str | Path, split: str = DEFAULT_SPLIT) -> EvalData:
    """Load and validate a retrieval benchmark folder (see the module docstring for the layouts).

    Example:
        >>> data = load_eval_data("my-benchmark", split="test")
        >>> len(data.queries), len(data.corpus)
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"evaluation data {folder} is not a folder",
                        hint="pass a folder with corpus.jsonl, queries.jsonl and qrels (BEIR layout)")
    corpus_path = _pick(folder, ["corpus.jsonl"], "corpus")
    _check_split(folder, split)
    queries_path = _pick(folder, [f"{split}_queries.jsonl", "queries.jsonl"], "queries")
    unsplit_qrels = split == DEFAULT_SPLIT or (folder / f"{split}_queries.jsonl").is_file()
    qrels_path = _pick(folder, [f"{split}_qrels.jsonl", *(["qrels.jsonl"] if unsplit_qrels else []),
                                f"qrels/{split}.tsv"], "qrels")

    corpus: dict[str, str] = {}
    for lineno, obj in _jsonl(corpus_path):
        doc_id = _id(obj, corpus_path, lineno)
        if doc_id in corpus:
            raise DataError(f"{corpus_path}:{lineno}: duplicate document id {doc_id!r}", hint="ids must be unique")
        title = _text(obj, "title", corpus_path, lineno, required=False)
        text = _text(obj, "text", corpus_path, lineno)
        corpus[doc_id] = f"{title} {text}".strip() if title else text
    if not corpus:
        raise DataError(f"{corpus_path} is empty")

    queries: dict[str, str] = {}
    for lineno, obj in _jsonl(queries_path):
        qid = _id(obj, queries_path, lineno)
        if qid in queries:
            raise DataError(f"{queries_path}:{lineno}: duplicate query id {qid!r}", hint="ids must be unique")
        queries[qid] = _text(obj, "text", queries_path, lineno)

    qrels: dict[str, dict[str, int]] = {}
    for where, qid, docid, rel in _read_qrels(qrels_path):
        if qid not in queries:
            raise DataError(f"{where}: unknown query id {qid!r} (not in {queries_path.name})")
        if docid not in corpus:
            raise DataError(f"{where}: unknown document id {docid!r} (not in {corpus_path.name})")
        if docid in qrels.get(qid, {}):
            raise DataError(f"{where}: duplicate judgement for ({qid!r}, {docid!r})")
        qrels.setdefault(qid, {})[docid] = rel
    judged = {q: t for q, t in queries.items() if any(r > 0 for r in qrels.get(q, {}).values())}
    if not judged:
        raise DataError(f"{qrels_path}: no query has a relevant document", hint="relevance must be > 0")
    return EvalData(folder=folder, split=split, corpus=corpus, queries=judged,
                    qrels={q: qrels[q] for q in judged}, dropped_queries=len(queries) - len(judged),
                    files={"corpus": corpus_path, "queries": queries_path, "qrels": qrels_path})


_INT = re.compile(r"-?[0-9]+")


def _read_qrels(path: Path) -> list[tuple[str, str, str, int]]:
    out = []
    if path.suffix == ".tsv":
        for lineno, line in enumerate(read_lines(path, "evaluation file"), start=1):
            parts = line.split("\t")
            if lineno == 1 and not _INT.fullmatch(parts[-1].strip()):
                continue  # header
            if not line.strip():
                continue
            if len(parts) != 3 or not _INT.fullmatch(parts[2].strip()):
                raise DataError(f"{path}:{lineno}: expected 'query-id<TAB>corpus-id<TAB>score' (an integer score)",
                                hint="BEIR qrels: a header line, then one tab-separated judgement per line")
            if len(parts[2].strip()) > 18:
                raise DataError(f"{path}:{lineno}: score {parts[2].strip()[:40]!r} is out of range",
                                hint="relevance scores are small integers (0, 1, 2...)")
            out.append((f"{path}:{lineno}", parts[0].strip(), parts[1].strip(), int(parts[2])))
        return out
    for lineno, obj in _jsonl(path):
        where = f"{path}:{lineno}"
        qid, docid = obj.get("qid", obj.get("query-id")), obj.get("docid", obj.get("corpus-id"))
        rel = obj.get("relevance", obj.get("score", 1))
        if qid is None or docid is None or isinstance(qid, (dict, list)) or isinstance(docid, (dict, list)):
            raise DataError(f"{where}: needs 'qid' and 'docid' (strings or numbers)",
                            hint='{"qid": ..., "docid": ..., "relevance": 1}')
        if (isinstance(rel, bool) or not isinstance(rel, (int, float)) or abs(rel) > 2**62
                or not math.isfinite(rel) or int(rel) != rel):
            raise DataError(f"{where}: 'relevance' must be an integer, got {rel!r}",
                            hint="relevance scores are small integers (0, 1, 2...)")
        out.append((where, str(qid), str(docid), int(rel)))
    return out
