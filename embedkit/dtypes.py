"""Names of torch dtypes as embedkit's options spell them (``fp32`` / ``fp16`` / ``bf16``): one table for the
backends, ``save`` and ``convert``."""

from __future__ import annotations

import torch

from .errors import SpecError

DTYPES = {
    "fp32": torch.float32, "float32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """``None`` -> float32; accepts ``"fp32" | "fp16" | "bf16"`` (and long names) or a ``torch.dtype``."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise SpecError(f"unsupported dtype {dtype}", hint="use fp32, fp16 or bf16")
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise SpecError(f"unknown dtype {dtype!r}", hint="use fp32, fp16 or bf16") from None
