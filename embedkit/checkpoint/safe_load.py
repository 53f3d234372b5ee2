"""Reading weights without running untrusted code.

``.safetensors`` are parsed (header checked before anything is read). ``.bin`` / ``.pt`` / ``.pth`` go through
``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers. Anything that needs full
unpickling (arbitrary classes, i.e. arbitrary code) is refused unless the caller passes ``trust_pickle=True``
(CLI: ``--trust-pickle``). Every state dict embedkit reads goes through this module.
"""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_MAX_HEADER = 100 * 1024 * 1024


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
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{path}: corrupt safetensors header ({exc})",
                                  hint="the file is damaged: copy or re-save it") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    data_len = size - 8 - n
    for name, info in header.items():
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and 0 <= offsets[0] <= offsets[1] <= data_len):
            raise CheckpointError(f"{path}: tensor {name!r} points past the end of the file (truncated?)",
                                  hint="the file is incomplete: copy or re-save it")
    return header


def load_state_dict(path: str | Path, *, trust_pickle: bool = False, map_location: str = "cpu") -> dict[str, Any]:
    """Load a state dict from ``.safetensors`` or (safely) from a pickle-based ``.bin`` / ``.pt`` / ``.pth``.

    Example:
        >>> sd = load_state_dict("colbert_linear.pt")   # torch.load(weights_only=True) under the hood
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist", hint="check the path")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        read_safetensors_header(path)
        try:
            return load_file(str(path), device=map_location)
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: cannot read safetensors ({exc})", hint="copy or re-save it") from None
    try:
        obj = torch.load(str(path), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust_pickle:
            raise _refuse_pickle(path, str(exc).splitlines()[0][:200]) from None
        obj = torch.load(str(path), map_location=map_location, weights_only=False)  # noqa: S614 (trusted by user)
    except (RuntimeError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable torch file ({exc})",
                              hint="the file is damaged or not a PyTorch checkpoint") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return obj


def load_pickle(path: str | Path, *, trust_pickle: bool = False) -> Any:
    """Load an arbitrary pickled object (e.g. ``training_args.bin``): refused unless ``trust_pickle``."""
    import torch

    path = Path(path)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust_pickle:
            raise _refuse_pickle(path, str(exc).splitlines()[0][:200]) from None
    return torch.load(str(path), map_location="cpu", weights_only=False)  # noqa: S614 (trusted by user)
