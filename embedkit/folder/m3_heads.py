"""bge-m3 head files: ``colbert_linear`` and ``sparse_linear`` state dicts, found, read safely, checked, written.

FlagEmbedding stores each head as a ``torch.nn.Linear`` state dict (``weight`` ``(out, hidden)``, ``bias``
``(out,)``) in ``colbert_linear.pt`` / ``sparse_linear.pt`` beside the model. embedkit reads those through
:func:`embedkit.folder.safe_load.load_state_dict` (no untrusted pickle), also accepts
``colbert_linear.safetensors`` / ``sparse_linear.safetensors``, and writes both forms so that FlagEmbedding (``.pt``
only) and safetensors-only consumers load the same tensors.

Example:
    >>> sd = load_head("bge-m3", "sparse_linear", hidden_size=1024)
    >>> sd["weight"].shape
    torch.Size([1, 1024])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._io import atomic_write
from ..errors import CheckpointError
from .safe_load import load_state_dict

COLBERT = "colbert_linear"
SPARSE = "sparse_linear"
HEAD_NAMES = (COLBERT, SPARSE)
HEAD_SUFFIXES = (".pt", ".safetensors")
"""``.pt`` first: it is the file FlagEmbedding reads, so embedkit reads the same one when both exist."""

MISSING_HEAD_HINT = (
    "dense vectors work without it; for sparse / ColBERT outputs copy colbert_linear.pt and sparse_linear.pt from "
    "the base bge-m3 folder (when the encoder was fine-tuned dense-only), or fine-tune with --unified so the "
    "trainer writes the heads (FlagEmbedding would silently use a random head here)"
)


def head_files(folder: str | Path, name: str) -> list[Path]:
    """The existing files of head ``name`` in ``folder`` (``.pt`` before ``.safetensors``)."""
    folder = Path(folder)
    return [folder / f"{name}{suffix}" for suffix in HEAD_SUFFIXES if (folder / f"{name}{suffix}").is_file()]


def check_linear_head(path: Path, sd: dict[str, Any], hidden_size: int | None, out_features: int | None) -> None:
    """Raise :class:`CheckpointError` unless ``sd`` is a floating ``Linear(hidden_size, out_features)`` state dict
    (NaN / Inf are refused when the file is read, by :func:`~embedkit.folder.safe_load.load_state_dict`)."""
    keys = set(sd)
    if keys != {"weight", "bias"}:
        raise CheckpointError(
            f"{path}: expected a torch.nn.Linear state dict with keys weight and bias, found "
            f"{sorted(keys)[:6] or 'nothing'}",
            hint="write it with torch.save(linear.state_dict(), path), as FlagEmbedding does")
    weight, bias = sd["weight"], sd["bias"]
    for key, t in (("weight", weight), ("bias", bias)):
        if not getattr(t, "is_floating_point", lambda: False)():
            raise CheckpointError(f"{path}: {key} is {getattr(t, 'dtype', type(t).__name__)}, expected floating-point",
                                  hint="the file is not a bge-m3 head: copy it again from the base model")
    w_shape, b_shape = tuple(weight.shape), tuple(bias.shape)
    if len(w_shape) != 2 or b_shape != (w_shape[0],):
        raise CheckpointError(f"{path}: weight {w_shape} and bias {b_shape} do not form a Linear layer",
                              hint="the file is not a bge-m3 head: copy it again from the base model")
    if hidden_size is not None and w_shape[1] != hidden_size:
        raise CheckpointError(
            f"{path}: the head takes {w_shape[1]} inputs but the model's hidden size is {hidden_size}",
            hint="the head belongs to another model: copy the heads of this model's base bge-m3")
    if out_features is not None and w_shape[0] != out_features:
        raise CheckpointError(
            f"{path}: the head has {w_shape[0]} outputs, expected {out_features}",
            hint="sparse_linear has 1 output; colbert_linear has hidden_size outputs unless colbert_dim says "
            "otherwise (pass colbert_dim=N matching the file)")


def load_head(folder: str | Path, name: str, *, hidden_size: int | None = None, out_features: int | None = None,
              trust_pickle: bool = False) -> dict[str, Any] | None:
    """The state dict of head ``name`` (``colbert_linear`` / ``sparse_linear``) in ``folder``; ``None`` if absent.

    The ``.pt`` is read with ``torch.load(weights_only=True)`` (FlagEmbedding's file), else the ``.safetensors``.
    When both exist they must hold the same tensors. Raises :class:`CheckpointError` for a file that is not a
    ``Linear(hidden_size, out_features)`` state dict (``None`` skips that check), or that needs full unpickling.
    """
    import torch

    if name not in HEAD_NAMES:
        raise ValueError(f"unknown bge-m3 head {name!r}; expected one of {HEAD_NAMES}")
    files = head_files(folder, name)
    if not files:
        return None
    loaded = [(f, load_state_dict(f, trust_pickle=trust_pickle)) for f in files]
    for f, sd in loaded:
        check_linear_head(f, sd, hidden_size, out_features)
    (first, sd), *others = loaded
    for f, other in others:
        if any(tuple(other[k].shape) != tuple(sd[k].shape) or not torch.equal(other[k].to(sd[k].dtype), sd[k])
               for k in sd):
            raise CheckpointError(f"{first} and {f.name} hold different tensors",
                                  hint=f"delete the stale one (FlagEmbedding reads {name}.pt), or re-save the model")
    return sd


def write_head(folder: str | Path, name: str, state_dict: dict[str, Any]) -> list[Path]:
    """Write head ``name`` as ``<name>.pt`` (for FlagEmbedding) and ``<name>.safetensors``, atomically each.

    Returns the two paths. The tensors are written as they are (dtype kept), detached, on the CPU.
    """
    import torch
    from safetensors.torch import save as safetensors_bytes

    if name not in HEAD_NAMES:
        raise ValueError(f"unknown bge-m3 head {name!r}; expected one of {HEAD_NAMES}")
    folder = Path(folder)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    pt, st = folder / f"{name}.pt", folder / f"{name}.safetensors"
    with atomic_write(pt) as fh:
        torch.save(tensors, fh)
    with atomic_write(st) as fh:
        fh.write(safetensors_bytes(tensors))
    return [pt, st]


__all__ = ["COLBERT", "SPARSE", "HEAD_NAMES", "HEAD_SUFFIXES", "MISSING_HEAD_HINT", "head_files", "check_linear_head",
           "load_head", "write_head"]
