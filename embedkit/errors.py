"""embedkit's exception types.

Every error a user can cause carries a ``message`` (what is wrong, naming the file, field or argument) and a
``hint`` (how to fix it). The CLI prints both and exits with status 2.
"""

from __future__ import annotations


class EmbedkitError(Exception):
    """Base class of every embedkit error.

    ``param`` optionally names the argument (or spec field) at fault, as the Python API spells it
    (``"query_max_length"``): front-ends such as the CLI use it to name their own flag instead (``--max-length``).

    Example:
        >>> raise EmbedkitError("no model at ./m", hint="pass a local folder")
    """

    def __init__(self, message: str, hint: str | None = None, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.param = param

    def __str__(self) -> str:
        return f"{self.message}\nhint: {self.hint}" if self.hint else self.message


class SpecError(EmbedkitError, ValueError):
    """The embedding recipe (pooling, lengths, instruction, dimension...) is invalid or cannot be resolved."""


class CheckpointError(EmbedkitError):
    """A model folder is missing, incomplete, or not what it should be."""


class DataError(EmbedkitError, ValueError):
    """Input data (a text file, a jsonl line, a field) is malformed."""


class ArgumentError(EmbedkitError, ValueError):
    """A command-line or configuration argument is unknown, missing or has a bad value."""


__all__ = ["EmbedkitError", "SpecError", "CheckpointError", "DataError", "ArgumentError"]
