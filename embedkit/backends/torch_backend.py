"""The PyTorch backend: a transformers ``AutoModel`` loaded from a local folder."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..dtypes import resolve_dtype
from ..errors import SpecError
from ..folder.loading import load_model

logger = logging.getLogger("embedkit")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> ``cuda`` when available, else ``cpu``."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise SpecError(f"invalid device {device!r}: {exc}", hint="use 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SpecError(f"device {device!r} asked for, but CUDA is not available here", hint="use device='cpu'")
    return dev


class TorchBackend:
    """Runs ``AutoModel`` (no pooling head) in inference mode and returns the last hidden state.

    Example:
        >>> b = TorchBackend("path/to/model", device="cpu")
        >>> hidden, mask = b.forward({"input_ids": ids, "attention_mask": mask})
    """

    output: Literal["hidden"] = "hidden"

    def __init__(self, model_dir: str | Path, device: str | torch.device | None = None,
                 dtype: str | torch.dtype | None = None, *, trust_pickle: bool = False) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self._init_model(load_model(model_dir, dtype=self.dtype, trust_pickle=trust_pickle, device=self.device))

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> TorchBackend:
        """Wrap an already loaded model (e.g. one being trained), on its current device and dtype."""
        self = cls.__new__(cls)
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self._init_model(model)
        return self

    def cast(self, dtype: str | torch.dtype) -> None:
        """Convert the loaded weights to ``dtype`` in place (the quality gate measures fp32, then the candidate)."""
        self.dtype = resolve_dtype(dtype)
        self.model.to(self.dtype)

    def _init_model(self, model: torch.nn.Module) -> None:
        self.model = model
        self.hidden_size: int = int(model.config.hidden_size)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wrappers take **kwargs
        accepted = set(inspect.signature(base.forward).parameters)
        self.input_names = tuple(
            n for n in ("input_ids", "attention_mask", "token_type_ids", "position_ids") if n in accepted
        )

    @torch.inference_mode()
    def forward(self, features: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the model on padded numpy features; returns ``(last_hidden_state, attention_mask)``."""
        inputs = {
            k: torch.from_numpy(v).to(self.device, non_blocking=True)
            for k, v in features.items() if k in self.input_names
        }
        out = self.model(**inputs, return_dict=True)
        return out.last_hidden_state, inputs["attention_mask"]
