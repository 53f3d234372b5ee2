"""Parquet shards of a corpus encode: ``part-00000.parquet``... with ``id``, ``embedding`` (Arrow
``fixed_size_list<T>[width]``) and, for bge-m3 ``--sparse``, ``sparse`` (``list<struct<index:int32,
value:float32>>``).

Each shard is written to a temporary sibling (one row group per chunk, so memory holds one chunk) and renamed into
place by :func:`embedkit._io.atomic_write`; :func:`write_shard` returns the record the manifest keeps (row range,
rows, size, sha256). A single process and a Ray worker write shards through the same function.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write
from .._optional import require
from ..errors import DataError
from ..folder.fingerprint import hash_file
from .quantize import output_width

ARROW_TYPES = {"float32": "float32", "float16": "float16", "int8": "int8", "uint8": "uint8", "binary": "int8",
               "ubinary": "uint8"}
"""The Arrow value type of the ``embedding`` list for each output dtype."""


def shard_name(index: int) -> str:
    """``part-00000.parquet`` for shard 0."""
    return f"part-{index:05d}.parquet"


@dataclass
class ShardBatch:
    """Rows to append to a shard: ``ids`` (ints or strings), ``embeddings`` (``(n, width)`` array already in the
    output dtype) and, with ``--sparse``, ``sparse`` (one ``{token_id: weight}`` dict per row)."""

    ids: Sequence[Any]
    embeddings: np.ndarray
    sparse: Sequence[dict[str, Any]] | None = None


def schema(dtype: str, dim: int, *, id_type: str = "int64", sparse: bool = False) -> Any:
    """The Arrow schema of every shard: ``id`` (``int64`` or ``string``), ``embedding`` as
    ``fixed_size_list<T>[width]`` (``width = ceil(dim / 8)`` for binary dtypes) and optionally ``sparse``."""
    pa = require("pyarrow", "Parquet output")
    value = getattr(pa, ARROW_TYPES[dtype])()
    fields = [pa.field("id", pa.int64() if id_type == "int64" else pa.string(), nullable=False),
              pa.field("embedding", pa.list_(value, output_width(dtype, dim)), nullable=False)]
    if sparse:
        fields.append(pa.field("sparse", pa.list_(pa.struct([("index", pa.int32()), ("value", pa.float32())]))))
    return pa.schema(fields)


def _table(batch: ShardBatch, arrow_schema: Any) -> Any:
    pa = require("pyarrow", "Parquet output")
    emb = np.ascontiguousarray(batch.embeddings)
    n, width = emb.shape
    emb_type = arrow_schema.field("embedding").type
    values = pa.array(emb.reshape(-1), type=emb_type.value_type)
    columns = [pa.array(list(batch.ids), type=arrow_schema.field("id").type),
               pa.FixedSizeListArray.from_arrays(values, width)]
    if "sparse" in arrow_schema.names:
        if batch.sparse is None or len(batch.sparse) != n:
            raise DataError("a sparse shard needs one lexical-weights dict per row")
        offsets = np.zeros(n + 1, dtype=np.int32)
        index: list[int] = []
        weight: list[float] = []
        for i, row in enumerate(batch.sparse):
            pairs = sorted((int(k), float(v)) for k, v in row.items())
            index += [k for k, _ in pairs]
            weight += [v for _, v in pairs]
            offsets[i + 1] = len(index)
        struct = pa.StructArray.from_arrays([pa.array(index, type=pa.int32()), pa.array(weight, type=pa.float32())],
                                            names=["index", "value"])
        columns.append(pa.ListArray.from_arrays(pa.array(offsets), struct))
    return pa.Table.from_arrays(columns, schema=arrow_schema)


def write_shard(out_dir: str | Path, index: int, start: int, batches: Iterable[ShardBatch], arrow_schema: Any
                ) -> dict[str, Any]:
    """Write shard ``index`` (corpus rows from ``start`` on) from ``batches`` (one row group each) to a temporary
    sibling, rename it into place, and return its manifest record ``{"file", "index", "start", "end", "rows",
    "size", "sha256"}``.

    A process killed while this runs leaves only a ``.part-*.tmp-embedkit`` sibling (removed by the next write of
    that shard); the shard file itself is either absent or complete.
    """
    pq = require("pyarrow.parquet", "Parquet output")
    path = Path(out_dir) / shard_name(index)
    rows = 0
    try:
        with atomic_write(path) as fh:
            writer = pq.ParquetWriter(fh, arrow_schema)
            try:
                for batch in batches:
                    table = _table(batch, arrow_schema)
                    writer.write_table(table, row_group_size=max(1, table.num_rows))
                    rows += table.num_rows
            finally:
                writer.close()
    except OSError as exc:
        raise DataError(f"cannot write shard {path} ({exc.strerror or exc})",
                        hint="check that the output folder is writable and has free space") from None
    digest, size = hash_file(path)
    return {"file": path.name, "index": index, "start": start, "end": start + rows, "rows": rows, "size": size,
            "sha256": digest}
