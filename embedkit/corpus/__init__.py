"""Encode a corpus of any size into Parquet shards with a manifest, resumable (``embedkit encode --format parquet``).

- :mod:`~embedkit.corpus.reader`: chunked ``.txt`` / ``.jsonl`` / ``.parquet`` readers (a file, a folder, a glob).
- :mod:`~embedkit.corpus.writer`: one shard written atomically (:func:`write_shard`), its manifest record.
- :mod:`~embedkit.corpus.manifest`: ``_embedkit.json`` (written after every shard), resume checks, verification.
- :mod:`~embedkit.corpus.quantize`: ``--output-dtype`` as sentence-transformers' ``quantize_embeddings``.
- :mod:`~embedkit.corpus.encode`: the single-machine driver, :func:`encode_to_parquet`.

pyarrow (the ``corpus`` extra) is imported only when a Parquet file is read or written.
"""

from .encode import CorpusResult, encode_to_parquet
from .manifest import MANIFEST, read_manifest, record_shard, verify_output
from .quantize import OUTPUT_DTYPES, calibration_ranges, quantize
from .reader import input_files, iter_chunks
from .writer import ShardBatch, schema, shard_name, write_shard

__all__ = ["MANIFEST", "OUTPUT_DTYPES", "CorpusResult", "ShardBatch", "calibration_ranges", "encode_to_parquet",
           "input_files", "iter_chunks", "quantize", "read_manifest", "record_shard", "schema", "shard_name",
           "verify_output", "write_shard"]
