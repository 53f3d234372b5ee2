"""What a model / training-output folder is, what it holds, and what to do with it next (``embedkit inspect``).

:func:`inspect_folder` reads file names, sizes, JSON files and safetensors headers for the summary (``.bin``
weights go through :func:`embedkit.folder.safe_load.load_state_dict`, which refuses untrusted pickles), then runs
the inference loaders themselves on the CPU (:func:`embedkit.folder.loading.load_tokenizer` and
:func:`~embedkit.folder.loading.load_model`: config types, missing / misshaped / integer / NaN tensors), so a
folder ``inspect`` finds no problem in is one ``encode`` loads. Every problem it meets (an invalid ``config.json``, a
truncated weight file, a garbage tokenizer, a spec that does not resolve, a bge-m3 head that needs unpickling) is
recorded in ``problems`` instead of raised; only a path that is not a folder raises.

The JSON form (:meth:`InspectReport.to_dict`, schema version :data:`SCHEMA_VERSION`) has these top-level keys:

``schema_version``
    int, bumped when a key is renamed or removed.
``path``
    the folder, absolute.
``kind``
    one of :data:`KINDS`.
``files``
    ``[{"path", "class", "size"}]`` for every file (sorted by path; ``class`` is one of
    :data:`embedkit.folder.layout.FILE_CLASSES`).
``classes``
    ``{class: {"count", "bytes"}}`` for the classes present.
``total_bytes`` / ``inference_bytes`` / ``droppable_bytes``
    all files / files in :data:`~embedkit.folder.layout.INFERENCE_CLASSES` / files in ``droppable``.
``droppable``
    paths not needed for inference: training state, RNG state, logs, and (when full weights exist) ZeRO shards
    and intermediate ``checkpoint-N/`` sub-folders.
``missing_for_inference``
    subset of ``["config.json", "weights", "tokenizer"]`` (an ONNX model counts as weights).
``model``
    ``{"architectures", "model_type", "hidden_size", "num_hidden_layers", "vocab_size", "max_position_embeddings",
    "config_dtype", "parameters", "tensors", "dtypes", "weight_format", "weight_files", "config_error",
    "weights_error"}`` (``None`` where unknown; ``parameters`` is the number of tensor elements in the weight
    files, buffers included).
``spec``
    ``{field: {"value", "rule"}}`` (the resolved :class:`~embedkit.spec.EmbedderSpec`), or ``None`` with
    ``spec_error`` set to why it could not be resolved.
``spec_error``
    ``None`` or the error message.
``spec_assumed``
    fields decided by the assumed BGE convention (``["pooling", "normalize"]`` when nothing records them).
``lora``
    ``None``, or ``{"base_model_name_or_path", "peft_type", "r", "lora_alpha", "target_modules", "adapter_files",
    "parameters", "error"}`` when ``adapter_config.json`` exists.
``m3_heads``
    ``{"colbert_linear": bool, "sparse_linear": bool}`` (bge-m3 heads, ``.pt`` or ``.safetensors``; both true: a
    bge-m3 folder with dense, sparse and ColBERT outputs). A single head, heads only as ``.safetensors`` (which
    FlagEmbedding does not read) or a head that does not fit the hidden size is listed in ``problems``.
``checkpoints``
    names of ``checkpoint-N`` sub-folders (a Trainer ``output_dir``), oldest first.
``next_steps``
    concrete commands / actions, most important first (empty when the folder is ready).
``problems``
    human-readable problems found on the way (invalid JSON, corrupt headers, missing shards...).

Example:
    >>> report = inspect_folder("out/checkpoint-500")
    >>> report.kind, report.next_steps[0]
    ('training_checkpoint', 'embedkit slim out/checkpoint-500 out/checkpoint-500-slim ...')

The package: :mod:`.classify` (what the folder holds and is), :mod:`.facts` (config, weights, adapter, heads,
what the loaders refuse), :mod:`.report` (:class:`InspectReport` and its JSON form), :mod:`.next_steps`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..._format import format_bytes
from ...errors import CheckpointError, SpecError
from ...folder import layout
from ...folder.m3_heads import HEAD_NAMES
from ...spec import ASSUMED, describe, load_spec, model_token_limit, resolve_spec
from .classify import (
    Holdings,
    check_folder,
    checkpoint_subfolders,
    folder_kind,
    list_classified_files,
    mark_droppable,
    missing_for_inference,
)
from .facts import config_facts, load_problems, lora_info, m3_head_problems, weight_stats
from .next_steps import BASE_PLACEHOLDER, next_steps, recorded_base_folder
from .report import (
    DEEPSPEED_CHECKPOINT,
    EMPTY,
    FULL_MODEL,
    KIND_DESCRIPTIONS,
    KINDS,
    LORA_ADAPTER,
    MISSING_CONFIG,
    MISSING_TOKENIZER,
    MISSING_WEIGHTS,
    ONNX_EXPORT,
    SCHEMA_VERSION,
    SENTENCE_TRANSFORMERS_MODEL,
    TRAINING_CHECKPOINT,
    UNKNOWN,
    InspectReport,
)


def inspect_folder(path: str | Path) -> InspectReport:
    """Classify every file of ``path`` and say what the folder is, what it lacks and what to run next.

    Raises :class:`CheckpointError` only when ``path`` does not exist or is not a folder; every other problem is
    recorded in :attr:`InspectReport.problems` (and ``model.config_error`` / ``model.weights_error`` /
    ``spec_error``).

    Example:
        >>> report = inspect_folder("minilm")
        >>> report.kind, report.model["parameters"], report.spec["pooling"]["value"]
        ('sentence_transformers_model', 22713728, 'mean')
    """
    folder = check_folder(path)
    report = InspectReport(path=str(folder), kind=UNKNOWN)
    held = list_classified_files(report, folder)
    report.checkpoints = checkpoint_subfolders(folder)
    mark_droppable(report, held)
    config = _model_facts(report, folder, held)
    _adapter_and_heads(report, folder, held)
    # what the loaders would refuse: modules.json paths, the tokenizer, the weights against the config
    report.problems.extend(load_problems(folder, has_st=held.has_st, has_tokenizer=held.has_tokenizer,
                                         load_weights=config is not None and held.has_weights
                                         and not report.model["weights_error"]))
    report.kind = folder_kind(held)
    report.missing_for_inference = missing_for_inference(held, config_error=report.model["config_error"],
                                                         weights_error=report.model["weights_error"])
    _spec(report, folder, config, held)
    report.next_steps = next_steps(report, folder, has_st=held.has_st, has_weights=held.has_weights,
                                   has_adapter_weights=held.has_adapter_weights, config=config)
    return report


def _model_facts(report: InspectReport, folder: Path, held: Holdings) -> dict[str, Any] | None:
    """Fill ``report.model`` from ``config.json`` and the weights (headers only for safetensors); return the
    config, or ``None`` when it is absent or unusable."""
    config, model = config_facts(folder, held.weight_files, held.has_config)
    if model["config_error"]:
        report.problems.append(model["config_error"])
    stats = weight_stats(folder, held.weight_files)
    model.update(stats)
    if stats["weights_error"]:
        report.problems.append(stats["weights_error"])
    report.model = model
    return config


def _adapter_and_heads(report: InspectReport, folder: Path, held: Holdings) -> None:
    """Fill ``report.lora`` (when ``adapter_config.json`` exists) and ``report.m3_heads``, with their problems."""
    if held.has_adapter_cfg:
        report.lora = lora_info(folder, held.rels)
        if report.lora["error"]:
            report.problems.append(report.lora["error"])
    heads = set(held.by_class.get(layout.M3_HEADS, []))
    report.m3_heads = {h: any(f"{h}{ext}" in heads for ext in (".pt", ".safetensors")) for h in HEAD_NAMES}
    report.problems.extend(m3_head_problems(folder, report.m3_heads, heads, report.model.get("hidden_size")))


def _spec(report: InspectReport, folder: Path, config: dict[str, Any] | None, held: Holdings) -> None:
    """Fill ``report.spec`` / ``spec_assumed``, or ``spec_error`` with why the spec does not resolve."""
    if config is None:
        report.spec_error = report.model["config_error"] or (
            "no config.json (an adapter folder): the spec is resolved from the merged model" if report.lora
            else "no config.json: the spec is resolved from a model folder")
        return
    try:
        spec = _resolve_spec(folder, config, complete=not report.missing_for_inference and held.has_weights)
    except (SpecError, CheckpointError) as exc:
        report.spec_error = exc.message
        report.problems.append(f"spec: {exc.message}")
        return
    rows = describe(spec)
    report.spec = {name: {"value": value, "rule": rule} for name, value, rule in rows}
    report.spec_assumed = [name for name, _, rule in rows if rule == ASSUMED]


def _resolve_spec(folder: Path, config: dict[str, Any], complete: bool) -> Any:
    """The folder's :class:`EmbedderSpec` (``load_spec`` when the folder is complete, else from its files)."""
    if complete:
        return load_spec(folder, warn=False)
    hidden = config.get("hidden_size") or config.get("d_model")
    return resolve_spec(folder, None, config=config, model_max_length=model_token_limit(folder, config),
                        hidden_size=hidden if isinstance(hidden, int) else None, warn=False)




__all__ = ["InspectReport", "inspect_folder", "KINDS", "KIND_DESCRIPTIONS", "SCHEMA_VERSION", "format_bytes",
           "BASE_PLACEHOLDER", "recorded_base_folder", "FULL_MODEL", "SENTENCE_TRANSFORMERS_MODEL",
           "TRAINING_CHECKPOINT", "LORA_ADAPTER", "ONNX_EXPORT", "DEEPSPEED_CHECKPOINT", "UNKNOWN", "EMPTY",
           "MISSING_CONFIG", "MISSING_WEIGHTS", "MISSING_TOKENIZER"]
