"""Teacher scores for distillation: every (query, passage) pair of the training rows scored by a local
cross-encoder, batched through the one features stage (:mod:`embedkit.batching`)."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..batching import padded_batches, tokenize
from ..errors import CheckpointError, SpecError
from ..folder.layout import check_model_folder
from ..folder.loading import load_model, load_tokenizer
from ..spec import model_token_limit
from ._checks import PathLike, check_output, positive_int, progress_enabled
from .data import TrainExample, expand_paths, load_train_data, write_train_jsonl

TOKENIZE_CHUNK = 8192
"""Pairs tokenized at a time: bounded memory on large files."""


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


def load_cross_encoder(path: PathLike, *, trust_pickle: bool = False, device: Any = None) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` of a local cross-encoder (``AutoModelForSequenceClassification``).

    Offline (``local_files_only``), no untrusted pickle, and never a half-random model: a folder whose weights
    lack the classification head (e.g. a bare embedding model) raises :class:`CheckpointError`.
    """
    import torch
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
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    return model, tokenizer


def _max_length(reranker_dir: PathLike, max_length: int | None) -> int:
    """``max_length`` checked against the reranker's token limit (default: 512, or the limit when smaller)."""
    limit = model_token_limit(reranker_dir) if Path(reranker_dir).is_dir() else None
    if max_length is None:
        max_length = min(512, limit) if limit else 512
    positive_int("max_length", max_length, "e.g. --max-length 512")
    if limit is not None and max_length > limit:
        raise SpecError(f"max_length={max_length} exceeds what the reranker can take ({limit})",
                        hint=f"pass --max-length {limit} or less")
    return max_length


def cross_encoder_scores(model: Any, tokenizer: Any, queries: Sequence[str], passages: Sequence[str], *,
                         max_length: int, batch_size: int, label: int = 0,
                         show_progress: bool | None = None) -> np.ndarray:
    """The ``label`` logit of each (query, passage) pair: tokenized together, truncated longest-first to
    ``max_length`` (as sentence-transformers' CrossEncoder), token-length sorted batches of ``batch_size``."""
    import torch
    from tqdm.auto import tqdm

    scores = np.empty(len(passages), dtype=np.float64)
    device = next(model.parameters()).device
    with tqdm(total=len(passages), desc="Scoring", unit="pair", leave=False,
              disable=not progress_enabled(show_progress, len(passages), batch_size)) as bar:
        for c in builtins.range(0, len(passages), TOKENIZE_CHUNK):
            features = tokenize(tokenizer, queries[c:c + TOKENIZE_CHUNK], max_length,
                                pairs=passages[c:c + TOKENIZE_CHUNK], truncation="longest_first")
            for rows, padded in padded_batches(features, tokenizer, batch_size):
                tensors = {k: torch.from_numpy(v).to(device) for k, v in padded.items()}
                with torch.inference_mode():
                    logits = model(**tensors).logits
                scores[c + rows] = logits[:, label].float().cpu().numpy()
                bar.update(len(rows))
    return scores


def _with_scores(examples: list[TrainExample], scores: np.ndarray) -> list[TrainExample]:
    """The rows with ``pos_scores`` / ``neg_scores`` taken in order from ``scores`` (pos then neg, row by row)."""
    scored: list[TrainExample] = []
    at = 0
    for ex in examples:
        n_pos, n_neg = len(ex.pos), len(ex.neg)
        pos_scores = [float(x) for x in scores[at:at + n_pos]]
        neg_scores = [float(x) for x in scores[at + n_pos:at + n_pos + n_neg]]
        at += n_pos + n_neg
        scored.append(TrainExample(query=ex.query, pos=list(ex.pos), neg=list(ex.neg), pos_scores=pos_scores,
                                   neg_scores=neg_scores, prompt=ex.prompt, type=ex.type, source=ex.source))
    return scored


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
    positive_int("batch_size", batch_size, "e.g. --batch-size 32")
    inputs = [input] if isinstance(input, (str, Path)) else list(input)
    files = expand_paths(inputs)
    output = check_output(Path(output), [*inputs, *files], model_dirs=[reranker_dir])
    max_length = _max_length(reranker_dir, max_length)
    data = load_train_data(files, skip_invalid=skip_invalid)
    model, tokenizer = load_cross_encoder(reranker_dir, trust_pickle=trust_pickle, device=device)
    num_labels = int(getattr(model.config, "num_labels", 1))
    label = 0 if num_labels == 1 else num_labels - 1

    examples = data.examples
    queries = [ex.query for ex in examples for _ in (*ex.pos, *ex.neg)]
    passages = [p for ex in examples for p in (*ex.pos, *ex.neg)]
    scores = cross_encoder_scores(model, tokenizer, queries, passages, max_length=max_length, batch_size=batch_size,
                                  label=label, show_progress=show_progress)
    scored = _with_scores(examples, scores)
    write_train_jsonl(output, scored)
    return ScoreReport(rows=len(scored), pairs=len(passages), model=Path(reranker_dir), output=output,
                       max_length=max_length, num_labels=num_labels, skipped_rows=len(data.skipped),
                       skipped=list(data.skipped))
