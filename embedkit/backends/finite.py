"""No NaN or infinity leaves a backend's batch unnoticed: one check per batch, naming the input row."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import EmbedkitError


class NonFiniteOutputError(EmbedkitError):
    """The model produced a NaN or infinite value for an input: nothing is returned or written for it."""


def check_finite(values: torch.Tensor | np.ndarray, rows: np.ndarray, what: str = "vector") -> None:
    """Raise :class:`NonFiniteOutputError` naming the first input row (original order) whose output in this batch
    holds a NaN or an infinity. ``values`` has one leading entry per row of ``rows``; one check per batch."""
    if isinstance(values, torch.Tensor):
        bad = ~torch.isfinite(values)
        if not bool(bad.any()):
            return
        first = int(bad.reshape(bad.shape[0], -1).any(1).nonzero()[0, 0])
    else:
        bad = ~np.isfinite(values)
        if not bad.any():
            return
        first = int(np.flatnonzero(bad.reshape(bad.shape[0], -1).any(1))[0])
    count = int(bad.reshape(bad.shape[0], -1).any(1).sum())
    row = int(rows[first])
    raise NonFiniteOutputError(
        f"the model produced a non-finite {what} (NaN or infinity) for input row {row}"
        f"{f' and {count - 1} other row(s) of its batch' if count > 1 else ''}; nothing was written",
        hint="check the model's weights (embedkit inspect) or use precision='fp32' (fp16 / bf16 can overflow)")


__all__ = ["NonFiniteOutputError", "check_finite"]
