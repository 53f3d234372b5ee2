"""Output dtypes of a corpus encode: sentence-transformers' ``quantize_embeddings``, value for value.

- ``float32``: as encoded; ``float16``: ``astype(float16)``.
- ``int8`` / ``uint8``: per dimension, ``ranges`` = (min, max) over a calibration sample; ``steps = (max - min) /
  255`` (1 where 0); ``q = clip(floor((x - min) / steps), 0, 255)``, minus 128 for ``int8``. The ranges are stored
  in the manifest so every shard (and a resumed run) uses the same buckets.
- ``binary`` / ``ubinary``: ``packbits(x > 0)`` (``dim / 8`` bytes), minus 128 as ``int8`` for ``binary``.
"""

from __future__ import annotations

import numpy as np

from ..errors import SpecError

OUTPUT_DTYPES = ("float32", "float16", "int8", "uint8", "binary", "ubinary")
"""The values of ``--output-dtype``."""

NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "int8": np.int8, "uint8": np.uint8,
                "binary": np.int8, "ubinary": np.uint8}
"""The numpy dtype each output dtype is stored as."""


def check_output_dtype(name: str) -> str:
    """``name`` if it is one of :data:`OUTPUT_DTYPES`, else :class:`SpecError` listing them."""
    if name not in OUTPUT_DTYPES:
        raise SpecError(f"unknown --output-dtype {name!r}", hint=f"use one of {', '.join(OUTPUT_DTYPES)}")
    return name


def output_width(dtype: str, dim: int) -> int:
    """Values per stored vector: ``dim``, or ``ceil(dim / 8)`` bytes for the packed-bit dtypes."""
    return (dim + 7) // 8 if dtype.endswith("binary") else dim


def calibration_ranges(sample: np.ndarray) -> np.ndarray:
    """``(2, dim)`` float32: the per-dimension min and max of a calibration ``sample`` (``(n, dim)`` float32)."""
    sample = np.asarray(sample, dtype=np.float32)
    if sample.ndim != 2 or sample.shape[0] < 2:
        raise SpecError(f"int8 / uint8 calibration needs at least 2 vectors, got {sample.shape[0]}",
                        hint="encode a larger corpus, or use --output-dtype float16 / binary")
    return np.vstack((sample.min(axis=0), sample.max(axis=0))).astype(np.float32)


def quantize(vectors: np.ndarray, dtype: str, ranges: np.ndarray | None = None) -> np.ndarray:
    """``vectors`` (``(n, dim)`` float32) in output dtype ``dtype`` (see the module docstring); ``ranges`` (from
    :func:`calibration_ranges`) are required for ``int8`` / ``uint8``.

    Example:
        >>> quantize(np.array([[0.5, -0.1, 0.0, 0.2]], dtype=np.float32), "ubinary")
        array([[144]], dtype=uint8)
    """
    check_output_dtype(dtype)
    vectors = np.asarray(vectors, dtype=np.float32)
    if dtype == "float32":
        return vectors
    if dtype == "float16":
        return vectors.astype(np.float16)
    if dtype.endswith("binary"):
        packed = np.packbits(vectors > 0, axis=-1)
        return (packed - 128).astype(np.int8) if dtype == "binary" else packed
    if ranges is None:
        raise SpecError(f"{dtype} quantization needs calibration ranges", hint="pass ranges=calibration_ranges(...)")
    ranges = np.asarray(ranges, dtype=np.float32)
    starts = ranges[0, :]
    steps = (ranges[1, :] - starts) / 255
    steps = np.where(steps == 0, 1, steps)
    q = np.clip(np.floor((vectors - starts) / steps), 0, 255)
    return q.astype(np.uint8) if dtype == "uint8" else (q - 128).astype(np.int8)
