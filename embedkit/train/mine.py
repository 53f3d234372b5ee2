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
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._io import refuse_overwriting_inputs
from .._optional import require
from ..batching import batches, length_sorted_order, pad_features
from ..errors import CheckpointError, DataError, SpecError
from ..folder.layout import check_model_folder
from ..folder.loading import load_model, load_tokenizer
from ..models import resolve_model_path
from ..search import search
from ..spec import model_token_limit
from ..textio import read_texts
from .data import TrainExample, expand_paths, load_train_data, write_train_jsonl

logger = logging.getLogger("embedkit")

PathLike = str | Path


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


@dataclass
class ScoreReport:
    """What :func:`score_pairs` did: ``pairs`` (query, passage) pairs of ``rows`` rows scored by ``model``."""

    rows: int
    pairs: int
    model: Path
    output: Path
    max_length: int
    num_labels: int
    skipped_rows: int = 0
    skipped: list[str] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model"] = str(self.model)
        d["output"] = str(self.output)
        return d


# ---------------------------------------------------------------------- argument checks
def _positive_int(name: str, value: Any, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise DataError(f"{name} must be a positive integer, got {value!r}", hint=hint)
    return value


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


def _check_output(output: Path, inputs: Sequence[PathLike], others: Sequence[PathLike] = (),
                  model_dirs: Sequence[Any] = ()) -> Path:
    """Refuse an output that is a folder, one of the inputs, inside an input folder, or inside the model folder."""
    output = Path(output)
    if output.is_dir():
        raise DataError(f"output {output} is a folder", hint="pass a file path, e.g. --output mined.jsonl")
    dirs = [resolve_model_path(m) if isinstance(m, (str, Path)) else getattr(m, "path", None) for m in model_dirs]
    return refuse_overwriting_inputs(output, inputs=[*inputs, *others], model_dirs=dirs, flag="--output")


def _progress_enabled(show_progress: bool | None, total: int, step: int) -> bool:
    if show_progress is not None:
        return bool(show_progress)
    return sys.stderr.isatty() and total > step


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
    start, end = window
    _positive_int("negative_number", negative_number, "e.g. --negative-number 15")
    _positive_int("batch_size", batch_size, "e.g. --batch-size 256")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"seed must be an integer, got {seed!r}", hint="e.g. --seed 0")
    inputs = [input_path_or_paths] if isinstance(input_path_or_paths, (str, Path)) else list(input_path_or_paths)
    files = expand_paths(inputs)
    pool_file = Path(candidate_pool) if isinstance(candidate_pool, (str, Path)) else None
    output = _check_output(Path(output), [*inputs, *files], [pool_file] if pool_file else [], [model])
    if use_gpu_for_searching:
        logger.info("use_gpu_for_searching is ignored: embedkit searches exactly on the CPU (faiss IndexFlatIP)")
    _import_faiss()  # fail before encoding anything; quietly (faiss logs every CPU-feature probe)

    data = load_train_data(files, skip_invalid=skip_invalid)
    examples = data.examples
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
    pool_index = {text: i for i, text in enumerate(pool)}

    # lazy: pulls in torch; embedkit.train.mine stays importable without it (fast CLI start)
    from ..embedder import Embedder

    embedder = model if isinstance(model, Embedder) else Embedder(model, batch_size=batch_size,
                                                                   show_progress=show_progress)
    logger.info("mining: %d rows, %d candidate passages, ranks [%d, %d)", len(examples), len(pool), start, end)
    q_vecs = np.ascontiguousarray(_encode_queries(embedder, examples, batch_size, show_progress), dtype=np.float32)
    p_vecs = np.ascontiguousarray(
        embedder.encode_corpus(pool, batch_size=batch_size, show_progress=show_progress), dtype=np.float32)

    step = 1024
    from tqdm.auto import tqdm

    with tqdm(total=len(examples), desc="Searching", unit="query", leave=False,
              disable=not _progress_enabled(show_progress, len(examples), step)) as bar:
        _, hits = search(q_vecs, p_vecs, end, batch_size=step, on_batch=bar.update, feature="hard-negative mining")

    rng = random.Random(seed)
    mined: list[TrainExample] = []
    topped_up = short = dropped = 0
    for ex, row_hits in zip(examples, hits, strict=True):
        banned = {pool_index[t] for t in (*ex.pos, ex.query) if t in pool_index}
        row_hits = [int(j) for j in row_hits if j >= 0]
        candidates = [j for j in row_hits[start:end] if j not in banned]
        chosen = candidates if len(candidates) <= negative_number else rng.sample(candidates, negative_number)
        chosen = sorted(chosen, key=candidates.index)
        if len(chosen) < negative_number:
            topped_up += 1
            excluded = banned | set(chosen) | set(row_hits[:start])
            chosen += _sample_outside(rng, len(pool), excluded, negative_number - len(chosen))
            if len(chosen) < negative_number:
                short += 1
        if ex.has_scores:
            dropped += 1
        mined.append(TrainExample(query=ex.query, pos=list(ex.pos), neg=[pool[j] for j in chosen],
                                  prompt=ex.prompt, type=ex.type, source=ex.source))
    if topped_up:
        logger.warning("%d of %d rows had fewer than %d usable passages in ranks [%d, %d): topped up with random "
                       "pool passages", topped_up, len(mined), negative_number, start, end)
    if short:
        logger.warning("%d rows still have fewer than %d negatives: the candidate pool (%d passages) is too small",
                       short, negative_number, len(pool))
    if dropped:
        logger.warning("dropped pos_scores/neg_scores of %d rows (they no longer match the new negatives); "
                       "re-score them with `embedkit score-pairs`", dropped)
    write_train_jsonl(output, mined)
    return MineReport(rows=len(mined), pool_size=len(pool), topped_up_rows=topped_up, range=window,
                      negative_number=negative_number, output=output, short_rows=short,
                      skipped_rows=len(data.skipped), dropped_scores_rows=dropped, skipped=list(data.skipped))


# ---------------------------------------------------------------------- teacher scores
def load_cross_encoder(path: PathLike, *, trust_pickle: bool = False, device: Any = None) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` of a local cross-encoder (``AutoModelForSequenceClassification``).

    Offline (``local_files_only``), no untrusted pickle, and never a half-random model: a folder whose weights
    lack the classification head (e.g. a bare embedding model) raises :class:`CheckpointError`.
    """
    from transformers import AutoModelForSequenceClassification


    if not Path(path).expanduser().exists():
        raise CheckpointError(
            f"no reranker folder at {str(path)!r} (tried {Path(path).expanduser().resolve()}); embedkit works "
            "offline and loads local folders only, it never downloads from a hub",
            hint="pass a local cross-encoder folder (config.json, weights, tokenizer), e.g. one downloaded once "
            "elsewhere with `huggingface-cli download BAAI/bge-reranker-base --local-dir DIR`",
        )
    folder = check_model_folder(path)
    tokenizer = load_tokenizer(folder)
    try:
        model = load_model(folder, trust_pickle=trust_pickle, auto_class=AutoModelForSequenceClassification,
                           ignorable_missing=(), what="cross-encoder")
    except CheckpointError as exc:
        if "unpickling" in exc.message:
            raise
        raise CheckpointError(exc.message, hint="pass a reranker checkpoint (AutoModelForSequenceClassification), "
                              "e.g. a local copy of BAAI/bge-reranker-base, not an embedding model") from None
    model.eval()
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    return model, tokenizer


def score_pairs(
    reranker_dir: PathLike,
    input: PathLike | Sequence[PathLike],  # noqa: A002
    output: PathLike,
    *,
    batch_size: int = 32,
    max_length: int | None = None,
    trust_pickle: bool = False,
    device: Any = None,
    skip_invalid: bool = False,
    show_progress: bool | None = None,
) -> ScoreReport:
    """Score every (query, passage) pair of each row with a local cross-encoder; write rows with scores.

    Fills ``pos_scores`` / ``neg_scores`` (raw logits: label 0 when the model has one label, else the last
    label) and writes the jsonl atomically. Pairs are tokenized together (``[CLS] query [SEP] passage [SEP]``),
    truncated longest-first to ``max_length`` tokens (default: 512, or the model's limit when smaller).

    Example:
        >>> score_pairs("bge-reranker-base", "train.mined.jsonl", "train.scored.jsonl").pairs
    """
    import torch
    from tqdm.auto import tqdm


    _positive_int("batch_size", batch_size, "e.g. --batch-size 32")
    inputs = [input] if isinstance(input, (str, Path)) else list(input)
    files = expand_paths(inputs)
    output = _check_output(Path(output), [*inputs, *files], model_dirs=[reranker_dir])
    limit = model_token_limit(reranker_dir) if Path(reranker_dir).is_dir() else None
    if max_length is None:
        max_length = min(512, limit) if limit else 512
    _positive_int("max_length", max_length, "e.g. --max-length 512")
    if limit is not None and max_length > limit:
        raise SpecError(f"max_length={max_length} exceeds what the reranker can take ({limit})",
                        hint=f"pass --max-length {limit} or less")
    data = load_train_data(files, skip_invalid=skip_invalid)
    model, tokenizer = load_cross_encoder(reranker_dir, trust_pickle=trust_pickle, device=device)
    num_labels = int(getattr(model.config, "num_labels", 1))
    label = 0 if num_labels == 1 else num_labels - 1

    examples = data.examples
    queries: list[str] = []
    passages: list[str] = []
    for ex in examples:
        for p in (*ex.pos, *ex.neg):
            queries.append(ex.query)
            passages.append(p)
    scores = np.empty(len(passages), dtype=np.float64)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    padding_side = getattr(tokenizer, "padding_side", "right")
    device_ = next(model.parameters()).device
    chunk = 8192  # tokenize in chunks: bounded memory on large files
    with tqdm(total=len(passages), desc="Scoring", unit="pair", leave=False,
              disable=not _progress_enabled(show_progress, len(passages), batch_size)) as bar:
        for c in builtins.range(0, len(passages), chunk):
            enc = tokenizer(queries[c:c + chunk], passages[c:c + chunk], truncation="longest_first",
                            max_length=max_length, padding=False)
            features = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
            order = length_sorted_order([len(ids) for ids in features["input_ids"]])
            for rows in batches(order, batch_size):
                padded = pad_features(features, rows, pad_id, padding_side)
                tensors = {k: torch.from_numpy(v).to(device_) for k, v in padded.items()}
                with torch.inference_mode():
                    logits = model(**tensors).logits
                scores[c + rows] = logits[:, label].float().cpu().numpy()
                bar.update(len(rows))

    scored: list[TrainExample] = []
    at = 0
    for ex in examples:
        n_pos, n_neg = len(ex.pos), len(ex.neg)
        pos_scores = [float(x) for x in scores[at:at + n_pos]]
        neg_scores = [float(x) for x in scores[at + n_pos:at + n_pos + n_neg]]
        at += n_pos + n_neg
        scored.append(TrainExample(query=ex.query, pos=list(ex.pos), neg=list(ex.neg), pos_scores=pos_scores,
                                   neg_scores=neg_scores, prompt=ex.prompt, type=ex.type, source=ex.source))
    write_train_jsonl(output, scored)
    return ScoreReport(rows=len(scored), pairs=len(passages), model=Path(reranker_dir), output=output,
                       max_length=max_length, num_labels=num_labels, skipped_rows=len(data.skipped),
                       skipped=list(data.skipped))


__all__ = ["MineReport", "ScoreReport", "mine_hard_negatives", "score_pairs", "parse_range",
           "load_candidate_pool", "load_cross_encoder"]
