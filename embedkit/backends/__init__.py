"""Backends run the transformer forward pass; pooling lives in :mod:`embedkit.pooling`, never here.

The protocol is small: ``hidden_size``, ``input_names`` and ``forward(features) -> last_hidden_state``.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch


class Backend(Protocol):
    """What :class:`embedkit.Embedder` needs from a backend."""

    hidden_size: int
    input_names: tuple[str, ...]

    def forward(self, features: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the model on padded ``features``; return ``(last_hidden_state, attention_mask)`` as tensors."""
        ...


__all__ = ["Backend"]
