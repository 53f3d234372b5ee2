"""bge-m3's two heads and the three representations they give (pure, differentiable torch: inference and training).

FlagEmbedding's ``_dense_embedding``, ``_sparse_embedding`` and ``_colbert_embedding``, value for value.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import pooling
from ..errors import CheckpointError, SpecError
from ..folder.m3_heads import COLBERT, MISSING_HEAD_HINT, SPARSE, load_head, write_head


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


__all__ = ["M3Heads", "M3Output", "m3_outputs", "sparse_token_weights", "sparse_embedding", "colbert_vectors"]
