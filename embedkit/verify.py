"""Comparing vectors: the one built-in text sample and the one comparison every check uses.

Who uses it: the precision quality gate (bf16 / fp16 vs fp32, :mod:`embedkit.precision`), ``convert`` (the source's
vectors vs the converted model's), ``merge`` (merged vs base + adapter), ``export onnx`` (the graph vs PyTorch, and
the int8 gate) and ``embedkit parity`` (every engine vs embedkit's PyTorch backend). Each of them runs the whole of
:data:`SAMPLE_TEXTS` by default (the int8 gate adds ``--calibration`` texts to it, never replaces it), so a model
that passes one check has been measured on the same texts as the others.

Example:
    >>> import numpy as np
    >>> c = compare(np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32))
    >>> c.max_abs_diff, c.min_cosine, c.rows
    (0.0, 1.0, 2)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

SAMPLE_TEXTS: tuple[str, ...] = (
    # the first text is the shortest: export's parity check runs it alone as a batch of one
    "",
    "   ",  # whitespace only
    "\nleading and trailing newlines\n",
    "   leading and trailing spaces   ",
    "Tabs\tand\tmixed   spaces, punctuation!? (brackets) [1, 2, 3]",
    "hi",
    "What is a text embedding?",
    "how do I fine-tune bge on my own data",
    "Represent this sentence for searching relevant passages: what causes rainbows?",
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings map sentences to vectors so that texts with similar meanings end up close together, which is what "
    "semantic search, clustering and retrieval-augmented generation rely on.",
    "Rainbows appear when sunlight is refracted, reflected and dispersed inside water droplets.",
    # past any usual max length (about 960 tokens): truncation must agree everywhere
    " ".join(["a long passage that goes on and on past the usual length limits of a query"] * 60),
    "def cosine(a, b):\n    return (a @ b) / (np.linalg.norm(a) * np.linalg.norm(b))",
    "SELECT id, title FROM papers WHERE year > 2020 ORDER BY citations DESC LIMIT 10;",
    "git rebase -i HEAD~3 lets you squash the last three commits.",
    "Error: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.78 GiB total capacity)",
    "1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144",
    "Q3 revenue grew 12% year over year to $4.1B.",
    "Patient presents with acute onset chest pain radiating to the left arm.",
    "The mitochondria is the powerhouse of the cell.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Le modèle encode les requêtes et les passages.",
    "¿Dónde está la biblioteca?",
    "中文句子的向量表示",
    "中文 测试 文本：向量检索",
    "日本語の文も同じように扱えます。",
    "emoji 😀🚀 and symbols ±∞ → ✓",
    "emoji 😀🚀 and accents: café, naïve, Zürich",
)
"""The built-in varied sample (distinct texts): empty, whitespace-only, newlines and tabs, one-word, questions, an
instruction-prefixed query, prose, a text far past any max length, Python, SQL, shell, an error message, numbers,
money, medicine, German, French, Spanish, Chinese, Japanese, emoji, symbols and accents."""


@dataclass(frozen=True)
class Comparison:
    """How close two sets of vectors are, row by row.

    Attributes:
        rows: number of rows compared (0 when the shapes differ).
        max_abs_diff: largest absolute difference of any element (``inf`` when the shapes differ, ``0.0`` for no rows).
        mean_cosine / min_cosine: mean and minimum cosine similarity of matching rows (``-inf`` when the shapes
            differ, ``nan`` for no rows: nothing was measured, so a threshold on them fails).
        same_shape: whether ``a`` and ``b`` had the same shape.
    """

    rows: int
    max_abs_diff: float
    mean_cosine: float
    min_cosine: float
    same_shape: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``a`` with the same row of ``b`` (a zero row gives 0)."""
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def compare(a: Any, b: Any) -> Comparison:
    """Compare two sets of vectors (arrays of shape ``(rows, dim)``; one vector is one row).

    NaN anywhere propagates into the numbers (so ``diff <= tolerance`` is false for it).

    Example:
        >>> compare(np.ones((3, 4)), np.ones((3, 5))).same_shape
        False
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim == 1:
        a = a[None, :]
    if b.ndim == 1:
        b = b[None, :]
    if a.shape != b.shape:
        return Comparison(rows=0, max_abs_diff=float("inf"), mean_cosine=float("-inf"), min_cosine=float("-inf"),
                          same_shape=False)
    rows = int(a.shape[0])
    max_abs = float(np.abs(a - b).max()) if a.size else 0.0
    if rows == 0:
        return Comparison(rows=0, max_abs_diff=max_abs, mean_cosine=float("nan"), min_cosine=float("nan"))
    cos = row_cosines(a, b)
    return Comparison(rows=rows, max_abs_diff=max_abs, mean_cosine=float(cos.mean()), min_cosine=float(cos.min()))


__all__ = ["SAMPLE_TEXTS", "Comparison", "compare", "row_cosines"]
