"""Encode a corpus across many machines with Ray Data (``embedkit encode ... --ray``).

:func:`encode_dataset` writes exactly what :func:`embedkit.corpus.encode_to_parquet` writes (the same
``part-NNNNN.parquet`` shards, schema and ``_embedkit.json``), with each shard encoded by a Ray actor that holds one
:class:`~embedkit.embedder.Embedder`. ray is imported only inside functions (the ``ray`` extra).
"""

from .ray_encode import encode_dataset

__all__ = ["encode_dataset"]
