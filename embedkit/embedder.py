"""``Embedder``: FlagEmbedding-compatible encoding over a backend, driven by one :class:`EmbedderSpec`."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from . import batching
from .backends import Backend, NonFiniteOutputError, check_finite, vectors
from .backends.factory import create_backend, pad_multiple
from .backends.torch_backend import TorchBackend
from .batching import chars_per_token
from .errors import SpecError
from .folder.layout import check_model_folder
from .folder.loading import load_tokenizer
from .models import resolve_model_path
from .precision import DEFAULT_GATE, PrecisionInfo
from .spec import EmbedderSpec, load_spec, model_token_limit

logger = logging.getLogger("embedkit")

ConvertTo = Literal["numpy", "torch"]
Role = Literal["text", "query", "passage"]


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


class Outputs(Protocol):
    """What one encode call collects: :meth:`Embedder._outputs` makes it, the encode loop feeds it each padded batch
    (``add``) and returns its ``result`` (the one per-batch hook :class:`~embedkit.m3.M3Embedder` overrides)."""

    def add(self, rows: np.ndarray, padded: dict[str, np.ndarray]) -> None:
        """Run one padded batch (``rows``: the input positions of its texts) and keep what it gives."""
        ...

    def result(self, single: bool) -> Any:
        """What the encode method returns (``single``: one string was passed, return its own value)."""
        ...


class DenseOutputs:
    """Final vectors in an ``(n, dim)`` float32 array, in input order (numpy or, with ``convert_to``, torch)."""

    def __init__(self, backend: Backend, spec: EmbedderSpec, n: int, dim: int, convert_to: ConvertTo) -> None:
        if convert_to not in ("numpy", "torch"):
            raise SpecError(f"convert_to must be 'numpy' or 'torch', got {convert_to!r}")
        self.backend, self.spec, self.convert_to = backend, spec, convert_to
        self.out = np.empty((n, dim), dtype=np.float32)

    def add(self, rows: np.ndarray, padded: dict[str, np.ndarray]) -> None:
        self.out[rows] = vectors(self.backend, padded, self.spec, rows)

    def result(self, single: bool) -> np.ndarray | torch.Tensor:
        result = self.out[0] if single else self.out
        return torch.from_numpy(result) if self.convert_to == "torch" else result


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
        precision: ``"fp32"`` (default: exact, equal to the peers), ``"auto"`` (on CPU: the fastest of fp32,
            int8-torch, the folder's ONNX int8 and native bf16 that passes the gate, measured once per host and
            cached; fp16 on CUDA), ``"bf16"``, ``"fp16"``, ``"int8"`` (the ONNX export's quality-gated int8 graph)
            or ``"int8-torch"`` (dynamically quantized int8 linears, CPU). Non-fp32 precisions pass a quality gate
            against fp32 on first use (cached on disk) and fall back to fp32 with a warning when they fail it;
            ``m.precision`` / ``m.precision_reason`` / ``m.precision_summary`` tell.
        precision_gate: ``(min mean cosine, min cosine)`` vs fp32 for that gate (default 0.999 / 0.995).
        backend: ``"torch"`` (default) or ``"onnx"`` (the folder's ``onnx/embedder.onnx`` from
            ``embedkit export onnx``, through onnxruntime).
        batch_size: texts per forward pass (the cap when ``max_batch_tokens`` is set).
        max_batch_tokens: fill batches by padded token count (after length sorting) instead of by count: short
            texts ride in big batches, long ones in small (text-embeddings-inference's token budget).
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
        precision: str | None = None,
        precision_gate: tuple[float, float] | None = DEFAULT_GATE,
        max_batch_tokens: int | None = None,
        trust_pickle: bool = False,
    ) -> None:
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
        if max_batch_tokens is not None and (isinstance(max_batch_tokens, bool) or max_batch_tokens <= 0):
            raise SpecError(f"max_batch_tokens must be a positive integer, got {max_batch_tokens!r}")
        self.max_batch_tokens = max_batch_tokens
        self.pad_token_id = batching.pad_token_id(self.tokenizer)
        self.backend, self.precision_info = create_backend(
            self.path, self.spec, tokenizer=self.tokenizer, backend=backend, precision=precision, dtype=dtype,
            device=device, gate=precision_gate, trust_pickle=trust_pickle, batch_size=batch_size,
            max_batch_tokens=max_batch_tokens)

    # ------------------------------------------------------------------ precision (see create_backend)
    @property
    def precision(self) -> str:
        """The precision the model runs in (``fp32`` / ``bf16`` / ``fp16`` / ``int8``)."""
        return self.precision_info.precision

    @property
    def precision_reason(self) -> str:
        """Why that precision (asked for, ``auto``'s rule, a failed gate...)."""
        return self.precision_info.reason

    @property
    def precision_requested(self) -> str | None:
        """The precision asked for (``None``: the fp32 default)."""
        return self.precision_info.requested

    @property
    def quality(self) -> dict[str, Any] | None:
        """The quality gate's verdict vs fp32 (or the ONNX export's int8 gate record); ``None`` when none ran."""
        return self.precision_info.quality

    @property
    def precision_summary(self) -> str:
        """The precision in use, whether ``auto`` picked it, and the gate's verdict, e.g. ``"bf16 (auto, gate
        passed)"``, ``"fp32 (auto, bf16 failed the gate)"``, ``"fp32"`` (what ``embedkit encode`` prints)."""
        return self.precision_info.summary

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, spec: EmbedderSpec, *, batch_size: int = 256,
                   show_progress: bool | None = None) -> Embedder:
        """An Embedder over an already loaded ``transformers`` model (e.g. during training), with the given spec.

        The model is used as it is (device, dtype, train/eval mode): put it in ``eval()`` mode for inference.
        """
        self = cls.__new__(cls)
        self.path = None
        self.spec = spec
        self.precision_info = PrecisionInfo("fp32", "from_model")
        self.max_batch_tokens = None
        self.tokenizer = tokenizer
        self.backend = TorchBackend.from_model(model)
        limit = getattr(tokenizer, "model_max_length", None)
        self.model_max_length = limit if isinstance(limit, int) and 0 < limit < 1_000_000 else None
        self.batch_size = batch_size
        self.show_progress = show_progress
        self.pad_token_id = batching.pad_token_id(tokenizer)
        return self

    @property
    def _pad_multiple(self) -> int:
        """Round padded widths up to 16 for bf16 / fp16 (:func:`embedkit.backends.factory.pad_multiple`)."""
        return pad_multiple(self.precision)

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
        return self._encode_as("text", texts, batch_size, max_length, show_progress, convert_to,
                               instruction=instruction, instruction_format=instruction_format)

    def encode_queries(self, texts: str | Iterable[str], batch_size: int | None = None, max_length: int | None = None,
                       convert_to: ConvertTo = "numpy", show_progress: bool | None = None) -> np.ndarray | torch.Tensor:
        """Encode queries: the spec's query instruction and ``query_max_length`` apply."""
        return self._encode_as("query", texts, batch_size, max_length, show_progress, convert_to)

    def encode_corpus(self, texts: str | Iterable[str], batch_size: int | None = None, max_length: int | None = None,
                      convert_to: ConvertTo = "numpy", show_progress: bool | None = None) -> np.ndarray | torch.Tensor:
        """Encode passages: the spec's passage instruction (if any) and ``passage_max_length`` apply."""
        return self._encode_as("passage", texts, batch_size, max_length, show_progress, convert_to)

    # ------------------------------------------------------------------ core
    def tokenize(self, texts: list[str], max_length: int) -> dict[str, list[list[int]]]:
        """Tokenize without padding, truncating at ``max_length`` (as FlagEmbedding does).

        Texts far longer than ``max_length`` tokens can be are cut to a character budget first
        (:func:`embedkit.batching.cut_to_budget`: same tokens, a fraction of the time and memory)."""
        budget = getattr(self, "_char_budget", None)
        if budget is None and texts:
            budget = self._char_budget = chars_per_token(self.tokenizer)
        return batching.tokenize(self.tokenizer, texts, max_length, budget=budget)

    def _encode_as(self, role: Role, texts: Any, batch_size: int | None, max_length: int | None,
                   show_progress: bool | None, options: Any, *, instruction: str | None = None,
                   instruction_format: str | None = None) -> Any:
        """The three public encode methods in one: ``role`` picks the text preparation and the default max length
        (``"text"``: ``instruction`` as given and the passage max length); ``options`` go to :meth:`_outputs`."""
        if role == "text":
            fmt = instruction_format or "{}{}"
            if instruction is not None:
                EmbedderSpec(query_instruction_format=fmt).validate()
            prepare: Any = partial(self.spec.prepare, instruction=instruction, instruction_format=fmt)
            default = self.spec.passage_max_length
        elif role == "query":
            prepare, default = self.spec.prepare_query, self.spec.query_max_length
        else:
            prepare, default = self.spec.prepare_passage, self.spec.passage_max_length
        return self._encode(texts, prepare, max_length or default, batch_size, show_progress, options)

    def _encode(self, texts: Any, format_fn: Any, max_length: Any, batch_size: int | None,
                show_progress: bool | None, options: Any) -> Any:
        """Check, prepare and tokenize ``texts``, then feed every padded batch to :meth:`_outputs`' collector."""
        items, single = _check_texts(texts)
        outputs = self._outputs(len(items), options)
        max_length = self._check_max_length(max_length)
        batch_size = batch_size or self.batch_size
        if items:
            features = self._prepare(items, format_fn, max_length)
            with self._progress(len(items), batch_size, show_progress) as bar:
                for rows, padded in self._padded_batches(features, batch_size):
                    outputs.add(rows, padded)
                    bar.update(len(rows))
        return outputs.result(single)

    def _outputs(self, n: int, options: Any) -> Outputs:
        """The per-batch hook: what collects the outputs of ``n`` texts (``options``: ``convert_to`` here; the
        return flags in :class:`~embedkit.m3.M3Embedder`)."""
        return DenseOutputs(self.backend, self.spec, n, self.dim, options)

    def _check_max_length(self, max_length: Any, name: str = "max_length") -> int:
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length <= 0:
            raise SpecError(f"{name} must be a positive integer, got {max_length!r}")
        if self.model_max_length is not None and max_length > self.model_max_length:
            raise SpecError(f"{name}={max_length} exceeds what the model can take ({self.model_max_length})",
                            hint=f"pass {name} <= {self.model_max_length}")
        return max_length

    def _prepare(self, texts: list[str], format_fn: Any, max_length: int) -> dict[str, list[list[int]]]:
        """Text preparation (``format_fn``: one of :meth:`EmbedderSpec.prepare` / ``prepare_query`` /
        ``prepare_passage``), then tokenization without padding."""
        return self.tokenize([format_fn(t) for t in texts], max_length)

    def _padded_batches(self, features: dict[str, list[list[int]]], batch_size: int
                        ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """``(rows, padded features)``: token-length sorted, by count or by ``max_batch_tokens``, padded (to a
        multiple of 16 in bf16 / fp16). Every encode loop (dense, bge-m3) goes through here."""
        yield from batching.padded_batches(features, self.tokenizer, batch_size,
                                           max_tokens=getattr(self, "max_batch_tokens", None),
                                           multiple_of=self._pad_multiple)

    def _progress(self, total: int, batch_size: int, show_progress: bool | None):
        from tqdm.auto import tqdm

        show = show_progress if show_progress is not None else self.show_progress
        if show is None:
            show = sys.stderr.isatty() and total > batch_size
        return tqdm(total=total, desc="Encoding", unit="text", disable=not show, leave=False)


__all__ = ["Embedder", "NonFiniteOutputError", "check_finite", "DenseOutputs", "Outputs", "ConvertTo"]
