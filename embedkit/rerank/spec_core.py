"""The reranking recipe :class:`RerankerSpec` (its fields, checks and query preparation) and what a folder's
``config.json`` says about its head (a one-label ``*ForSequenceClassification`` or not). How the recipe is resolved
for a folder: :mod:`embedkit.rerank.resolve`; both are importable from :mod:`embedkit.rerank.spec`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, SpecError
from ..folder.layout import read_json_file
from ..models import resolve_model_path

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
