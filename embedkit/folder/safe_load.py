"""Reading weights without running untrusted code.

``.safetensors`` are parsed (header checked before anything is read). ``.bin`` / ``.pt`` / ``.pth`` go through
``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers. Anything that needs full
unpickling (arbitrary classes, i.e. arbitrary code) is refused unless the caller passes ``trust_pickle=True``
(CLI: ``--trust-pickle``). Every state dict embedkit reads goes through this module.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
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
    spans = []
    for name, info in header.items():
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(type(o) is int for o in offsets) and 0 <= offsets[0] <= offsets[1] <= data_len):
            raise CheckpointError(f"{path}: tensor {name!r} has bad data_offsets or points past the end (truncated?)",
                                  hint="the file is incomplete: copy or re-save it")
        dtype, shape = info.get("dtype"), info.get("shape")
        if dtype not in SAFETENSORS_ITEMSIZE:
            raise CheckpointError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}",
                                  hint="the file is damaged or not safetensors: copy or re-save it")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise CheckpointError(f"{path}: tensor {name!r} has an invalid shape {shape!r}",
                                  hint="the file is damaged: copy or re-save it")
        expected = math.prod(shape) * SAFETENSORS_ITEMSIZE[dtype]
        if offsets[1] - offsets[0] != expected:
            raise CheckpointError(
                f"{path}: tensor {name!r} declares shape {shape} x {dtype} ({expected} bytes) but its data_offsets "
                f"span {offsets[1] - offsets[0]} bytes", hint="the file is damaged: copy or re-save it")
        spans.append((offsets[0], offsets[1], name))
    spans.sort()
    for (_, end, a), (start, _, b) in itertools.pairwise(spans):
        if start < end:
            raise CheckpointError(f"{path}: tensors {a!r} and {b!r} overlap in the file",
                                  hint="the file is damaged: copy or re-save it")
    return header


SAFETENSORS_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
                        "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
"""Bytes per element of each safetensors dtype code."""


def check_finite(source: str | Path, tensors: dict[str, Any]) -> None:
    """Raise :class:`CheckpointError` naming ``source`` and the tensor when a floating tensor holds NaN or Inf.

    One ``torch.isfinite(t).all()`` per floating tensor; integer and bool tensors are skipped.
    """
    import torch

    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()) and t.numel() \
                and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(
                f"{source}: tensor {name!r} holds {bad} NaN/Inf value(s) of {t.numel()}; every vector computed "
                "with it would be NaN", hint="the weights are damaged (or a training run diverged): use an "
                "earlier checkpoint or copy the weights again")


def load_state_dict(path: str | Path, *, trust_pickle: bool = False, map_location: str = "cpu",
                    finite: bool = True) -> dict[str, Any]:
    """Load a state dict from ``.safetensors`` or (safely) from a pickle-based ``.bin`` / ``.pt`` / ``.pth``.

    Pickle-based files go through ``torch.load(weights_only=True)``; a file that needs more (arbitrary classes,
    i.e. arbitrary code) raises :class:`CheckpointError` unless ``trust_pickle=True``. A ``{"state_dict": ...}``
    wrapper is unwrapped. With ``finite`` (the default) a floating tensor holding NaN / Inf raises
    :class:`CheckpointError` naming the file and the tensor.

    Example:
        >>> sd = load_state_dict("colbert_linear.pt")   # torch.load(weights_only=True) under the hood
    """
    path = Path(path)
    _check_file(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        read_safetensors_header(path)
        try:
            obj = load_file(str(path), device=map_location)
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: cannot read safetensors ({exc})", hint="copy or re-save it") from None
    else:
        obj = _load_torch(path, trust_pickle=trust_pickle, map_location=map_location)
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}",
                                  hint="pass a file written with torch.save(model.state_dict(), ...) or safetensors")
    if finite:
        check_finite(path, obj)
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
