"""``M3Embedder``: an :class:`~embedkit.Embedder` whose encode methods return bge-m3's three outputs.

Same spec resolution, text preparation, tokenization, token-length sorted batches and input-order restoration as the
dense Embedder: the only difference is the per-batch hook (:meth:`M3Embedder._outputs`, :class:`M3Outputs`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import batching
from ..backends import check_finite
from ..embedder import Embedder
from ..errors import CheckpointError, SpecError
from ..folder.m3_heads import COLBERT, MISSING_HEAD_HINT, SPARSE
from ..spec import EmbedderSpec
from .heads import M3Heads, M3Output, _check_colbert_dim, m3_outputs
from .lexical import LexicalWeights, process_token_weights, unused_token_ids
from .scores import SCORE_KEYS, check_pairs, colbert_score, lexical_matching_score, mixed_scores, mode_weights

Flags = tuple[bool | None, bool | None, bool | None, bool | None]
"""``(return_dense, return_sparse, return_colbert, return_colbert_vecs)`` as passed to an encode method."""


class M3Outputs:
    """The per-batch hook of :class:`M3Embedder`: dense vectors, lexical weights and ColBERT vectors, input order."""

    def __init__(self, m3: M3Embedder, n: int, dense: bool, sparse: bool, colbert: bool) -> None:
        self.m3, self.flags = m3, dict(dense=dense, sparse=sparse, colbert=colbert)
        self.dense = np.empty((n, m3.dim), dtype=np.float32) if dense else None
        self.lexical: list[Any] | None = [None] * n if sparse else None
        self.multi: list[Any] | None = [None] * n if colbert else None

    def add(self, rows: np.ndarray, padded: dict[str, np.ndarray]) -> None:
        out, mask = self.m3._forward(padded, **self.flags)
        self.m3._check_finite(out, mask, rows)
        real = padded["attention_mask"] > 0
        if self.dense is not None:
            self.dense[rows] = out.dense.float().cpu().numpy()
        if self.lexical is not None:
            weights = out.token_weights.float().cpu().numpy()
            for j, row in enumerate(rows):
                self.lexical[row] = process_token_weights(weights[j][real[j]], padded["input_ids"][j][real[j]].tolist(),
                                                          self.m3.unused_token_ids)
        if self.multi is not None:
            vecs = out.colbert.float().cpu().numpy()
            for j, row in enumerate(rows):
                self.multi[row] = vecs[j][real[j, 1:]]  # drops padding (a copy, not a view)

    def result(self, single: bool) -> dict[str, Any]:
        if single:
            return {"dense_vecs": None if self.dense is None else self.dense[0],
                    "lexical_weights": None if self.lexical is None else self.lexical[0],
                    "colbert_vecs": None if self.multi is None else self.multi[0]}
        return {"dense_vecs": self.dense, "lexical_weights": self.lexical, "colbert_vecs": self.multi}


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
        if self.backend.output != "hidden":
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

    # ------------------------------------------------------------------ encode API (the base class's, other outputs)
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
        return self._encode_as("text", texts, batch_size, max_length, show_progress,
                               (return_dense, return_sparse, return_colbert, return_colbert_vecs),
                               instruction=instruction, instruction_format=instruction_format)

    def encode_queries(self, texts: str | Iterable[str], batch_size: int | None = None, max_length: int | None = None,
                       *, return_dense: bool | None = None, return_sparse: bool | None = None,
                       return_colbert: bool | None = None, return_colbert_vecs: bool | None = None,
                       show_progress: bool | None = None, **kwargs: Any) -> Any:
        """Encode queries: the spec's query instruction and ``query_max_length`` apply. Returns as :meth:`encode`."""
        flags = (return_dense, return_sparse, return_colbert, return_colbert_vecs)
        return self._encode_as("query", texts, batch_size, max_length, show_progress, flags)

    def encode_corpus(self, texts: str | Iterable[str], batch_size: int | None = None, max_length: int | None = None,
                      *, return_dense: bool | None = None, return_sparse: bool | None = None,
                      return_colbert: bool | None = None, return_colbert_vecs: bool | None = None,
                      show_progress: bool | None = None, **kwargs: Any) -> Any:
        """Encode passages: the spec's passage instruction and ``passage_max_length`` apply; returns as
        :meth:`encode`."""
        flags = (return_dense, return_sparse, return_colbert, return_colbert_vecs)
        return self._encode_as("passage", texts, batch_size, max_length, show_progress, flags)

    # ------------------------------------------------------------------ core
    def _outputs(self, n: int, options: Flags) -> M3Outputs:
        """The per-batch hook: :class:`M3Outputs` for the outputs ``options`` ask for (the defaults for ``None``)."""
        return M3Outputs(self, n, *self._flags(*options))

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

    # ------------------------------------------------------------------ scores
    compute_lexical_matching_score = staticmethod(lexical_matching_score)
    colbert_score = staticmethod(colbert_score)

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
        pairs, single = check_pairs(sentence_pairs)
        weights = mode_weights(weights_for_different_modes)
        self._require_heads(sparse=True, colbert=True)
        max_q = self._check_max_length(max_query_length or self.spec.query_max_length, "max_query_length")
        max_p = self._check_max_length(max_passage_length or self.spec.passage_max_length, "max_passage_length")
        batch_size = batch_size or self.batch_size
        scores: dict[str, list[float]] = {k: [] for k in SCORE_KEYS}
        if not pairs:
            return scores
        q_features = self._prepare([q for q, _ in pairs], self.spec.prepare_query, max_q)
        p_features = self._prepare([p for _, p in pairs], self.spec.prepare_passage, max_p)
        # input order (sort=False): the padding FlagEmbedding sees
        q_batches = batching.padded_batches(q_features, self.tokenizer, batch_size, sort=False)
        p_batches = batching.padded_batches(p_features, self.tokenizer, batch_size, sort=False)
        for (_, q_padded), (_, p_padded) in zip(q_batches, p_batches, strict=True):
            q, q_mask = self._forward(q_padded, dense=True, sparse=True, colbert=True, sparse_vocab=True)
            p, _ = self._forward(p_padded, dense=True, sparse=True, colbert=True, sparse_vocab=True)
            with torch.inference_mode():
                mixed = mixed_scores(q, p, q_mask, weights)
            for key in SCORE_KEYS:
                scores[key].extend(mixed[key].cpu().tolist())
        return {k: v[0] for k, v in scores.items()} if single else scores

    # ------------------------------------------------------------------ tokens
    def convert_id_to_token(self, lexical_weights: LexicalWeights | Sequence[LexicalWeights]) -> Any:
        """Lexical weights keyed by readable tokens (``tokenizer.decode([id])``, as FlagEmbedding).

        A dict gives a dict and a list a list (FlagEmbedding also turns a one-element list into a bare dict).
        """
        if isinstance(lexical_weights, dict):
            return {self.tokenizer.decode([int(i)]): w for i, w in lexical_weights.items()}
        return [{self.tokenizer.decode([int(i)]): w for i, w in item.items()} for item in lexical_weights]


__all__ = ["M3Embedder", "M3Outputs"]
