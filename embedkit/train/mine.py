"""Hard-negative mining and teacher scores for FlagEmbedding-style training data.

:func:`mine_hard_negatives` does what FlagEmbedding's ``hn_mine`` does: embed every query and a pool of candidate
passages, search the pool exactly (faiss ``IndexFlatIP``), and sample each row's negatives from the hits ranked
in ``[start, end)``. Unlike ``hn_mine`` it never keeps a positive (or the query itself) as a negative, never
repeats a passage, counts the rows whose window was too short and had to be topped up with random passages (which
are drawn outside the skipped top ``start`` hits, the likely false negatives), honours a row's ``prompt``, drops
teacher scores that no longer match the new negatives, and writes the output atomically.

:func:`score_pairs` fills ``pos_scores`` / ``neg_scores`` with a local cross-encoder (teacher scores for
distillation).
"""

from __future__ import annotations

import builtins
import logging
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._optional import require
from ..errors import DataError
from ..search import search
from ..textio import read_texts
from ._checks import PathLike, check_output, positive_int, progress_enabled
from .data import TrainExample, expand_paths, load_train_data, write_train_jsonl
from .score import ScoreReport, load_cross_encoder, score_pairs

logger = logging.getLogger("embedkit")


# ---------------------------------------------------------------------- reports
@dataclass
class MineReport:
    """What :func:`mine_hard_negatives` did.

    ``topped_up_rows``: rows whose rank window held fewer than ``negative_number`` usable passages (random pool
    passages were added); ``short_rows``: rows left with fewer than ``negative_number`` negatives even after that
    (the pool is too small); ``dropped_scores_rows``: rows whose ``pos_scores``/``neg_scores`` were removed because
    they no longer match the new negatives (re-score with ``embedkit score-pairs``).
    """

    rows: int
    pool_size: int
    topped_up_rows: int
    range: tuple[int, int]
    negative_number: int
    output: Path
    short_rows: int = 0
    skipped_rows: int = 0
    dropped_scores_rows: int = 0
    skipped: list[str] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["range"] = list(self.range)
        d["output"] = str(self.output)
        return d


# ---------------------------------------------------------------------- argument checks
def parse_range(value: str | Sequence[int]) -> tuple[int, int]:
    """``"10-210"`` or ``(10, 210)`` -> ``(10, 210)``; raise :class:`DataError` unless ``0 <= start < end``.

    Example:
        >>> parse_range("10-210")
        (10, 210)
    """
    hint = "pass the rank window as START-END with 0 <= START < END, e.g. --range 10-210 (FlagEmbedding's default)"
    if isinstance(value, str):
        parts = value.strip().split("-")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise DataError(f"range {value!r} is not START-END (two non-negative integers)", hint=hint)
        start, end = (int(p) for p in parts)
    else:
        try:
            start, end = value
        except (TypeError, ValueError):
            raise DataError(f"range must be (start, end), got {value!r}", hint=hint) from None
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in (start, end)):
            raise DataError(f"range must be two integers, got {value!r}", hint=hint)
    if start < 0:
        raise DataError(f"range start must be >= 0, got {start}", hint=hint)
    if start >= end:
        raise DataError(f"range start ({start}) must be smaller than its end ({end})", hint=hint)
    return start, end


# ---------------------------------------------------------------------- candidate pool
def load_candidate_pool(path: PathLike) -> list[str]:
    """Read a candidate pool: a jsonl file whose lines are ``{"text": str}``; raise ``file:line`` errors.

    Empty texts are skipped; duplicates are kept here (the miner removes them, keeping the first).

    Example:
        >>> load_candidate_pool("corpus.jsonl")[:2]
    """
    path = Path(path)
    if path.is_file() and path.suffix.lower() not in (".jsonl", ".ndjson"):
        raise DataError(f"candidate pool {path} must be a .jsonl file", hint='one {"text": "..."} object per line')
    every = read_texts(path, field="text", what="candidate pool")
    texts = [t for t in every if t.strip()]
    empty = len(every) - len(texts)
    if empty:
        logger.warning("candidate pool %s: skipped %d empty text(s)", path, empty)
    if not texts:
        raise DataError(f"candidate pool {path} holds no texts", hint='add lines like {"text": "..."}')
    return texts


# ---------------------------------------------------------------------- mining
def _encode_queries(embedder: Any, examples: list[TrainExample], batch_size: int,
                    show_progress: bool | None) -> np.ndarray:
    """Query vectors; a row's ``prompt`` replaces the spec's query instruction for that row."""
    spec = embedder.spec
    out = np.empty((len(examples), embedder.dim), dtype=np.float32)
    groups: dict[str | None, list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault(ex.prompt, []).append(i)
    for prompt, idx in groups.items():
        texts = [examples[i].query for i in idx]
        if prompt is None:
            vecs = embedder.encode_queries(texts, batch_size=batch_size, show_progress=show_progress)
        else:
            vecs = embedder.encode(texts, batch_size=batch_size, max_length=spec.query_max_length,
                                   instruction=prompt, instruction_format=spec.query_instruction_format,
                                   show_progress=show_progress)
        out[idx] = vecs
    return out


def _sample_outside(rng: random.Random, pool_size: int, excluded: set[int], need: int) -> list[int]:
    """Up to ``need`` distinct pool indices not in ``excluded``, drawn uniformly."""
    available = pool_size - len(excluded)
    if need <= 0 or available <= 0:
        return []
    if available - need >= pool_size / 4:  # rejection sampling: at least 1 draw in 4 succeeds
        picked: list[int] = []
        seen = set(excluded)
        while len(picked) < need:
            j = rng.randrange(pool_size)
            if j not in seen:
                seen.add(j)
                picked.append(j)
        return picked
    candidates = [j for j in builtins.range(pool_size) if j not in excluded]
    return rng.sample(candidates, min(need, len(candidates)))


def _import_faiss() -> Any:
    loader_log = logging.getLogger("faiss.loader")
    level = loader_log.level
    loader_log.setLevel(max(level, logging.WARNING))  # faiss logs every CPU-feature probe at INFO
    try:
        return require("faiss", "hard-negative mining")
    finally:
        loader_log.setLevel(level)


def mine_hard_negatives(
    model: Any,
    input_path_or_paths: PathLike | Sequence[PathLike],
    output: PathLike,
    *,
    candidate_pool: PathLike | Sequence[str] | None = None,
    range: tuple[int, int] | str = (10, 210),  # noqa: A002 (FlagEmbedding's name)
    negative_number: int = 15,
    batch_size: int = 256,
    use_gpu_for_searching: bool = False,
    seed: int = 0,
    skip_invalid: bool = False,
    show_progress: bool | None = None,
) -> MineReport:
    """Replace each row's ``neg`` with hard negatives mined by ``model``; write the rows to ``output`` (jsonl).

    For each row, the pool passages ranked ``start <= rank < end`` for its query (exact inner-product search,
    rank 0 = best; positives count in the ranking, as in FlagEmbedding's ``hn_mine``) are the candidates; the
    row's positives and its query text are never used. ``negative_number`` of them are sampled with
    ``random.Random(seed)`` (kept in rank order); when fewer remain the row is topped up with random pool passages
    (never a positive, a duplicate, or one of the top ``start`` hits) and counted in ``topped_up_rows``.

    Args:
        model: an :class:`embedkit.Embedder`, or a local model folder (``"minilm"`` works too).
        input_path_or_paths: FlagEmbedding jsonl file(s) or folder(s) of them.
        output: the jsonl to write (atomically); must not be an input.
        candidate_pool: a jsonl file of ``{"text": str}`` lines, or a list of texts; default: every ``pos`` and
            ``neg`` passage of the input (deduplicated, first occurrence kept).
        range: the rank window ``(start, end)`` or ``"start-end"``.
        negative_number: negatives per row.
        batch_size: texts per forward pass.
        use_gpu_for_searching: accepted for FlagEmbedding compatibility; the exact CPU search is always used.
        seed: seed of the sampling.
        skip_invalid: skip (and count) invalid input rows instead of failing.
        show_progress: progress bars (default: on in a terminal for long inputs).

    Rows keep ``query``, ``pos``, ``prompt`` and ``type``; ``pos_scores``/``neg_scores`` are dropped (they no
    longer match the new negatives; re-score with :func:`score_pairs`).

    Example:
        >>> report = mine_hard_negatives("minilm", "train.jsonl", "train.mined.jsonl", range=(2, 50))
        >>> report.rows, report.topped_up_rows
    """
    window = parse_range(range)
    positive_int("negative_number", negative_number, "e.g. --negative-number 15")
    positive_int("batch_size", batch_size, "e.g. --batch-size 256")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"seed must be an integer, got {seed!r}", hint="e.g. --seed 0")
    inputs = [input_path_or_paths] if isinstance(input_path_or_paths, (str, Path)) else list(input_path_or_paths)
    files = expand_paths(inputs)
    pool_file = Path(candidate_pool) if isinstance(candidate_pool, (str, Path)) else None
    output = check_output(Path(output), [*inputs, *files], [pool_file] if pool_file else [], [model])
    if use_gpu_for_searching:
        logger.info("use_gpu_for_searching is ignored: embedkit searches exactly on the CPU (faiss IndexFlatIP)")
    _import_faiss()  # fail before encoding anything; quietly (faiss logs every CPU-feature probe)

    data = load_train_data(files, skip_invalid=skip_invalid)
    pool = _candidate_texts(candidate_pool, pool_file, data.examples)
    logger.info("mining: %d rows, %d candidate passages, ranks [%d, %d)", len(data.examples), len(pool), *window)
    hits = _embed_and_search(model, data.examples, pool, window[1], batch_size, show_progress)
    mined, counts = _pick_negatives(data.examples, hits, pool, window, negative_number, random.Random(seed))
    _warn_about(counts, len(mined), negative_number, window, len(pool))
    write_train_jsonl(output, mined)
    return MineReport(rows=len(mined), pool_size=len(pool), topped_up_rows=counts["topped_up"], range=window,
                      negative_number=negative_number, output=output, short_rows=counts["short"],
                      skipped_rows=len(data.skipped), dropped_scores_rows=counts["dropped"],
                      skipped=list(data.skipped))


def _candidate_texts(candidate_pool: PathLike | Sequence[str] | None, pool_file: Path | None,
                     examples: list[TrainExample]) -> list[str]:
    """The deduplicated pool (first occurrence kept): the file's texts, the given list, or every input passage."""
    if pool_file is not None:
        raw_pool = load_candidate_pool(pool_file)
    elif candidate_pool is not None:
        raw_pool = list(candidate_pool)
        for i, t in enumerate(raw_pool):
            if not isinstance(t, str):
                raise DataError(f"candidate_pool[{i}] is {type(t).__name__}, expected a string",
                                hint="pass a list of passage texts or a jsonl file of {\"text\": ...} lines")
    else:
        raw_pool = [p for ex in examples for p in (*ex.pos, *ex.neg)]
    pool = list(dict.fromkeys(raw_pool))
    if not pool:
        raise DataError("the candidate pool is empty", hint="pass --candidate-pool FILE with passages")
    return pool


def _embed_and_search(model: Any, examples: list[TrainExample], pool: list[str], top_k: int, batch_size: int,
                      show_progress: bool | None) -> np.ndarray:
    """The ``top_k`` pool indices per query (exact inner product, best first; -1 where the pool is shorter)."""
    # lazy: pulls in torch; embedkit.train.mine stays importable without it (fast CLI start)
    from tqdm.auto import tqdm

    from ..embedder import Embedder

    embedder = model if isinstance(model, Embedder) else Embedder(model, batch_size=batch_size,
                                                                   show_progress=show_progress)
    q_vecs = np.ascontiguousarray(_encode_queries(embedder, examples, batch_size, show_progress), dtype=np.float32)
    p_vecs = np.ascontiguousarray(
        embedder.encode_corpus(pool, batch_size=batch_size, show_progress=show_progress), dtype=np.float32)
    step = 1024
    with tqdm(total=len(examples), desc="Searching", unit="query", leave=False,
              disable=not progress_enabled(show_progress, len(examples), step)) as bar:
        _, hits = search(q_vecs, p_vecs, top_k, batch_size=step, on_batch=bar.update, feature="hard-negative mining")
    return hits


def _pick_negatives(examples: list[TrainExample], hits: np.ndarray, pool: list[str], window: tuple[int, int],
                    negative_number: int, rng: random.Random) -> tuple[list[TrainExample], dict[str, int]]:
    """Each row with its new negatives, and the counts of ``topped_up`` / ``short`` / ``dropped`` (scores) rows."""
    start, end = window
    pool_index = {text: i for i, text in enumerate(pool)}
    mined: list[TrainExample] = []
    counts = {"topped_up": 0, "short": 0, "dropped": 0}
    for ex, row_hits in zip(examples, hits, strict=True):
        banned = {pool_index[t] for t in (*ex.pos, ex.query) if t in pool_index}
        row_hits = [int(j) for j in row_hits if j >= 0]
        candidates = [j for j in row_hits[start:end] if j not in banned]
        chosen = candidates if len(candidates) <= negative_number else rng.sample(candidates, negative_number)
        chosen = sorted(chosen, key=candidates.index)
        if len(chosen) < negative_number:
            counts["topped_up"] += 1
            excluded = banned | set(chosen) | set(row_hits[:start])
            chosen += _sample_outside(rng, len(pool), excluded, negative_number - len(chosen))
            if len(chosen) < negative_number:
                counts["short"] += 1
        if ex.has_scores:
            counts["dropped"] += 1
        mined.append(TrainExample(query=ex.query, pos=list(ex.pos), neg=[pool[j] for j in chosen],
                                  prompt=ex.prompt, type=ex.type, source=ex.source))
    return mined, counts


def _warn_about(counts: dict[str, int], rows: int, negative_number: int, window: tuple[int, int],
                pool_size: int) -> None:
    """Say which rows were topped up, are still short, or lost their teacher scores."""
    if counts["topped_up"]:
        logger.warning("%d of %d rows had fewer than %d usable passages in ranks [%d, %d): topped up with random "
                       "pool passages", counts["topped_up"], rows, negative_number, *window)
    if counts["short"]:
        logger.warning("%d rows still have fewer than %d negatives: the candidate pool (%d passages) is too small",
                       counts["short"], negative_number, pool_size)
    if counts["dropped"]:
        logger.warning("dropped pos_scores/neg_scores of %d rows (they no longer match the new negatives); "
                       "re-score them with `embedkit score-pairs`", counts["dropped"])


__all__ = ["MineReport", "ScoreReport", "mine_hard_negatives", "score_pairs", "parse_range",
           "load_candidate_pool", "load_cross_encoder"]
