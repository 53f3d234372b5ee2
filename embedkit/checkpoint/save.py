"""``save``: a model + tokenizer + spec -> a folder every consumer loads with identical vectors.

Order: Hugging Face model (weights, config, tokenizer) -> sentence-transformers layout (plain JSON, no import of
sentence-transformers, no re-reading of the model) -> model card -> manifest; all in a temporary sibling folder,
verified, then renamed into place.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import spec as spec_module
from .._io import atomic_dir, atomic_write, refuse_overwriting_inputs
from ..errors import CheckpointError, EmbedkitError, SpecError
from ..folder.layout import check_destination, check_model_folder, find_weight_files, read_json_file
from ..folder.loading import load_model, load_tokenizer
from ..folder.m3_heads import HEAD_NAMES, check_linear_head, load_head, write_head
from ..folder.safe_load import load_state_dict, read_safetensors_header
from ..models import model_display_name, resolve_model_path
from ..rerank.spec import (
    DEFAULT,
    SAVED_KEY,
    RerankerSpec,
    check_reranker_config,
    is_reranker_folder,
    resolve_reranker_spec,
)
from ..spec import (
    ARGUMENT,
    EmbedderSpec,
    model_token_limit,
    resolve_spec,
    sentence_transformers_files,
)
from .card import _ST_ACTIVATION_PATHS, model_card, reranker_model_card
from .manifest import write_manifest

logger = logging.getLogger("embedkit")

FORMATS = ("safetensors", "bin", "both")


@dataclass
class SaveResult:
    """What :func:`save` wrote."""

    path: Path
    spec: EmbedderSpec | RerankerSpec
    files: list[str]
    sentence_transformers: bool
    warnings: list[str] = field(default_factory=list)


def _torch_dtype(dtype: Any) -> Any:
    # lazy: pulls in torch; embedkit.checkpoint.save stays importable without it (fast CLI start)
    from ..dtypes import resolve_dtype

    return None if dtype is None else resolve_dtype(dtype)


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


def write_bin(state_dict: dict[str, Any], path: Path) -> None:
    """Write a real ``pytorch_model.bin`` (transformers 5 ignores ``safe_serialization=False``), atomically."""
    import torch

    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    with atomic_write(path) as fh:
        torch.save(tensors, fh)


def _verify_weights(folder: Path, state_dict: dict[str, Any]) -> None:
    """The written weight files hold every tensor of ``state_dict``, with the same shapes."""
    expected = {k: tuple(v.shape) for k, v in state_dict.items()}
    found: dict[str, tuple[int, ...]] = {}
    for f in find_weight_files(folder):
        if f.suffix == ".safetensors":
            found.update({k: tuple(v["shape"]) for k, v in read_safetensors_header(f).items()})
        elif f.suffix == ".bin":
            found.update({k: tuple(v.shape) for k, v in load_state_dict(f).items()})
    missing = [k for k in expected if k not in found]
    wrong = [k for k in expected if k in found and found[k] != expected[k]]
    if missing or wrong:
        raise CheckpointError(f"verification of the written weights failed: missing {missing[:3]}, "
                              f"wrong shapes {wrong[:3]}", hint="please report this as an embedkit bug")


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
    if format not in FORMATS:
        raise CheckpointError(f"unknown format {format!r}", hint=f"use one of {', '.join(FORMATS)}")
    if _is_reranker_source(model_or_path, spec):
        if m3_heads is not None:
            raise CheckpointError("m3_heads belong to bge-m3 embedders, not to a reranker", hint="drop m3_heads")
        return save_reranker(model_or_path, dst, spec if isinstance(spec, RerankerSpec) else None,
                             tokenizer=tokenizer, format=format, dtype=dtype, overwrite=overwrite, sign_key=sign_key,
                             card=card, trust_pickle=trust_pickle, **spec_overrides)
    torch_dtype = _torch_dtype(dtype)
    model, tokenizer, src = _load_source(model_or_path, dst, tokenizer, overwrite=overwrite, trust_pickle=trust_pickle)
    hidden_size = int(model.config.hidden_size)
    config_dict = model.config.to_dict()
    if spec is None:
        spec = resolve_spec(src or Path(str(dst)), spec_overrides, config=config_dict,
                            model_max_length=model_token_limit(src) if src else None, hidden_size=hidden_size)
    else:
        spec = _apply_overrides(spec, spec_overrides)
    spec.validate(hidden_size=hidden_size)

    if torch_dtype is not None and model.dtype != torch_dtype:
        model = (model if src is not None else copy.deepcopy(model)).to(torch_dtype)
    warnings: list[str] = []
    notes: list[str] = []
    dst = Path(dst)

    with atomic_dir(dst, overwrite=overwrite) as tmp:
        state_dict = _write_model_files(tmp, model, tokenizer, format)
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
        check_model_folder(tmp)
        _verify_weights(tmp, state_dict)
        write_manifest(tmp, sign_key=sign_key)
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
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
        check_destination(dst, overwrite=overwrite, src=src)
        tok_dir = resolve_model_path(tokenizer) if isinstance(tokenizer, (str, Path)) else None
        refuse_overwriting_inputs(dst, model_dirs=[src, tok_dir], flag="DST")  # also: DST holding SRC, tokenizer
        model = load_model(src, trust_pickle=trust_pickle)
        tokenizer = tokenizer if tokenizer is not None else src
    else:
        model = model_or_path
        if isinstance(tokenizer, (str, Path)):
            refuse_overwriting_inputs(dst, model_dirs=[resolve_model_path(tokenizer)], flag="DST")
        check_destination(dst, overwrite=overwrite)
        if tokenizer is None:
            raise CheckpointError("saving a model object needs its tokenizer", hint="pass tokenizer=...")
    if isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(resolve_model_path(tokenizer),
                                   hint="pass --tokenizer BASE_MODEL_DIR (training checkpoints often lack it)")
    return model, tokenizer, src


def _write_model_files(tmp: Path, model: Any, tokenizer: Any, format: str) -> dict[str, Any]:
    """The Hugging Face files (config, weights in ``format``, tokenizer) into ``tmp``; return the state dict."""
    model.save_pretrained(str(tmp))
    state_dict = model.state_dict()
    if format in ("bin", "both"):
        write_bin(state_dict, tmp / "pytorch_model.bin")
    if format == "bin":
        for f in find_weight_files(tmp):
            if ".safetensors" in f.name:
                f.unlink()
    tokenizer.save_pretrained(str(tmp))
    return state_dict


def _write_card(tmp: Path, model: Any, spec: EmbedderSpec, config_dict: dict[str, Any], *, name: str,
                src: Path | None, card: dict[str, Any] | None, notes: list[str]) -> None:
    """The ``README.md`` model card: spec, base model, architecture, size, training / metrics / notes."""
    card_info = dict(card or {})
    base_model = card_info.pop("base_model", None) or config_dict.get("_name_or_path") or None
    text = model_card(
        spec, name=name, source=str(src) if src else None,
        base_model=model_display_name(base_model) if base_model else None,
        architecture=(config_dict.get("architectures") or [type(model).__name__])[0],
        dtype=str(model.dtype).replace("torch.", ""), num_parameters=sum(p.numel() for p in model.parameters()),
        training=card_info.get("training"), metrics=card_info.get("metrics"),
        notes=(card_info.get("notes") or []) + notes,
    )
    with atomic_write(tmp / "README.md", "w") as fh:
        fh.write(text)


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


# ---------------------------------------------------------------------- rerankers
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
        check_destination(dst, overwrite=overwrite, src=src)
        tok_dir = resolve_model_path(tokenizer) if isinstance(tokenizer, (str, Path)) else None
        refuse_overwriting_inputs(dst, model_dirs=[src, tok_dir], flag="DST")
        check_reranker_config(src, read_json_file(src / "config.json", expect=dict))
        model = load_model(src, trust_pickle=trust_pickle, auto_class=AutoModelForSequenceClassification,
                           ignorable_missing=(), what="reranker")
        tokenizer = tokenizer if tokenizer is not None else src
    else:
        model = model_or_path
        if isinstance(tokenizer, (str, Path)):
            refuse_overwriting_inputs(dst, model_dirs=[resolve_model_path(tokenizer)], flag="DST")
        check_destination(dst, overwrite=overwrite)
        if tokenizer is None:
            raise CheckpointError("saving a model object needs its tokenizer", hint="pass tokenizer=...")
    if isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(resolve_model_path(tokenizer),
                                   hint="pass --tokenizer BASE_MODEL_DIR (training checkpoints often lack it)")
    return model, tokenizer, src


def _patch_json(path: Path, update: dict[str, Any]) -> None:
    data = read_json_file(path, expect=dict)
    data.update(update)
    with atomic_write(path, "w") as fh:
        fh.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def save_reranker(
    model_or_path: Any,
    dst: str | Path,
    spec: RerankerSpec | None = None,
    *,
    tokenizer: Any = None,
    format: str = "safetensors",
    dtype: Any = None,
    overwrite: bool = False,
    sign_key: str | Path | None = None,
    card: dict[str, Any] | None = None,
    trust_pickle: bool = False,
    **spec_overrides: Any,
) -> SaveResult:
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
    if format not in FORMATS:
        raise CheckpointError(f"unknown format {format!r}", hint=f"use one of {', '.join(FORMATS)}")
    torch_dtype = _torch_dtype(dtype)
    dst = Path(dst)
    model, tokenizer, src = _load_reranker_source(model_or_path, dst, tokenizer, overwrite=overwrite,
                                                  trust_pickle=trust_pickle)
    if not is_reranker_model(model):
        raise CheckpointError(f"{type(model).__name__} is not a sequence classifier (*ForSequenceClassification)",
                              hint="save embedding models with embedkit.checkpoint.save.save")
    spec = _reranker_spec_for(src, model, spec, spec_overrides)
    config_dict = model.config.to_dict()
    spec.validate(model_token_limit(src, config_dict) if src is not None else None)
    if torch_dtype is not None and model.dtype != torch_dtype:
        model = (model if src is not None else copy.deepcopy(model)).to(torch_dtype)

    record = spec.to_dict()
    record.pop("num_labels")
    with atomic_dir(dst, overwrite=overwrite) as tmp:
        state_dict = _write_model_files(tmp, model, tokenizer, format)
        _patch_json(tmp / "config.json", {
            "sentence_transformers": {"activation_fn": _ST_ACTIVATION_PATHS[spec.activation]},
            SAVED_KEY: record,
        })
        if (tmp / "tokenizer_config.json").is_file():  # CrossEncoder's max_length (sentence-transformers >= 5)
            _patch_json(tmp / "tokenizer_config.json", {"model_max_length": spec.max_length})
        base_model = (card or {}).get("base_model") or config_dict.get("_name_or_path") or None
        text = reranker_model_card(
            spec, name=dst.name, source=str(src) if src else None,
            base_model=model_display_name(base_model) if base_model else None,
            architecture=(config_dict.get("architectures") or [type(model).__name__])[0],
            dtype=str(model.dtype).replace("torch.", ""), num_parameters=sum(p.numel() for p in model.parameters()),
            training=(card or {}).get("training"), metrics=(card or {}).get("metrics"),
            notes=(card or {}).get("notes"))
        with atomic_write(tmp / "README.md", "w") as fh:
            fh.write(text)
        check_model_folder(tmp)
        _verify_weights(tmp, state_dict)
        write_manifest(tmp, sign_key=sign_key)
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
    return SaveResult(path=dst, spec=spec, files=files, sentence_transformers=True)

