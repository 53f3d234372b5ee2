"""``Embedder``: FlagEmbedding-compatible encoding over a backend, driven by one :class:`EmbedderSpec`."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from . import pooling
from .backends.torch_backend import TorchBackend
from .batching import batches, length_sorted_order, pad_features
from .checkpoint.layout import check_model_folder
from .errors import SpecError
from .models import resolve_model_path
from .spec import EmbedderSpec, load_spec, model_token_limit

logger = logging.getLogger("embedkit")

ConvertTo = Literal["numpy", "torch"]


def _check_texts(texts: Any) -> tuple[list[str], bool]:
    """Return ``(list_of_texts, was_single_string)``; raise ``TypeError`` naming the first bad item."""
    if isinstance(texts, str):
        return [texts], True
    if isinstance(texts, (bytes, bytearray)) or texts is None or not isinstance(texts, Iterable):
        raise TypeError(f"texts must be a str or a list of str, got {type(texts).__name__}")
    items = list(texts)
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str (convert or drop it before encoding)")
    return items, False


class Embedder:
    """Encode texts with a local embedding model, exactly as FlagEmbedding / sentence-transformers would.

    tokenize (no padding, truncation at the max length) -> sort by token length -> batches -> forward ->
    pool (cls / mean / last_token) -> truncate (Matryoshka) -> L2-normalize -> input order.

    Every argument left as ``None`` is resolved from the checkpoint (see :func:`embedkit.spec.resolve_spec`);
    ``embedder.spec.provenance`` tells which rule set each field.

    Args:
        model: a local model folder, or ``"minilm"`` for the bundled all-MiniLM-L6-v2. Never downloaded.
        pooling: ``"cls"``, ``"mean"`` or ``"last_token"``.
        normalize: L2-normalize the output vectors.
        query_instruction / query_instruction_format: prepended by :meth:`encode_queries`
            (format defaults to ``"{}{}"``; ``\\n`` in it means newline).
        passage_instruction / passage_instruction_format: prepended by :meth:`encode_corpus`.
        max_length: token limit for queries and passages; ``query_max_length`` / ``passage_max_length`` win.
        truncate_dim: output dimension (Matryoshka truncation, applied before normalization).
        device: ``"cpu"``, ``"cuda"``...; default CUDA when available.
        dtype: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"``.
        backend: ``"torch"`` (default) or ``"onnx"`` (the folder's ``onnx/embedder.onnx`` from
            ``embedkit export onnx``, through onnxruntime; ``precision="int8"`` for the quantized graph).
        batch_size: texts per forward pass.
        show_progress: progress bar; default on when stderr is a terminal and there is more than one batch.

    Example:
        >>> from embedkit import Embedder
        >>> m = Embedder("minilm")
        >>> m.encode(["a cat", "a dog"]).shape
        (2, 384)
    """

    def __init__(
        self,
        model: str | Path,
        pooling: str | None = None,
        normalize: bool | None = None,
        query_instruction: str | None = None,
        query_instruction_format: str | None = None,
        passage_instruction: str | None = None,
        passage_instruction_format: str | None = None,
        max_length: int | None = None,
        query_max_length: int | None = None,
        passage_max_length: int | None = None,
        truncate_dim: int | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 256,
        show_progress: bool | None = None,
        backend: str = "torch",
        precision: str = "fp32",
        trust_pickle: bool = False,
    ) -> None:
        from .checkpoint.loading import load_tokenizer

        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise SpecError(f"batch_size must be a positive integer, got {batch_size!r}", hint="e.g. batch_size=64")
        self.path = check_model_folder(resolve_model_path(model))
        self.spec: EmbedderSpec = load_spec(
            self.path,
            dict(pooling=pooling, normalize=normalize, query_instruction=query_instruction,
                 query_instruction_format=query_instruction_format, passage_instruction=passage_instruction,
                 passage_instruction_format=passage_instruction_format, max_length=max_length,
                 query_max_length=query_max_length, passage_max_length=passage_max_length,
                 truncate_dim=truncate_dim),
        )
        self.model_max_length = model_token_limit(self.path)
        self.tokenizer = load_tokenizer(self.path)
        self.batch_size = batch_size
        self.show_progress = show_progress
        if backend == "onnx":
            from .backends.onnx_backend import OnnxBackend

            self.backend = OnnxBackend(self.path, precision=precision)
            self.backend.check_spec(self.spec)
        elif backend == "torch":
            if precision != "fp32":
                raise SpecError(f"precision={precision!r} is for backend='onnx'", hint="use dtype= for torch")
            self.backend = TorchBackend(self.path, device=device, dtype=dtype, trust_pickle=trust_pickle)
        else:
            raise SpecError(f"unknown backend {backend!r}", hint="use 'torch' or 'onnx'")
        self.pad_token_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, spec: EmbedderSpec, *, batch_size: int = 256,
                   show_progress: bool | None = None) -> Embedder:
        """An Embedder over an already loaded ``transformers`` model (e.g. during training), with the given spec.

        The model is used as it is (device, dtype, train/eval mode): put it in ``eval()`` mode for inference.
        """
        self = cls.__new__(cls)
        self.path = None
        self.spec = spec
        self.tokenizer = tokenizer
        self.backend = TorchBackend.from_model(model)
        limit = getattr(tokenizer, "model_max_length", None)
        self.model_max_length = limit if isinstance(limit, int) and 0 < limit < 1_000_000 else None
        self.batch_size = batch_size
        self.show_progress = show_progress
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        return self

    @property
    def dim(self) -> int:
        """Output dimension (after Matryoshka truncation)."""
        return self.spec.truncate_dim or self.backend.hidden_size

    @property
    def device(self) -> torch.device:
        """The device the model runs on."""
        return self.backend.device

    def __repr__(self) -> str:
        return f"Embedder({str(self.path)!r}, spec={self.spec!r}, device={str(self.device)!r})"

    # ------------------------------------------------------------------ public encode API
    def encode(
        self,
        texts: str | Iterable[str],
        batch_size: int | None = None,
        max_length: int | None = None,
        instruction: str | None = None,
        instruction_format: str | None = None,
        convert_to: ConvertTo = "numpy",
        show_progress: bool | None = None,
    ) -> np.ndarray | torch.Tensor:
        """Encode texts as they are (plus ``instruction``, if given), with the passage max length by default.

        Returns float32 ``(dim,)`` for a single string, ``(n, dim)`` for a list (``(0, dim)`` for ``[]``).
        """
        fmt = instruction_format or "{}{}"
        if instruction is not None:
            EmbedderSpec(query_instruction_format=fmt).validate()
        return self._encode(texts, lambda t: EmbedderSpec.apply_instruction(t, instruction, fmt),
                            max_length or self.spec.passage_max_length, batch_size, convert_to, show_progress)

    def encode_queries(
        self,
        texts: str | Iterable[str],
        batch_size: int | None = None,
        max_length: int | None = None,
        convert_to: ConvertTo = "numpy",
        show_progress: bool | None = None,
    ) -> np.ndarray | torch.Tensor:
        """Encode queries: the spec's query instruction and ``query_max_length`` apply."""
        return self._encode(texts, self.spec.format_query, max_length or self.spec.query_max_length,
                            batch_size, convert_to, show_progress)

    def encode_corpus(
        self,
        texts: str | Iterable[str],
        batch_size: int | None = None,
        max_length: int | None = None,
        convert_to: ConvertTo = "numpy",
        show_progress: bool | None = None,
    ) -> np.ndarray | torch.Tensor:
        """Encode passages: the spec's passage instruction (if any) and ``passage_max_length`` apply."""
        return self._encode(texts, self.spec.format_passage, max_length or self.spec.passage_max_length,
                            batch_size, convert_to, show_progress)

    # ------------------------------------------------------------------ core
    def tokenize(self, texts: list[str], max_length: int) -> dict[str, list[list[int]]]:
        """Tokenize without padding, truncating at ``max_length`` (as FlagEmbedding does)."""
        if not texts:
            return {"input_ids": [], "attention_mask": []}
        enc = self.tokenizer(texts, truncation=True, max_length=max_length, padding=False)
        return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    def _encode(self, texts, format_fn, max_length, batch_size, convert_to, show_progress):
        items, single = _check_texts(texts)
        if convert_to not in ("numpy", "torch"):
            raise SpecError(f"convert_to must be 'numpy' or 'torch', got {convert_to!r}")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length <= 0:
            raise SpecError(f"max_length must be a positive integer, got {max_length!r}")
        if self.model_max_length is not None and max_length > self.model_max_length:
            raise SpecError(f"max_length={max_length} exceeds what the model can take ({self.model_max_length})",
                            hint=f"pass max_length <= {self.model_max_length}")
        batch_size = batch_size or self.batch_size
        formatted = [format_fn(t) for t in items]
        if self.spec.do_lower_case:
            formatted = [t.lower() for t in formatted]
        out = np.empty((len(formatted), self.dim), dtype=np.float32)
        if formatted:
            self._encode_into(out, formatted, max_length, batch_size, show_progress)
        result: np.ndarray | torch.Tensor = out[0] if single else out
        return torch.from_numpy(result) if convert_to == "torch" else result

    def _progress(self, total: int, batch_size: int, show_progress: bool | None):
        from tqdm.auto import tqdm

        show = show_progress if show_progress is not None else self.show_progress
        if show is None:
            show = sys.stderr.isatty() and total > batch_size
        return tqdm(total=total, desc="Encoding", unit="text", disable=not show, leave=False)

    def _encode_into(self, out: np.ndarray, texts: list[str], max_length: int, batch_size: int,
                     show_progress: bool | None) -> None:
        features = self.tokenize(texts, max_length)
        order = length_sorted_order([len(ids) for ids in features["input_ids"]])
        padding_side = getattr(self.tokenizer, "padding_side", "right")
        spec = self.spec
        with self._progress(len(texts), batch_size, show_progress) as bar:
            pooled = getattr(self.backend, "pooled", False)
            for rows in batches(order, batch_size):
                padded = pad_features(features, rows, self.pad_token_id, padding_side)
                if pooled:  # the graph ends in embedkit.pooling.embed, traced with this spec
                    out[rows] = self.backend.forward(padded)
                    bar.update(len(rows))
                    continue
                hidden, mask = self.backend.forward(padded)
                vecs = pooling.embed(hidden, mask, spec.pooling, spec.normalize, spec.truncate_dim)
                out[rows] = vecs.float().cpu().numpy()
                bar.update(len(rows))
