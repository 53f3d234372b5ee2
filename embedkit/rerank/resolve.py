"""How a cross-encoder folder's :class:`~embedkit.rerank.spec_core.RerankerSpec` is resolved, field by field, never
silently (the order: :mod:`embedkit.rerank.spec`): arguments, the spec embedkit recorded, the folder's
sentence-transformers files, a table of known families, FlagEmbedding's conventions."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, SpecError
from ..folder.layout import check_model_folder, read_config, read_json_file
from ..models import resolve_model_path
from ..spec import model_token_limit
from . import spec_core
from .spec_core import ARGUMENT, DEFAULT, DEFAULT_MAX_LENGTH, SAVED, SAVED_KEY, RerankerSpec, check_reranker_config

logger = logging.getLogger("embedkit")

# sentence-transformers' activation paths -> ours
_ST_ACTIVATIONS = {
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
    "torch.nn.Sigmoid": "sigmoid",
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.Identity": "identity",
    "torch.nn.modules.activation.Tanh": "tanh",
    "torch.nn.Tanh": "tanh",
}

# Known families, matched on the folder name: (pattern, truncation, rule).
FAMILIES: tuple[tuple[str, str, str], ...] = (
    (r"bge-reranker", "flagembedding", "known family: bge-reranker (FlagEmbedding's FlagReranker)"),
    (r"ms-marco|cross-encoder|stsb-|quora-|nli-|mxbai-rerank",
     "longest_first", "known family: sentence-transformers cross-encoder (CrossEncoder)"),
)


def _st_markers(folder: Path, config: dict[str, Any]) -> tuple[str | None, str | None]:
    """``(activation path, rule)`` when sentence-transformers' CrossEncoder saved the folder, else ``(None, None)``.

    The activation path is ``None`` for a CrossEncoder save that names none (then CrossEncoder's default applies).
    """
    st = config.get("sentence_transformers")
    if isinstance(st, dict) and "activation_fn" in st:
        return st.get("activation_fn"), "config.json sentence_transformers.activation_fn (CrossEncoder save)"
    legacy = config.get("sbert_ce_default_activation_function")
    if isinstance(legacy, str):
        return legacy, "config.json sbert_ce_default_activation_function (CrossEncoder < 4 save)"
    path = folder / "config_sentence_transformers.json"
    if path.is_file():
        cst = read_json_file(path, expect=dict)
        if cst.get("model_type") == "CrossEncoder" or "activation_fn" in cst:
            act = cst.get("activation_fn")
            return (act if isinstance(act, str) else None,
                    "config_sentence_transformers.json (CrossEncoder save)")
    return None, None


def _saved_record(folder: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The spec fields embedkit recorded in ``config.json`` (``{}`` when none); unknown keys are refused."""
    record = config.get(SAVED_KEY)
    if record is None:
        return {}
    where = f"{folder / 'config.json'} {SAVED_KEY}"
    if not isinstance(record, dict):
        raise CheckpointError(f"{where} is {type(record).__name__}, expected an object",
                              hint=f"remove the {SAVED_KEY!r} key, or re-save with `embedkit save`")
    allowed = set(RerankerSpec.field_names()) - {"num_labels"}
    unknown = sorted(set(record) - allowed)
    if unknown:
        raise CheckpointError(f"{where} has unknown field(s): {', '.join(map(repr, unknown))}",
                              hint=f"fields: {', '.join(sorted(allowed))}; re-save with `embedkit save`")
    return dict(record)


def _family(folder: Path) -> tuple[str, str] | None:
    name = folder.name.lower()
    for pattern, truncation, rule in FAMILIES:
        if re.search(pattern, name):
            return truncation, rule
    return None


Provenance = dict[str, str]


def _merge_saved(folder: Path, config: dict[str, Any], overrides: dict[str, Any] | None,
                 given: dict[str, Any]) -> set[str]:
    """Add the spec embedkit recorded in ``config.json`` to ``given`` (the arguments outrank it); the names taken
    from the record."""
    saved = _saved_record(folder, config)
    truncation = given.get("truncation", saved.get("truncation", "flagembedding"))
    for name, value in saved.items():  # the recorded spec outranks everything but arguments
        if name == "query_max_length" and (value is None or truncation != "flagembedding"):
            continue  # an argument switching to longest_first drops the recorded query limit
        if name not in given:
            given[name] = value
    return {name for name in saved if name not in (overrides or {}) or (overrides or {})[name] is None}


def _truncation(folder: Path, given: dict[str, Any], rule: Any, st_rule: str | None, warn: bool) -> tuple[str, str]:
    """``(truncation, rule)``: the argument / record, a CrossEncoder save, a known family, else FlagEmbedding's."""
    family = _family(folder)
    if "truncation" in given:
        return given["truncation"], rule("truncation")
    if st_rule is not None:
        return "longest_first", st_rule
    if family is not None:
        return family
    if warn:
        logger.warning("%s: nothing in the folder says how pairs were truncated; assuming FlagEmbedding's "
                       "(FlagReranker: query cut to 3/4 of max_length, then only the passage). Pass "
                       "truncation='longest_first' (CLI --truncation longest_first) to match "
                       "sentence-transformers' CrossEncoder on pairs longer than max_length", folder.name)
    return "flagembedding", "assumed (FlagEmbedding's FlagReranker convention)"


def _max_length(folder: Path, st_rule: str | None, limit: int | None) -> tuple[int, str]:
    """``(max_length, rule)`` when no argument gives it: a CrossEncoder save's ``max_seq_length``, else
    FlagReranker's default capped at the model's limit."""
    st_len = None
    sbc = folder / "sentence_bert_config.json"
    if st_rule is not None and sbc.is_file():
        st_len = read_json_file(sbc, expect=dict).get("max_seq_length")
    if isinstance(st_len, int) and not isinstance(st_len, bool) and st_len > 0:
        return (min(st_len, limit) if limit else st_len), "sentence_bert_config.json max_seq_length"
    if limit is not None and limit < DEFAULT_MAX_LENGTH:
        return limit, f"default {DEFAULT_MAX_LENGTH}, capped at the model's limit ({limit} tokens)"
    return DEFAULT_MAX_LENGTH, f"{DEFAULT} (FlagReranker's)"


def _activation(folder: Path, st_activation: str | None, st_rule: str | None, warn: bool) -> tuple[str, str]:
    """``(activation, rule)`` when no argument gives it: a CrossEncoder save's, else sigmoid (one label)."""
    if st_activation is None:
        return "sigmoid", f"{DEFAULT} for one label (CrossEncoder's)"
    act = _ST_ACTIVATIONS.get(st_activation)
    if act is not None:
        return act, f"{st_rule}: {st_activation}"
    if warn:
        logger.warning("%s: the CrossEncoder activation %r is not one embedkit runs (%s); predict() uses "
                       "sigmoid, pass activation_fn to choose", folder.name, st_activation,
                       ", ".join(spec_core.ACTIVATIONS))
    return "sigmoid", (f"default for one label (sigmoid): {st_rule} names {st_activation}, which embedkit "
                       "does not run")


def resolve_reranker_spec(folder: Path, overrides: dict[str, Any] | None = None, *,
                          config: dict[str, Any] | None = None, warn: bool = True) -> RerankerSpec:
    """Resolve every field of a cross-encoder folder's :class:`RerankerSpec` (see :mod:`embedkit.rerank.spec`).

    ``overrides``: the user's arguments (``None`` values mean "not given"). Refuses embedding models and multi-label
    heads (:func:`check_reranker_config`).
    """
    config = read_config(folder) if config is None else config
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = set(given) - set(RerankerSpec.field_names())
    if unknown:
        raise SpecError(f"unknown reranker spec field(s): {', '.join(sorted(unknown))}",
                        hint=f"fields: {', '.join(RerankerSpec.field_names())}")
    num_labels = check_reranker_config(folder, config)
    prov: Provenance = {"num_labels": "config.json"}
    values: dict[str, Any] = {"num_labels": num_labels}
    st_activation, st_rule = _st_markers(folder, config)
    limit = model_token_limit(folder, config)
    from_record = _merge_saved(folder, config, overrides, given)
    saved_rule = f"{SAVED} (config.json {SAVED_KEY})"

    def rule(name: str) -> str:
        return saved_rule if name in from_record else ARGUMENT

    values["truncation"], prov["truncation"] = _truncation(folder, given, rule, st_rule, warn)
    if "max_length" in given:
        values["max_length"], prov["max_length"] = given["max_length"], rule("max_length")
    else:
        values["max_length"], prov["max_length"] = _max_length(folder, st_rule, limit)
    if "query_max_length" in given:
        values["query_max_length"], prov["query_max_length"] = given["query_max_length"], rule("query_max_length")
    elif values["truncation"] == "flagembedding":
        prov["query_max_length"] = f"{DEFAULT}: 3/4 of max_length (FlagReranker's)"
    else:
        prov["query_max_length"] = "not used by longest_first"
    for name in ("query_instruction", "query_instruction_format"):
        if name in given:
            values[name], prov[name] = given[name], rule(name)
        else:
            prov[name] = DEFAULT
    if "activation" in given:
        values["activation"], prov["activation"] = given["activation"], rule("activation")
    else:
        values["activation"], prov["activation"] = _activation(folder, st_activation, st_rule, warn)
    spec = RerankerSpec(**values, provenance=prov)
    return spec.validate(limit)


def load_reranker_spec(model: str | Path, overrides: dict[str, Any] | None = None, *,
                       warn: bool = True) -> RerankerSpec:
    """Resolve the reranker spec of a model folder from its files alone (no weights or tokenizer are loaded).

    Example:
        >>> load_reranker_spec("bge-reranker-base").truncation
        'flagembedding'
    """
    folder = check_model_folder(resolve_model_path(model))
    return resolve_reranker_spec(folder, overrides, warn=warn)
