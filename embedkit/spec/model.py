"""The embedding recipe: :class:`EmbedderSpec`, its validation, and the one text preparation (instruction, then
``do_lower_case``) that encode, bge-m3, training and the data summary go through."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..errors import SpecError

POOLING_MODES = ("cls", "mean", "last_token")
"""The pooling methods embedkit implements (see :mod:`embedkit.pooling`)."""

# Provenance labels.
ARGUMENT = "argument"
DEFAULT = "default"
ASSUMED = "assumed (BGE convention)"


def _shown(value: Any) -> str:
    """A bad value for an error message: its JSON type and a short repr (never the whole of a long string)."""
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "an object", type(None): "null"}
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{kinds.get(type(value), type(value).__name__)} ({text})"


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
        self._check_flags_and_pooling()
        self._check_lengths(model_max_length)
        self._check_truncate_dim(hidden_size)
        self._check_formats()
        self._check_instructions()
        return self

    def _check_flags_and_pooling(self) -> None:
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

    def _check_lengths(self, model_max_length: int | None) -> None:
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

    def _check_truncate_dim(self, hidden_size: int | None) -> None:
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

    def _check_formats(self) -> None:
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

    def _check_instructions(self) -> None:
        for name in ("query_instruction", "passage_instruction"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise SpecError(f"{name} must be a string or None, got {_shown(value)} ({self._source(name)})",
                                hint=f"pass {name}='...' or None")

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
