"""The embedding recipe (:class:`EmbedderSpec`) and how it is resolved for a model folder.

Resolution order, per field, never silent (``spec.provenance`` records which rule decided each field):

1. arguments the user passes;
2. the checkpoint's own sentence-transformers files (``modules.json``, ``1_Pooling/config.json``, ``2_Normalize``,
   ``sentence_bert_config.json``, ``config_sentence_transformers.json`` prompts and its ``embedkit`` section);
3. a small table of known model families, matched on the folder name and ``config.json``;
4. otherwise CLS pooling + L2 normalization (the BGE convention), with a warning naming what was assumed.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ._io import atomic_write
from .errors import CheckpointError, SpecError
from .folder.layout import check_model_folder, read_json_file
from .models import resolve_model_path

logger = logging.getLogger("embedkit")

POOLING_MODES = ("cls", "mean", "last_token")
"""The pooling methods embedkit implements (see :mod:`embedkit.pooling`)."""

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

# Provenance labels.
ARGUMENT = "argument"
DEFAULT = "default"
ASSUMED = "assumed (BGE convention)"

ST_EXTRA_KEY = "embedkit"
"""Key inside ``config_sentence_transformers.json`` holding the fields sentence-transformers has no place for."""


@dataclass
class EmbedderSpec:
    """How a model turns text into a vector: one recipe shared by every backend, the server and the saved files.

    Attributes:
        pooling: ``"cls"``, ``"mean"`` or ``"last_token"``.
        normalize: L2-normalize the (truncated) vectors.
        query_instruction: text put before each query by :meth:`Embedder.encode_queries` (``None``: none).
        query_instruction_format: how instruction and text are joined, ``format(instruction, text)``; a literal
            ``\\n`` means a newline (as in FlagEmbedding).
        passage_instruction / passage_instruction_format: the same for :meth:`Embedder.encode_corpus`.
        query_max_length / passage_max_length: token limits (``encode`` uses the passage one).
        truncate_dim: keep only the first ``truncate_dim`` dimensions (Matryoshka), before normalization.
        do_lower_case: lower-case texts before tokenizing (sentence-transformers' ``do_lower_case``).
        provenance: for each field, the rule that decided it.

    Example:
        >>> spec = EmbedderSpec(pooling="mean", query_instruction="query: ")
        >>> spec.format_query("what is bge?")
        'query: what is bge?'
    """

    pooling: str = "cls"
    normalize: bool = True
    query_instruction: str | None = None
    query_instruction_format: str = "{}{}"
    passage_instruction: str | None = None
    passage_instruction_format: str = "{}{}"
    query_max_length: int = 512
    passage_max_length: int = 512
    truncate_dim: int | None = None
    do_lower_case: bool = False
    provenance: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    # ------------------------------------------------------------------ text formatting
    @staticmethod
    def apply_instruction(text: str, instruction: str | None, instruction_format: str = "{}{}") -> str:
        """Join ``instruction`` and ``text`` the way FlagEmbedding does (``\\n`` in the format means newline)."""
        if instruction is None:
            return text
        return instruction_format.replace("\\n", "\n").format(instruction, text)

    def format_query(self, text: str) -> str:
        """A query as the model sees it (instruction applied)."""
        return self.apply_instruction(text, self.query_instruction, self.query_instruction_format)

    def format_passage(self, text: str) -> str:
        """A passage as the model sees it (passage instruction applied, if any)."""
        return self.apply_instruction(text, self.passage_instruction, self.passage_instruction_format)

    def prepare(self, text: str, instruction: str | None = None, instruction_format: str = "{}{}") -> str:
        """A text exactly as the tokenizer gets it: ``instruction`` joined, then lower-cased when
        ``do_lower_case``. Every caller (encode, bge-m3, training, the data summary) prepares text through here."""
        out = self.apply_instruction(text, instruction, instruction_format)
        return out.lower() if self.do_lower_case else out

    def prepare_query(self, text: str, instruction: str | None = None) -> str:
        """A query exactly as the tokenizer gets it (the query instruction, or ``instruction`` when given, e.g. a
        training row's ``prompt``; ``do_lower_case``)."""
        chosen = instruction if instruction is not None else self.query_instruction
        return self.prepare(text, chosen, self.query_instruction_format)

    def prepare_passage(self, text: str) -> str:
        """A passage exactly as the tokenizer gets it (passage instruction, ``do_lower_case``)."""
        return self.prepare(text, self.passage_instruction, self.passage_instruction_format)

    # ------------------------------------------------------------------ validation / io
    def validate(self, hidden_size: int | None = None, model_max_length: int | None = None) -> EmbedderSpec:
        """Raise :class:`SpecError` naming the bad field and the fix; return ``self`` when all is well.

        Every field has its exact type checked (``bool`` for ``normalize`` / ``do_lower_case``, ``str`` for the
        instructions and formats...): these values reach generated code (:mod:`embedkit.recipe`, the model card).
        """
        for name in ("normalize", "do_lower_case"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise SpecError(f"{name} must be True or False, got {_shown(value)} ({self._source(name)})",
                                hint=f"pass {name}=True or {name}=False")
        if not isinstance(self.pooling, str) or self.pooling not in POOLING_MODES:
            raise SpecError(
                f"unknown pooling {self.pooling!r} ({self._source('pooling')})",
                hint=f"use one of {', '.join(POOLING_MODES)}",
            )
        for name in ("query_max_length", "passage_max_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise SpecError(
                    f"{name} must be a positive integer, got {value!r} ({self._source(name)})",
                    hint="pass max_length=N (or query_max_length / passage_max_length) with N > 0", param=name,
                )
            if model_max_length is not None and value > model_max_length:
                raise SpecError(
                    f"{name}={value} exceeds what the model can take ({model_max_length} tokens)",
                    hint=f"pass max_length={model_max_length} or less", param=name,
                )
        if self.truncate_dim is not None:
            td = self.truncate_dim
            if isinstance(td, bool) or not isinstance(td, int) or td <= 0:
                raise SpecError(
                    f"truncate_dim must be a positive integer or None, got {td!r}",
                    hint="pass truncate_dim=None to keep every dimension",
                )
            if hidden_size is not None and td > hidden_size:
                raise SpecError(
                    f"truncate_dim={td} is larger than the model's hidden size {hidden_size}",
                    hint=f"pass truncate_dim <= {hidden_size}, or None",
                )
        for name in ("query_instruction_format", "passage_instruction_format"):
            fmt = getattr(self, name)
            if not isinstance(fmt, str):
                raise SpecError(f"{name} must be a string, got {_shown(fmt)} ({self._source(name)})",
                                hint='use e.g. "{}{}" or "Instruct: {}\\nQuery: {}"')
            try:
                probe = fmt.replace("\\n", "\n").format("\x00I\x00", "\x00T\x00")
            except (IndexError, KeyError, ValueError, AttributeError) as exc:
                raise SpecError(
                    f"{name} {fmt!r} is not a format with two '{{}}' placeholders (instruction, text): {exc}",
                    hint='use e.g. "{}{}" or "Instruct: {}\\nQuery: {}"',
                ) from None
            if "\x00I\x00" not in probe or "\x00T\x00" not in probe:
                raise SpecError(
                    f"{name} {fmt!r} must contain two '{{}}' placeholders: instruction first, then text",
                    hint='use e.g. "{}{}" or "Instruct: {}\\nQuery: {}"',
                )
        for name in ("query_instruction", "passage_instruction"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise SpecError(f"{name} must be a string or None, got {_shown(value)} ({self._source(name)})",
                                hint=f"pass {name}='...' or None")
        return self

    def _source(self, name: str) -> str:
        return f"from {self.provenance.get(name, ARGUMENT)}"

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain JSON-able values (without provenance)."""
        d = asdict(self)
        d.pop("provenance")
        return d

    @classmethod
    def field_names(cls) -> list[str]:
        """Names of the recipe fields, in declaration order (without ``provenance``)."""
        return [f.name for f in fields(cls) if f.name != "provenance"]


# ---------------------------------------------------------------------- family table
@dataclass(frozen=True)
class Family:
    """A known model family: a pattern on the folder / ``_name_or_path`` name and the recipe it implies."""

    name: str
    pattern: str
    values: dict[str, Any]


FAMILIES: tuple[Family, ...] = (
    Family("bge-m3", r"bge-m3", {"pooling": "cls", "normalize": True}),
    Family(
        "bge-en-v1.5",
        r"bge-(small|base|large)-en-v1\.5",
        {"pooling": "cls", "normalize": True,
         "query_instruction": "Represent this sentence for searching relevant passages: "},
    ),
    Family(
        "bge-zh-v1.5",
        r"bge-(small|base|large)-zh-v1\.5",
        {"pooling": "cls", "normalize": True, "query_instruction": "为这个句子生成表示以用于检索相关文章："},
    ),
    Family("bge", r"(^|[^a-z])bge([^a-z]|$)", {"pooling": "cls", "normalize": True}),
    Family(
        "e5",
        r"(^|[^a-z])e5-",
        {"pooling": "mean", "normalize": True, "query_instruction": "query: ", "passage_instruction": "passage: "},
    ),
    Family("gte-qwen", r"gte-qwen", {"pooling": "last_token", "normalize": True}),
    Family("qwen3-embedding", r"qwen3-embedding", {"pooling": "last_token", "normalize": True}),
    Family(
        "sentence-transformers",
        r"all-minilm|all-mpnet|multi-qa-|paraphrase-",
        {"pooling": "mean", "normalize": True},
    ),
)


def match_family(model_dir: Path, config: dict[str, Any] | None = None) -> Family | None:
    """The first family whose pattern matches the folder name or the config's ``_name_or_path``."""
    names = [model_dir.name.lower()]
    if config and isinstance(config.get("_name_or_path"), str):
        names.append(config["_name_or_path"].lower())
    for fam in FAMILIES:
        if any(re.search(fam.pattern, n) for n in names):
            return fam
    return None


# ---------------------------------------------------------------------- sentence-transformers files
def _read_json(path: Path) -> Any:
    """One JSON file of the folder: invalid UTF-8 / JSON or an unreadable path is a CheckpointError naming it."""
    return read_json_file(path)


def _read_json_object(path: Path, error: type[CheckpointError] | type[SpecError] = SpecError) -> dict[str, Any]:
    """A JSON file that must hold an object (``{...}``); ``error`` naming the file when it holds anything else."""
    data = _read_json(path)
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object ({{...}}), got {_shown(data)}",
                    hint="fix or delete the file (embedkit save rewrites it from a spec)")
    return data


def _shown(value: Any) -> str:
    """A bad value for an error message: its JSON type and a short repr (never the whole of a long string)."""
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "an object", type(None): "null"}
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{kinds.get(type(value), type(value).__name__)} ({text})"


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


def _module_kind(type_name: str) -> str:
    return type_name.rsplit(".", 1)[-1]


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


def read_sentence_transformers_spec(model_dir: Path) -> dict[str, tuple[Any, str]]:
    """Read the recipe fields a sentence-transformers layout records: ``{field: (value, source)}``.

    A ``modules.json`` naming a ``Normalize`` module means normalize (the folder itself may be missing, as in
    the packaged all-MiniLM-L6-v2). Modules embedkit cannot reproduce (``Dense``...) raise :class:`SpecError`
    rather than silently producing different vectors.
    """
    found: dict[str, tuple[Any, str]] = {}
    modules_path = model_dir / "modules.json"
    if modules_path.is_file():
        modules = _read_json(modules_path)
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
                pool_cfg_path = model_dir / (mod.get("path") or "") / "config.json"
                if not pool_cfg_path.is_file():
                    raise CheckpointError(
                        f"{modules_path} names a Pooling module but {pool_cfg_path} is missing",
                        hint="pass pooling=... explicitly, or rewrite the layout with `embedkit save`",
                    )
                cfg = _read_json_object(pool_cfg_path)
                rel = pool_cfg_path.relative_to(model_dir).as_posix()
                found["pooling"] = (_pooling_from_st_config(cfg, pool_cfg_path), f"sentence-transformers ({rel})")
            elif kind not in ("Transformer", "Normalize", "Pooling"):
                raise SpecError(
                    f"{modules_path}: module {i} is a {kind!r}, which embedkit cannot reproduce yet",
                    hint="only Transformer -> Pooling -> Normalize pipelines are supported",
                )
        if "Pooling" in kinds:
            found["normalize"] = ("Normalize" in kinds, "sentence-transformers (modules.json)")

    sbert_path = model_dir / "sentence_bert_config.json"
    if sbert_path.is_file():
        cfg = _read_json_object(sbert_path)
        src = "sentence-transformers (sentence_bert_config.json)"
        if cfg.get("max_seq_length") is not None:
            n = _checked(sbert_path, "max_seq_length", "passage_max_length", cfg["max_seq_length"])
            found["query_max_length"] = (n, src)
            found["passage_max_length"] = (n, src)
        if cfg.get("do_lower_case") is not None:
            found["do_lower_case"] = (_checked(sbert_path, "do_lower_case", "do_lower_case", cfg["do_lower_case"]), src)

    cst_path = model_dir / "config_sentence_transformers.json"
    if cst_path.is_file():
        cfg = _read_json_object(cst_path)
        src = "sentence-transformers (config_sentence_transformers.json prompts)"
        prompts = cfg.get("prompts")
        if prompts is None:
            prompts = {}
        if not isinstance(prompts, dict):
            raise SpecError(f"{cst_path}: prompts must be an object of strings, got {_shown(prompts)}",
                            hint='e.g. "prompts": {"query": "query: ", "document": ""}')
        for key, value in prompts.items():
            if not isinstance(value, str):
                raise SpecError(f"{cst_path}: prompts.{key} must be a string, got {_shown(value)}",
                                hint='e.g. "prompts": {"query": "query: ", "document": ""}')
        if "query" in prompts:
            found["query_instruction"] = (prompts["query"] or None, src)
        for key in ("document", "passage", "corpus"):
            if key in prompts:
                found["passage_instruction"] = (prompts[key] or None, src)
                break
        extra = cfg.get(ST_EXTRA_KEY)
        if extra is not None and not isinstance(extra, dict):
            raise SpecError(f"{cst_path}: {ST_EXTRA_KEY} must be an object (the saved embedkit spec), got "
                            f"{_shown(extra)}", hint="fix or delete that section (embedkit save rewrites it)")
        if extra:
            esrc = "saved embedkit spec (config_sentence_transformers.json)"
            known = set(EmbedderSpec.field_names())
            for key, value in extra.items():
                if key in known:
                    found[key] = (_checked(cst_path, f"{ST_EXTRA_KEY}.{key}", key, value), esrc)
    return found


# ---------------------------------------------------------------------- resolution
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
    overrides = dict(overrides or {})
    if config is None:
        cfg_path = model_dir / "config.json"
        config = _read_json_object(cfg_path, CheckpointError) if cfg_path.is_file() else {}
    if model_max_length is None:
        model_max_length = model_max_length_from_config(config)
    max_length = overrides.pop("max_length", None)
    for key in ("query_max_length", "passage_max_length"):
        if overrides.get(key) is None and max_length is not None:
            overrides[key] = max_length
    unknown = set(overrides) - set(EmbedderSpec.field_names())
    if unknown:
        raise SpecError(f"unknown spec field(s): {', '.join(sorted(unknown))}",
                        hint=f"known fields: {', '.join(EmbedderSpec.field_names())}")

    st = read_sentence_transformers_spec(model_dir)
    fam = match_family(model_dir, config)
    defaults = EmbedderSpec()
    values: dict[str, Any] = {}
    provenance: dict[str, str] = {}
    for name in EmbedderSpec.field_names():
        if overrides.get(name) is not None:
            values[name], provenance[name] = overrides[name], ARGUMENT
        elif name in st:
            values[name], provenance[name] = st[name]
        elif fam is not None and name in fam.values:
            values[name], provenance[name] = fam.values[name], f"family table ({fam.name})"
        elif name in ("pooling", "normalize"):
            values[name], provenance[name] = getattr(defaults, name), ASSUMED
        elif name in ("query_max_length", "passage_max_length") and model_max_length is not None:
            values[name], provenance[name] = min(512, model_max_length), "model limit (config / tokenizer)"
        else:
            values[name], provenance[name] = getattr(defaults, name), DEFAULT
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


_POSITION_OFFSET_MODELS = ("roberta", "xlm-roberta", "camembert", "longformer", "mpnet")
_SANE_TOKENIZER_LIMIT = 1_000_000  # tokenizers without a limit report ~1e30


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
        cfg_path = model_dir / "config.json"
        config = _read_json_object(cfg_path, CheckpointError) if cfg_path.is_file() else {}
    limits = [model_max_length_from_config(config)]
    tok_cfg_path = model_dir / "tokenizer_config.json"
    if tok_cfg_path.is_file():
        tok_limit = _read_json_object(tok_cfg_path, CheckpointError).get("model_max_length")
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
    config = _read_json_object(folder / "config.json", CheckpointError)
    hidden = config.get("hidden_size") or config.get("d_model")
    return resolve_spec(folder, overrides, config=config, model_max_length=model_token_limit(folder, config),
                        hidden_size=hidden if isinstance(hidden, int) else None, warn=warn)


def describe(spec: EmbedderSpec) -> list[tuple[str, Any, str]]:
    """``(field, value, rule)`` rows, for ``embedkit spec`` and ``embedkit inspect``."""
    return [(n, getattr(spec, n), spec.provenance.get(n, ARGUMENT)) for n in EmbedderSpec.field_names()]


# ---------------------------------------------------------------------- writing sentence-transformers files
def st_prompt(instruction: str | None, instruction_format: str) -> str | None:
    """The sentence-transformers prompt (a plain prefix) equal to ``format(instruction, text)``, if one exists.

    Returns ``""`` for no instruction and ``None`` when the format puts text before the end (not a prefix).
    """
    if instruction is None:
        return ""
    prefix = EmbedderSpec.apply_instruction("", instruction, instruction_format)
    probe = "\x00text\x00"
    return prefix if EmbedderSpec.apply_instruction(probe, instruction, instruction_format) == prefix + probe else None


def sentence_transformers_files(spec: EmbedderSpec, hidden_size: int) -> tuple[dict[str, Any], list[str]]:
    """The sentence-transformers layout for ``spec``: ``({relative_path: json_object}, warnings)``.

    Written as plain JSON by :func:`write_sentence_transformers_files`; sentence-transformers is never imported.
    ``2_Normalize`` is a folder with no files; it is listed under the key ``"2_Normalize/"`` with value ``None``.
    """
    warnings: list[str] = []
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if spec.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    pooling = {
        "word_embedding_dimension": hidden_size,
        "pooling_mode_cls_token": spec.pooling == "cls",
        "pooling_mode_mean_tokens": spec.pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": spec.pooling == "last_token",
        "include_prompt": True,
    }
    prompts: dict[str, str] = {}
    for key, instr, fmt in (("query", spec.query_instruction, spec.query_instruction_format),
                            ("document", spec.passage_instruction, spec.passage_instruction_format)):
        prompt = st_prompt(instr, fmt)
        if prompt is None:
            warnings.append(f"the {key} instruction format {fmt!r} is not a prefix; sentence-transformers prompts "
                            "cannot express it, so its prompt is left empty (embedkit still applies it)")
            prompt = ""
        prompts[key] = prompt
    if spec.truncate_dim is not None:
        warnings.append(f"sentence-transformers does not record truncate_dim: load it with "
                        f"truncate_dim={spec.truncate_dim} (it truncates after normalizing)")
    files: dict[str, Any] = {
        "modules.json": modules,
        "1_Pooling/config.json": pooling,
        "sentence_bert_config.json": {"max_seq_length": spec.passage_max_length, "do_lower_case": spec.do_lower_case},
        "config_sentence_transformers.json": {
            "model_type": "SentenceTransformer",
            "prompts": prompts,
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
            ST_EXTRA_KEY: spec.to_dict(),
        },
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


# ---------------------------------------------------------------------- instruction overrides
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
