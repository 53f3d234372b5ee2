"""Encode a corpus of any size on one machine: streamed input, Parquet shards, a manifest after every shard, resume.

Rows are read in chunks (:func:`embedkit.corpus.reader.iter_chunks`), each chunk goes through the one encode path
(``Embedder.encode_corpus`` / ``encode_queries`` / ``encode``, or :class:`~embedkit.m3.M3Embedder` for bge-m3
``--sparse``), is quantized (:mod:`embedkit.corpus.quantize`) and appended to the current shard as one row group;
when a shard is full it is renamed into place and recorded in ``_embedkit.json``. Memory holds one chunk and its
batch, never the corpus; a killed run loses at most the shard in flight.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._io import refuse_overwriting_inputs
from ..errors import DataError, SpecError
from ..folder.fingerprint import model_fingerprint
from .manifest import FORMAT, MANIFEST, VERSION, check_resume, read_manifest, record_shard, write_manifest
from .quantize import calibration_ranges, check_output_dtype, output_width, quantize
from .reader import Chunk, describe_inputs, input_files, iter_chunks
from .writer import ShardBatch, schema, write_shard

logger = logging.getLogger("embedkit")

DEFAULT_SHARD_SIZE = 100_000
DEFAULT_CHUNK_SIZE = 8192
DEFAULT_CALIBRATION_ROWS = 10_000


@dataclass
class CorpusResult:
    """What :func:`encode_to_parquet` did: the folder, rows and shards in it, how many shards this run wrote (the
    rest were already complete: ``--resume``), and the manifest."""

    out_dir: Path
    rows: int
    shards: int
    written: int
    manifest: dict[str, Any]


def encode_chunk(embedder: Any, texts: list[str], kind: str | None, sparse: bool, instruction: str | None,
                  instruction_format: str | None, batch_size: int | None) -> tuple[np.ndarray, list | None]:
    """Dense vectors (and bge-m3 lexical weights with ``sparse``) of ``texts`` through the embedder's public API."""
    extra: dict[str, Any] = {"return_dense": True, "return_sparse": True} if sparse else {}
    if kind == "queries":
        out = embedder.encode_queries(texts, batch_size=batch_size, show_progress=False, **extra)
    elif kind == "passages":
        out = embedder.encode_corpus(texts, batch_size=batch_size, show_progress=False, **extra)
    else:
        out = embedder.encode(texts, batch_size=batch_size, instruction=instruction,
                              instruction_format=instruction_format, show_progress=False, **extra)
    if isinstance(out, dict):
        return np.asarray(out["dense_vecs"], dtype=np.float32), out["lexical_weights"] if sparse else None
    return np.asarray(out, dtype=np.float32), None


def run_identity(embedder: Any, files: list[Path], *, kind: str | None, sparse: bool, instruction: str | None,
              instruction_format: str | None, text_field: str, id_field: str | None, shard_size: int,
              output_dtype: str) -> dict[str, Any]:
    """The manifest fields a resumed run must match (see :data:`embedkit.corpus.manifest.IDENTITY_KEYS`)."""
    backend = getattr(embedder, "backend", None)
    return {
        "model": {"path": str(embedder.path), "fingerprint": model_fingerprint(Path(embedder.path))},
        "spec": embedder.spec.to_dict(),
        "options": {"kind": kind, "sparse": sparse, "instruction": instruction,
                    "instruction_format": instruction_format, "precision": getattr(embedder, "precision", None),
                    "backend": type(backend).__name__ if backend is not None else None},
        "input": {"files": describe_inputs(files), "text_field": text_field, "id_field": id_field},
        "shard_size": shard_size,
        "output_dtype": output_dtype,
    }


def check_run_options(output_dtype: str, kind: str | None, **positive: Any) -> None:
    """The options every corpus run (one process or Ray) checks first: the output dtype, the kind, and the named
    values that must be positive integers (``shard_size=...``)."""
    check_output_dtype(output_dtype)
    for name, value in positive.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise SpecError(f"{name} must be a positive integer, got {value!r}",
                            hint=f"pass {name} as a whole number above 0")
    if kind not in (None, "queries", "passages"):
        raise SpecError(f"kind must be 'queries', 'passages' or None, got {kind!r}")


def check_output_folder(out: Path, resume: bool, *, file_hint: str) -> bool:
    """Refuse an output that is a file, an earlier run's folder without ``resume``, or a non-empty folder that is
    not an encode output; ``True`` when ``out`` holds a manifest (a run to resume)."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--output {out} is a file; Parquet output is a folder of shards", hint=file_hint)
    has_manifest = (out / MANIFEST).is_file()
    if has_manifest and not resume:
        raise DataError(f"--output {out} already holds an encode output ({MANIFEST})",
                        hint="pass --resume to continue it, or choose a new (empty) folder")
    if out.is_dir() and any(out.iterdir()) and not has_manifest:
        raise DataError(f"--output {out} is not empty and holds no {MANIFEST}",
                        hint="choose a new (empty) folder: encode writes part-*.parquet shards and its manifest there")
    return has_manifest


def _shards(chunks: Iterator[Chunk], shard_size: int) -> Iterator[Iterator[Chunk]]:
    """Group chunks (which never cross a shard boundary, see :func:`iter_chunks`) into shards of ``shard_size``
    rows, lazily: the chunks are read as the shard is written."""
    pending = next(chunks, None)
    while pending is not None:
        shard_end = (pending.start // shard_size + 1) * shard_size

        def one_shard(first: Chunk = pending, end: int = shard_end) -> Iterator[Chunk]:
            nonlocal pending
            chunk: Chunk | None = first
            while chunk is not None and chunk.start < end:
                yield chunk
                chunk = next(chunks, None)
            pending = chunk

        yield one_shard()


def shard_batches(embedder: Any, chunks: Iterator[Chunk], manifest: dict[str, Any], bar: Any, *, kind: str | None,
             sparse: bool, instruction: str | None, instruction_format: str | None, batch_size: int | None,
             output_dtype: str, calibration_rows: int) -> Iterator[ShardBatch]:
    """Encode and quantize the chunks of one shard, one :class:`ShardBatch` each (lazily: one chunk in memory).
    int8 / uint8 ranges are calibrated on the first chunk of the corpus and kept in ``manifest``."""
    for chunk in chunks:
        vectors, lexical = encode_chunk(embedder, chunk.texts, kind, sparse, instruction, instruction_format,
                                         batch_size)
        ids = chunk.ids if chunk.ids is not None else range(chunk.start, chunk.start + len(chunk.texts))
        if output_dtype in ("int8", "uint8") and manifest["quantization"] is None:
            sample = vectors[:calibration_rows]
            manifest["quantization"] = {"ranges": calibration_ranges(sample).tolist(), "calibration_rows": len(sample)}
        ranges = manifest["quantization"]["ranges"] if manifest["quantization"] else None
        yield ShardBatch(list(ids), quantize(vectors, output_dtype, None if ranges is None else np.asarray(
            ranges, dtype=np.float32)), lexical)
        bar.update(len(chunk.texts))


def encode_to_parquet(
    embedder: Any,
    input: str | Path,
    out_dir: str | Path,
    *,
    kind: str | None = "passages",
    text_field: str = "text",
    id_field: str | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    output_dtype: str = "float32",
    resume: bool = False,
    sparse: bool = False,
    instruction: str | None = None,
    instruction_format: str | None = None,
    batch_size: int | None = None,
    calibration_rows: int = DEFAULT_CALIBRATION_ROWS,
    show_progress: bool | None = None,
) -> CorpusResult:
    """Encode every row of ``input`` with ``embedder`` into Parquet shards under ``out_dir`` (see the module doc).

    Args:
        embedder: an :class:`~embedkit.embedder.Embedder` (or an :class:`~embedkit.m3.M3Embedder` built with
            ``return_sparse=True`` for ``sparse``).
        input: a ``.txt`` / ``.jsonl`` / ``.parquet`` file, a folder of them, or a glob of shards.
        out_dir: the output folder; it must be empty or absent unless ``resume``.
        kind: ``"passages"`` (``encode_corpus``), ``"queries"`` (``encode_queries``) or ``None`` (``encode``, with
            ``instruction`` / ``instruction_format``).
        text_field / id_field: the fields (jsonl) or columns (Parquet) holding the text and the id; without
            ``id_field`` the id is the row number (0-based, across all input files).
        shard_size: rows per ``part-NNNNN.parquet``; chunk_size: rows read and encoded at a time (memory bound).
        output_dtype: ``float32`` | ``float16`` | ``int8`` | ``uint8`` | ``binary`` | ``ubinary``
            (sentence-transformers' ``quantize_embeddings``); int8 / uint8 ranges are calibrated on the first
            ``min(calibration_rows, chunk_size, shard_size)`` rows (the first chunk) and stored in the manifest.
        resume: continue a run whose manifest is in ``out_dir`` (model, spec, options and input must match).
        sparse: also write bge-m3 lexical weights as ``sparse: list<struct<index:int32, value:float32>>``.

    Example:
        >>> from embedkit import Embedder
        >>> encode_to_parquet(Embedder("minilm"), "corpus.jsonl", "vectors/", id_field="id", shard_size=100_000)
    """
    from tqdm.auto import tqdm

    check_run_options(output_dtype, kind, shard_size=shard_size, chunk_size=chunk_size,
                      calibration_rows=calibration_rows)
    out = Path(out_dir)
    files = input_files(input)
    refuse_overwriting_inputs(out, inputs=files, model_dirs=[embedder.path], flag="--output")
    has_manifest = check_output_folder(out, resume, file_hint="pass a folder name (or a .npy file name without "
                                       "--format parquet)")
    identity = run_identity(embedder, files, kind=kind, sparse=sparse, instruction=instruction,
                         instruction_format=instruction_format, text_field=text_field, id_field=id_field,
                         shard_size=shard_size, output_dtype=output_dtype)
    if has_manifest:
        manifest = read_manifest(out)
        check_resume(out, manifest, identity)
        manifest["model"], manifest["input"] = identity["model"], identity["input"]  # paths may have moved
        done = []
        for shard in manifest["shards"]:  # the completed prefix; a gap (never written by us) is redone
            if shard["start"] != (done[-1]["end"] if done else 0) or not (out / shard["file"]).is_file():
                break
            done.append(shard)
        intact = len(done) == len(manifest["shards"])
        manifest["shards"] = done
        if manifest.get("complete") and intact:
            logger.info("%s is complete (%d rows, %d shards): nothing to resume", out, manifest["rows"], len(done))
            return CorpusResult(out, manifest["rows"], len(done), 0, manifest)
    else:
        manifest = {"format": FORMAT, "version": VERSION, **identity, "dim": int(embedder.dim),
                    "width": output_width(output_dtype, int(embedder.dim)), "id_type": None, "quantization": None,
                    "shards": [], "complete": False, "rows": None}
        write_manifest(out, manifest)
    manifest["complete"] = False
    start = manifest["shards"][-1]["end"] if manifest["shards"] else 0
    first_index = len(manifest["shards"])
    if start:
        logger.info("resuming %s at row %d (shard %d; %d shards complete)", out, start, first_index, first_index)

    chunks = iter_chunks(files, min(chunk_size, shard_size), text_field=text_field, id_field=id_field, start=start,
                         boundary=shard_size)
    first = next(chunks, None)
    if first is not None:
        id_type = "int64" if first.ids is None or isinstance(first.ids[0], int) else "string"
        if manifest["id_type"] is None:
            manifest["id_type"] = id_type
        elif manifest["id_type"] != id_type:
            raise DataError(f"ids from row {first.start} on are {id_type}, the completed shards hold "
                            f"{manifest['id_type']} ids",
                            hint="every id of a corpus must be of one kind (all strings or all integers)")
        chunks = itertools.chain([first], chunks)
    arrow = schema(output_dtype, int(embedder.dim), id_type=manifest["id_type"] or "int64", sparse=sparse)
    written = 0
    rows = start
    show = show_progress if show_progress is not None else os.isatty(2)
    with tqdm(desc="Encoding", unit="text", initial=start, disable=not show) as bar:
        for index, shard_chunks in enumerate(_shards(chunks, shard_size), start=first_index):
            batches = shard_batches(embedder, shard_chunks, manifest, bar, kind=kind, sparse=sparse,
                               instruction=instruction, instruction_format=instruction_format,
                               batch_size=batch_size, output_dtype=output_dtype, calibration_rows=calibration_rows)
            record = write_shard(out, index, rows, batches, arrow)
            record_shard(out, manifest, record)
            rows = record["end"]
            written += 1
    if rows == 0 and not manifest["shards"]:  # an empty corpus: one empty shard, so readers find the schema
        record_shard(out, manifest, write_shard(out, 0, 0, [], arrow))
        written += 1
    manifest["complete"] = True
    manifest["rows"] = rows
    write_manifest(out, manifest)
    return CorpusResult(out, rows, len(manifest["shards"]), written, manifest)
