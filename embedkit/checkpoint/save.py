"""``save``: a model + tokenizer + spec -> a folder every consumer loads with identical vectors.

Order: Hugging Face model (weights, config, tokenizer) -> sentence-transformers layout (plain JSON, no import of
sentence-transformers, no re-reading of the model) -> model card -> manifest; all in a temporary sibling folder,
verified, then renamed into place.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any

from .. import spec as spec_module
from .._io import atomic_dir
from ..errors import CheckpointError, EmbedkitError, SpecError
from ..folder.layout import check_model_folder
from ..folder.loading import load_model
from ..folder.m3_heads import HEAD_NAMES, check_linear_head, load_head, write_head
from ..models import resolve_model_path
from ..rerank.spec import RerankerSpec, is_reranker_folder
from ..spec import (
    ARGUMENT,
    EmbedderSpec,
    model_token_limit,
    resolve_spec,
    sentence_transformers_files,
)
from ._save_files import (
    FORMATS,
    SaveResult,
    card_facts,
    cast,
    check_format,
    check_inputs,
    finish_folder,
    tokenizer_from,
    torch_dtype,
    write_bin,
    write_card,
    write_model_files,
)
from .card import model_card
from .save_reranker import EMBEDDER_ONLY_FIELDS, is_reranker_model, save_reranker

logger = logging.getLogger("embedkit")

def _apply_overrides(spec: EmbedderSpec, overrides: dict[str, Any]) -> EmbedderSpec:
    overrides = {k: v for k, v in overrides.items() if v is not None}
    max_length = overrides.pop("max_length", None)
    if max_length is not None:
        overrides.setdefault("query_max_length", max_length)
        overrides.setdefault("passage_max_length", max_length)
    unknown = set(overrides) - set(EmbedderSpec.field_names())
    if unknown:
        raise SpecError(f"unknown spec field(s): {', '.join(sorted(unknown))}")
    provenance = dict(spec.provenance, **{k: ARGUMENT for k in overrides})
    return dataclasses.replace(spec, **overrides, provenance=provenance)


def save(
    model_or_path: Any,
    dst: str | Path,
    spec: EmbedderSpec | None = None,
    *,
    tokenizer: Any = None,
    format: str = "safetensors",
    dtype: Any = None,
    sentence_transformers: bool = True,
    overwrite: bool = False,
    sign_key: str | Path | None = None,
    card: dict[str, Any] | None = None,
    trust_pickle: bool = False,
    m3_heads: Any = None,
    **spec_overrides: Any,
) -> SaveResult:
    """Save a model as a Hugging Face folder plus the sentence-transformers layout, model card and manifest.

    Args:
        model_or_path: a local model folder (or ``"minilm"``), or a loaded ``transformers`` model (the trainer).
        dst: the destination folder (written atomically; must not exist unless ``overwrite``).
        spec: the recipe; by default resolved from the source folder. ``spec_overrides`` (``pooling=``,
            ``normalize=``, ``query_instruction=``, ``max_length=``...) replace fields of it.
        tokenizer: a tokenizer or a folder to take it from (default: the source folder).
        format: ``"safetensors"`` (default), ``"bin"`` (a real ``pytorch_model.bin``) or ``"both"``.
        dtype: cast the weights (``"fp32" | "fp16" | "bf16"``); default keeps them.
        sentence_transformers: also write the sentence-transformers layout (failure there only warns).
        sign_key: an ed25519 private key (PEM) to sign the manifest with.
        card: extra model-card content: ``training`` / ``metrics`` dicts, ``notes`` list, ``base_model``.
        m3_heads: bge-m3 heads to write (an :class:`embedkit.m3.M3Heads` or ``{"colbert_linear": state_dict, ...}``;
            e.g. from unified fine-tuning). By default a source folder's heads are carried over. Heads are written
            as ``colbert_linear.pt`` / ``sparse_linear.pt`` (FlagEmbedding) and the same tensors as ``.safetensors``.

    A cross-encoder (a ``*ForSequenceClassification`` folder or model, or a :class:`~embedkit.rerank.RerankerSpec`)
    is saved by :func:`save_reranker` (its ``spec_overrides``: ``truncation=``, ``max_length=``...).

    Example:
        >>> save("checkpoint-1500", "my-model", pooling="cls", query_instruction="query: ")
    """
    check_format(format)
    if _is_reranker_source(model_or_path, spec):
        if m3_heads is not None:
            raise CheckpointError("m3_heads belong to bge-m3 embedders, not to a reranker", hint="drop m3_heads")
        return save_reranker(model_or_path, dst, spec if isinstance(spec, RerankerSpec) else None,
                             tokenizer=tokenizer, format=format, dtype=dtype, overwrite=overwrite, sign_key=sign_key,
                             card=card, trust_pickle=trust_pickle, **spec_overrides)
    dtype = torch_dtype(dtype)
    model, tokenizer, src = _load_source(model_or_path, dst, tokenizer, overwrite=overwrite, trust_pickle=trust_pickle)
    hidden_size = int(model.config.hidden_size)
    config_dict = model.config.to_dict()
    if spec is None:
        spec = resolve_spec(src or Path(str(dst)), spec_overrides, config=config_dict,
                            model_max_length=model_token_limit(src) if src else None, hidden_size=hidden_size)
    else:
        spec = _apply_overrides(spec, spec_overrides)
    spec.validate(hidden_size=hidden_size)

    model = cast(model, dtype, src)
    warnings: list[str] = []
    notes: list[str] = []
    dst = Path(dst)

    with atomic_dir(dst, overwrite=overwrite) as tmp:
        state_dict = write_model_files(tmp, model, tokenizer, format)
        if m3_heads is not None:
            _write_given_m3_heads(m3_heads, tmp, hidden_size)
        elif src is not None:
            _write_m3_heads(src, tmp, hidden_size, trust_pickle=trust_pickle)
        wrote_st = False
        if sentence_transformers:
            wrote_st = _write_st_layout(tmp, spec, hidden_size, warnings)
            if wrote_st and spec.query_max_length != spec.passage_max_length:
                notes.append(st_length_note(spec))
        _write_card(tmp, model, spec, config_dict, name=dst.name, src=src, card=card, notes=notes + warnings)
        files = finish_folder(tmp, state_dict, sign_key=sign_key)
    for note in notes:
        logger.info("%s", note)
    for w in warnings:
        logger.warning("%s", w)
    return SaveResult(path=dst, spec=spec, files=files, sentence_transformers=wrote_st, warnings=warnings)


def _is_reranker_source(model_or_path: Any, spec: Any) -> bool:
    """A reranker spec, a ``*ForSequenceClassification`` model object, or a folder whose config declares one."""
    if isinstance(spec, RerankerSpec):
        return True
    if isinstance(model_or_path, (str, Path)):
        try:
            return is_reranker_folder(model_or_path)
        except EmbedkitError:
            return False
    return is_reranker_model(model_or_path)


def _load_source(model_or_path: Any, dst: str | Path, tokenizer: Any, *, overwrite: bool,
                 trust_pickle: bool) -> tuple[Any, Any, Path | None]:
    """``(model, tokenizer, source folder or None)`` after checking the source, the tokenizer and ``dst`` (which
    must not hold, or be held by, an input)."""
    src: Path | None = None
    if isinstance(model_or_path, (str, Path)):
        src = resolve_model_path(model_or_path)
        if tokenizer is None:
            check_model_folder(src)
        elif not src.is_dir():
            check_model_folder(src)  # raises the not-a-folder error
        check_inputs(dst, tokenizer, overwrite=overwrite, src=src)
        model = load_model(src, trust_pickle=trust_pickle)
        tokenizer = tokenizer if tokenizer is not None else src
    else:
        model = model_or_path
        check_inputs(dst, tokenizer, overwrite=overwrite, src=None)
    return model, tokenizer_from(tokenizer), src


def _write_card(tmp: Path, model: Any, spec: EmbedderSpec, config_dict: dict[str, Any], *, name: str,
                src: Path | None, card: dict[str, Any] | None, notes: list[str]) -> None:
    """The ``README.md`` model card: spec, base model, architecture, size, training / metrics / notes."""
    card_info = dict(card or {})
    write_card(tmp, model_card(spec, name=name, source=str(src) if src else None,
                               **card_facts(model, config_dict, card_info),
                               notes=(card_info.get("notes") or []) + notes))


def _write_m3_heads(src: Path, folder: Path, hidden_size: int, *, trust_pickle: bool = False) -> None:
    """Write the bge-m3 heads of ``src`` (``.pt`` or ``.safetensors``) into ``folder`` in both forms.

    Each head is read safely (no untrusted pickle) and checked against ``hidden_size`` first; the ``.pt`` is what
    FlagEmbedding's ``BGEM3FlagModel`` loads (it needs both heads), the ``.safetensors`` serves everything else.
    """
    for name in HEAD_NAMES:
        sd = load_head(src, name, hidden_size=hidden_size, out_features=1 if name == "sparse_linear" else None,
                       trust_pickle=trust_pickle)
        if sd is None:
            continue
        write_head(folder, name, sd)  # a fresh tensors-only .pt, even when the source needed --trust-pickle


def _write_given_m3_heads(heads: Any, folder: Path, hidden_size: int) -> None:
    """Write heads passed to :func:`save`: an object with ``colbert_linear`` / ``sparse_linear`` modules (e.g.
    :class:`embedkit.m3.M3Heads`) or a ``{name: state_dict}`` mapping; each checked against ``hidden_size``."""
    for name in HEAD_NAMES:
        item = heads.get(name) if isinstance(heads, dict) else getattr(heads, name, None)
        if item is None:
            continue
        sd = item.state_dict() if hasattr(item, "state_dict") else dict(item)
        check_linear_head(Path(f"{name} (m3_heads)"), sd, hidden_size, 1 if name == "sparse_linear" else None)
        write_head(folder, name, sd)


def st_length_note(spec: EmbedderSpec) -> str:
    """The model card's note for a spec whose query and passage lengths differ (sentence-transformers has one)."""
    return (f"Query and passage max lengths differ ({spec.query_max_length} / {spec.passage_max_length} tokens). "
            f"sentence-transformers has a single max_seq_length, so its files record the passage length "
            f"{spec.passage_max_length}; embedkit, FlagEmbedding (query_max_length={spec.query_max_length}) and the "
            "recipe in this card cut queries at the query length. Queries shorter than that encode identically "
            "everywhere.")


def _write_st_layout(folder: Path, spec: EmbedderSpec, hidden_size: int, warnings: list[str]) -> bool:
    """Write the sentence-transformers files; on any failure remove them and warn (the HF model stays complete)."""
    try:
        # looked up on the module at call time: a test substitutes a failing writer
        warnings.extend(spec_module.write_sentence_transformers_files(folder, spec, hidden_size))
        return True
    except Exception as exc:  # noqa: BLE001 - by design: this step must never cost the main checkpoint
        files, _ = sentence_transformers_files(spec, hidden_size)
        for rel in files:
            target = folder / rel
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            elif target.exists():
                target.unlink()
        shutil.rmtree(folder / "1_Pooling", ignore_errors=True)
        warnings.append(f"the sentence-transformers layout could not be written ({type(exc).__name__}: {exc}); "
                        "the Hugging Face checkpoint is complete")
        return False


__all__ = ["EMBEDDER_ONLY_FIELDS", "FORMATS", "SaveResult", "is_reranker_model", "save", "save_reranker",
           "st_length_note", "write_bin"]
