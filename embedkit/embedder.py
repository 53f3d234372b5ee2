"""``Embedder``: FlagEmbedding-compatible encoding over a backend, driven by one :class:`EmbedderSpec`."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from . import batching, pooling
from .backends.onnx_backend import OnnxBackend
from .backends.torch_backend import TorchBackend, resolve_device
from .batching import chars_per_token
from .dtypes import resolve_dtype
from .errors import CheckpointError, EmbedkitError, SpecError
from .folder.layout import check_model_folder
from .folder.loading import load_tokenizer
from .models import resolve_model_path
from .precision import DEFAULT_GATE, cached_verdict, gate_key, judge, select_precision, store_verdict
from .spec import EmbedderSpec, load_spec, model_token_limit
from .verify import SAMPLE_TEXTS

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
        precision: ``"fp32"`` (default: exact, equal to the peers), ``"auto"`` (bf16 on CPUs with bf16 matrix
            units, fp16 on CUDA, else fp32), ``"bf16"``, ``"fp16"`` or ``"int8"`` (the ONNX export's quality-gated
            int8 graph). Non-fp32 precisions pass a quality gate against fp32 on first use (cached on disk) and
            fall back to fp32 with a warning when they fail it; ``m.precision`` / ``m.precision_reason`` tell.
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
        self.quality: dict[str, Any] | None = None
        self._init_backend(backend, precision, dtype, device, precision_gate, trust_pickle)

    def _init_backend(self, backend: str, precision: str | None, dtype: Any, device: Any,
                      gate: tuple[float, float] | None, trust_pickle: bool) -> None:
        """Pick the backend and precision (:meth:`_choose_backend`), then say once, at INFO, what was picked and
        the quality gate's verdict (``precision: bf16 (auto: ...), quality gate passed: mean cosine ..., min ...
        (cached)``) when a precision was asked for; :attr:`precision_summary` holds the short form."""
        self.precision_requested: str | None = precision
        self._gate_cached = False
        self._gate_candidate: str | None = None
        self._choose_backend(backend, precision, dtype, device, gate, trust_pickle)
        if self.precision_requested is not None:
            logger.info("precision: %s (%s)%s", self.precision, self.precision_reason, self._gate_note())

    def _gate_note(self) -> str:
        """``, quality gate passed: mean cosine 0.99991, min 0.99962 (cached)`` (empty without a gate)."""
        q = self.quality or {}
        if self.precision == "int8" and "mean_cosine" in q:
            return (f", the export's int8 gate passed: mean cosine {q['mean_cosine']:.5f}, "
                    f"min {q['min_cosine']:.5f}")
        if "passed" not in q:
            return ""
        verdict = "passed" if q["passed"] else f"failed for {self._gate_candidate}"
        return (f", quality gate {verdict}: mean cosine {q['mean_cosine']:.5f}, min {q['min_cosine']:.5f}"
                + (" (cached)" if self._gate_cached else ""))

    @property
    def precision_summary(self) -> str:
        """The precision in use, whether ``auto`` picked it, and the gate's verdict, e.g. ``"bf16 (auto, gate
        passed)"``, ``"fp32 (auto, bf16 failed the gate)"``, ``"fp32"`` (what ``embedkit encode`` prints)."""
        q = self.quality or {}
        notes = ["auto"] if getattr(self, "precision_requested", None) == "auto" else []
        if self.precision == "int8" and q.get("kept"):
            notes.append("export gate passed")
        elif "passed" in q:
            notes.append("gate passed" if q["passed"] else f"{getattr(self, '_gate_candidate', None)} failed the gate")
        return f"{self.precision} ({', '.join(notes)})" if notes else self.precision

    def _choose_backend(self, backend: str, precision: str | None, dtype: Any, device: Any,
                        gate: tuple[float, float] | None, trust_pickle: bool) -> None:
        """Pick the backend and precision; run (or reuse) the quality gate for anything but fp32."""
        if dtype is not None:  # the older, torch-only spelling
            named = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[resolve_dtype(dtype)]
            if precision not in (None, named):
                raise SpecError(f"dtype={dtype!r} and precision={precision!r} disagree", hint="pass only precision=")
            precision = named
            self.precision_requested = named
        if backend not in ("torch", "onnx"):
            raise SpecError(f"unknown backend {backend!r}", hint="use 'torch' or 'onnx'")
        dev = resolve_device(device) if backend == "torch" else torch.device("cpu")
        choice = select_precision(precision, dev.type)
        self.precision, self.precision_reason = choice.precision, choice.reason
        if backend == "onnx" or choice.precision == "int8":
            onnx_precision = "int8" if choice.precision == "int8" else "fp32"
            if backend == "onnx" and choice.precision not in ("fp32", "int8"):
                raise SpecError(f"precision={choice.precision!r} is not available for backend='onnx'",
                                hint="use 'fp32' or 'int8'")
            try:
                self.backend = OnnxBackend(self.path, precision=onnx_precision)
            except CheckpointError as exc:
                if backend == "onnx":
                    raise
                logger.warning("precision='int8' needs the ONNX int8 graph (%s); using fp32", exc.message)
                self.precision, self.precision_reason = "fp32", f"int8 unavailable: {exc.message}"
                self.backend = TorchBackend(self.path, device=dev, trust_pickle=trust_pickle)
                return
            self.backend.check_spec(self.spec)
            if onnx_precision == "int8":
                self.quality = (self.backend.info.get("int8") or {}) | {"source": "export gate"}
            return
        if choice.precision == "fp32" or gate is None:
            self.backend = TorchBackend(self.path, device=dev, dtype=choice.precision, trust_pickle=trust_pickle)
            return
        key = gate_key(self.path, self.spec.to_dict(), choice.precision, str(dev))
        verdict = cached_verdict(key)
        self._gate_cached, self._gate_candidate = verdict is not None, choice.precision
        if verdict is None:  # first use on this machine: measure against fp32 once
            self.backend = TorchBackend(self.path, device=dev, trust_pickle=trust_pickle)
            reference = self.encode(list(SAMPLE_TEXTS), show_progress=False)
            self.backend.model.to(resolve_dtype(choice.precision))
            self.backend.dtype = resolve_dtype(choice.precision)
            try:
                verdict = judge(reference, self.encode(list(SAMPLE_TEXTS), show_progress=False), gate)
            except NonFiniteOutputError:  # e.g. fp16 overflow: the precision fails its gate
                verdict = {"passed": False, "mean_cosine": 0.0, "min_cosine": 0.0, "gate": list(gate),
                           "texts": len(SAMPLE_TEXTS), "non_finite": True}
            store_verdict(key, verdict)
            if not verdict["passed"]:
                self.backend = TorchBackend(self.path, device=dev, trust_pickle=trust_pickle)
        elif verdict["passed"]:
            self.backend = TorchBackend(self.path, device=dev, dtype=choice.precision, trust_pickle=trust_pickle)
        else:
            self.backend = TorchBackend(self.path, device=dev, trust_pickle=trust_pickle)
        self.quality = verdict
        if not verdict["passed"]:
            logger.warning("%s failed the quality gate for %s (mean cosine %.5f, min %.5f vs fp32; needs %s / %s): "
                           "using fp32", choice.precision, self.path.name, verdict["mean_cosine"],
                           verdict["min_cosine"], *gate)
            self.precision = "fp32"
            self.precision_reason = f"{choice.precision} failed the quality gate: {self.precision_reason}"

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, spec: EmbedderSpec, *, batch_size: int = 256,
                   show_progress: bool | None = None) -> Embedder:
        """An Embedder over an already loaded ``transformers`` model (e.g. during training), with the given spec.

        The model is used as it is (device, dtype, train/eval mode): put it in ``eval()`` mode for inference.
        """
        self = cls.__new__(cls)
        self.path = None
        self.spec = spec
        self.precision, self.precision_reason, self.quality = "fp32", "from_model", None
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
        """Round padded widths up to 16 for bf16 / fp16 (AMX tiles; fewer kernel shapes); exact fp32 pads to the
        longest text, as the peers do."""
        return 16 if self.precision in ("bf16", "fp16") else 1

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
        return self._encode(texts, lambda t: self.spec.prepare(t, instruction, fmt),
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
        return self._encode(texts, self.spec.prepare_query, max_length or self.spec.query_max_length,
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
        return self._encode(texts, self.spec.prepare_passage, max_length or self.spec.passage_max_length,
                            batch_size, convert_to, show_progress)

    # ------------------------------------------------------------------ core
    def tokenize(self, texts: list[str], max_length: int) -> dict[str, list[list[int]]]:
        """Tokenize without padding, truncating at ``max_length`` (as FlagEmbedding does).

        Texts far longer than ``max_length`` tokens can be are cut to a character budget first
        (:func:`embedkit.batching.cut_to_budget`: same tokens, a fraction of the time and memory)."""
        budget = getattr(self, "_char_budget", None)
        if budget is None and texts:
            budget = self._char_budget = chars_per_token(self.tokenizer)
        return batching.tokenize(self.tokenizer, texts, max_length, budget=budget)

    def _encode(self, texts, format_fn, max_length, batch_size, convert_to, show_progress):
        items, single = _check_texts(texts)
        if convert_to not in ("numpy", "torch"):
            raise SpecError(f"convert_to must be 'numpy' or 'torch', got {convert_to!r}")
        max_length = self._check_max_length(max_length)
        batch_size = batch_size or self.batch_size
        out = np.empty((len(items), self.dim), dtype=np.float32)
        if items:
            self._encode_into(out, self._prepare(items, format_fn, max_length), batch_size, show_progress)
        result: np.ndarray | torch.Tensor = out[0] if single else out
        return torch.from_numpy(result) if convert_to == "torch" else result

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

    def _encode_into(self, out: np.ndarray, features: dict[str, list[list[int]]], batch_size: int,
                     show_progress: bool | None) -> None:
        spec = self.spec
        pooled = getattr(self.backend, "pooled", False)
        with self._progress(len(out), batch_size, show_progress) as bar:
            for rows, padded in self._padded_batches(features, batch_size):
                if pooled:  # the graph ends in embedkit.pooling.embed, traced with this spec
                    vecs = np.asarray(self.backend.forward(padded))
                    check_finite(vecs, rows, "vector")
                    out[rows] = vecs
                else:
                    hidden, mask = self.backend.forward(padded)
                    vecs = pooling.embed(hidden, mask, spec.pooling, spec.normalize, spec.truncate_dim)
                    check_finite(vecs, rows, "vector")
                    out[rows] = vecs.float().cpu().numpy()
                bar.update(len(rows))
