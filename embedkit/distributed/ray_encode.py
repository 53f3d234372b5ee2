"""Ray Data corpus encode: the single-machine shard layout, with every shard encoded and written by a Ray actor.

The plan (made once, on one Ray worker: :func:`_probe`): the corpus identity that ``--resume`` checks (model
fingerprint, spec, options, input files with sizes and sha256), the rows of every input file (so shard ``k`` holds
corpus rows ``[k * shard_size, (k + 1) * shard_size)`` exactly as in a single process, across file boundaries),
the id type, and for ``int8`` / ``uint8`` the calibration ranges of the first chunk.

Then ``ray.data.from_items(shards)`` -> ``map_batches(_ShardEncoder, compute=ActorPoolStrategy(size=workers))``:
each actor builds one ``Embedder`` (the model is loaded once per actor), reads its shard's rows with embedkit's own
reader (:func:`embedkit.corpus.iter_chunks`: the same ``file:line`` errors, the same row-number ids, the same
chunking, so the same vectors), encodes and quantizes them through the single-machine code path and writes the shard
with :func:`embedkit.corpus.write_shard`. The driver records each shard in ``_embedkit.json`` as it completes
(:func:`embedkit.corpus.record_shard`); a resumed run skips every recorded shard whose file is intact. A bad row is
returned by the worker as an error record and raised at the driver as :class:`~embedkit.errors.DataError`.

The output folder and the input files must be visible to every node under the same path (a shared filesystem).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._io import refuse_overwriting_inputs
from .._optional import require
from ..corpus.encode import (
    DEFAULT_CALIBRATION_ROWS,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_SHARD_SIZE,
    CorpusResult,
    check_output_folder,
    check_run_options,
    encode_chunk,
    run_identity,
    shard_batches,
)
from ..corpus.manifest import FORMAT, VERSION, check_resume, read_manifest, record_shard, write_manifest
from ..corpus.quantize import calibration_ranges, output_width
from ..corpus.reader import Chunk, input_files, iter_chunks, row_marks
from ..corpus.writer import schema, shard_name, write_shard
from ..errors import DataError, EmbedkitError, SpecError

logger = logging.getLogger("embedkit")


class _NoBar:
    def update(self, n: int) -> None:
        pass


def _make_embedder(model: str, options: dict[str, Any], settings: dict[str, Any]) -> Any:
    """The actor's model: an ``Embedder``, or with ``m3`` an ``M3Embedder`` (dense, plus lexical weights with
    ``sparse``), built as the single-machine ``embedkit encode --format parquet [--m3 [--sparse]]`` builds it."""
    if settings.get("m3"):
        from ..m3 import M3Embedder

        return M3Embedder(model, return_dense=True, return_sparse=settings["sparse"], return_colbert=False,
                          **options)
    from ..embedder import Embedder

    return Embedder(model, **options)


def _id_type(chunk: Chunk) -> str:
    return "int64" if chunk.ids is None or isinstance(chunk.ids[0], int) else "string"


def _probe(model: str, options: dict[str, Any], files: list[str], settings: dict[str, Any]) -> dict[str, Any]:
    """Run on one Ray worker: the run's identity, dim, rows per input file, id type and int8 / uint8 calibration."""
    try:
        embedder = _make_embedder(model, options, settings)
        paths = [Path(f) for f in files]
        identity = run_identity(embedder, paths, kind=settings["kind"], sparse=settings["sparse"],
                             instruction=settings["instruction"], instruction_format=settings["instruction_format"],
                             text_field=settings["text_field"], id_field=settings["id_field"],
                             shard_size=settings["shard_size"], output_dtype=settings["output_dtype"])
        rows, marks, first_row = [], [], 0
        for p in paths:  # one pass per file: its rows, and where each shard that starts inside it begins
            n, at = row_marks(p, settings["text_field"], settings["id_field"], first_row, settings["shard_size"])
            rows.append(n)
            marks.append({str(k): list(v) for k, v in at.items()})
            first_row += n
        first_size = min(settings["chunk_size"], settings["shard_size"])
        first = next(iter_chunks(paths, first_size, text_field=settings["text_field"],
                                 id_field=settings["id_field"]), None)
        quantization = None
        if first is not None and settings["output_dtype"] in ("int8", "uint8"):
            vectors, _ = encode_chunk(embedder, first.texts, settings["kind"], False, settings["instruction"],
                                       settings["instruction_format"], settings["batch_size"])
            sample = vectors[:settings["calibration_rows"]]
            quantization = {"ranges": calibration_ranges(sample).tolist(), "calibration_rows": len(sample)}
        return {"identity": identity, "dim": int(embedder.dim), "rows": rows, "marks": marks,
                "id_type": _id_type(first) if first is not None else None, "quantization": quantization,
                "precision": getattr(embedder, "precision_summary", None)}
    except EmbedkitError as exc:
        return {"error": exc.message, "hint": exc.hint}


def _plan(rows: list[int], files: list[str], shard_size: int, marks: list[dict[str, list[int]]] | None = None
          ) -> list[dict[str, Any]]:
    """One unit per shard: its row range and the input files that hold it (with the corpus row of the first), and
    for a shard that starts inside a text file, where (byte offset, line number): its actor seeks there instead of
    reading the file's earlier rows (a 100 M-line file in 1 000 shards would otherwise be read 500 times over)."""
    offsets = np.concatenate([[0], np.cumsum(rows, dtype=np.int64)]).tolist()
    total = offsets[-1]
    units = []
    for index, start in enumerate(range(0, total, shard_size)):
        end = min(start + shard_size, total)
        keep = [i for i in range(len(files)) if offsets[i] < end and offsets[i + 1] > start]
        unit = {"index": index, "start": start, "end": end, "files": [files[i] for i in keep],
                "offset": offsets[keep[0]]}
        skip = start - offsets[keep[0]]
        mark = (marks[keep[0]] if marks else {}).get(str(skip))
        if skip and mark:
            unit["seek"] = {files[keep[0]]: [skip, *mark]}
        units.append(unit)
    return units


def _unit_chunks(unit: dict[str, Any], chunk_size: int, text_field: str, id_field: str | None):
    """The chunks of one shard: corpus rows ``[start, end)``, chunked from the shard's start as a single process
    chunks them (so batches, and so vectors, are the same)."""
    offset = unit["offset"]
    rel_end = unit["end"] - offset
    seek = {f: tuple(v) for f, v in unit.get("seek", {}).items()}
    chunks = iter_chunks([Path(f) for f in unit["files"]], chunk_size, text_field=text_field, id_field=id_field,
                         start=unit["start"] - offset, seek=seek)
    for chunk in chunks:
        if chunk.start >= rel_end:
            break
        keep = min(len(chunk.texts), rel_end - chunk.start)
        yield Chunk(chunk.start + offset, chunk.texts[:keep], None if chunk.ids is None else chunk.ids[:keep])
        if chunk.start + keep >= rel_end:
            break


class _ShardEncoder:
    """The Ray Data UDF: one Embedder per actor; each input row is one shard to read, encode and write."""

    def __init__(self, model: str, options: dict[str, Any], out_dir: str, settings: dict[str, Any],
                 threads: int | None) -> None:
        self.threads = threads
        self._set_threads()
        self.embedder = _make_embedder(model, options, settings)
        self.out_dir, self.s = out_dir, settings
        self.schema = schema(settings["output_dtype"], int(self.embedder.dim), id_type=settings["id_type"],
                             sparse=settings["sparse"])

    def _set_threads(self) -> None:
        """torch's intra-op threads for the calling thread. Ray starts actors with ``OMP_NUM_THREADS=1`` and Ray Data
        may call the UDF from another thread than the constructor's: there a matrix multiply ran on one thread
        whatever ``torch.set_num_threads`` said in ``__init__`` (GEMM 72 vs 130 GFLOP/s on 2 cores)."""
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)

    def _shard(self, unit: dict[str, Any]) -> dict[str, Any]:
        self._set_threads()
        s = self.s
        chunk_size = min(s["chunk_size"], s["shard_size"])
        chunks = _unit_chunks(unit, chunk_size, s["text_field"], s["id_field"])

        def checked():
            for chunk in chunks:
                if _id_type(chunk) != s["id_type"]:
                    raise DataError(f"ids from row {chunk.start} on are {_id_type(chunk)}, the first ids of the "
                                    f"corpus are {s['id_type']}",
                                    hint="every id of a corpus must be of one kind (all strings or all integers)")
                yield chunk

        manifest = {"quantization": s["quantization"]}
        batches = shard_batches(self.embedder, checked(), manifest, _NoBar(), kind=s["kind"], sparse=s["sparse"],
                           instruction=s["instruction"], instruction_format=s["instruction_format"],
                           batch_size=s["batch_size"], output_dtype=s["output_dtype"],
                           calibration_rows=s["calibration_rows"])
        record = write_shard(self.out_dir, unit["index"], unit["start"], batches, self.schema)
        if record["end"] != unit["end"]:
            raise DataError(f"{shard_name(unit['index'])}: read {record['rows']} rows, the plan counted "
                            f"{unit['end'] - unit['start']}", hint="an input file changed during the run; rerun")
        return record

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        records, errors, hints = [], [], []
        for text in batch["unit"]:
            record, error, hint = "", "", ""
            try:
                record = json.dumps(self._shard(json.loads(text)))
            except EmbedkitError as exc:
                error, hint = exc.message, exc.hint or ""
            except Exception as exc:  # noqa: BLE001 - reported at the driver as an embedkit error
                error = f"shard {json.loads(text)['index']}: {type(exc).__name__}: {exc}"
            records.append(record)
            errors.append(error)
            hints.append(hint)
        return {"record": records, "error": errors, "hint": hints}


def _init_ray(ray: Any, address: str | None) -> bool:
    """Connect to ``address`` (``auto`` / ``ray://host:10001``) or start a local Ray; True when this call started
    (and so should stop) it."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(num_cpus=max(2, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    except Exception as exc:  # noqa: BLE001 - ConnectionError, RuntimeError... from ray
        raise EmbedkitError(f"cannot start or reach Ray ({type(exc).__name__}: {exc})",
                            hint="check --ray-address (auto on a cluster node, ray://HEAD:10001 from outside)"
                            ) from None
    return True


def encode_dataset(
    model: str | Path,
    input: str | Path,
    output: str | Path,
    *,
    kind: str | None = "passages",
    text_field: str = "text",
    id_field: str | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    output_dtype: str = "float32",
    resume: bool = False,
    instruction: str | None = None,
    instruction_format: str | None = None,
    batch_size: int | None = None,
    calibration_rows: int = DEFAULT_CALIBRATION_ROWS,
    show_progress: bool | None = None,
    embedder_options: dict[str, Any] | None = None,
    workers: int = 1,
    gpus_per_worker: float = 0,
    address: str | None = None,
    m3: bool = False,
    sparse: bool = False,
) -> CorpusResult:
    """Encode every row of ``input`` with ``model`` on a Ray cluster into Parquet shards under ``output``: the same
    shards, schema and ``_embedkit.json`` as :func:`embedkit.corpus.encode_to_parquet` (see the module doc).

    Args:
        model: a model folder (the same path on every node) or ``"minilm"``.
        input, output, kind, text_field, id_field, shard_size, chunk_size, output_dtype, resume, instruction,
            instruction_format, batch_size, calibration_rows: as :func:`~embedkit.corpus.encode_to_parquet`.
        embedder_options: keyword arguments of :class:`~embedkit.embedder.Embedder` (``precision``, ``max_length``,
            ``device``...), used by every actor.
        workers: actors (one Embedder each); gpus_per_worker: GPUs each actor requests (0: CPU actors).
        address: ``"auto"`` or ``"ray://HEAD:10001"``; ``None`` uses the Ray already initialized in this process or
            starts a local one.
        m3: encode with :class:`~embedkit.m3.M3Embedder` (bge-m3's dense vectors); sparse: also write its lexical
            weights as the ``sparse`` column (as ``encode_to_parquet(..., sparse=True)``; needs ``m3``).

    Example:
        >>> encode_dataset("models/bge-base", "corpus/*.jsonl", "/shared/vectors", id_field="id", workers=8,
        ...                gpus_per_worker=1, address="auto")
    """
    ray = require("ray", "--ray")
    require("ray.data", "--ray")
    check_run_options(output_dtype, kind, shard_size=shard_size, chunk_size=chunk_size,
                      calibration_rows=calibration_rows, workers=workers)
    if sparse and not m3:
        raise SpecError("sparse (bge-m3 lexical weights) needs m3=True", hint="pass m3=True (CLI: --m3 --sparse)")
    if gpus_per_worker < 0:
        raise SpecError(f"gpus_per_worker must be >= 0, got {gpus_per_worker}", hint="e.g. --gpus-per-worker 1")
    model = str(model)
    options = dict(embedder_options or {}, show_progress=False)
    if batch_size is not None:
        options["batch_size"] = batch_size
    out = Path(output).absolute()
    files = [str(f.absolute()) for f in input_files(input)]
    from ..models import resolve_model_path

    refuse_overwriting_inputs(out, inputs=[Path(f) for f in files], model_dirs=[resolve_model_path(model)],
                              flag="--output")
    has_manifest = check_output_folder(out, resume, file_hint="pass a folder name")

    started = _init_ray(ray, address)
    try:
        return _run(ray, model, options, files, out, has_manifest, workers=workers, gpus=gpus_per_worker,
                    show_progress=show_progress,
                    settings={"kind": kind, "instruction": instruction, "instruction_format": instruction_format,
                              "text_field": text_field, "id_field": id_field, "shard_size": shard_size,
                              "chunk_size": chunk_size, "output_dtype": output_dtype, "batch_size": batch_size,
                              "calibration_rows": calibration_rows, "m3": m3, "sparse": sparse})
    finally:
        if started:
            ray.shutdown()


def _resources(ray: Any, workers: int, gpus: float) -> tuple[float, float, int | None]:
    """(CPUs per actor, GPUs per actor, torch threads per actor): GPUs only when asked for and present; on CPU the
    actors share all but one CPU (left to Ray Data's read tasks and the driver)."""
    cluster = ray.cluster_resources()
    if gpus > 0:
        if cluster.get("GPU", 0) < gpus:
            raise EmbedkitError(f"--gpus-per-worker {gpus}: the Ray cluster has {cluster.get('GPU', 0):g} GPU(s)",
                                hint="add GPU nodes, or drop --gpus-per-worker to encode on CPU")
        return 1.0, gpus, None
    cpus = float(cluster.get("CPU", 1))
    per = max(0.1, min(1.0, (cpus - 1) / workers)) if cpus > 1 else 0.5 / workers
    return per, 0.0, max(1, int(cpus // workers))


def _run(ray: Any, model: str, options: dict[str, Any], files: list[str], out: Path, has_manifest: bool, *,
         workers: int, gpus: float, show_progress: bool | None, settings: dict[str, Any]) -> CorpusResult:
    import ray.data

    cpus, gpus, threads = _resources(ray, workers, gpus)
    probe_options = dict(options)
    probe = ray.remote(num_cpus=cpus, num_gpus=gpus)(_probe)
    try:
        plan = ray.get(probe.remote(model, probe_options, files, settings))
    except Exception as exc:  # noqa: BLE001 - a Ray failure, not a data error
        raise EmbedkitError(f"the Ray planning task failed ({type(exc).__name__}: {str(exc).splitlines()[0]})",
                            hint="check that the model and input paths exist on every node") from None
    if "error" in plan:
        raise DataError(plan["error"], hint=plan["hint"])
    identity, dim = plan["identity"], plan["dim"]
    settings = dict(settings, id_type=plan["id_type"] or "int64", quantization=plan["quantization"])
    total = int(sum(plan["rows"]))
    if has_manifest:
        manifest = read_manifest(out)
        check_resume(out, manifest, identity)
        manifest["model"], manifest["input"] = identity["model"], identity["input"]
        if manifest.get("id_type") not in (None, settings["id_type"]):
            raise DataError(f"the corpus ids are {settings['id_type']}, the completed shards hold "
                            f"{manifest['id_type']} ids", hint="rerun with the input of the recorded run")
        settings["quantization"] = manifest.get("quantization") or settings["quantization"]
        done = [s for s in manifest["shards"] if (out / s["file"]).is_file()
                and (out / s["file"]).stat().st_size == s["size"]]
        if manifest.get("complete") and len(done) == len(manifest["shards"]):
            logger.info("%s is complete (%d rows, %d shards): nothing to resume", out, manifest["rows"], len(done))
            return CorpusResult(out, manifest["rows"], len(done), 0, manifest)
        manifest["shards"] = done
    else:
        out.mkdir(parents=True, exist_ok=True)
        manifest = {"format": FORMAT, "version": VERSION, **identity, "dim": dim,
                    "width": output_width(settings["output_dtype"], dim), "id_type": None, "quantization": None,
                    "shards": [], "complete": False, "rows": None}
    manifest.update(complete=False, rows=None, id_type=plan["id_type"] or manifest["id_type"],
                    quantization=settings["quantization"])
    manifest["ray"] = {"workers": workers, "gpus_per_worker": gpus, "file_rows": plan["rows"]}
    write_manifest(out, manifest)

    done_index = {s["index"] for s in manifest["shards"]}
    units = [u for u in _plan(plan["rows"], files, settings["shard_size"], plan["marks"])
             if u["index"] not in done_index]
    if done_index:
        logger.info("resuming %s: %d shards complete, %d to encode", out, len(done_index), len(units))
    written = 0
    if units:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = bool(show_progress)
        ctx.print_on_execution_start = False
        ds = ray.data.from_items([{"unit": json.dumps(u)} for u in units], override_num_blocks=len(units))
        ds = ds.map_batches(_ShardEncoder, batch_size=1, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=cpus, num_gpus=gpus or None,
                            fn_constructor_kwargs={"model": model, "options": options, "out_dir": str(out),
                                                   "settings": settings, "threads": threads})
        try:
            for row in ds.iter_rows():
                if row["error"]:
                    raise DataError(str(row["error"]), hint=str(row["hint"]) or None)
                record_shard(out, manifest, json.loads(row["record"]))
                written += 1
        except EmbedkitError:
            raise
        except Exception as exc:  # noqa: BLE001 - an actor that died, a node lost...: no Ray traceback
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise EmbedkitError(f"the Ray job failed ({type(exc).__name__}: {first})",
                                hint="rerun with --resume: completed shards are kept") from None
    if total == 0 and not manifest["shards"]:  # an empty corpus: one empty shard, so readers find the schema
        record_shard(out, manifest, write_shard(out, 0, 0, [], schema(settings["output_dtype"], dim,
                                                                     sparse=settings["sparse"])))
        written += 1
    manifest["complete"] = True
    manifest["rows"] = total
    write_manifest(out, manifest)
    return CorpusResult(out, total, len(manifest["shards"]), written, manifest)
