"""Rule 2 of spec resolution, and what ``save`` writes: the sentence-transformers files of a model folder.

As in sentence-transformers itself, where each module owns its config, every file has a small reader (the recipe
fields it records, as ``{field: (value, source)}``) and a writer (its JSON, from an :class:`EmbedderSpec`):

=====================================  =====================================  =========================================
file                                   module                                 fields
=====================================  =====================================  =========================================
``modules.json``                       the pipeline (Transformer, Pooling,    ``normalize`` (a ``Normalize`` module)
                                       Normalize)
``1_Pooling/config.json``              ``models.Pooling``                     ``pooling``
``2_Normalize/`` (no files)            ``models.Normalize``                   (its presence in ``modules.json``)
``sentence_bert_config.json``          ``models.Transformer``                 ``*_max_length``, ``do_lower_case``
``config_sentence_transformers.json``  ``SentenceTransformer`` (prompts)      instructions, and the whole saved spec
                                                                              in its ``embedkit`` section
=====================================  =====================================  =========================================

Modules embedkit cannot reproduce (``Dense``...) raise :class:`SpecError` rather than silently producing other
vectors. sentence-transformers is never imported: the files are plain JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .._io import atomic_write
from ..errors import CheckpointError, SpecError
from ..folder.layout import read_json_cached
from .model import POOLING_MODES, EmbedderSpec, _shown

ST_EXTRA_KEY = "embedkit"
"""Key inside ``config_sentence_transformers.json`` holding the fields sentence-transformers has no place for."""

Found = dict[str, tuple[Any, str]]
"""What a reader returns: ``{spec field: (value, source)}``."""

# sentence-transformers pooling names -> ours (None: a mode embedkit does not implement)
_ST_POOLING = {
    "cls": "cls",
    "cls_token": "cls",
    "mean": "mean",
    "mean_tokens": "mean",
    "lasttoken": "last_token",
    "last_token": "last_token",
    "max": None,
    "max_tokens": None,
    "mean_sqrt_len_tokens": None,
    "weightedmean": None,
    "weightedmean_tokens": None,
}


# ---------------------------------------------------------------------- checked reading
def read_json_object(path: Path, error: type[CheckpointError] | type[SpecError] = SpecError) -> dict[str, Any]:
    """A JSON file of the folder that must hold an object (``{...}``), parsed once per version of the file
    (:func:`~embedkit.folder.layout.read_json_cached`). Unreadable, not UTF-8 or not JSON: a
    :class:`CheckpointError` naming it; any other JSON value: ``error`` naming it."""
    data = read_json_cached(path)
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object ({{...}}), got {_shown(data)}",
                    hint="fix or delete the file (embedkit save rewrites it from a spec)")
    return data


def read_optional_object(model_dir: Path, name: str) -> tuple[Path, dict[str, Any]] | None:
    """``(path, object)`` of the folder's JSON file ``name`` (:func:`read_json_object`), or ``None`` when absent."""
    path = model_dir / name
    return (path, read_json_object(path)) if path.is_file() else None


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


_FIELD_CHECKS: dict[str, tuple[Any, str]] = {
    "pooling": (lambda v: isinstance(v, str) and v in POOLING_MODES,
                "one of " + ", ".join(json.dumps(m) for m in POOLING_MODES)),
    "normalize": (lambda v: isinstance(v, bool), "true or false"),
    "do_lower_case": (lambda v: isinstance(v, bool), "true or false"),
    "query_instruction": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "passage_instruction": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "query_instruction_format": (lambda v: isinstance(v, str), "a string"),
    "passage_instruction_format": (lambda v: isinstance(v, str), "a string"),
    "query_max_length": (_positive_int, "a positive integer"),
    "passage_max_length": (_positive_int, "a positive integer"),
    "truncate_dim": (lambda v: v is None or _positive_int(v), "a positive integer or null"),
}
"""For each spec field as stored in JSON: (is this value acceptable?, what is expected, in words)."""


def _checked(path: Path, key: str, name: str, value: Any) -> Any:
    """``value`` of spec field ``name`` read from ``path`` at ``key``; :class:`SpecError` naming both if mistyped."""
    ok, expected = _FIELD_CHECKS[name]
    if not ok(value):
        raise SpecError(f"{path}: {key} must be {expected}, got {_shown(value)}",
                        hint=f"fix {key} in {path.name}, or rewrite the files with "
                             "`embedkit save SRC DST --pooling ...` (nothing in a model folder is executed)")
    return value


# ---------------------------------------------------------------------- modules.json (+ 2_Normalize)
def _module_kind(type_name: str) -> str:
    return type_name.rsplit(".", 1)[-1]


def read_modules(model_dir: Path) -> Found:
    """``modules.json``: the pipeline. Reads each ``Pooling`` module's config (:func:`read_pooling`) and sets
    ``normalize`` from whether a ``Normalize`` module follows (its folder may be missing, as in the packaged
    all-MiniLM-L6-v2)."""
    found: Found = {}
    modules_path = model_dir / "modules.json"
    if not modules_path.is_file():
        return found
    modules = read_json_cached(modules_path)
    if not isinstance(modules, list):
        raise CheckpointError(f"{modules_path}: expected a JSON list of modules", hint="fix or delete the file")
    kinds = []
    for i, mod in enumerate(modules):
        if not isinstance(mod, dict) or not isinstance(mod.get("type"), str):
            raise CheckpointError(f"{modules_path}: entry {i} has no 'type' string", hint="fix or delete the file")
        if mod.get("path") is not None and not isinstance(mod["path"], str):
            raise CheckpointError(f"{modules_path}: entry {i} has a 'path' that is {_shown(mod['path'])}, "
                                  "not a string", hint="fix or delete the file")
        kind = _module_kind(mod["type"])
        kinds.append(kind)
        if kind == "Pooling":
            found["pooling"] = read_pooling(model_dir, mod.get("path") or "", modules_path)
        elif kind not in ("Transformer", "Normalize", "Pooling"):
            raise SpecError(
                f"{modules_path}: module {i} is a {kind!r}, which embedkit cannot reproduce yet",
                hint="only Transformer -> Pooling -> Normalize pipelines are supported",
            )
    if "Pooling" in kinds:
        found["normalize"] = ("Normalize" in kinds, "sentence-transformers (modules.json)")
    return found


def modules_json(spec: EmbedderSpec) -> list[dict[str, Any]]:
    """``modules.json`` for ``spec``: Transformer -> Pooling (-> Normalize when ``spec.normalize``)."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if spec.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    return modules


# ---------------------------------------------------------------------- 1_Pooling/config.json
def read_pooling(model_dir: Path, module_path: str, modules_path: Path) -> tuple[str, str]:
    """The ``pooling`` recorded by the ``Pooling`` module at ``module_path`` (named by ``modules_path``)."""
    pool_cfg_path = model_dir / module_path / "config.json"
    if not pool_cfg_path.is_file():
        raise CheckpointError(
            f"{modules_path} names a Pooling module but {pool_cfg_path} is missing",
            hint="pass pooling=... explicitly, or rewrite the layout with `embedkit save`",
        )
    cfg = read_json_object(pool_cfg_path)
    rel = pool_cfg_path.relative_to(model_dir).as_posix()
    return _pooling_from_st_config(cfg, pool_cfg_path), f"sentence-transformers ({rel})"


def _pooling_from_st_config(cfg: dict[str, Any], path: Path) -> str:
    modes: list[str] = []
    if "pooling_mode" in cfg:
        raw = cfg["pooling_mode"]
        modes = [raw] if isinstance(raw, str) else list(raw) if isinstance(raw, list) else [None]
        if not all(isinstance(m, str) for m in modes):
            raise SpecError(f"{path}: pooling_mode must be a string or a list of strings, got {_shown(raw)}",
                            hint=f"use one of {', '.join(POOLING_MODES)}")
    else:
        modes = [k[len("pooling_mode_"):] for k, v in cfg.items() if k.startswith("pooling_mode_") and v is True]
    if len(modes) != 1:
        raise SpecError(
            f"{path}: {'no' if not modes else 'several'} pooling modes set ({modes or 'none'}); "
            "embedkit needs exactly one",
            hint="pass pooling='cls' | 'mean' | 'last_token' explicitly (or `embedkit save --pooling ...`)",
        )
    ours = _ST_POOLING.get(modes[0])
    if ours is None:
        raise SpecError(
            f"{path}: pooling mode {modes[0]!r} is not supported by embedkit",
            hint=f"supported: {', '.join(POOLING_MODES)}; pass pooling=... to override",
        )
    return ours


def pooling_config(spec: EmbedderSpec, hidden_size: int) -> dict[str, Any]:
    """``1_Pooling/config.json`` for ``spec``: exactly one ``pooling_mode_*`` flag set."""
    return {
        "word_embedding_dimension": hidden_size,
        "pooling_mode_cls_token": spec.pooling == "cls",
        "pooling_mode_mean_tokens": spec.pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": spec.pooling == "last_token",
        "include_prompt": True,
    }


# ---------------------------------------------------------------------- sentence_bert_config.json
def read_transformer_config(model_dir: Path) -> Found:
    """``sentence_bert_config.json`` (the ``Transformer`` module): ``max_seq_length`` -> both length fields,
    ``do_lower_case``."""
    found: Found = {}
    read = read_optional_object(model_dir, "sentence_bert_config.json")
    if read is None:
        return found
    sbert_path, cfg = read
    src = "sentence-transformers (sentence_bert_config.json)"
    if cfg.get("max_seq_length") is not None:
        n = _checked(sbert_path, "max_seq_length", "passage_max_length", cfg["max_seq_length"])
        found["query_max_length"] = (n, src)
        found["passage_max_length"] = (n, src)
    if cfg.get("do_lower_case") is not None:
        found["do_lower_case"] = (_checked(sbert_path, "do_lower_case", "do_lower_case", cfg["do_lower_case"]), src)
    return found


def transformer_config(spec: EmbedderSpec) -> dict[str, Any]:
    """``sentence_bert_config.json`` for ``spec``."""
    return {"max_seq_length": spec.passage_max_length, "do_lower_case": spec.do_lower_case}


# ---------------------------------------------------------------------- config_sentence_transformers.json
_PROMPTS_HINT = 'e.g. "prompts": {"query": "query: ", "document": ""}'


def read_model_config(model_dir: Path) -> Found:
    """``config_sentence_transformers.json``: the ``query`` / ``document`` (or ``passage`` / ``corpus``) prompts
    as instructions, then every field of the saved embedkit spec in its ``embedkit`` section (which wins)."""
    found: Found = {}
    read = read_optional_object(model_dir, "config_sentence_transformers.json")
    if read is None:
        return found
    cst_path, cfg = read
    src = "sentence-transformers (config_sentence_transformers.json prompts)"
    prompts = cfg.get("prompts")
    if prompts is None:
        prompts = {}
    if not isinstance(prompts, dict):
        raise SpecError(f"{cst_path}: prompts must be an object of strings, got {_shown(prompts)}", hint=_PROMPTS_HINT)
    for key, value in prompts.items():
        if not isinstance(value, str):
            raise SpecError(f"{cst_path}: prompts.{key} must be a string, got {_shown(value)}", hint=_PROMPTS_HINT)
    if "query" in prompts:
        found["query_instruction"] = (prompts["query"] or None, src)
    for key in ("document", "passage", "corpus"):
        if key in prompts:
            found["passage_instruction"] = (prompts[key] or None, src)
            break
    found.update(_read_embedkit_section(cst_path, cfg.get(ST_EXTRA_KEY)))
    return found


def _read_embedkit_section(cst_path: Path, extra: Any) -> Found:
    """The spec fields of the ``embedkit`` section of ``config_sentence_transformers.json`` (type-checked)."""
    if extra is not None and not isinstance(extra, dict):
        raise SpecError(f"{cst_path}: {ST_EXTRA_KEY} must be an object (the saved embedkit spec), got "
                        f"{_shown(extra)}", hint="fix or delete that section (embedkit save rewrites it)")
    found: Found = {}
    if extra:
        esrc = "saved embedkit spec (config_sentence_transformers.json)"
        known = set(EmbedderSpec.field_names())
        for key, value in extra.items():
            if key in known:
                found[key] = (_checked(cst_path, f"{ST_EXTRA_KEY}.{key}", key, value), esrc)
    return found


def st_prompt(instruction: str | None, instruction_format: str) -> str | None:
    """The sentence-transformers prompt (a plain prefix) equal to ``format(instruction, text)``, if one exists.

    Returns ``""`` for no instruction and ``None`` when the format puts text before the end (not a prefix).
    """
    if instruction is None:
        return ""
    prefix = EmbedderSpec.apply_instruction("", instruction, instruction_format)
    probe = "\x00text\x00"
    return prefix if EmbedderSpec.apply_instruction(probe, instruction, instruction_format) == prefix + probe else None


def model_config(spec: EmbedderSpec) -> tuple[dict[str, Any], list[str]]:
    """``config_sentence_transformers.json`` for ``spec`` and the warnings for what its prompts cannot express."""
    warnings: list[str] = []
    prompts: dict[str, str] = {}
    for key, instr, fmt in (("query", spec.query_instruction, spec.query_instruction_format),
                            ("document", spec.passage_instruction, spec.passage_instruction_format)):
        prompt = st_prompt(instr, fmt)
        if prompt is None:
            warnings.append(f"the {key} instruction format {fmt!r} is not a prefix; sentence-transformers prompts "
                            "cannot express it, so its prompt is left empty (embedkit still applies it)")
            prompt = ""
        prompts[key] = prompt
    config = {
        "model_type": "SentenceTransformer",
        "prompts": prompts,
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
        ST_EXTRA_KEY: spec.to_dict(),
    }
    return config, warnings


# ---------------------------------------------------------------------- the whole layout
def read_sentence_transformers_spec(model_dir: Path) -> Found:
    """Read the recipe fields a sentence-transformers layout records: ``{field: (value, source)}``.

    A ``modules.json`` naming a ``Normalize`` module means normalize (the folder itself may be missing, as in
    the packaged all-MiniLM-L6-v2). Modules embedkit cannot reproduce (``Dense``...) raise :class:`SpecError`
    rather than silently producing different vectors.
    """
    found = read_modules(model_dir)
    found.update(read_transformer_config(model_dir))
    found.update(read_model_config(model_dir))
    return found


def sentence_transformers_files(spec: EmbedderSpec, hidden_size: int) -> tuple[dict[str, Any], list[str]]:
    """The sentence-transformers layout for ``spec``: ``({relative_path: json_object}, warnings)``.

    Written as plain JSON by :func:`write_sentence_transformers_files`; sentence-transformers is never imported.
    ``2_Normalize`` is a folder with no files; it is listed under the key ``"2_Normalize/"`` with value ``None``.
    """
    st_config, warnings = model_config(spec)
    if spec.truncate_dim is not None:
        warnings.append(f"sentence-transformers does not record truncate_dim: load it with "
                        f"truncate_dim={spec.truncate_dim} (it truncates after normalizing)")
    files: dict[str, Any] = {
        "modules.json": modules_json(spec),
        "1_Pooling/config.json": pooling_config(spec, hidden_size),
        "sentence_bert_config.json": transformer_config(spec),
        "config_sentence_transformers.json": st_config,
    }
    if spec.normalize:
        files["2_Normalize/"] = None
    return files, warnings


def write_sentence_transformers_files(folder: str | Path, spec: EmbedderSpec, hidden_size: int) -> list[str]:
    """Write the sentence-transformers layout of ``spec`` into ``folder`` (each file atomically); return warnings."""
    folder = Path(folder)
    files, warnings = sentence_transformers_files(spec, hidden_size)
    for rel, obj in files.items():
        if obj is None:
            (folder / rel).mkdir(parents=True, exist_ok=True)
            continue
        with atomic_write(folder / rel, "w") as fh:
            fh.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
    return warnings
