"""Optional dependencies: one registry (importable module -> the ``embedkit`` extra that installs it) and one way
to import them, :func:`require`, which says the same thing everywhere when a module is missing::

    faiss = require("faiss", "hard-negative mining")
    # EmbedkitError: hard-negative mining needs faiss, which is not installed
    # hint: pip install 'embedkit[eval]'

Only the heavy optional dependencies go through here (onnxruntime, peft, faiss, ray, fastapi, matplotlib...);
torch, transformers and numpy are required and imported at module level.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import EmbedkitError

EXTRAS: dict[str, str] = {
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "faiss": "eval",
    "pytrec_eval": "eval",
    "matplotlib": "eval",
    "peft": "train",
    "accelerate": "train",
    "yaml": "train",
    "fastapi": "serve",
    "uvicorn": "serve",
    "httpx": "serve",
    "prometheus_client": "serve",
    "starlette": "serve",
    "ray": "ray",
    "pyarrow": "corpus",
}
"""Top-level module name -> the extra of ``pyproject.toml`` that installs it."""


def install_hint(module_name: str) -> str:
    """The one install message for ``module_name`` (``pip install 'embedkit[EXTRA]'``)."""
    top = module_name.partition(".")[0]
    extra = EXTRAS.get(top)
    if extra is None:
        return f"pip install {top}"
    return f"pip install 'embedkit[{extra}]'"


def require(module_name: str, feature: str | None = None) -> ModuleType:
    """Import ``module_name`` (dotted names work: ``"onnxruntime.quantization"``) or raise an
    :class:`~embedkit.errors.EmbedkitError` naming the extra that installs it.

    Args:
        module_name: the module to import; its top-level package should be in :data:`EXTRAS`.
        feature: what needs it, for the message (``"ONNX export"``); default: ``"this feature"``.

    Example:
        >>> faiss = require("faiss", "retrieval evaluation")
    """
    try:
        return importlib.import_module(module_name)
    except ImportError:
        top = module_name.partition(".")[0]
        raise EmbedkitError(f"{feature or 'this feature'} needs {top}, which is not installed",
                            hint=install_hint(module_name)) from None


def available(module_name: str) -> bool:
    """Whether ``module_name`` can be imported (it is imported to find out)."""
    try:
        importlib.import_module(module_name)
    except ImportError:
        return False
    return True


__all__ = ["EXTRAS", "available", "install_hint", "require"]
