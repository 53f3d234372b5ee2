"""Resolving the :class:`EmbedderSpec` of a model folder, field by field, with provenance.

Resolution order, per field, never silent (``spec.provenance`` records which rule decided each field):

1. arguments the user passes;
2. the checkpoint's own sentence-transformers files (:mod:`.sentence_transformers`);
3. a small table of known model families, matched on the folder name and ``config.json`` (:mod:`.families`);
4. otherwise CLS pooling + L2 normalization (the BGE convention), with a warning naming what was assumed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, SpecError
from ..folder.layout import check_model_folder
from ..models import resolve_model_path
from .families import Family, match_family
from .model import ARGUMENT, ASSUMED, DEFAULT, EmbedderSpec
from .sentence_transformers import read_json_object, read_sentence_transformers_spec

logger = logging.getLogger("embedkit")

_POSITION_OFFSET_MODELS = ("roberta", "xlm-roberta", "camembert", "longformer", "mpnet")
_SANE_TOKENIZER_LIMIT = 1_000_000  # tokenizers without a limit report ~1e30


def _folder_json(path: Path, missing: Any = None) -> Any:
    """``config.json`` / ``tokenizer_config.json`` of a folder as a JSON object; ``missing`` when there is none."""
    if not path.is_file():
        return missing
    return read_json_object(path, CheckpointError)


def _merged_overrides(overrides: dict[str, Any] | None) -> dict[str, Any]:
    """User arguments with ``max_length`` spread to both length fields; :class:`SpecError` for unknown names."""
    overrides = dict(overrides or {})
    max_length = overrides.pop("max_length", None)
    for key in ("query_max_length", "passage_max_length"):
        if overrides.get(key) is None and max_length is not None:
            overrides[key] = max_length
    unknown = set(overrides) - set(EmbedderSpec.field_names())
    if unknown:
        raise SpecError(f"unknown spec field(s): {', '.join(sorted(unknown))}",
                        hint=f"known fields: {', '.join(EmbedderSpec.field_names())}")
    return overrides


def _decide(name: str, overrides: dict[str, Any], st: dict[str, tuple[Any, str]], fam: Family | None,
            model_max_length: int | None) -> tuple[Any, str]:
    """``(value, rule)`` of one field: argument, sentence-transformers files, family table, assumed / default."""
    if overrides.get(name) is not None:
        return overrides[name], ARGUMENT
    if name in st:
        return st[name]
    if fam is not None and name in fam.values:
        return fam.values[name], f"family table ({fam.name})"
    if name in ("pooling", "normalize"):
        return getattr(EmbedderSpec(), name), ASSUMED
    if name in ("query_max_length", "passage_max_length") and model_max_length is not None:
        return min(512, model_max_length), "model limit (config / tokenizer)"
    return getattr(EmbedderSpec(), name), DEFAULT


def resolve_spec(
    model_dir: str | Path,
    overrides: dict[str, Any] | None = None,
    *,
    config: dict[str, Any] | None = None,
    model_max_length: int | None = None,
    hidden_size: int | None = None,
    warn: bool = True,
) -> EmbedderSpec:
    """Resolve the :class:`EmbedderSpec` of a local model folder.

    Args:
        model_dir: the model folder.
        overrides: user arguments (``None`` values are ignored); ``max_length`` sets both length fields unless
            ``query_max_length`` / ``passage_max_length`` are given too.
        config: the folder's ``config.json`` contents (read from disk when ``None``).
        model_max_length: the most tokens the model takes; the default for lengths nothing else sets.
        hidden_size: the model's output dimension, to validate ``truncate_dim``.
        warn: log a warning when pooling / normalization had to be assumed.

    Example:
        >>> spec = resolve_spec("my-model", {"pooling": "mean"})
        >>> spec.provenance["pooling"]
        'argument'
    """
    model_dir = Path(model_dir)
    if config is None:
        config = _folder_json(model_dir / "config.json", missing={})
    if model_max_length is None:
        model_max_length = model_max_length_from_config(config)
    overrides = _merged_overrides(overrides)
    st = read_sentence_transformers_spec(model_dir)
    fam = match_family(model_dir, config)
    values: dict[str, Any] = {}
    provenance: dict[str, str] = {}
    for name in EmbedderSpec.field_names():
        values[name], provenance[name] = _decide(name, overrides, st, fam, model_max_length)
    spec = EmbedderSpec(**values, provenance=provenance)
    assumed = [n for n in ("pooling", "normalize") if provenance[n] == ASSUMED]
    if assumed and warn:
        logger.warning(
            "%s: no %s recorded (no sentence-transformers files, unknown model family); assuming %s. "
            "If that is wrong, pass pooling=/normalize= or record it once with "
            "`embedkit save %s OUT --pooling cls|mean|last_token`.",
            model_dir, " or ".join(assumed),
            ", ".join(f"{n}={getattr(spec, n)!r}" for n in assumed), model_dir,
        )
    return spec.validate(hidden_size=hidden_size, model_max_length=model_max_length)


def model_max_length_from_config(config: dict[str, Any]) -> int | None:
    """The most tokens a model can take, from its ``config.json`` (``None`` when it does not say)."""
    n = config.get("max_position_embeddings")
    if not isinstance(n, int) or n <= 0:
        return None
    if config.get("model_type") in _POSITION_OFFSET_MODELS:
        pad = config.get("pad_token_id")
        n -= (pad if isinstance(pad, int) else 1) + 1
    return n


def model_token_limit(model_dir: str | Path, config: dict[str, Any] | None = None) -> int | None:
    """The most tokens a model folder takes: the smaller of the position limit and the tokenizer's limit."""
    model_dir = Path(model_dir)
    if config is None:
        config = _folder_json(model_dir / "config.json", missing={})
    limits = [model_max_length_from_config(config)]
    tok_config = _folder_json(model_dir / "tokenizer_config.json")
    if tok_config is not None:
        tok_limit = tok_config.get("model_max_length")
        if isinstance(tok_limit, (int, float)) and 0 < tok_limit < _SANE_TOKENIZER_LIMIT:
            limits.append(int(tok_limit))
    limits = [n for n in limits if n]
    return min(limits) if limits else None


def load_spec(model_dir: str | Path, overrides: dict[str, Any] | None = None, *, warn: bool = True) -> EmbedderSpec:
    """Resolve the spec of a model folder from its files alone (no weights or tokenizer are loaded).

    Example:
        >>> load_spec("minilm").pooling
        'mean'
    """
    folder = check_model_folder(resolve_model_path(model_dir))
    config = read_json_object(folder / "config.json", CheckpointError)
    hidden = config.get("hidden_size") or config.get("d_model")
    return resolve_spec(folder, overrides, config=config, model_max_length=model_token_limit(folder, config),
                        hidden_size=hidden if isinstance(hidden, int) else None, warn=warn)


def describe(spec: EmbedderSpec) -> list[tuple[str, Any, str]]:
    """``(field, value, rule)`` rows, for ``embedkit spec`` and ``embedkit inspect``."""
    return [(n, getattr(spec, n), spec.provenance.get(n, ARGUMENT)) for n in EmbedderSpec.field_names()]


def instruction_overrides(side: str | None, instruction: str | None, instruction_format: str | None = None
                          ) -> dict[str, Any]:
    """The spec overrides that replace the query's or the passage's instruction (``embedkit encode --queries
    --instruction ...``), to pass to :func:`resolve_spec` / :class:`~embedkit.Embedder`.

    Args:
        side: ``"query"``, ``"passage"``, or ``None`` for plain texts: their instruction is no spec field (pass it to
            :meth:`Embedder.encode` ``instruction=``), so nothing is overridden.
        instruction: the instruction to use instead of the spec's; ``None`` keeps the spec's (no override).
        instruction_format: how instruction and text join, e.g. ``"{}{}"``; ``None`` keeps the spec's format
            (``None`` overrides are ignored by :func:`resolve_spec`).

    Returns:
        ``{}``, or ``{"<side>_instruction": instruction, "<side>_instruction_format": instruction_format}``.

    Example:
        >>> instruction_overrides("query", "Represent this question: ")
        {'query_instruction': 'Represent this question: ', 'query_instruction_format': None}
    """
    if side not in (None, "query", "passage"):
        raise SpecError(f"instruction side must be 'query', 'passage' or None, got {side!r}",
                        hint="pass side='query' or side='passage' (or None for plain texts)", param="side")
    if side is None or instruction is None:
        return {}
    return {f"{side}_instruction": instruction, f"{side}_instruction_format": instruction_format}
