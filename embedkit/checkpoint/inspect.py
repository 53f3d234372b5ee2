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
"""

from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._format import format_bytes
from .._io import stale_siblings
from ..errors import CheckpointError, EmbedkitError, SpecError
from ..folder import layout
from ..folder.loading import load_model, load_tokenizer
from ..folder.m3_heads import HEAD_NAMES, load_head
from ..folder.safe_load import load_state_dict, read_safetensors_header
from ..models import resolve_model_path
from ..spec import ASSUMED, describe, load_spec, model_token_limit, resolve_spec

SCHEMA_VERSION = 1

FULL_MODEL = "full_model"
SENTENCE_TRANSFORMERS_MODEL = "sentence_transformers_model"
TRAINING_CHECKPOINT = "training_checkpoint"
LORA_ADAPTER = "lora_adapter"
ONNX_EXPORT = "onnx_export"
DEEPSPEED_CHECKPOINT = "deepspeed_checkpoint"
UNKNOWN = "unknown"
EMPTY = "empty"

KINDS = (FULL_MODEL, SENTENCE_TRANSFORMERS_MODEL, TRAINING_CHECKPOINT, LORA_ADAPTER, ONNX_EXPORT,
         DEEPSPEED_CHECKPOINT, UNKNOWN, EMPTY)
"""Every value :attr:`InspectReport.kind` can take."""

KIND_DESCRIPTIONS = {
    FULL_MODEL: "a Hugging Face model folder (no sentence-transformers files)",
    SENTENCE_TRANSFORMERS_MODEL: "a model folder with a sentence-transformers layout",
    TRAINING_CHECKPOINT: "a training checkpoint (weights + optimizer / trainer state)",
    LORA_ADAPTER: "a LoRA / PEFT adapter (needs its base model)",
    ONNX_EXPORT: "an ONNX export",
    DEEPSPEED_CHECKPOINT: "a DeepSpeed checkpoint (weights only as ZeRO shards)",
    UNKNOWN: "not recognised as a model folder",
    EMPTY: "an empty folder",
}

MISSING_CONFIG = "config.json"
MISSING_WEIGHTS = "weights"
MISSING_TOKENIZER = "tokenizer"

# safetensors dtype codes -> torch names
_ST_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
}
_CHECKPOINT_DIR_RE = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class InspectReport:
    """Everything :func:`inspect_folder` found out about a folder; :meth:`to_dict` is the ``--json`` schema."""

    path: str
    kind: str
    files: list[dict[str, Any]] = field(default_factory=list)
    classes: dict[str, dict[str, int]] = field(default_factory=dict)
    total_bytes: int = 0
    inference_bytes: int = 0
    droppable_bytes: int = 0
    droppable: list[str] = field(default_factory=list)
    missing_for_inference: list[str] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=dict)
    spec: dict[str, dict[str, Any]] | None = None
    spec_error: str | None = None
    spec_assumed: list[str] = field(default_factory=list)
    lora: dict[str, Any] | None = None
    m3_heads: dict[str, bool] = field(default_factory=dict)
    checkpoints: list[str] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-able values (the stable ``embedkit inspect --json`` schema)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "path": self.path,
            "kind": self.kind,
            "files": [dict(f) for f in self.files],
            "classes": {k: dict(v) for k, v in self.classes.items()},
            "total_bytes": self.total_bytes,
            "inference_bytes": self.inference_bytes,
            "droppable_bytes": self.droppable_bytes,
            "droppable": list(self.droppable),
            "missing_for_inference": list(self.missing_for_inference),
            "model": dict(self.model),
            "spec": None if self.spec is None else {k: dict(v) for k, v in self.spec.items()},
            "spec_error": self.spec_error,
            "spec_assumed": list(self.spec_assumed),
            "lora": None if self.lora is None else dict(self.lora),
            "m3_heads": dict(self.m3_heads),
            "checkpoints": list(self.checkpoints),
            "next_steps": list(self.next_steps),
            "problems": list(self.problems),
        }


# ---------------------------------------------------------------------- helpers
def _read_json_file(path: Path) -> tuple[Any, str | None]:
    """``(value, None)`` or ``(None, error message)``; never raises."""
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except json.JSONDecodeError as exc:
        return None, f"{path.name}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
    except UnicodeDecodeError as exc:
        return None, f"{path.name}: not UTF-8 text ({exc.reason})"
    except OSError as exc:
        return None, f"{path.name}: cannot read ({exc.strerror})"


def _q(path: str | Path) -> str:
    return shlex.quote(str(path))


def _safetensors_stats(paths: list[Path]) -> tuple[int, int, set[str]]:
    """``(elements, tensors, dtypes)`` summed over safetensors headers (no tensor data is read)."""
    elements = tensors = 0
    dtypes: set[str] = set()
    for p in paths:
        for info in read_safetensors_header(p).values():
            shape = info.get("shape") or []
            elements += math.prod(int(d) for d in shape)
            tensors += 1
            code = str(info.get("dtype"))
            dtypes.add(_ST_DTYPES.get(code, code.lower()))
    return elements, tensors, dtypes


def _state_dict_stats(paths: list[Path]) -> tuple[int, int, set[str]]:
    """``(elements, tensors, dtypes)`` of pickle-based state dicts, loaded with ``weights_only``."""
    elements = tensors = 0
    dtypes: set[str] = set()
    for p in paths:
        sd = load_state_dict(p)
        for value in sd.values():
            numel = getattr(value, "numel", None)
            if numel is None:
                continue
            elements += int(numel())
            tensors += 1
            dtypes.add(str(value.dtype).removeprefix("torch."))
        del sd
    return elements, tensors, dtypes


def _shards_from_index(folder: Path, index_name: str) -> tuple[list[Path], str | None]:
    try:
        shards = layout.weight_index_shards(folder / index_name)  # entries must stay inside the folder
    except CheckpointError as exc:
        return [], exc.message
    missing = [s.relative_to(folder).as_posix() for s in shards if not s.is_file()]
    if missing:
        return [], f"{index_name} lists shard(s) that are missing: {', '.join(missing)}"
    return shards, None


def _weight_stats(folder: Path, weight_files: list[str]) -> dict[str, Any]:
    """Parameter count, dtypes and format of the full weights, preferring safetensors over ``.bin``."""
    out: dict[str, Any] = {"parameters": None, "tensors": None, "dtypes": [], "weight_format": None,
                           "weights_error": None}
    names = set(weight_files)
    plan: list[tuple[str, list[Path] | None, str | None]] = []
    for fmt, single, index, shard_re in (
        ("safetensors", "model.safetensors", "model.safetensors.index.json", r"^model-\d+-of-\d+\.safetensors$"),
        ("bin", "pytorch_model.bin", "pytorch_model.bin.index.json", r"^pytorch_model-\d+-of-\d+\.bin$"),
    ):
        if single in names:
            plan.append((fmt, [folder / single], None))
        elif index in names:
            shards, err = _shards_from_index(folder, index)
            plan.append((fmt, shards or None, err))
        else:
            shards = sorted(folder / n for n in names if re.match(shard_re, n))
            if shards:
                plan.append((fmt, shards, None))
    if not plan:
        return out
    fmt, paths, err = plan[0]
    out["weight_format"] = fmt
    if err or not paths:
        out["weights_error"] = err
        return out
    try:
        elements, tensors, dtypes = (_safetensors_stats if fmt == "safetensors" else _state_dict_stats)(paths)
    except EmbedkitError as exc:
        out["weights_error"] = exc.message
        return out
    except (OSError, ValueError, RuntimeError) as exc:  # torch / filesystem errors not already wrapped
        out["weights_error"] = f"{type(exc).__name__}: {exc}"
        return out
    out.update(parameters=elements, tensors=tensors, dtypes=sorted(dtypes))
    return out


def _lora_info(folder: Path, files: list[str]) -> dict[str, Any]:
    cfg, err = _read_json_file(folder / "adapter_config.json")
    if err is None and not isinstance(cfg, dict):
        cfg, err = None, "adapter_config.json: expected a JSON object"
    cfg = cfg or {}
    target = cfg.get("target_modules")
    if isinstance(target, str):
        target = [target]
    elif isinstance(target, list):
        target = sorted(str(t) for t in target)
    adapter_files = [f for f in files if layout.classify_file(f) == layout.LORA_ADAPTER and f != "adapter_config.json"]
    info: dict[str, Any] = {
        "base_model_name_or_path": cfg.get("base_model_name_or_path"),
        "peft_type": cfg.get("peft_type"),
        "r": cfg.get("r"),
        "lora_alpha": cfg.get("lora_alpha"),
        "target_modules": target,
        "adapter_files": adapter_files,
        "parameters": None,
        "error": err,
    }
    st = [folder / f for f in adapter_files if f.endswith(".safetensors")]
    if st:
        try:
            info["parameters"] = _safetensors_stats(st)[0]
        except EmbedkitError as exc:
            info["error"] = info["error"] or exc.message
    return info


def _resolve_spec(folder: Path, config: dict[str, Any], complete: bool) -> Any:
    """The folder's :class:`EmbedderSpec` (``load_spec`` when the folder is complete, else from its files)."""
    if complete:
        return load_spec(folder, warn=False)
    hidden = config.get("hidden_size") or config.get("d_model")
    return resolve_spec(folder, None, config=config, model_max_length=model_token_limit(folder, config),
                        hidden_size=hidden if isinstance(hidden, int) else None, warn=False)


def _m3_head_problems(folder: Path, present: dict[str, bool], files: set[str], hidden_size: Any) -> list[str]:
    """What stops the bge-m3 heads from working: one head only, ``.safetensors`` only (FlagEmbedding reads ``.pt``),
    or a head that is unreadable or does not fit the model's hidden size."""
    if not any(present.values()):
        return []
    problems = []
    missing = [h for h, ok in present.items() if not ok]
    if missing:
        problems.append(f"bge-m3: {missing[0]} is missing (only {', '.join(h for h in present if present[h])}): "
                        "embedkit's M3Embedder gives only the outputs of the heads present, and FlagEmbedding's "
                        "BGEM3FlagModel silently uses random heads unless colbert_linear.pt and sparse_linear.pt "
                        "both exist (copy the missing one from the base bge-m3)")
    elif not all(f"{h}.pt" in files for h in present):
        problems.append("bge-m3: heads stored only as .safetensors; FlagEmbedding's BGEM3FlagModel reads "
                        f"colbert_linear.pt / sparse_linear.pt (run `embedkit save {_q(folder)} "
                        f"{_q(str(folder) + '-m3')}`, which writes both forms)")
    size = hidden_size if isinstance(hidden_size, int) and not isinstance(hidden_size, bool) else None
    for head, ok in present.items():
        if ok:
            try:
                load_head(folder, head, hidden_size=size, out_features=1 if head == "sparse_linear" else None)
            except EmbedkitError as exc:
                problems.append(f"bge-m3: {exc.message}")
    return problems


def _load_problems(folder: Path, *, has_st: bool, has_tokenizer: bool, load_weights: bool) -> list[str]:
    """What the inference loaders refuse, found by running them (the same code ``encode`` runs): ``modules.json``
    entries, the tokenizer, and the weights against ``config.json`` (names, shapes, dtypes, NaN / Inf). Loading
    the weights reads every tensor once, on the CPU."""
    problems = []
    checks = []
    if has_st:
        checks.append(lambda: layout.check_st_modules(folder))
    if has_tokenizer:
        checks.append(lambda: load_tokenizer(folder))
    if load_weights:
        checks.append(lambda: load_model(folder, device="cpu"))
    for check in checks:
        try:
            check()
        except EmbedkitError as exc:
            problems.append(exc.message)
    return problems


def _checkpoint_subfolders(folder: Path) -> list[str]:
    found = []
    for p in folder.iterdir():
        m = _CHECKPOINT_DIR_RE.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p.name))
    return [name for _, name in sorted(found)]


def _check_folder(path: str | Path) -> Path:
    folder = resolve_model_path(path).expanduser()
    if not folder.exists():
        raise CheckpointError(
            f"no folder at {str(path)!r} (tried {folder.resolve()})",
            hint="pass the path of a local model folder, training checkpoint or adapter folder "
            "(embedkit works offline: hub ids are never downloaded), or 'minilm' for the bundled model",
        )
    if not folder.is_dir():
        raise CheckpointError(
            f"{folder} is a file, not a folder",
            hint="pass the folder that holds it (e.g. the folder with config.json and the weights)",
        )
    return folder.resolve()


# ---------------------------------------------------------------------- main entry point
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
    folder = _check_folder(path)
    report = InspectReport(path=str(folder), kind=UNKNOWN)
    rels = layout.list_files(folder)

    # -- files, classes, sizes
    by_class: dict[str, list[str]] = {}
    for rel in rels:
        cls = layout.classify_file(rel)
        size = (folder / rel).stat().st_size
        report.files.append({"path": rel, "class": cls, "size": size})
        by_class.setdefault(cls, []).append(rel)
        entry = report.classes.setdefault(cls, {"count": 0, "bytes": 0})
        entry["count"] += 1
        entry["bytes"] += size
    report.total_bytes = sum(f["size"] for f in report.files)
    report.inference_bytes = sum(f["size"] for f in report.files if f["class"] in layout.INFERENCE_CLASSES)

    weight_files = by_class.get(layout.WEIGHTS, [])
    has_weights = bool(weight_files)
    has_zero = any(f != "zero_to_fp32.py" and f != "latest" for f in by_class.get(layout.ZERO_SHARDS, []))
    has_training = bool(by_class.get(layout.TRAINING_STATE) or by_class.get(layout.RNG_STATE)) or (
        has_zero and has_weights)
    has_adapter_cfg = "adapter_config.json" in rels
    has_adapter_weights = any(f.startswith("adapter_model") for f in by_class.get(layout.LORA_ADAPTER, []))
    onnx_models = [f for f in by_class.get(layout.ONNX, []) if f.endswith(".onnx")]
    has_st = "modules.json" in rels
    has_tokenizer = bool(layout.find_tokenizer_files(folder))
    has_config = "config.json" in rels
    report.checkpoints = _checkpoint_subfolders(folder)

    nested_checkpoints = tuple(f"{name}/" for name in report.checkpoints)
    for f in report.files:
        cls = f["class"]
        if (cls in layout.TRAINING_ONLY_CLASSES and (cls != layout.ZERO_SHARDS or has_weights)) or (
                has_weights and f["path"].startswith(nested_checkpoints)):
            report.droppable.append(f["path"])
            report.droppable_bytes += f["size"]

    # -- config.json
    config: dict[str, Any] | None = None
    model: dict[str, Any] = {
        "architectures": None, "model_type": None, "hidden_size": None, "num_hidden_layers": None,
        "vocab_size": None, "max_position_embeddings": None, "config_dtype": None, "config_error": None,
        "weight_files": list(weight_files),
    }
    if has_config:
        try:
            data, err = layout.read_config(folder), None  # the loaders' own reader: JSON object, key types
        except CheckpointError as exc:
            data, err = None, exc.message.replace(f"{folder}{'/'}", "")
        if err:
            model["config_error"] = err
            report.problems.append(err)
        else:
            config = data
            arch = config.get("architectures")
            model["architectures"] = [str(a) for a in arch] if isinstance(arch, list) else None
            for key in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "max_position_embeddings"):
                model[key] = config.get(key)
            if model["hidden_size"] is None:
                model["hidden_size"] = config.get("d_model")
            model["config_dtype"] = config.get("torch_dtype", config.get("dtype"))

    # -- weights (headers only for safetensors)
    stats = _weight_stats(folder, weight_files)
    model.update(stats)
    if stats["weights_error"]:
        report.problems.append(stats["weights_error"])
    report.model = model

    # -- lora, m3 heads
    if has_adapter_cfg:
        report.lora = _lora_info(folder, rels)
        if report.lora["error"]:
            report.problems.append(report.lora["error"])
    heads = set(by_class.get(layout.M3_HEADS, []))
    report.m3_heads = {h: any(f"{h}{ext}" in heads for ext in (".pt", ".safetensors")) for h in HEAD_NAMES}
    report.problems.extend(_m3_head_problems(folder, report.m3_heads, heads, model.get("hidden_size")))

    # -- what the loaders would refuse: modules.json paths, the tokenizer, the weights against the config
    report.problems.extend(_load_problems(folder, has_st=has_st, has_tokenizer=has_tokenizer,
                                          load_weights=config is not None and has_weights
                                          and not stats["weights_error"]))

    # -- kind
    if not rels:
        report.kind = EMPTY
    elif has_training and (has_weights or has_adapter_weights):
        report.kind = TRAINING_CHECKPOINT
    elif has_zero and not has_weights and not has_adapter_weights:
        report.kind = DEEPSPEED_CHECKPOINT
    elif has_adapter_cfg and not has_weights:
        report.kind = LORA_ADAPTER
    elif has_weights:
        report.kind = SENTENCE_TRANSFORMERS_MODEL if has_st else FULL_MODEL
    elif onnx_models:
        report.kind = ONNX_EXPORT
    else:
        report.kind = UNKNOWN

    # -- missing for inference
    weights_ok = (has_weights and not stats["weights_error"]) or bool(onnx_models)
    if rels:
        if not has_config or model["config_error"]:
            report.missing_for_inference.append(MISSING_CONFIG)
        if not weights_ok:
            report.missing_for_inference.append(MISSING_WEIGHTS)
        if not has_tokenizer:
            report.missing_for_inference.append(MISSING_TOKENIZER)

    # -- spec
    if config is None:
        report.spec_error = model["config_error"] or (
            "no config.json (an adapter folder): the spec is resolved from the merged model" if report.lora
            else "no config.json: the spec is resolved from a model folder")
    else:
        try:
            spec = _resolve_spec(folder, config, complete=not report.missing_for_inference and has_weights)
        except (SpecError, CheckpointError) as exc:
            report.spec_error = exc.message
            report.problems.append(f"spec: {exc.message}")
        else:
            rows = describe(spec)
            report.spec = {name: {"value": value, "rule": rule} for name, value, rule in rows}
            report.spec_assumed = [name for name, _, rule in rows if rule == ASSUMED]

    report.next_steps = _next_steps(report, folder, has_st=has_st, has_weights=has_weights,
                                    has_adapter_weights=has_adapter_weights, config=config)
    stale = stale_siblings(folder)  # left next to the folder by killed embedkit writes
    if stale:
        report.next_steps.append(f"{len(stale)} stale temporary sibling(s) of killed embedkit writes next to this "
                                 f"folder ({', '.join(p.name for p in stale[:3])}): the next save / convert to "
                                 f"{_q(folder)} removes them, or delete them by hand")
    return report


BASE_PLACEHOLDER = "BASE_MODEL_FOLDER"


def _card_base_model(folder: Path) -> str | None:
    """``base_model:`` from the front matter of the folder's ``README.md`` model card (written by ``save``)."""
    path = folder / "README.md"
    try:
        text = path.read_text(encoding="utf-8")[:20000] if path.is_file() else ""
    except (OSError, UnicodeDecodeError):
        return None
    if not text.startswith("---"):
        return None
    for line in text.splitlines()[1:]:
        if line.strip() == "---":
            break
        if line.startswith("base_model:"):
            value = line.split(":", 1)[1].strip()
            try:
                value = json.loads(value) if value.startswith('"') else value.strip("'")
            except json.JSONDecodeError:
                return None
            return value if isinstance(value, str) and value else None
    return None


def recorded_base_folder(folder: Path, config: dict[str, Any] | None, lora: dict[str, Any] | None) -> Path | None:
    """The base model folder the checkpoint records (adapter_config.json's ``base_model_name_or_path``, config.json's
    ``_name_or_path``, the model card's ``base_model``) when it is an existing local folder holding a tokenizer
    (relative paths: from the working directory, as the commands will run); ``None`` when none is known."""
    names = [(lora or {}).get("base_model_name_or_path"), (config or {}).get("_name_or_path"),
             _card_base_model(folder)]
    for name in names:
        if not isinstance(name, str) or not name.strip() or "\x00" in name:
            continue
        try:
            path = resolve_model_path(name)
            if path.is_dir() and path.resolve() != folder.resolve() and layout.find_tokenizer_files(path):
                return path
        except OSError:
            continue
    return None


def _next_steps(report: InspectReport, folder: Path, *, has_st: bool, has_weights: bool,
                has_adapter_weights: bool, config: dict[str, Any] | None = None) -> list[str]:
    """Concrete commands, fixes first (missing config / tokenizer), then the main action, then spec / manifest.

    The commands succeed when run in order: without a tokenizer in the folder, ``slim`` / ``save`` get
    ``--tokenizer BASE`` (the recorded base model folder, or the placeholder ``BASE_MODEL_FOLDER`` with a sentence
    saying to replace it)."""
    d = _q(folder)
    steps: list[str] = []
    kind = report.kind
    base = (report.lora or {}).get("base_model_name_or_path")
    base_arg = _q(base) if isinstance(base, str) and base else "BASE"
    if kind == EMPTY:
        return ["the folder is empty: point to a folder written by save_pretrained / `embedkit save`, "
                "a training checkpoint or an adapter folder"]
    if report.checkpoints and kind == UNKNOWN:
        latest = _q(folder / report.checkpoints[-1])
        steps.append(f"this looks like a training output folder: inspect its latest checkpoint with "
                     f"`embedkit inspect {latest}`")

    adapter_only = bool(report.lora) and not has_weights
    fixes: list[str] = []  # what the folder lacks: fix first, so the main action's output is complete
    missing = report.missing_for_inference
    needs_base_files = kind not in (LORA_ADAPTER, UNKNOWN) and not adapter_only
    if needs_base_files and MISSING_CONFIG in missing:
        err = report.model.get("config_error")
        fixes.append(f"fix config.json ({err}) or copy it from the base model" if err
                     else f"config.json is missing: copy it from the base model into {d}")
    tok = ""  # what `slim` / `save` need to find a tokenizer
    if needs_base_files and MISSING_TOKENIZER in missing:
        found = recorded_base_folder(folder, config, report.lora)
        tok = f" --tokenizer {_q(found) if found else BASE_PLACEHOLDER}"
        if found:
            fixes.append(f"no tokenizer files (common in training checkpoints): the commands below take them from "
                         f"the recorded base model {_q(found)} (`--tokenizer`)")
        else:
            fixes.append(f"no tokenizer files (common in training checkpoints) and no base model folder recorded: "
                         f"replace {BASE_PLACEHOLDER} below with the folder of the model training started from "
                         f"(or copy its tokenizer.json, tokenizer_config.json, special_tokens_map.json, "
                         f"vocab.txt ... into {d} and drop `--tokenizer`)")
    if needs_base_files and MISSING_WEIGHTS in missing and kind not in (DEEPSPEED_CHECKPOINT, UNKNOWN):
        err = report.model.get("weights_error")
        fixes.append(f"the weights are unreadable ({err}): copy or re-save them" if err
                     else "no model weights (model.safetensors / pytorch_model.bin) found")

    if kind == DEEPSPEED_CHECKPOINT:
        steps.append(f"embedkit slim {d} {_q(str(folder) + '-slim')}{tok} "
                     "(needs `pip install deepspeed` to consolidate ZeRO shards)")
    elif adapter_only and (kind == LORA_ADAPTER or has_adapter_weights):
        how = "" if base_arg != "BASE" else " (BASE: the base model folder; adapter_config.json does not name it)"
        steps.append(f"embedkit merge {base_arg} {d} {_q(str(folder) + '-merged')}{how}")
    elif kind == TRAINING_CHECKPOINT:
        steps.append(f"embedkit slim {d} {_q(str(folder) + '-slim')}{tok} "
                     f"(keeps what inference needs, drops {format_bytes(report.droppable_bytes)} of training state)")
    elif report.lora and has_weights:
        steps.append("adapter_config.json sits next to full weights: if the adapter is not merged yet, "
                     f"run `embedkit merge {base_arg} {d} {_q(str(folder) + '-merged')}`")
    elif kind == UNKNOWN and not report.checkpoints:
        steps.append("no weights, adapter, ZeRO shards or ONNX model found: is this the right folder? "
                     "(a model folder holds config.json, model.safetensors and the tokenizer)")

    steps = fixes + steps
    if kind in (FULL_MODEL, SENTENCE_TRANSFORMERS_MODEL, TRAINING_CHECKPOINT) and report.spec is not None:
        if "pooling" in report.spec_assumed or "normalize" in report.spec_assumed:
            steps.append(f"no pooling recorded: run `embedkit save {d} {_q(str(folder) + '-st')}{tok} --pooling cls` "
                         "(or mean / last_token: whatever the model was trained with) so every loader agrees")
        elif not has_st:
            steps.append(f"embedkit save {d} {_q(str(folder) + '-st')}{tok} (adds the sentence-transformers layout: "
                         "modules.json, 1_Pooling/... that sentence-transformers, TEI and infinity read)")
    if kind in (FULL_MODEL, SENTENCE_TRANSFORMERS_MODEL, ONNX_EXPORT) and not missing \
            and layout.MANIFEST_NAME not in {f["path"] for f in report.files}:
        steps.append(f"embedkit manifest {d} (records every file's sha256 and size)")
    return steps


__all__ = ["InspectReport", "inspect_folder", "KINDS", "KIND_DESCRIPTIONS", "SCHEMA_VERSION", "format_bytes"]
