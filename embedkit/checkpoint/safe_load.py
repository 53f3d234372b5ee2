"""Reading weights without running untrusted code.

``.safetensors`` are parsed (header checked before anything is read). ``.bin`` / ``.pt`` / ``.pth`` go through
``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers. Anything that needs full
unpickling (arbitrary classes, i.e. arbitrary code) is refused unless the caller passes ``trust_pickle=True``
(CLI: ``--trust-pickle``). Every state dict embedkit reads goes through this module.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

logger = logging.getLogger("embedkit")

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_MAX_HEADER = 100 * 1024 * 1024


def pickle_refusal_reason(exc: BaseException) -> str:
    """A short reason from torch's weights_only error: the global it refused to import, when it names one."""
    import re

    m = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    return f"it references {m.group(1)}" if m else "it holds objects other than tensors"


def _refuse_pickle(path: Path, reason: str) -> CheckpointError:
    return CheckpointError(
        f"{path} needs full unpickling, which can run arbitrary code from the file ({reason})",
        hint="only if you trust where this file came from, pass --trust-pickle (API: trust_pickle=True); "
        "better, convert it once to safetensors with `embedkit convert --to safetensors`",
    )


def read_safetensors_header(path: str | Path) -> dict[str, dict[str, Any]]:
    """Parse and check a safetensors header: ``{name: {"dtype", "shape", "data_offsets"}}`` (``__metadata__`` dropped).

    Raises :class:`CheckpointError` for a truncated file, a header that is not JSON, or offsets past the end.
    """
    path = Path(path)
    _check_file(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)",
                                  hint="the file is incomplete: copy or re-save it")
        (n,) = struct.unpack("<Q", raw)
        if n > min(_MAX_HEADER, size - 8):
            raise CheckpointError(f"{path}: corrupt safetensors header (declares {n} header bytes, file has {size})",
                                  hint="the file is truncated or not safetensors: copy or re-save it")
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise CheckpointError(f"{path}: corrupt safetensors header ({type(exc).__name__}: {exc})",
                                  hint="the file is damaged: copy or re-save it") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    data_len = size - 8 - n
    for name, info in header.items():
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(type(o) is int for o in offsets) and 0 <= offsets[0] <= offsets[1] <= data_len):
            raise CheckpointError(f"{path}: tensor {name!r} has bad data_offsets or points past the end (truncated?)",
                                  hint="the file is incomplete: copy or re-save it")
    return header


def load_state_dict(path: str | Path, *, trust_pickle: bool = False, map_location: str = "cpu") -> dict[str, Any]:
    """Load a state dict from ``.safetensors`` or (safely) from a pickle-based ``.bin`` / ``.pt`` / ``.pth``.

    Pickle-based files go through ``torch.load(weights_only=True)``; a file that needs more (arbitrary classes,
    i.e. arbitrary code) raises :class:`CheckpointError` unless ``trust_pickle=True``. A ``{"state_dict": ...}``
    wrapper is unwrapped.

    Example:
        >>> sd = load_state_dict("colbert_linear.pt")   # torch.load(weights_only=True) under the hood
    """
    path = Path(path)
    _check_file(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        read_safetensors_header(path)
        try:
            return load_file(str(path), device=map_location)
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: cannot read safetensors ({exc})", hint="copy or re-save it") from None
    obj = _load_torch(path, trust_pickle=trust_pickle, map_location=map_location)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}",
                              hint="pass a file written with torch.save(model.state_dict(), ...) or safetensors")
    return obj


def load_pickle(path: str | Path, *, trust_pickle: bool = False) -> Any:
    """Load a pickled object (e.g. ``training_args.bin``); anything beyond tensors and plain containers is
    refused unless ``trust_pickle`` (then plain ``pickle.dump`` files load too).

    Example:
        >>> args = load_pickle("ckpt/training_args.bin", trust_pickle=True)
    """
    path = Path(path)
    _check_file(path)
    return _load_torch(path, trust_pickle=trust_pickle, map_location="cpu")


# ---------------------------------------------------------------------- helpers
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist" if not path.exists() else f"{path} is not a file",
                              hint="check the path")


def _refusal_reason(path: Path, exc: BaseException) -> str:
    if not _is_torch_file(path):
        return "a plain pickle file, not written by torch.save"
    return pickle_refusal_reason(exc)


def _is_torch_file(path: Path) -> bool:
    """Whether ``path`` was written by ``torch.save`` (zip format, or the legacy format starting with its magic)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as fh:
        head = fh.read(64)
    return _TORCH_LEGACY_MAGIC in head


_TORCH_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")  # torch.serialization.MAGIC_NUMBER, pickled


def _load_torch(path: Path, *, trust_pickle: bool, map_location: str) -> Any:
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": the outcome is reported below
            return torch.load(str(path), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust_pickle:
            raise _refuse_pickle(path, _refusal_reason(path, exc)) from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, KeyError, ValueError... for damaged files
        raise _unreadable(path, exc) from None
    # the caller trusts the file: full unpickling (this can run code from the file, by design)
    logger.warning("%s needs full unpickling; loading it anyway because trust_pickle is set", path)
    try:
        if _is_torch_file(path):
            return torch.load(str(path), map_location=map_location, weights_only=False)  # noqa: S614 (trusted)
        with open(path, "rb") as fh:
            return pickle.load(fh)  # noqa: S301 (trusted by the user)
    except Exception as exc:
        raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: BaseException) -> CheckpointError:
    detail = " ".join(_ANSI_RE.sub("", str(exc)).split())[:200]
    return CheckpointError(f"{path}: not a readable torch/pickle file ({type(exc).__name__}: {detail})",
                           hint="the file is damaged or not a PyTorch checkpoint: copy or re-save it")
