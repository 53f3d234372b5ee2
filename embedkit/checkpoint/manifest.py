"""Integrity manifests: every file's sha256 and size, optionally signed with ed25519.

``embedkit-manifest.json`` lists every regular file of a model folder (itself and its signature excepted), hidden
files and folders included::

    {"format": "embedkit-manifest/1", "files": {"config.json": {"sha256": "9f2c...", "size": 612}, ...}}

``embedkit-manifest.sig`` is a detached ed25519 signature of the manifest's exact bytes, base64 text. Signing the
manifest signs every file it lists. Both can be checked without embedkit: ``sha256sum`` for the files, any ed25519
implementation (e.g. ``openssl pkeyutl -verify -rawin``) for the signature.

Symbolic links and special files (FIFOs, sockets, devices) are never followed or read: ``manifest`` refuses a
folder holding one, and ``verify`` reports one as a problem.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._io import _fsync_dir, atomic_write
from ..errors import CheckpointError
from ..folder.fingerprint import hash_file
from ..folder.layout import MANIFEST_NAME, SIGNATURE_NAME, check_folder
from .signing import check_signature, generate_keypair, load_private_key, load_public_key, sign

logger = logging.getLogger("embedkit")

MANIFEST_FORMAT = "embedkit-manifest/1"

_PROGRESS_MIN_BYTES = 256 << 20
_MANIFEST_HINT = "write one with `embedkit manifest DIR` (only if you trust the folder's current content)"

SIGNATURE_STATES = ("valid", "invalid", "missing", "not checked")


# ---------------------------------------------------------------------- building and writing
def build_manifest(folder: str | os.PathLike[str], *, show_progress: bool | None = None) -> dict[str, Any]:
    """The manifest of ``folder``: sha256 and size of every regular file (the manifest and its signature excepted).

    Hidden files and folders are listed like any other. Raises :class:`CheckpointError` naming the path when the
    folder holds a symbolic link or a special file: it is never followed (it could point outside the folder).

    Files are read in 1 MiB chunks, so multi-GB weights never sit in memory. ``show_progress``: a progress bar
    over bytes hashed; default on when stderr is a terminal and the folder holds more than 256 MiB.

    Example:
        >>> m = build_manifest("bge-small-ft")
        >>> m["files"]["config.json"]
        {'sha256': '9f2c...', 'size': 612}
    """
    root = _check_folder(folder)
    regular, others = _scan(root)
    if others:
        name, kind = next(iter(sorted(others.items())))
        raise CheckpointError(f"{root / name} is {kind}; a manifest lists regular files only and never follows links"
                              + (f" ({len(others) - 1} more such path(s))" if len(others) > 1 else ""),
                              hint="replace each link by a copy of its target (e.g. `cp -rL SRC DST` copies the "
                              "folder with links resolved) or remove it, then write the manifest again")
    names = [n for n in regular if n not in (MANIFEST_NAME, SIGNATURE_NAME)]
    with _progress(root, names, show_progress, "Hashing") as bar:
        files = {}
        for name in names:
            digest, size = hash_file(root / name, bar, follow_symlinks=False)
            files[name] = {"sha256": digest, "size": size}
    return {"files": dict(sorted(files.items())), "format": MANIFEST_FORMAT}


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The exact bytes written (and signed) for ``manifest``: JSON, indent 2, sorted keys, trailing newline.

    Example:
        >>> manifest_bytes({"format": "embedkit-manifest/1", "files": {}})[:12]
        b'{\\n  "files"'
    """
    return (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def write_manifest(folder: str | os.PathLike[str], sign_key: str | os.PathLike[str] | None = None, *,
                   show_progress: bool | None = None) -> Path:
    """Write ``folder/embedkit-manifest.json`` (atomically) and return its path.

    With ``sign_key`` (a PEM ed25519 private key, see :func:`generate_keypair`) also write the detached signature
    ``embedkit-manifest.sig``. A signature left from an earlier manifest is removed first (before the new manifest
    is written): a kill at any point leaves either the old manifest with its old signature, or a new manifest that
    is unsigned (never a new manifest next to the old signature).

    Example:
        >>> write_manifest("bge-small-ft", sign_key="release.key")
        PosixPath('bge-small-ft/embedkit-manifest.json')
    """
    root = _check_folder(folder)
    key = load_private_key(sign_key) if sign_key is not None else None  # fail before writing anything
    manifest = build_manifest(root, show_progress=show_progress)
    data = manifest_bytes(manifest)
    path = root / MANIFEST_NAME
    sig_path = root / SIGNATURE_NAME
    signature = sign(data, key) if key is not None else None
    _remove_signature(sig_path, replaced=key is not None)
    with atomic_write(path, "wb") as fh:
        fh.write(data)
    total = sum(f["size"] for f in manifest["files"].values())
    logger.debug("wrote %s (%d files, %d bytes)", path, len(manifest["files"]), total)
    if signature is not None:
        with atomic_write(sig_path, "w") as fh:
            fh.write(signature)
        logger.debug("wrote %s", sig_path)
    return path


def _remove_signature(sig_path: Path, *, replaced: bool) -> None:
    """Delete ``sig_path`` durably (unlink + fsync of the folder) before a new manifest is written."""
    if not os.path.lexists(sig_path):
        return
    sig_path.unlink()
    _fsync_dir(sig_path.parent)
    if not replaced:
        logger.info("removed %s: it signed the previous manifest (pass a key to sign the new one)", sig_path)


# ---------------------------------------------------------------------- verifying
@dataclass
class VerifyReport:
    """The outcome of :func:`verify_manifest`.

    ``ok`` is true when every listed file is present and unchanged, nothing unlisted was added, and (when a public
    key was given) the signature is valid. ``signature`` is one of ``"valid"``, ``"invalid"``, ``"missing"``
    (a public key was given but there is no ``embedkit-manifest.sig``) or ``"not checked"`` (no public key).
    ``signature_present`` says whether ``embedkit-manifest.sig`` exists, so that a report without a key can say
    "a signature exists but was not checked" (:meth:`signature_summary`). Extra files include hidden ones
    (``.evil.py``); symbolic links and special files are problems, never followed.
    ``problems`` has one human-readable line per offending file, e.g. ``"modified: model.safetensors (...)"``.

    Example:
        >>> report = verify_manifest("bge-small-ft")
        >>> report.ok, report.modified
        (False, ['model.safetensors'])
    """

    ok: bool
    modified: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    signature: str = "not checked"
    problems: list[str] = field(default_factory=list)
    checked: int = 0
    """How many files the manifest lists."""
    signature_present: bool = False
    """Whether the folder holds an ``embedkit-manifest.sig`` (whether or not it was checked)."""

    def signature_summary(self) -> str:
        """One phrase on the signature: ``"signature valid"``, ``"unsigned"``, or, without a public key while a
        signature exists, ``"a signature exists but was not checked: pass --public-key KEYFILE"``.

        Example:
            >>> verify_manifest("bge-small-ft").signature_summary()
            'a signature exists but was not checked: pass --public-key KEYFILE'
        """
        if self.signature == "not checked":
            if self.signature_present:
                return f"a signature exists ({SIGNATURE_NAME}) but was not checked: pass --public-key KEYFILE"
            return "unsigned"
        return f"signature {self.signature}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field.

        Example:
            >>> json.dumps(verify_manifest("bge-small-ft").to_dict())
        """
        return asdict(self)


def verify_manifest(folder: str | os.PathLike[str], public_key: str | os.PathLike[str] | None = None, *,
                    show_progress: bool | None = None) -> VerifyReport:
    """Check ``folder`` against its ``embedkit-manifest.json`` (and, with ``public_key``, its signature).

    Files are compared by size, then by sha256. A file present but not listed is reported as extra. With
    ``public_key`` (a PEM ed25519 public key), a missing or invalid signature makes the report fail; without it
    the signature is ``"not checked"``. Raises :class:`CheckpointError` when there is no manifest or it is not a
    valid embedkit manifest, or when the key file cannot be used.

    Example:
        >>> report = verify_manifest("bge-small-ft", public_key="release.key.pub")
        >>> report.ok, report.signature
        (True, 'valid')
    """
    root = _check_folder(folder)
    key = load_public_key(public_key) if public_key is not None else None
    path = root / MANIFEST_NAME
    if path.is_symlink():
        raise CheckpointError(f"{path} is a symbolic link; embedkit does not follow links out of the folder",
                              hint="replace it with the manifest file itself")
    if not path.is_file():
        raise CheckpointError(f"no {MANIFEST_NAME} in {root}: nothing to verify against", hint=_MANIFEST_HINT)
    data = path.read_bytes()
    files = _parse_manifest(path, data)
    sig_path = root / SIGNATURE_NAME
    report = VerifyReport(ok=False, checked=len(files), signature_present=os.path.lexists(sig_path))

    if key is not None:
        report.signature = check_signature(sig_path, data, key)
        if report.signature == "missing":
            report.problems.append(f"signature: missing (no {SIGNATURE_NAME})")
        elif report.signature == "invalid":
            report.problems.append("signature: invalid (the manifest was changed, or signed with another key)")

    regular, others = _scan(root)
    present = set(regular) - {MANIFEST_NAME, SIGNATURE_NAME}
    listed = [n for n in files if n in present]
    with _progress(root, listed, show_progress, "Verifying") as bar:
        for name, entry in files.items():
            _check_listed_file(report, root, name, entry, present, others, bar)
    for name in sorted(present - set(files)):
        report.extra.append(name)
        report.problems.append(f"extra: {name} (not in the manifest)")
    for name, kind in sorted(others.items()):
        if name in (MANIFEST_NAME, SIGNATURE_NAME) or name in files:
            continue
        report.extra.append(name)
        report.problems.append(f"extra: {name} ({kind}, not in the manifest; not followed)")
    report.ok = not report.problems
    return report


def _check_listed_file(report: VerifyReport, root: Path, name: str, entry: dict[str, Any], present: set[str],
                       others: dict[str, str], bar: Any) -> None:
    """Compare one file the manifest lists (size, then sha256) and record what is wrong with it in ``report``."""
    file = root / name
    if name not in present:
        blocker = _non_regular_blocker(name, others)
        if blocker is None:
            report.missing.append(name)
            report.problems.append(f"missing: {name}")
        else:
            report.modified.append(name)
            report.problems.append(f"modified: {name} ({blocker}; not followed)")
        return
    size = file.lstat().st_size
    if size != entry["size"]:
        report.modified.append(name)
        report.problems.append(f"modified: {name} (size {entry['size']} -> {size} bytes)")
        bar.update(size)
        return
    try:
        digest, _ = hash_file(file, bar, follow_symlinks=False)
    except OSError as exc:  # replaced by a link (O_NOFOLLOW) or removed while hashing
        report.modified.append(name)
        report.problems.append(f"modified: {name} (cannot be read as a regular file: {exc.strerror})")
        return
    if digest != entry["sha256"]:
        report.modified.append(name)
        report.problems.append(f"modified: {name} (sha256 differs)")


def _non_regular_blocker(name: str, others: dict[str, str]) -> str | None:
    """Why listed ``name`` is not a regular file: it, or a folder on its path, is a link or special file."""
    parts = name.split("/")
    for i in range(len(parts), 0, -1):
        prefix = "/".join(parts[:i])
        if prefix in others:
            return others[prefix] if prefix == name else f"{prefix} is {others[prefix]}"
    return None


def _parse_manifest(path: Path, data: bytes) -> dict[str, dict[str, Any]]:
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})", hint=_MANIFEST_HINT) from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise CheckpointError(f"{path} is not an {MANIFEST_FORMAT} manifest (format: {found!r})",
                              hint=_MANIFEST_HINT)
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise CheckpointError(f"{path}: 'files' must be an object of {{path: {{sha256, size}}}}", hint=_MANIFEST_HINT)
    for name, entry in files.items():
        ok_entry = (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                    and type(entry.get("size")) is int and entry["size"] >= 0)
        if not ok_entry:
            raise CheckpointError(f"{path}: bad entry for {name!r} (needs sha256 and size)", hint=_MANIFEST_HINT)
        rel = Path(name)
        if not name or rel.is_absolute() or ".." in rel.parts or "\\" in name:
            raise CheckpointError(f"{path}: entry {name!r} points outside the folder", hint=_MANIFEST_HINT)
    return files


# ---------------------------------------------------------------------- files
def _check_folder(folder: str | os.PathLike[str]) -> Path:
    return check_folder(folder, missing_hint="pass the model folder (e.g. the one `embedkit save` wrote)",
                        file_hint="pass the model folder, not one of its files")


def _scan(root: Path) -> tuple[list[str], dict[str, str]]:
    """Every regular file under ``root`` (hidden ones included) as sorted POSIX relative paths, and every other
    entry that is not a plain folder (symbolic links, FIFOs, sockets, devices) as ``{relative path: kind}``.

    Links are never followed: a linked folder is reported, not walked.
    """
    regular: list[str] = []
    others: dict[str, str] = {}

    def onerror(exc: OSError) -> None:
        raise CheckpointError(f"cannot read {exc.filename}: {exc.strerror}",
                              hint="check the folder's permissions") from None

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror, followlinks=False):
        rel_dir = Path(dirpath).relative_to(root)
        for name in [*dirnames, *filenames]:
            full = os.path.join(dirpath, name)
            rel = (rel_dir / name).as_posix()
            mode = os.lstat(full).st_mode
            if stat.S_ISREG(mode):
                regular.append(rel)
            elif stat.S_ISLNK(mode):
                others[rel] = f"a symbolic link (-> {os.readlink(full)})"
            elif not stat.S_ISDIR(mode):
                others[rel] = "a special file (FIFO, socket or device)"
        dirnames[:] = [d for d in dirnames if stat.S_ISDIR(os.lstat(os.path.join(dirpath, d)).st_mode)]
    return sorted(regular), others


def _progress(root: Path, names: list[str], show_progress: bool | None, desc: str) -> Any:
    from tqdm.auto import tqdm

    total = sum((root / n).stat().st_size for n in names)
    show = show_progress if show_progress is not None else sys.stderr.isatty() and total > _PROGRESS_MIN_BYTES
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=not show, leave=False)


__all__ = [
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "SIGNATURE_NAME",
    "VerifyReport",
    "build_manifest",
    "generate_keypair",
    "load_private_key",
    "load_public_key",
    "manifest_bytes",
    "verify_manifest",
    "write_manifest",
]
