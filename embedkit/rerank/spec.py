"""The reranking recipe (:class:`RerankerSpec`) and how it is resolved for a cross-encoder folder.

A cross-encoder's scores depend on more than its weights: how a (query, passage) pair is cut to ``max_length``
(FlagEmbedding's ``FlagReranker`` and sentence-transformers' ``CrossEncoder`` disagree on long pairs), the query
instruction, and the activation applied on top of the logit. Resolution order, per field, never silent
(``spec.provenance`` records which rule decided each field):

1. arguments the user passes;
2. the spec embedkit recorded when it saved the folder (``config.json`` ``embedkit_reranker``: provenance
   ``saved by embedkit``);
3. the folder's own sentence-transformers files (a folder saved by ``CrossEncoder``:
   ``config_sentence_transformers.json`` ``model_type: CrossEncoder`` / ``activation_fn``, or ``config.json``
   ``sentence_transformers.activation_fn``);
4. a small table of known families, matched on the folder name (``bge-reranker`` -> FlagEmbedding's truncation,
   ``ms-marco`` / ``cross-encoder`` ... -> CrossEncoder's);
5. otherwise FlagEmbedding's conventions (embedkit's peer of record), with a warning naming what was assumed.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, SpecError
from ..folder.layout import check_model_folder, read_config, read_json_file
from ..models import resolve_model_path
from ..spec import model_token_limit

logger = logging.getLogger("embedkit")

TRUNCATIONS = ("flagembedding", "longest_first")
"""How a pair is cut to ``max_length``: FlagReranker's (query cut to ``query_max_length`` alone, then only the
passage) or CrossEncoder's (``tokenizer(q, p, truncation="longest_first")``)."""

ACTIVATIONS = ("sigmoid", "identity", "tanh")
"""What :meth:`~embedkit.rerank.Reranker.predict` applies on the logit by default (CrossEncoder's ``activation_fn``)."""

DEFAULT_MAX_LENGTH = 512
"""FlagReranker's default ``max_length`` (capped at the model's limit)."""

# Provenance labels.
ARGUMENT = "argument"
DEFAULT = "default"
SAVED = "saved by embedkit"

SAVED_KEY = "embedkit_reranker"
"""The ``config.json`` key under which :func:`embedkit.checkpoint.save_reranker` records the spec (plain JSON: the
fields of :class:`RerankerSpec` but ``num_labels``); transformers keeps unknown config keys, so every peer loads the
folder unchanged."""

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


@dataclass
class RerankerSpec:
    """How a cross-encoder turns a (query, passage) pair into a score: one recipe for every caller.

    Attributes:
        truncation: ``"flagembedding"`` (FlagReranker: the query alone cut to ``query_max_length``, then joined
            with the passage, cutting only the passage to ``max_length``) or ``"longest_first"`` (CrossEncoder:
            ``tokenizer(query, passage, truncation="longest_first", max_length=max_length)``). Equal on pairs that
            fit in ``max_length`` tokens (and, for ``flagembedding``, whose query fits in ``query_max_length``).
        max_length: token limit of the joined pair, special tokens included.
        query_max_length: ``flagembedding`` only: the query's own limit (default 3/4 of ``max_length``, as
            FlagReranker); ``None`` for ``longest_first``.
        query_instruction / query_instruction_format: put before each query as
            ``query_instruction_format.format(query_instruction, query)`` (``\\n`` in the format means newline).
        activation: applied on the logit by :meth:`~embedkit.rerank.Reranker.predict` and
            :meth:`~embedkit.rerank.Reranker.rank` unless told otherwise (``sigmoid`` for one label, as CrossEncoder).
        num_labels: the classification head's size (always 1: multi-label heads are refused).
        provenance: field -> the rule that decided it (``argument``, a file, a family, ``default``...).

    Example:
        >>> RerankerSpec(max_length=512).resolved_query_max_length
        384
    """

    truncation: str = "flagembedding"
    max_length: int = DEFAULT_MAX_LENGTH
    query_max_length: int | None = None
    query_instruction: str | None = None
    query_instruction_format: str = "{}{}"
    activation: str = "sigmoid"
    num_labels: int = 1
    provenance: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def field_names(cls) -> list[str]:
        """The recipe's fields (everything but ``provenance``), in order."""
        return [f.name for f in fields(cls) if f.name != "provenance"]

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (no provenance)."""
        d = asdict(self)
        d.pop("provenance")
        return d

    @property
    def resolved_query_max_length(self) -> int | None:
        """The query's own limit under ``flagembedding`` (``query_max_length`` or 3/4 of ``max_length``)."""
        if self.truncation != "flagembedding":
            return None
        return self.query_max_length if self.query_max_length is not None else self.max_length * 3 // 4

    def validate(self, model_max_length: int | None = None) -> RerankerSpec:
        """Raise :class:`SpecError` naming the field for any bad value; return ``self``."""
        if self.truncation not in TRUNCATIONS:
            raise SpecError(f"unknown truncation {self.truncation!r}", param="truncation",
                            hint="use 'flagembedding' (FlagReranker) or 'longest_first' (CrossEncoder)")
        for name in ("max_length", "query_max_length"):
            value = getattr(self, name)
            if value is None and name == "query_max_length":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise SpecError(f"{name} must be a positive integer, got {value!r}", param=name,
                                hint=f"e.g. {name}=512" if name == "max_length" else f"e.g. {name}=64")
        if model_max_length is not None and self.max_length > model_max_length:
            raise SpecError(f"max_length={self.max_length} exceeds what the model can take ({model_max_length})",
                            param="max_length", hint=f"pass max_length <= {model_max_length}")
        if self.query_max_length is not None:
            if self.truncation != "flagembedding":
                raise SpecError("query_max_length applies to truncation='flagembedding' only (CrossEncoder's "
                                "longest_first truncation has no separate query limit)", param="query_max_length",
                                hint="drop query_max_length, or pass truncation='flagembedding'")
            if self.query_max_length > self.max_length:
                raise SpecError(f"query_max_length={self.query_max_length} exceeds max_length={self.max_length}",
                                param="query_max_length", hint="pass a query_max_length below max_length")
        if self.query_instruction is not None and not isinstance(self.query_instruction, str):
            raise SpecError(f"query_instruction must be a string, got {type(self.query_instruction).__name__}",
                            param="query_instruction")
        fmt = self.query_instruction_format
        if not isinstance(fmt, str):
            raise SpecError(f"query_instruction_format must be a string, got {type(fmt).__name__}",
                            param="query_instruction_format", hint='e.g. "{}{}"')
        try:
            if fmt.replace("\\n", "\n").format("\x00I", "\x00T").count("\x00") != 2:
                raise ValueError
        except (IndexError, KeyError, ValueError):
            raise SpecError(f"query_instruction_format {fmt!r} must hold exactly two '{{}}' (instruction, query)",
                            param="query_instruction_format", hint='e.g. "{}{}" or "{}\\n{}"') from None
        if self.activation not in ACTIVATIONS:
            raise SpecError(f"unknown activation {self.activation!r}", param="activation",
                            hint=f"use one of {', '.join(ACTIVATIONS)}")
        return self

    def prepare_query(self, query: str) -> str:
        """The query as the model sees it: ``query_instruction_format.format(instruction, query)`` when there is an
        instruction (FlagReranker's ``get_detailed_instruct``), else the query unchanged."""
        if self.query_instruction is None:
            return query
        return self.query_instruction_format.replace("\\n", "\n").format(self.query_instruction, query)


# ---------------------------------------------------------------------- what the folder says
def config_num_labels(config: dict[str, Any]) -> int:
    """The number of labels transformers would give the head: ``id2label``'s size, else ``num_labels``, else 2
    (transformers' default for a config that says nothing)."""
    id2label = config.get("id2label")
    if isinstance(id2label, dict) and id2label:
        return len(id2label)
    n = config.get("num_labels")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 2


def is_reranker_config(config: dict[str, Any]) -> bool:
    """Whether ``config.json`` declares a sequence-classification head (``*ForSequenceClassification``)."""
    archs = config.get("architectures")
    return isinstance(archs, list) and any(isinstance(a, str) and a.endswith("ForSequenceClassification")
                                           for a in archs)


def is_reranker_folder(model: str | Path) -> bool:
    """Whether ``model`` is a local folder whose ``config.json`` declares a ``*ForSequenceClassification`` head
    (``embedkit spec`` uses it to show a reranker's recipe instead of an embedder's)."""
    path = Path(resolve_model_path(model)).expanduser()
    cfg = path / "config.json"
    if not cfg.is_file():
        return False
    try:
        return is_reranker_config(read_json_file(cfg, expect=dict))
    except CheckpointError:
        return False


def check_reranker_config(folder: Path, config: dict[str, Any]) -> int:
    """Refuse a folder that is not a one-label cross-encoder; return its number of labels (1).

    An embedding model (``architectures`` without a ``*ForSequenceClassification``) and a multi-label classifier
    raise :class:`CheckpointError` naming ``config.json`` and what to do instead.
    """
    archs = config.get("architectures")
    if isinstance(archs, list) and archs and not is_reranker_config(config):
        raise CheckpointError(
            f"{folder / 'config.json'}: {', '.join(map(str, archs))} is an embedding model (no classification "
            "head), not a reranker",
            hint="pass a cross-encoder folder (e.g. a local copy of BAAI/bge-reranker-base), or train one from this "
            "model with `embedkit finetune --reranker`; to embed with it, use Embedder / `embedkit encode`")
    n = config_num_labels(config)
    if n != 1:
        labels = config.get("id2label")
        shown = f" (id2label: {labels})" if isinstance(labels, dict) and len(str(labels)) < 200 else ""
        raise CheckpointError(
            f"{folder / 'config.json'}: the classification head has {n} labels{shown}; a reranker scores a pair "
            "with one logit",
            hint="pass a one-label cross-encoder (num_labels=1, e.g. bge-reranker-base); a multi-label classifier "
            "(e.g. an NLI model) has no single relevance score to rerank by")
    return n


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


def resolve_reranker_spec(folder: Path, overrides: dict[str, Any] | None = None, *,
                          config: dict[str, Any] | None = None, warn: bool = True) -> RerankerSpec:
    """Resolve every field of a cross-encoder folder's :class:`RerankerSpec` (see the module docstring).

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
    prov: dict[str, str] = {"num_labels": "config.json"}
    values: dict[str, Any] = {"num_labels": num_labels}
    st_activation, st_rule = _st_markers(folder, config)
    limit = model_token_limit(folder, config)
    saved = _saved_record(folder, config)
    saved_rule = f"{SAVED} (config.json {SAVED_KEY})"
    truncation = given.get("truncation", saved.get("truncation", "flagembedding"))
    for name, value in saved.items():  # the recorded spec outranks everything but arguments
        if name == "query_max_length" and (value is None or truncation != "flagembedding"):
            continue  # an argument switching to longest_first drops the recorded query limit
        if name not in given:
            given[name] = value
    from_record = {name for name in saved if name not in (overrides or {}) or (overrides or {})[name] is None}

    def rule(name: str) -> str:
        return saved_rule if name in from_record else ARGUMENT

    # truncation
    family = _family(folder)
    if "truncation" in given:
        values["truncation"], prov["truncation"] = given["truncation"], rule("truncation")
    elif st_rule is not None:
        values["truncation"], prov["truncation"] = "longest_first", st_rule
    elif family is not None:
        values["truncation"], prov["truncation"] = family
    else:
        values["truncation"] = "flagembedding"
        prov["truncation"] = "assumed (FlagEmbedding's FlagReranker convention)"
        if warn:
            logger.warning("%s: nothing in the folder says how pairs were truncated; assuming FlagEmbedding's "
                           "(FlagReranker: query cut to 3/4 of max_length, then only the passage). Pass "
                           "truncation='longest_first' (CLI --truncation longest_first) to match "
                           "sentence-transformers' CrossEncoder on pairs longer than max_length", folder.name)

    # max_length
    if "max_length" in given:
        values["max_length"], prov["max_length"] = given["max_length"], rule("max_length")
    else:
        st_len = None
        sbc = folder / "sentence_bert_config.json"
        if st_rule is not None and sbc.is_file():
            st_len = read_json_file(sbc, expect=dict).get("max_seq_length")
        if isinstance(st_len, int) and not isinstance(st_len, bool) and st_len > 0:
            values["max_length"] = min(st_len, limit) if limit else st_len
            prov["max_length"] = "sentence_bert_config.json max_seq_length"
        elif limit is not None and limit < DEFAULT_MAX_LENGTH:
            values["max_length"] = limit
            prov["max_length"] = f"default {DEFAULT_MAX_LENGTH}, capped at the model's limit ({limit} tokens)"
        else:
            values["max_length"], prov["max_length"] = DEFAULT_MAX_LENGTH, f"{DEFAULT} (FlagReranker's)"

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

    # activation
    if "activation" in given:
        values["activation"], prov["activation"] = given["activation"], rule("activation")
    elif st_activation is not None:
        act = _ST_ACTIVATIONS.get(st_activation)
        if act is not None:
            values["activation"], prov["activation"] = act, f"{st_rule}: {st_activation}"
        else:
            values["activation"] = "sigmoid"
            prov["activation"] = (f"default for one label (sigmoid): {st_rule} names {st_activation}, which embedkit "
                                  "does not run")
            if warn:
                logger.warning("%s: the CrossEncoder activation %r is not one embedkit runs (%s); predict() uses "
                               "sigmoid, pass activation_fn to choose", folder.name, st_activation,
                               ", ".join(ACTIVATIONS))
    else:
        values["activation"], prov["activation"] = "sigmoid", f"{DEFAULT} for one label (CrossEncoder's)"

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


def describe_reranker(spec: RerankerSpec) -> list[tuple[str, Any, str]]:
    """``(field, value, rule)`` rows, for ``embedkit spec``; ``query_max_length`` shows the length in force."""
    rows = []
    for name in RerankerSpec.field_names():
        value = spec.resolved_query_max_length if name == "query_max_length" else getattr(spec, name)
        rows.append((name, value, spec.provenance.get(name, ARGUMENT)))
    return rows


__all__ = ["RerankerSpec", "SAVED", "SAVED_KEY", "TRUNCATIONS", "ACTIVATIONS", "resolve_reranker_spec",
           "load_reranker_spec",
           "describe_reranker", "check_reranker_config", "is_reranker_folder", "is_reranker_config",
           "config_num_labels"]
