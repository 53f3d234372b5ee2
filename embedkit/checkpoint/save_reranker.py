"""``save_reranker``: a one-label cross-encoder -> a folder embedkit, FlagReranker, CrossEncoder and TEI score
identically (the reranking recipe recorded in ``config.json``, the CrossEncoder activation, a model card, the
manifest); :func:`embedkit.checkpoint.save.save` dispatches a reranker here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from .._io import atomic_dir
from ..errors import CheckpointError, SpecError
from ..folder.layout import check_model_folder, read_json_file
from ..folder.loading import load_model
from ..models import resolve_model_path
from ..rerank.spec import (
    DEFAULT,
    SAVED_KEY,
    RerankerSpec,
    check_reranker_config,
    resolve_reranker_spec,
)
from ..spec import ARGUMENT, model_token_limit
from . import _save_files as steps
from ._save_files import SaveResult
from .card import _ST_ACTIVATION_PATHS, reranker_model_card

EMBEDDER_ONLY_FIELDS = ("pooling", "normalize", "passage_instruction", "passage_instruction_format",
                        "passage_max_length", "truncate_dim", "do_lower_case")
"""Spec fields of an embedder that a reranker does not have (refused by :func:`save_reranker`)."""


def is_reranker_model(model: Any) -> bool:
    """Whether a loaded ``transformers`` model is a sequence classifier (``*ForSequenceClassification``)."""
    config = getattr(model, "config", None)
    archs = list(getattr(config, "architectures", None) or []) + [type(model).__name__]
    return any(isinstance(a, str) and a.endswith("ForSequenceClassification") for a in archs)


def _reranker_spec_for(src: Path | None, model: Any, spec: RerankerSpec | None,
                       overrides: dict[str, Any]) -> RerankerSpec:
    """The spec to record: ``spec`` (with ``overrides``), else resolved from the source folder, else the defaults."""
    given = {k: v for k, v in overrides.items() if v is not None}
    bad = sorted(set(given) & set(EMBEDDER_ONLY_FIELDS))
    if bad:
        raise SpecError(f"{', '.join(bad)} apply to embedding models, not to a reranker", param=bad[0],
                        hint="a reranker's recipe has truncation, max_length, query_max_length, query_instruction, "
                        "query_instruction_format and activation")
    unknown = sorted(set(given) - set(RerankerSpec.field_names()))
    if unknown:
        raise SpecError(f"unknown reranker spec field(s): {', '.join(unknown)}",
                        hint=f"fields: {', '.join(RerankerSpec.field_names())}")
    config = model.config.to_dict()
    if spec is not None:
        prov = dict(spec.provenance, **{k: ARGUMENT for k in given})
        return dataclasses.replace(spec, **given, provenance=prov)
    if src is not None:
        return resolve_reranker_spec(src, given, config=config)
    check_reranker_config(Path("<model>"), config)
    values = {"num_labels": 1, **given}
    prov = {name: (ARGUMENT if name in given else DEFAULT) for name in RerankerSpec.field_names()}
    return RerankerSpec(**values, provenance=prov)


def _load_reranker_source(model_or_path: Any, dst: Path, tokenizer: Any, *, overwrite: bool,
                          trust_pickle: bool) -> tuple[Any, Any, Path | None]:
    from transformers import AutoModelForSequenceClassification

    src: Path | None = None
    if isinstance(model_or_path, (str, Path)):
        src = check_model_folder(resolve_model_path(model_or_path))
        steps.check_inputs(dst, tokenizer, overwrite=overwrite, src=src)
        check_reranker_config(src, read_json_file(src / "config.json", expect=dict))
        model = load_model(src, trust_pickle=trust_pickle, auto_class=AutoModelForSequenceClassification,
                           ignorable_missing=(), what="reranker")
        tokenizer = tokenizer if tokenizer is not None else src
    else:
        model = model_or_path
        steps.check_inputs(dst, tokenizer, overwrite=overwrite, src=None)
    return model, steps.tokenizer_from(tokenizer), src


def save_reranker(model_or_path: Any, dst: str | Path, spec: RerankerSpec | None = None, *, tokenizer: Any = None,
                  format: str = "safetensors", dtype: Any = None, overwrite: bool = False,
                  sign_key: str | Path | None = None, card: dict[str, Any] | None = None, trust_pickle: bool = False,
                  **spec_overrides: Any) -> SaveResult:
    """Save a one-label cross-encoder so that embedkit, FlagReranker, CrossEncoder and TEI give equal scores.

    Args:
        model_or_path: a local cross-encoder folder, or a loaded ``*ForSequenceClassification`` model (the trainer:
            ``finetune --reranker``); multi-label heads and embedding models are refused.
        dst: the destination folder (written atomically; must not exist unless ``overwrite``).
        spec: the reranking recipe; by default resolved from the source folder (a model object without ``spec``
            gets the defaults: FlagEmbedding's truncation, ``max_length=512``, sigmoid). ``spec_overrides``
            (``truncation=``, ``max_length=``, ``query_max_length=``, ``query_instruction=``,
            ``query_instruction_format=``, ``activation=``) replace fields of it.
        tokenizer: a tokenizer or a folder to take it from (default: the source folder).
        format / dtype / sign_key / card / trust_pickle: as :func:`embedkit.checkpoint.save.save`.

    Returns a :class:`~embedkit.checkpoint.save.SaveResult` whose ``spec`` is the recorded :class:`RerankerSpec`.

    Example:
        >>> save_reranker("checkpoint-400", "my-reranker", truncation="longest_first", max_length=256)
    """
    steps.check_format(format)
    dtype = steps.torch_dtype(dtype)
    dst = Path(dst)
    model, tokenizer, src = _load_reranker_source(model_or_path, dst, tokenizer, overwrite=overwrite,
                                                  trust_pickle=trust_pickle)
    if not is_reranker_model(model):
        raise CheckpointError(f"{type(model).__name__} is not a sequence classifier (*ForSequenceClassification)",
                              hint="save embedding models with embedkit.checkpoint.save.save")
    spec = _reranker_spec_for(src, model, spec, spec_overrides)
    config_dict = model.config.to_dict()
    spec.validate(model_token_limit(src, config_dict) if src is not None else None)
    model = steps.cast(model, dtype, src)

    record = spec.to_dict()
    record.pop("num_labels")
    with atomic_dir(dst, overwrite=overwrite) as tmp:
        state_dict = steps.write_model_files(tmp, model, tokenizer, format)
        steps.patch_json(tmp / "config.json", {
            "sentence_transformers": {"activation_fn": _ST_ACTIVATION_PATHS[spec.activation]},
            SAVED_KEY: record,
        })
        if (tmp / "tokenizer_config.json").is_file():  # CrossEncoder's max_length (sentence-transformers >= 5)
            steps.patch_json(tmp / "tokenizer_config.json", {"model_max_length": spec.max_length})
        facts = steps.card_facts(model, config_dict, card)
        steps.write_card(tmp, reranker_model_card(spec, name=dst.name, source=str(src) if src else None, **facts,
                                                  notes=(card or {}).get("notes")))
        files = steps.finish_folder(tmp, state_dict, sign_key=sign_key)
    return SaveResult(path=dst, spec=spec, files=files, sentence_transformers=True)

