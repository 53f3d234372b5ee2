"""``_embedkit.json``: what a corpus output folder holds and how it was made, rewritten atomically after each shard.

::

    {"format": "embedkit-corpus", "version": 1,
     "model": {"path": ..., "fingerprint": "manifest:<sha256>"}, "spec": {...EmbedderSpec.to_dict()},
     "options": {"kind": "passages", "m3_sparse": false, "max_length": null, "precision": "fp32", ...},
     "input": {"files": [{"path", "size", "sha256"}], "text_field": "text", "id_field": null},
     "shard_size": 100000, "output_dtype": "int8", "dim": 384, "width": 384, "id_type": "int64",
     "quantization": {"ranges": [[min...], [max...]], "calibration_rows": 10000} | null,
     "shards": [{"file": "part-00000.parquet", "index": 0, "start": 0, "end": 100000, "rows": 100000,
                 "size": ..., "sha256": ...}],
     "complete": true, "rows": 250000}

:func:`check_resume` compares a run's identity (model, spec, options, input) with a folder's manifest and names
every difference; :func:`verify_output` re-hashes every shard.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .._io import atomic_write
from ..errors import DataError
from ..folder.fingerprint import hash_file

MANIFEST = "_embedkit.json"
"""The manifest's file name inside an output folder."""

FORMAT = "embedkit-corpus"
VERSION = 1

IDENTITY_KEYS = ("model", "spec", "options", "input", "shard_size", "output_dtype")
"""The manifest fields a resumed run must match."""


def manifest_path(out_dir: str | Path) -> Path:
    """``OUT_DIR/_embedkit.json``."""
    return Path(out_dir) / MANIFEST


def write_manifest(out_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest`` to ``OUT_DIR/_embedkit.json`` atomically (temporary sibling, fsync, rename)."""
    path = manifest_path(out_dir)
    with atomic_write(path, "w") as fh:
        json.dump(manifest, fh, indent=1, ensure_ascii=False)
        fh.write("\n")
    return path


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    """The manifest of an output folder; :class:`DataError` when it is missing or not an embedkit corpus manifest."""
    path = manifest_path(out_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} does not exist: {out_dir} is not an embedkit corpus output",
                        hint="pass the OUT_DIR of `embedkit encode --format parquet`") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} cannot be read as JSON ({exc})", hint="the manifest is damaged; re-encode") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DataError(f"{path} is not an embedkit corpus manifest (no \"format\": \"{FORMAT}\")",
                        hint="pass the OUT_DIR of `embedkit encode --format parquet`")
    if data.get("version") != VERSION:
        raise DataError(f"{path}: manifest version {data.get('version')!r}, this embedkit reads {VERSION}",
                        hint="use the embedkit version that wrote it")
    return data


def record_shard(out_dir: str | Path, manifest: dict[str, Any], record: dict[str, Any]) -> None:
    """Add a shard's record (from :func:`embedkit.corpus.writer.write_shard`) to ``manifest`` (replacing a record of
    the same index) and rewrite the manifest atomically."""
    shards = [s for s in manifest["shards"] if s["index"] != record["index"]] + [record]
    manifest["shards"] = sorted(shards, key=lambda s: s["index"])
    write_manifest(out_dir, manifest)


def _diff(old: Any, new: Any, prefix: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += _diff(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        out = []
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            out += _diff(a, b, f"{prefix}[{i}]")
        return out
    return [] if old == new else [f"{prefix}: {_short(old)} -> {_short(new)}"]


def _input_changes(old: Any, new: Any) -> list[str]:
    """What changed in the input: the fields, the number of files, and each file whose size or content differs
    (files may move or be renamed; their content and order may not)."""
    old, new = dict(old or {}), dict(new or {})
    old_files, new_files = old.pop("files", None) or [], new.pop("files", None) or []
    changes = _diff(old, new, "input")
    if len(old_files) != len(new_files):
        return changes + [f"input: {len(old_files)} files -> {len(new_files)} files"]
    for a, b in zip(old_files, new_files, strict=True):
        if (a["size"], a["sha256"]) != (b["size"], b["sha256"]):
            changes.append(f"input file {b['path']} changed ({a['size']} -> {b['size']} bytes, sha256 "
                           f"{a['sha256'][:12]}... -> {b['sha256'][:12]}...)")
    return changes


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


def check_resume(out_dir: str | Path, existing: dict[str, Any], identity: dict[str, Any]) -> None:
    """Raise :class:`DataError` naming every field of ``identity`` (model, spec, options, input, shard size, dtype)
    that differs from the ``existing`` manifest of ``out_dir``."""
    changes = []
    for key in IDENTITY_KEYS:
        old, new = existing.get(key), identity.get(key)
        if key == "model":  # where the model lives may change; what it is may not
            old, new = (old or {}).get("fingerprint"), (new or {}).get("fingerprint")
            key = "model fingerprint"
        elif key == "input":
            changes += _input_changes(old, new)
            continue
        changes += _diff(old, new, key)
    if changes:
        shown = "; ".join(changes[:8]) + (f"; and {len(changes) - 8} more" if len(changes) > 8 else "")
        raise DataError(f"cannot resume into {out_dir}: the run differs from its {MANIFEST} ({shown})",
                        hint="rerun with the same model, options and input, or write to a new OUT_DIR")


def verify_output(out_dir: str | Path) -> dict[str, Any]:
    """Check an output folder against its manifest: every recorded shard exists with its size and sha256, its row
    count matches, the shards cover rows ``0..n`` without gaps, and (when the run finished) no shard is missing.

    Returns ``{"shards": n, "rows": n, "complete": bool, "problems": [...]}``; ``problems`` is empty when all is well.
    """
    pq = None
    out = Path(out_dir)
    manifest = read_manifest(out)
    problems: list[str] = []
    rows = 0
    expected_start = 0
    for shard in manifest.get("shards", []):
        path = out / shard["file"]
        if shard["start"] != expected_start:
            problems.append(f"{shard['file']}: starts at row {shard['start']}, expected {expected_start}")
        expected_start = shard["end"]
        if not path.is_file():
            problems.append(f"{shard['file']}: missing")
            continue
        digest, size = hash_file(path)
        if size != shard["size"] or digest != shard["sha256"]:
            problems.append(f"{shard['file']}: changed (sha256 {digest[:12]}..., {size} bytes; the manifest records "
                            f"{shard['sha256'][:12]}..., {shard['size']} bytes)")
            continue
        if pq is None:
            from .._optional import require

            pq = require("pyarrow.parquet", "Parquet output")
        n = pq.ParquetFile(path).metadata.num_rows
        if n != shard["rows"]:
            problems.append(f"{shard['file']}: {n} rows, the manifest records {shard['rows']}")
        rows += n
    if manifest.get("complete") and rows != manifest.get("rows"):
        problems.append(f"the shards hold {rows} rows, the finished run recorded {manifest.get('rows')}")
    recorded = {s["file"] for s in manifest.get("shards", [])}
    strays = sorted(p.name for p in out.glob("part-*.parquet") if p.name not in recorded)
    if strays and manifest.get("complete"):
        problems.append(f"shards not in the manifest: {', '.join(strays)}")
    return {"shards": len(recorded), "rows": rows, "complete": bool(manifest.get("complete")), "problems": problems}
