"""bge-m3: dense, sparse (lexical weights) and multi-vector (ColBERT) outputs, and their scores.

The numbers are FlagEmbedding's ``BGEM3FlagModel`` ones (``_dense_embedding``, ``_sparse_embedding``,
``_colbert_embedding``, ``_process_token_weights``, ``_process_colbert_vecs``, ``compute_score``...); the tests compare
them side by side with FlagEmbedding. Two layers:

* pure, differentiable torch functions from the encoder's last hidden state and the two heads (:class:`M3Heads`) to
  the three representations and their scores (:func:`m3_outputs`, :func:`dense_scores`, :func:`sparse_scores`,
  :func:`colbert_scores`...): inference uses them, and so can a trainer (unified fine-tuning);
* :class:`M3Embedder`, an :class:`~embedkit.Embedder` (same spec resolution, tokenization, token-length sorted
  batches, input-order restoration, backends) whose ``encode*`` return the three outputs.

Example:
    >>> from embedkit import M3Embedder
    >>> m = M3Embedder("bge-m3", return_sparse=True, return_colbert=True)
    >>> out = m.encode(["what is bge-m3?", "BGE-M3 is a multilingual embedding model."])
    >>> out["dense_vecs"].shape, len(out["lexical_weights"]), out["colbert_vecs"][0].shape
    ((2, 1024), 2, (9, 1024))
    >>> m.compute_score([("what is bge-m3?", "BGE-M3 is a multilingual embedding model.")])["colbert+sparse+dense"]
    [0.62...]
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import pooling
from .batching import batches, pad_features
from .embedder import Embedder, _check_texts, check_finite
from .errors import CheckpointError, DataError, SpecError
from .folder.m3_heads import COLBERT, MISSING_HEAD_HINT, SPARSE, load_head, write_head
from .spec import EmbedderSpec
from .textio import writing

logger = logging.getLogger("embedkit")

DROPPED_SPECIAL_TOKENS = ("cls_token", "eos_token", "pad_token", "unk_token")
"""Special tokens that never get a lexical weight (FlagEmbedding's ``unused_tokens``)."""

SCORE_KEYS = ("colbert", "sparse", "dense", "sparse+dense", "colbert+sparse+dense")
"""The keys of :meth:`M3Embedder.compute_score`'s result, in FlagEmbedding's order."""

LexicalWeights = dict[str, Any]
"""``{token_id_as_str: weight}`` (weights are ``numpy.float32``, as FlagEmbedding returns them)."""


# ====================================================================== heads
class M3Heads(torch.nn.Module):
    """The two bge-m3 heads over the encoder's last hidden state (either may be ``None`` when absent).

    ``sparse_linear``: ``Linear(hidden, 1)``, one lexical weight per token (after ReLU).
    ``colbert_linear``: ``Linear(hidden, colbert_dim)`` (``colbert_dim``: the hidden size unless set), one vector per
    token.

    Example:
        >>> heads = M3Heads.from_folder("bge-m3", hidden_size=1024)      # inference
        >>> heads = M3Heads.create(hidden_size=1024)                     # new heads for unified fine-tuning
        >>> heads.save("out/my-m3")   # colbert_linear.pt / sparse_linear.pt (+ .safetensors)
    """

    def __init__(self, sparse_linear: torch.nn.Linear | None = None,
                 colbert_linear: torch.nn.Linear | None = None) -> None:
        super().__init__()
        self.register_module(SPARSE, sparse_linear)
        self.register_module(COLBERT, colbert_linear)

    sparse_linear: torch.nn.Linear | None
    colbert_linear: torch.nn.Linear | None

    @classmethod
    def create(cls, hidden_size: int, colbert_dim: int = -1, dtype: torch.dtype | None = None) -> M3Heads:
        """New, randomly initialized heads (``torch.nn.Linear``'s default init, as FlagEmbedding), for training."""
        out = hidden_size if colbert_dim <= 0 else colbert_dim
        return cls(torch.nn.Linear(hidden_size, 1, dtype=dtype), torch.nn.Linear(hidden_size, out, dtype=dtype))

    @classmethod
    def from_folder(cls, folder: str | Path, hidden_size: int, colbert_dim: int = -1, *, trust_pickle: bool = False,
                    dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> M3Heads:
        """The heads stored in ``folder`` (``.pt`` or ``.safetensors``); a head whose file is absent is ``None``.

        Raises :class:`CheckpointError` for a head that does not fit ``hidden_size`` (or ``colbert_dim`` when it is
        set; with ``-1`` the ColBERT output size is taken from the file), or a file that needs unsafe unpickling.
        """
        _check_colbert_dim(colbert_dim)
        modules: dict[str, torch.nn.Linear | None] = {}
        for name, out in ((SPARSE, 1), (COLBERT, colbert_dim if colbert_dim > 0 else None)):
            sd = load_head(folder, name, hidden_size=hidden_size, out_features=out, trust_pickle=trust_pickle)
            if sd is None:
                modules[name] = None
                continue
            linear = torch.nn.Linear(hidden_size, int(sd["weight"].shape[0]), dtype=dtype, device=device)
            linear.load_state_dict(sd)  # copies (and casts) into the module's dtype / device
            modules[name] = linear.eval()
        return cls(modules[SPARSE], modules[COLBERT])

    @property
    def colbert_dim(self) -> int | None:
        """Output size of the ColBERT head (``None`` without one)."""
        return None if self.colbert_linear is None else int(self.colbert_linear.out_features)

    def save(self, folder: str | Path) -> list[Path]:
        """Write each present head as ``<name>.pt`` (FlagEmbedding's file) and ``<name>.safetensors``."""
        written: list[Path] = []
        for name in (COLBERT, SPARSE):
            module = getattr(self, name)
            if module is not None:
                written += write_head(folder, name, module.state_dict())
        return written


def _check_colbert_dim(colbert_dim: int) -> None:
    if isinstance(colbert_dim, bool) or not isinstance(colbert_dim, int) or colbert_dim == 0 or colbert_dim < -1:
        raise SpecError(f"colbert_dim must be -1 (the hidden size / the file's) or a positive integer, "
                        f"got {colbert_dim!r}", hint="leave colbert_dim=-1 for bge-m3")


# ====================================================================== representations (differentiable)
@dataclass
class M3Output:
    """What :func:`m3_outputs` computed (``None`` for what was not asked for).

    Attributes:
        dense: ``(batch, dim)`` sentence vectors.
        token_weights: ``(batch, seq)`` ``relu(sparse_linear(h))`` per token (padding included).
        sparse: ``(batch, vocab_size)`` max weight per token id, special tokens zeroed (for scores / training).
        colbert: ``(batch, seq - 1, colbert_dim)`` per-token vectors for every token but the first (CLS); padding
            rows are zero.
    """

    dense: torch.Tensor | None = None
    token_weights: torch.Tensor | None = None
    sparse: torch.Tensor | None = None
    colbert: torch.Tensor | None = None


def sparse_token_weights(hidden: torch.Tensor, sparse_linear: torch.nn.Module) -> torch.Tensor:
    """``relu(sparse_linear(hidden))`` as ``(batch, seq)``: FlagEmbedding's per-token lexical weights."""
    return torch.relu(sparse_linear(hidden)).squeeze(-1)


def sparse_embedding(token_weights: torch.Tensor, input_ids: torch.Tensor, vocab_size: int,
                     unused_token_ids: Iterable[int] = ()) -> torch.Tensor:
    """``(batch, vocab_size)``: the max weight of each token id in each text; ``unused_token_ids`` set to 0.

    Out-of-place and differentiable (``scatter_reduce(amax)`` then a mask), so a trainer can use it too.
    """
    emb = token_weights.new_zeros(input_ids.shape[0], vocab_size)
    emb = emb.scatter_reduce(-1, input_ids.long(), token_weights.to(emb.dtype), reduce="amax")
    unused = sorted(set(int(i) for i in unused_token_ids if i is not None))
    if unused:
        keep = torch.ones(vocab_size, dtype=emb.dtype, device=emb.device)
        keep[unused] = 0
        emb = emb * keep
    return emb


def colbert_vectors(hidden: torch.Tensor, attention_mask: torch.Tensor, colbert_linear: torch.nn.Module,
                    normalize: bool = True, truncate_dim: int | None = None) -> torch.Tensor:
    """``(batch, seq - 1, dim)``: ``colbert_linear`` on every token but the first, padding zeroed, then truncated
    (Matryoshka) and L2-normalized, as FlagEmbedding's ``_colbert_embedding`` + inference ``forward``."""
    vecs = colbert_linear(hidden[:, 1:])
    vecs = vecs * attention_mask[:, 1:][:, :, None].float()
    if truncate_dim is not None:
        vecs = vecs[..., :truncate_dim]
    if normalize:
        vecs = torch.nn.functional.normalize(vecs, dim=-1)
    return vecs


def m3_outputs(hidden: torch.Tensor, attention_mask: torch.Tensor, heads: M3Heads, *,
               input_ids: torch.Tensor | None = None, pooling_method: str = "cls", normalize: bool = True,
               truncate_dim: int | None = None, dense: bool = True, sparse: bool = False, colbert: bool = False,
               vocab_size: int | None = None, unused_token_ids: Iterable[int] = ()) -> M3Output:
    """The bge-m3 representations of a batch from its last hidden state (differentiable: no ``no_grad`` inside).

    ``sparse=True`` gives ``token_weights``; with ``input_ids`` and ``vocab_size`` also the ``(batch, vocab)``
    ``sparse`` embedding used by :func:`sparse_scores`. Raises :class:`CheckpointError` when a needed head is None.
    """
    out = M3Output()
    if dense:
        out.dense = pooling.embed(hidden, attention_mask, pooling_method, normalize, truncate_dim)
    if sparse:
        if heads.sparse_linear is None:
            raise CheckpointError("no sparse_linear head", hint=MISSING_HEAD_HINT)
        out.token_weights = sparse_token_weights(hidden, heads.sparse_linear)
        if input_ids is not None and vocab_size is not None:
            out.sparse = sparse_embedding(out.token_weights, input_ids, vocab_size, unused_token_ids)
    if colbert:
        if heads.colbert_linear is None:
            raise CheckpointError("no colbert_linear head", hint=MISSING_HEAD_HINT)
        out.colbert = colbert_vectors(hidden, attention_mask, heads.colbert_linear, normalize, truncate_dim)
    return out


# ====================================================================== scores (differentiable)
def dense_scores(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``(Q, P)`` inner products of dense vectors (cosine when normalized)."""
    return q @ p.transpose(-2, -1)


def sparse_scores(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``(Q, P)`` lexical matching scores from ``(batch, vocab)`` sparse embeddings."""
    return q @ p.transpose(-2, -1)


def colbert_scores(q: torch.Tensor, p: torch.Tensor, q_mask: torch.Tensor) -> torch.Tensor:
    """``(Q, P)`` late-interaction scores: for each query token its best passage token, summed, divided by the
    query's token count (``q_mask[:, 1:]``), as FlagEmbedding's ``compute_colbert_score``.

    ``q`` / ``p`` are padded :func:`colbert_vectors` (``(B, seq - 1, dim)``); zero padding rows take part in the
    max, exactly as in FlagEmbedding.
    """
    token_scores = torch.einsum("qin,pjn->qipj", q, p)
    scores = token_scores.max(-1).values.sum(1)
    return scores / q_mask[:, 1:].sum(-1, keepdim=True)


def paired_colbert_scores(q: torch.Tensor, p: torch.Tensor, q_mask: torch.Tensor) -> torch.Tensor:
    """``(B,)``: the diagonal of :func:`colbert_scores` (query ``i`` with passage ``i``) without the ``(Q, P)`` work."""
    token_scores = torch.einsum("bin,bjn->bij", q, p)
    return token_scores.max(-1).values.sum(1) / q_mask[:, 1:].sum(-1)


# ====================================================================== host-side helpers
def unused_token_ids(tokenizer: Any) -> set[int]:
    """Ids of the tokenizer's cls / eos / pad / unk tokens (those it defines): they get no lexical weight."""
    found = set()
    special = tokenizer.special_tokens_map
    for name in DROPPED_SPECIAL_TOKENS:
        if name in special:
            found.add(int(tokenizer.convert_tokens_to_ids(special[name])))
    return found


def process_token_weights(token_weights: np.ndarray, input_ids: Sequence[int], unused: set[int]) -> LexicalWeights:
    """``{str(token_id): max weight}`` for the tokens with a weight > 0, special tokens dropped.

    FlagEmbedding's ``_process_token_weights``, value for value: weights stay ``numpy.float32``, keys are in the
    order of each id's first positive weight.
    """
    result: LexicalWeights = {}
    for w, idx in zip(token_weights, input_ids, strict=True):
        if idx not in unused and w > 0:
            key = str(idx)
            if w > result.get(key, 0):
                result[key] = w
    return result


def lexical_weights_to_csr(lexical_weights: Sequence[LexicalWeights]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(indptr int64 (n+1,), indices int64 token ids, data float32)``: CSR rows, token ids sorted in each row.

    ``scipy.sparse.csr_matrix((data, indices, indptr), shape=(n, vocab_size))`` reads it.
    """
    indptr = np.zeros(len(lexical_weights) + 1, dtype=np.int64)
    indices: list[int] = []
    data: list[float] = []
    for i, weights in enumerate(lexical_weights):
        items = sorted((int(k), v) for k, v in weights.items())
        indices.extend(k for k, _ in items)
        data.extend(v for _, v in items)
        indptr[i + 1] = len(indices)
    return indptr, np.asarray(indices, dtype=np.int64), np.asarray(data, dtype=np.float32)


def csr_to_lexical_weights(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray) -> list[LexicalWeights]:
    """The inverse of :func:`lexical_weights_to_csr` (``numpy.float32`` weights, keys sorted by token id)."""
    data = np.asarray(data, dtype=np.float32)
    return [{str(int(indices[j])): data[j] for j in range(indptr[i], indptr[i + 1])} for i in range(len(indptr) - 1)]


def colbert_to_ragged(colbert_vecs: Sequence[np.ndarray], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``(vectors float32 (total_tokens, dim), offsets int64 (n+1,))``: text ``i`` is
    ``vectors[offsets[i]:offsets[i+1]]``."""
    offsets = np.zeros(len(colbert_vecs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(v) for v in colbert_vecs], dtype=np.int64)
    if not colbert_vecs:
        return np.zeros((0, dim), dtype=np.float32), offsets
    return np.concatenate([np.asarray(v, dtype=np.float32).reshape(-1, dim) for v in colbert_vecs]), offsets


def m3_arrays(result: dict[str, Any], colbert_dim: int | None = None) -> dict[str, np.ndarray]:
    """The outputs of :meth:`M3Embedder.encode` (for a list) as flat arrays, for ``.npz`` files.

    ``dense`` ``(n, d)`` float32; ``sparse_indptr`` / ``sparse_indices`` (token ids) int64 and ``sparse_data``
    float32 (CSR, see :func:`lexical_weights_to_csr`); ``colbert_vecs`` ``(total_tokens, d)`` float32 and
    ``colbert_offsets`` ``(n + 1,)`` int64 (see :func:`colbert_to_ragged`). Absent outputs give no arrays.
    """
    arrays: dict[str, np.ndarray] = {}
    if result.get("dense_vecs") is not None:
        arrays["dense"] = np.asarray(result["dense_vecs"], dtype=np.float32)
    if result.get("lexical_weights") is not None:
        indptr, indices, data = lexical_weights_to_csr(result["lexical_weights"])
        arrays.update(sparse_indptr=indptr, sparse_indices=indices, sparse_data=data)
    if result.get("colbert_vecs") is not None:
        vecs = result["colbert_vecs"]
        dim = colbert_dim if colbert_dim is not None else (vecs[0].shape[-1] if vecs else 0)
        arrays["colbert_vecs"], arrays["colbert_offsets"] = colbert_to_ragged(vecs, dim)
    return arrays


def save_m3_npz(path: str | Path, result: dict[str, Any], colbert_dim: int | None = None) -> Path:
    """Write :func:`m3_arrays` of ``result`` to ``path`` (``.npz``, uncompressed) atomically; return the path."""
    path = Path(path)
    with writing(path) as fh:
        np.savez(fh, **m3_arrays(result, colbert_dim))
    return path


def save_lexical_jsonl(path: str | Path, lexical_weights: Sequence[LexicalWeights]) -> Path:
    """One ``{"token_id": weight}`` JSON object per text (input order), written atomically; return the path."""
    import json


    path = Path(path)
    with writing(path, mode="w") as fh:
        for weights in lexical_weights:
            fh.write(json.dumps({k: float(v) for k, v in weights.items()}) + "\n")
    return path


# ====================================================================== M3Embedder
class M3Embedder(Embedder):
    """bge-m3 with its three outputs: dense vectors, lexical weights (sparse) and ColBERT multi-vectors.

    Everything :class:`~embedkit.Embedder` takes (``pooling``, ``normalize``, ``query_instruction``,
    ``max_length`` / ``query_max_length`` / ``passage_max_length``, ``truncate_dim``, ``device``, ``dtype``,
    ``batch_size``, ``show_progress``, ``trust_pickle``...) is passed through; the spec resolves as for any model
    (a folder named ``*bge-m3*`` gets CLS + normalize, FlagEmbedding's M3 recipe). ``normalize`` also normalizes the
    ColBERT vectors and ``truncate_dim`` also truncates them, as in FlagEmbedding.

    Args:
        model: a local bge-m3 folder (``colbert_linear.pt`` / ``sparse_linear.pt`` or their ``.safetensors``).
        return_dense / return_sparse / return_colbert: what ``encode*`` return by default.
        colbert_dim: ColBERT head output size; ``-1``: the file's (FlagEmbedding: the hidden size).

    A missing head raises :class:`CheckpointError` (FlagEmbedding silently uses a random one) when its output is
    asked for; dense vectors need no head. Only the torch backend has the hidden states the heads need.

    Example:
        >>> m = M3Embedder("bge-m3", return_sparse=True)
        >>> out = m.encode_queries(["what is bge-m3?"])
        >>> m.convert_id_to_token(out["lexical_weights"])
        [{'what': 0.08, 'is': 0.08, 'bge': 0.25, '-': 0.04, 'm': 0.13, '3': 0.19, '?': 0.04}]
    """

    def __init__(self, model: str | Path, *, return_dense: bool = True, return_sparse: bool = False,
                 return_colbert: bool = False, colbert_dim: int = -1, **kwargs: Any) -> None:
        if kwargs.get("backend", "torch") != "torch":
            raise SpecError(f"M3Embedder needs backend='torch' (got {kwargs['backend']!r}): the sparse and ColBERT "
                            "heads read the encoder's hidden states, which the ONNX graph does not return",
                            hint="use Embedder(..., backend='onnx') for dense-only vectors")
        _check_colbert_dim(colbert_dim)
        super().__init__(model, **kwargs)
        if getattr(self.backend, "pooled", False) or not hasattr(self.backend, "model"):
            raise SpecError("M3Embedder needs the torch backend: this precision runs an ONNX graph that returns "
                            "only pooled vectors", hint="use precision='fp32' / 'bf16' / 'fp16'")
        heads = M3Heads.from_folder(self.path, self.backend.hidden_size, colbert_dim,
                                    trust_pickle=bool(kwargs.get("trust_pickle", False)),
                                    dtype=self.backend.dtype, device=self.backend.device)
        self._init_m3(heads, return_dense, return_sparse, return_colbert)

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, spec: EmbedderSpec, *, heads: M3Heads | None = None,
                   return_dense: bool = True, return_sparse: bool = False, return_colbert: bool = False,
                   batch_size: int = 256, show_progress: bool | None = None) -> M3Embedder:
        """An M3Embedder over an already loaded encoder and heads (e.g. during unified fine-tuning), used as they
        are (device, dtype; put them in ``eval()`` mode for inference)."""
        self = super().from_model(model, tokenizer, spec, batch_size=batch_size, show_progress=show_progress)
        self._init_m3(heads if heads is not None else M3Heads(), return_dense, return_sparse, return_colbert)
        return self

    def _init_m3(self, heads: M3Heads, return_dense: bool, return_sparse: bool, return_colbert: bool) -> None:
        self.heads = heads
        self.return_dense, self.return_sparse, self.return_colbert = return_dense, return_sparse, return_colbert
        self.unused_token_ids = unused_token_ids(self.tokenizer)
        self.vocab_size = int(self.backend.model.config.vocab_size)
        self._require_heads(sparse=return_sparse, colbert=return_colbert)
        self._m3_ready = True

    @property
    def colbert_dim(self) -> int | None:
        """Dimension of the ColBERT vectors ``encode`` returns (after ``truncate_dim``); ``None`` without the head."""
        dim = self.heads.colbert_dim
        if dim is not None and self.spec.truncate_dim is not None:
            dim = min(dim, self.spec.truncate_dim)
        return dim

    def __repr__(self) -> str:
        heads = [n for n in (SPARSE, COLBERT) if getattr(self.heads, n) is not None]
        return (f"M3Embedder({str(self.path)!r}, spec={self.spec!r}, heads={heads}, "
                f"device={str(self.device)!r})")

    def _require_heads(self, *, sparse: bool, colbert: bool) -> None:
        """Raise :class:`CheckpointError` naming the missing head file when its output is asked for."""
        for wanted, name, what in ((sparse, SPARSE, "sparse (lexical weights)"), (colbert, COLBERT, "ColBERT")):
            if wanted and getattr(self.heads, name) is None:
                where = self.path if self.path is not None else "the model passed to from_model"
                raise CheckpointError(f"{where} has no {name}.pt (nor {name}.safetensors): the {what} output of "
                                      "bge-m3 needs that head", hint=MISSING_HEAD_HINT)

    # ------------------------------------------------------------------ encode API
    def encode(self, texts: str | Iterable[str], batch_size: int | None = None, max_length: int | None = None, *,
               instruction: str | None = None, instruction_format: str | None = None,
               return_dense: bool | None = None, return_sparse: bool | None = None,
               return_colbert: bool | None = None, return_colbert_vecs: bool | None = None,
               show_progress: bool | None = None, **kwargs: Any) -> Any:
        """Encode texts as they are (plus ``instruction``), with the passage max length by default.

        Returns ``{"dense_vecs": (n, dim) float32, "lexical_weights": [{token_id: weight}], "colbert_vecs":
        [(tokens, dim) float32]}`` (``None`` for an output not asked for); for a single string, the values of that
        one text. ``return_colbert_vecs`` is FlagEmbedding's name for ``return_colbert``.
        """
        if not getattr(self, "_m3_ready", False):  # the base class setting up (e.g. its precision gate): dense only
            return super().encode(texts, batch_size=batch_size, max_length=max_length, instruction=instruction,
                                  instruction_format=instruction_format, show_progress=show_progress, **kwargs)
        fmt = instruction_format or "{}{}"
        if instruction is not None:
            EmbedderSpec(query_instruction_format=fmt).validate()
        return self._encode_m3(texts, lambda t: self.spec.prepare(t, instruction, fmt),
                               max_length or self.spec.passage_max_length, batch_size, show_progress,
                               (return_dense, return_sparse, return_colbert, return_colbert_vecs))

    def encode_queries(self, texts: str | Iterable[str], batch_size: int | None = None, max_length: int | None = None,
                       *, return_dense: bool | None = None, return_sparse: bool | None = None,
                       return_colbert: bool | None = None, return_colbert_vecs: bool | None = None,
                       show_progress: bool | None = None, **kwargs: Any) -> Any:
        """Encode queries: the spec's query instruction and ``query_max_length`` apply. Returns as :meth:`encode`."""
        if not getattr(self, "_m3_ready", False):
            return super().encode_queries(texts, batch_size=batch_size, max_length=max_length,
                                          show_progress=show_progress, **kwargs)
        return self._encode_m3(texts, self.spec.prepare_query, max_length or self.spec.query_max_length, batch_size,
                               show_progress, (return_dense, return_sparse, return_colbert, return_colbert_vecs))

    def encode_corpus(self, texts: str | Iterable[str], batch_size: int | None = None, max_length: int | None = None,
                      *, return_dense: bool | None = None, return_sparse: bool | None = None,
                      return_colbert: bool | None = None, return_colbert_vecs: bool | None = None,
                      show_progress: bool | None = None, **kwargs: Any) -> Any:
        """Encode passages: the spec's passage instruction and ``passage_max_length`` apply; returns as
        :meth:`encode`."""
        if not getattr(self, "_m3_ready", False):
            return super().encode_corpus(texts, batch_size=batch_size, max_length=max_length,
                                         show_progress=show_progress, **kwargs)
        return self._encode_m3(texts, self.spec.prepare_passage, max_length or self.spec.passage_max_length,
                               batch_size, show_progress, (return_dense, return_sparse, return_colbert,
                                                           return_colbert_vecs))

    # ------------------------------------------------------------------ core
    def _flags(self, dense: bool | None, sparse: bool | None, colbert: bool | None,
               colbert_vecs: bool | None) -> tuple[bool, bool, bool]:
        if colbert is not None and colbert_vecs is not None and bool(colbert) != bool(colbert_vecs):
            raise SpecError("return_colbert and return_colbert_vecs disagree", hint="pass only one of them")
        if colbert is None:
            colbert = colbert_vecs
        flags = (self.return_dense if dense is None else bool(dense),
                 self.return_sparse if sparse is None else bool(sparse),
                 self.return_colbert if colbert is None else bool(colbert))
        if not any(flags):
            raise SpecError("nothing to return: return_dense, return_sparse and return_colbert are all False",
                            hint="ask for at least one output")
        self._require_heads(sparse=flags[1], colbert=flags[2])
        return flags

    def _forward(self, padded: dict[str, np.ndarray], *, dense: bool, sparse: bool, colbert: bool,
                 sparse_vocab: bool = False) -> tuple[M3Output, torch.Tensor]:
        """One padded batch through the encoder and the heads: ``(outputs, attention_mask)``."""
        hidden, mask = self.backend.forward(padded)
        with torch.inference_mode():
            ids = torch.from_numpy(padded["input_ids"]).to(hidden.device) if sparse_vocab else None
            out = m3_outputs(hidden, mask, self.heads, input_ids=ids, pooling_method=self.spec.pooling,
                             normalize=self.spec.normalize, truncate_dim=self.spec.truncate_dim, dense=dense,
                             sparse=sparse, colbert=colbert, vocab_size=self.vocab_size,
                             unused_token_ids=self.unused_token_ids)
        return out, mask

    @staticmethod
    def _check_finite(out: M3Output, mask: torch.Tensor, rows: np.ndarray) -> None:
        """No NaN / infinity in what is returned (padding positions excluded): raise naming the input row."""
        real = mask.bool()
        if out.dense is not None:
            check_finite(out.dense, rows, "dense vector")
        if out.token_weights is not None:
            check_finite(torch.where(real, out.token_weights, 0), rows, "lexical weight")
        if out.colbert is not None:
            check_finite(torch.where(real[:, 1:, None], out.colbert, 0), rows, "ColBERT vector")

    def _encode_m3(self, texts: Any, format_fn: Any, max_length: Any, batch_size: int | None,
                   show_progress: bool | None, flags: tuple[bool | None, ...]) -> dict[str, Any]:
        items, single = _check_texts(texts)
        dense, sparse, colbert = self._flags(*flags)
        max_length = self._check_max_length(max_length)
        batch_size = batch_size or self.batch_size
        features = self._prepare(items, format_fn, max_length)
        n = len(items)
        dense_out = np.empty((n, self.dim), dtype=np.float32) if dense else None
        lexical: list[Any] | None = [None] * n if sparse else None
        multi: list[Any] | None = [None] * n if colbert else None
        if n:
            with self._progress(n, batch_size, show_progress) as bar:
                for rows, padded in self._padded_batches(features, batch_size):
                    out, mask = self._forward(padded, dense=dense, sparse=sparse, colbert=colbert)
                    self._check_finite(out, mask, rows)
                    real = padded["attention_mask"] > 0
                    if dense_out is not None:
                        dense_out[rows] = out.dense.float().cpu().numpy()
                    if lexical is not None:
                        weights = out.token_weights.float().cpu().numpy()
                        for j, row in enumerate(rows):
                            lexical[row] = process_token_weights(weights[j][real[j]],
                                                                 padded["input_ids"][j][real[j]].tolist(),
                                                                 self.unused_token_ids)
                    if multi is not None:
                        vecs = out.colbert.float().cpu().numpy()
                        for j, row in enumerate(rows):
                            multi[row] = vecs[j][real[j, 1:]]  # drops padding (a copy, not a view)
                    bar.update(len(rows))
        if single:
            return {"dense_vecs": None if dense_out is None else dense_out[0],
                    "lexical_weights": None if lexical is None else lexical[0],
                    "colbert_vecs": None if multi is None else multi[0]}
        return {"dense_vecs": dense_out, "lexical_weights": lexical, "colbert_vecs": multi}

    # ------------------------------------------------------------------ scores
    @staticmethod
    def compute_lexical_matching_score(lexical_weights_1: LexicalWeights | Sequence[LexicalWeights],
                                       lexical_weights_2: LexicalWeights | Sequence[LexicalWeights]) -> Any:
        """Sum over shared tokens of the product of their weights: a number for two dicts, an ``(n1, n2)`` array
        for two lists (FlagEmbedding's arithmetic: float32 weights, accumulated in order)."""
        def single(lw1: LexicalWeights, lw2: LexicalWeights) -> Any:
            score: Any = 0
            for token, weight in lw1.items():
                if token in lw2:
                    score += weight * lw2[token]
            return score

        if isinstance(lexical_weights_1, dict) and isinstance(lexical_weights_2, dict):
            return single(lexical_weights_1, lexical_weights_2)
        if isinstance(lexical_weights_1, list) and isinstance(lexical_weights_2, list):
            return np.array([[single(a, b) for b in lexical_weights_2] for a in lexical_weights_1])
        raise DataError("lexical weights must both be dicts (one text each) or both be lists",
                        hint="pass encode(...)['lexical_weights'] for each side")

    @staticmethod
    def colbert_score(q_reps: np.ndarray | torch.Tensor, p_reps: np.ndarray | torch.Tensor) -> float:
        """Late-interaction score of one query's and one passage's ColBERT vectors (``(tokens, dim)`` each): for each
        query token its best passage token, averaged over query tokens (FlagEmbedding's ``colbert_score``, as a
        float)."""
        q = q_reps if isinstance(q_reps, torch.Tensor) else torch.from_numpy(np.asarray(q_reps))
        p = p_reps if isinstance(p_reps, torch.Tensor) else torch.from_numpy(np.asarray(p_reps))
        if q.ndim != 2 or p.ndim != 2 or q.shape[0] == 0 or p.shape[0] == 0 or q.shape[1] != p.shape[1]:
            raise DataError(f"colbert_score needs two non-empty (tokens, dim) arrays of the same dim, got "
                            f"{tuple(q.shape)} and {tuple(p.shape)}",
                            hint="pass encode(...)['colbert_vecs'][i] of a query and of a passage")
        token_scores = torch.einsum("in,jn->ij", q, p)
        return float(token_scores.max(-1).values.sum() / q.shape[0])

    def compute_score(self, sentence_pairs: Sequence[tuple[str, str]] | tuple[str, str],
                      batch_size: int | None = None, max_query_length: int | None = None,
                      max_passage_length: int | None = None,
                      weights_for_different_modes: Sequence[float] | None = None) -> dict[str, Any]:
        """Dense, sparse and ColBERT scores of (query, passage) pairs, and their weighted mixes.

        ``weights_for_different_modes = [w_dense, w_sparse, w_colbert]`` (default ``[1, 1, 1]``):
        ``"sparse+dense" = (w_sparse * sparse + w_dense * dense) / (w_sparse + w_dense)`` and
        ``"colbert+sparse+dense" = (w_colbert * colbert + w_sparse * sparse + w_dense * dense) / sum(weights)``.
        Returns ``{key: [float, ...]}`` for :data:`SCORE_KEYS` (floats for a single pair; empty lists for ``[]``).

        As FlagEmbedding: pairs run in input order in chunks of ``batch_size`` (ColBERT's max also sees the zero
        vectors of a passage's padding within its chunk). Unlike FlagEmbedding, the spec's query / passage
        instructions apply (bge-m3 has none, so the scores are the same).
        """
        pairs, single = self._check_pairs(sentence_pairs)
        weights = self._mode_weights(weights_for_different_modes)
        self._require_heads(sparse=True, colbert=True)
        max_q = self._check_max_length(max_query_length or self.spec.query_max_length, "max_query_length")
        max_p = self._check_max_length(max_passage_length or self.spec.passage_max_length, "max_passage_length")
        batch_size = batch_size or self.batch_size
        scores: dict[str, list[float]] = {k: [] for k in SCORE_KEYS}
        if not pairs:
            return scores
        q_features = self._prepare([q for q, _ in pairs], self.spec.prepare_query, max_q)
        p_features = self._prepare([p for _, p in pairs], self.spec.prepare_passage, max_p)
        padding_side = getattr(self.tokenizer, "padding_side", "right")
        w_dense, w_sparse, w_colbert = weights
        for rows in batches(np.arange(len(pairs)), batch_size):  # input order: the padding FlagEmbedding sees
            q, q_mask = self._forward(pad_features(q_features, rows, self.pad_token_id, padding_side),
                                      dense=True, sparse=True, colbert=True, sparse_vocab=True)
            p, _ = self._forward(pad_features(p_features, rows, self.pad_token_id, padding_side),
                                 dense=True, sparse=True, colbert=True, sparse_vocab=True)
            with torch.inference_mode():
                dense = torch.einsum("bd,bd->b", q.dense, p.dense).float()
                sparse = torch.einsum("bv,bv->b", q.sparse, p.sparse).float()
                colbert = paired_colbert_scores(q.colbert, p.colbert, q_mask).float()
                mixed = {
                    "colbert": colbert, "sparse": sparse, "dense": dense,
                    "sparse+dense": (sparse * w_sparse + dense * w_dense) / (w_sparse + w_dense),
                    "colbert+sparse+dense": (colbert * w_colbert + sparse * w_sparse + dense * w_dense) / sum(weights),
                }
            for key in SCORE_KEYS:
                scores[key].extend(mixed[key].cpu().tolist())
        return {k: v[0] for k, v in scores.items()} if single else scores

    @staticmethod
    def _check_pairs(sentence_pairs: Any) -> tuple[list[tuple[str, str]], bool]:
        if isinstance(sentence_pairs, (tuple, list)) and len(sentence_pairs) == 2 \
                and all(isinstance(s, str) for s in sentence_pairs):
            return [(sentence_pairs[0], sentence_pairs[1])], True
        if isinstance(sentence_pairs, (str, bytes)) or not isinstance(sentence_pairs, Iterable):
            raise TypeError(f"sentence_pairs must be a (query, passage) pair or a list of them, "
                            f"got {type(sentence_pairs).__name__}")
        pairs = list(sentence_pairs)
        for i, pair in enumerate(pairs):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
                raise TypeError(f"sentence_pairs[{i}] is not a (query, passage) pair of strings: {pair!r:.80}")
        return [(q, p) for q, p in pairs], False

    @staticmethod
    def _mode_weights(weights: Sequence[float] | None) -> tuple[float, float, float]:
        if weights is None:
            return (1.0, 1.0, 1.0)
        values = tuple(float(w) for w in weights)
        if len(values) != 3:
            raise SpecError(f"weights_for_different_modes needs 3 weights (dense, sparse, colbert), got {len(values)}",
                            hint="e.g. [0.4, 0.2, 0.4]")
        if values[0] + values[1] == 0 or sum(values) == 0:
            raise SpecError(f"weights_for_different_modes {list(values)} sum to 0: the mixed scores divide by it",
                            hint="e.g. [0.4, 0.2, 0.4]")
        return values  # type: ignore[return-value]

    # ------------------------------------------------------------------ tokens
    def convert_id_to_token(self, lexical_weights: LexicalWeights | Sequence[LexicalWeights]) -> Any:
        """Lexical weights keyed by readable tokens (``tokenizer.decode([id])``, as FlagEmbedding).

        A dict gives a dict and a list a list (FlagEmbedding also turns a one-element list into a bare dict).
        """
        if isinstance(lexical_weights, dict):
            return {self.tokenizer.decode([int(i)]): w for i, w in lexical_weights.items()}
        return [{self.tokenizer.decode([int(i)]): w for i, w in item.items()} for item in lexical_weights]


__all__ = ["M3Embedder", "M3Heads", "M3Output", "m3_outputs", "sparse_token_weights", "sparse_embedding",
           "colbert_vectors", "dense_scores", "sparse_scores", "colbert_scores", "paired_colbert_scores",
           "process_token_weights", "unused_token_ids", "lexical_weights_to_csr", "csr_to_lexical_weights",
           "colbert_to_ragged", "m3_arrays", "save_m3_npz", "save_lexical_jsonl", "SCORE_KEYS",
           "DROPPED_SPECIAL_TOKENS"]
