"""File hashes and model fingerprints: the one place that says how a model folder's identity is computed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from .layout import MANIFEST_NAME, weight_files_with_shards

_CHUNK = 1 << 20


def hash_file(path: str | Path, bar: Any = None, *, follow_symlinks: bool = True) -> tuple[str, int]:
    """``(sha256 hex digest, size in bytes)`` of a file, read in 1 MiB blocks.

    ``bar`` (a tqdm bar) is advanced by the bytes read; ``follow_symlinks=False`` refuses a symbolic link (``OSError``
    ``ELOOP``), which is what a manifest wants.
    """
    h = hashlib.sha256()
    size = 0
    flags = os.O_RDONLY | (0 if follow_symlinks else getattr(os, "O_NOFOLLOW", 0))
    fd = os.open(path, flags)
    with os.fdopen(fd, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
    return h.hexdigest(), size


def sha256_file(path: str | Path) -> str:
    """The sha256 hex digest of a file."""
    return hash_file(path)[0]


def weights_fingerprint(folder: Path) -> dict[str, str]:
    """sha256 of each weight file of a model folder (shards included: what an export was made from)."""
    return {f.name: sha256_file(f) for f in weight_files_with_shards(folder)}


def model_fingerprint(model_dir: Path) -> str:
    """The model's identity: the sha256 of its manifest when it has one, else of its weight files' names, sizes and
    modification times (cheap, and changes whenever the weights are rewritten)."""
    manifest = model_dir / MANIFEST_NAME
    if manifest.is_file():
        return "manifest:" + hashlib.sha256(manifest.read_bytes()).hexdigest()
    h = hashlib.sha256()
    for f in weight_files_with_shards(model_dir):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return "files:" + h.hexdigest()
