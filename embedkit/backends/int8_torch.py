"""``int8-torch``: the PyTorch backend with its ``nn.Linear`` layers dynamically quantized to int8.

Weights are int8 per output channel, activations are quantized per batch on the fly (``torch.ao.quantization
.quantize_dynamic``; fbgemm / x86 kernels, AVX2 and up); attention softmax, GELU, layer norm and pooling stay fp32.
The backend still returns the fp32 last hidden state (``output = "hidden"``), so pooling and heads are unchanged.
It is held to the same quality gate as bf16 / fp16 (:func:`embedkit.backends.factory.create_backend`).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch

from ..folder.loading import load_model
from .torch_backend import TorchBackend


def quantize_linears(model: torch.nn.Module, inplace: bool = False) -> torch.nn.Module:
    """``model`` with every ``nn.Linear`` replaced by a dynamically quantized int8 linear (per-channel weights)."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao; it still works here
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8,
                                inplace=inplace)


class TorchInt8Backend(TorchBackend):
    """:class:`TorchBackend` on CPU with int8 dynamically quantized linear layers (fp32 activations out).

    Example:
        >>> b = TorchInt8Backend("path/to/model")
        >>> hidden, mask = b.forward({"input_ids": ids, "attention_mask": mask})
    """

    precision = "int8-torch"

    def __init__(self, model_dir: str | Path, *, trust_pickle: bool = False) -> None:
        self.device, self.dtype = torch.device("cpu"), torch.float32
        model = load_model(model_dir, dtype=torch.float32, trust_pickle=trust_pickle, device=self.device)
        self._init_model(quantize_linears(model.eval(), inplace=True))

    @classmethod
    def from_backend(cls, backend: TorchBackend) -> TorchInt8Backend:
        """A quantized copy of an fp32 CPU backend's model (``backend`` itself is left as it is)."""
        self = cls.__new__(cls)
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self._init_model(quantize_linears(copy.deepcopy(backend.model).eval(), inplace=True))
        return self

    def cast(self, dtype: str | torch.dtype) -> None:  # noqa: ARG002
        """Quantized weights have no other dtype to go to."""
        raise TypeError("an int8-torch backend cannot be cast; load a TorchBackend in the dtype you want")


__all__ = ["TorchInt8Backend", "quantize_linears"]
