"""Atomic file and folder writes, and the checks that keep a command from destroying what it reads.

Every file write goes to a temporary sibling and is renamed into place (:func:`atomic_write`); every folder is built
in a temporary sibling folder and swapped in whole (:func:`atomic_dir`). :func:`refuse_overwriting_inputs` is the one
check every writing command runs before it starts: the output must not be one of its inputs, nor lie inside a model
folder it reads.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from .errors import CheckpointError, DataError

_TMP_FILE_SUFFIX = ".tmp-embedkit"


class DestinationExistsError(CheckpointError, FileExistsError):
    """The destination folder of :func:`atomic_dir` exists (or appeared while it was being built)."""


# ---------------------------------------------------------------------- files
@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on success fsync it and rename it onto ``path``.

    If the block raises (or the process dies) the previous content of ``path`` is left untouched and the
    temporary file is removed (or, after a kill, left as a ``.NAME.PID-*.tmp-embedkit`` sibling that a later
    write of the same path removes once process PID is gone).

    Example:
        >>> with atomic_write("out/report.md", "w") as fh:
        ...     fh.write("# report\\n")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp_files(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=_TMP_FILE_SUFFIX, dir=path.parent)
    os.chmod(tmp, _default_mode(path))  # mkstemp makes 0600 files; give the usual permissions
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _default_mode(path: Path) -> int:
    """The mode an ordinary ``open(path, "w")`` would give: the existing file's, else 0666 minus the umask."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _remove_stale_tmp_files(path: Path) -> None:
    """Remove ``.NAME.PID-*.tmp-embedkit`` siblings of ``path`` left by killed writers (PID no longer alive)."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)-[A-Za-z0-9_]+{re.escape(_TMP_FILE_SUFFIX)}")
    with contextlib.suppress(OSError):
        with os.scandir(path.parent) as entries:
            stale = [e.path for e in entries if e.name.endswith(_TMP_FILE_SUFFIX) and (m := pattern.fullmatch(e.name))
                     and not _pid_alive(int(m.group(1))) and e.is_file(follow_symlinks=False)]
        for p in stale:
            with contextlib.suppress(OSError):
                os.unlink(p)


# ---------------------------------------------------------------------- inputs vs outputs
def refuse_overwriting_inputs(
    output: str | os.PathLike[str],
    *,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    model_dirs: Iterable[str | os.PathLike[str] | None] = (),
    flag: str = "--output",
) -> Path:
    """Refuse an ``output`` that would destroy something the command reads; return ``output`` as a Path.

    Paths are compared after resolving symlinks (and by inode for existing files, so hard links count too). Raises
    :class:`~embedkit.errors.DataError` when ``output`` is one of ``inputs`` (files), lies inside an input folder, or
    contains an input; :class:`~embedkit.errors.CheckpointError` when it is, lies inside, or contains one of
    ``model_dirs``. The message names ``flag`` and both paths. ``None`` entries are skipped.

    Example:
        >>> refuse_overwriting_inputs("same.txt", inputs=["same.txt"], flag="--output")
        Traceback (most recent call last):
        embedkit.errors.DataError: --output same.txt is also an input file (same.txt) ...
    """
    out = Path(output)
    out_r = _resolve(out)
    hint = "write to a new path: the command reads it while writing the output, and the original would be lost"
    for kind, paths in (("input", inputs), ("model", model_dirs)):
        error = DataError if kind == "input" else CheckpointError
        for p in paths:
            if p is None:
                continue
            p = Path(p)
            if kind == "model" and not p.exists():
                continue  # a hub id or a typo: nothing on disk to destroy (loading it fails with its own error)
            p_r = _resolve(p)
            what = "model folder" if kind == "model" else "input folder" if p_r.is_dir() else "input file"
            if out_r == p_r or _same_file(out, p):
                msg = f"{flag} {out} is also an {what} ({p})" if kind == "input" else f"{flag} {out} is the {what} {p}"
                raise error(msg + _resolved_note(out, out_r), hint=hint)
            if p_r in out_r.parents:
                raise error(f"{flag} {out} lies inside the {what} {p}" + _resolved_note(out, out_r), hint=hint)
            if out_r in p_r.parents:
                raise error(f"{flag} {out} contains the {what} {p}: replacing it would delete what is read",
                            hint=hint)
    return out


def _resolve(p: Path) -> Path:
    try:
        return p.expanduser().resolve()
    except (OSError, RuntimeError):  # symlink loop: compare what we can
        return Path(os.path.abspath(p.expanduser()))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _resolved_note(out: Path, out_r: Path) -> str:
    return f" (it resolves to {out_r})" if out_r != Path(os.path.abspath(out.expanduser())) else ""


# ---------------------------------------------------------------------- folders
_SIBLING_RE = r"\.{name}\.(tmp|old)-(\d+)-[0-9a-f]{{6}}"


def _sibling(path: Path, tag: str) -> Path:
    return path.parent / f".{path.name}.{tag}-{os.getpid()}-{os.urandom(3).hex()}"


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` may still be running (unknown counts as alive: nothing is deleted then)."""
    if pid == os.getpid():
        return True
    if os.name != "posix" or pid <= 0:
        return True  # os.kill(pid, 0) would terminate the process on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: someone else's live process
        return True
    return True


def stale_siblings(dst: str | os.PathLike[str]) -> list[Path]:
    """The ``.NAME.tmp-PID-*`` / ``.NAME.old-PID-*`` siblings of ``dst`` left by killed embedkit writers.

    Only siblings whose PID is no longer alive are listed: a live writer's temporary folder is never touched.

    Example:
        >>> stale_siblings("my-model")
        [PosixPath('.my-model.tmp-4242-a1b2c3')]
    """
    dst = Path(os.path.abspath(dst))  # "." has no name; its absolute path has
    pattern = re.compile(_SIBLING_RE.format(name=re.escape(dst.name)))
    found = []
    with contextlib.suppress(OSError):
        with os.scandir(dst.parent) as entries:
            for e in entries:
                m = pattern.fullmatch(e.name)
                if m and not _pid_alive(int(m.group(2))):
                    found.append(Path(e.path))
    return sorted(found)


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def _recover_and_clean(dst: Path) -> None:
    """After a kill: put back a complete old folder if ``dst`` is missing, then remove every stale sibling.

    Call with the destination lock held. A ``.NAME.old-*`` sibling is always a complete folder (the two-step swap
    renames it to a ``.tmp-`` name before deleting it), so restoring the newest one is safe.
    """
    stale = stale_siblings(dst)
    if not os.path.lexists(dst):
        olds = [p for p in stale if ".old-" in p.name and p.is_dir() and not p.is_symlink()]
        if olds:
            newest = max(olds, key=lambda p: p.stat().st_mtime)
            os.rename(newest, dst)
            _fsync_dir(dst.parent)
            stale.remove(newest)
    for p in stale:
        _remove(p)


@contextlib.contextmanager
def _dst_lock(dst: Path) -> Iterator[None]:
    """An exclusive ``fcntl.flock`` on the sibling ``.NAME.lock`` (removed on release when possible)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock (the commit is still atomic)
        yield
        return
    lock = dst.parent / f".{dst.name}.lock"
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.fstat(fd).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)  # the holder before us removed the file: lock the new one
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)  # while still held: a waiter on this inode sees it gone and retries
        os.close(fd)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_RENAMEAT2_SYSCALL = {"x86_64": 316, "aarch64": 276, "arm64": 276, "riscv64": 276, "loongarch64": 276,
                      "i386": 353, "i686": 353, "armv7l": 382, "ppc64le": 357, "ppc64": 357, "s390x": 347}


def rename_exchange(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Atomically swap the paths ``a`` and ``b`` (Linux ``renameat2(RENAME_EXCHANGE)``); both must exist.

    Returns False when the platform or file system cannot do it (not Linux, ``EINVAL``, ``ENOSYS``...): the caller
    then falls back to two renames. Other failures raise :class:`OSError`.

    Example:
        >>> rename_exchange(".my-model.tmp-1-abcdef", "my-model")
        True
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return False
    a_b, b_b = os.fsencode(os.fspath(a)), os.fsencode(os.fspath(b))
    fn = getattr(libc, "renameat2", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        fn.restype = ctypes.c_int
        rc = fn(_AT_FDCWD, a_b, _AT_FDCWD, b_b, _RENAME_EXCHANGE)
    else:
        nr = _RENAMEAT2_SYSCALL.get(os.uname().machine)
        if nr is None:
            return False
        libc.syscall.restype = ctypes.c_long
        rc = libc.syscall(ctypes.c_long(nr), ctypes.c_int(_AT_FDCWD), ctypes.c_char_p(a_b),
                          ctypes.c_int(_AT_FDCWD), ctypes.c_char_p(b_b), ctypes.c_uint(_RENAME_EXCHANGE))
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), os.fspath(a), None, os.fspath(b))


def _swap_in(tmp: Path, dst: Path) -> None:
    """Replace the existing ``dst`` by ``tmp`` so that ``dst`` always names a complete folder where possible.

    Linux: one ``renameat2(RENAME_EXCHANGE)``, after which ``tmp`` holds the old folder and is deleted. Elsewhere:
    ``dst`` -> ``.NAME.old-*``, ``tmp`` -> ``dst``; a kill between the two leaves ``dst`` missing and the old folder
    complete in the ``.old-`` sibling, which the next :func:`atomic_dir` on ``dst`` puts back.
    """
    if rename_exchange(tmp, dst):
        _fsync_dir(dst.parent)
        _remove(tmp)  # now the old folder
        return
    old = _sibling(dst, "old")
    os.replace(dst, old)
    os.replace(tmp, dst)
    _fsync_dir(dst.parent)
    doomed = _sibling(dst, "tmp")  # an .old- sibling is always complete: rename before deleting piecemeal
    os.replace(old, doomed)
    _remove(doomed)


@contextlib.contextmanager
def atomic_dir(dst: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder in a temporary sibling and swap it onto ``dst`` only when the block succeeds.

    Yields the temporary folder to write into. On success the new folder replaces ``dst`` (an existing ``dst`` is
    allowed only with ``overwrite``): on Linux in one atomic exchange, so ``dst`` is complete-old or complete-new at
    every instant; elsewhere in two renames, recovered by the next call after a kill. The check that ``dst`` does not
    exist and the commit run under an exclusive lock on the sibling ``.NAME.lock``: of two writers racing to create
    ``dst`` without ``overwrite``, exactly one succeeds and the other raises :class:`DestinationExistsError`. Stale
    temporary siblings of killed writers are removed first. On failure the temporary folder is removed and ``dst``
    is untouched.

    Example:
        >>> with atomic_dir("my-model", overwrite=True) as tmp:
        ...     (tmp / "config.json").write_text("{}")
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with _dst_lock(dst):
        _recover_and_clean(dst)
        if os.path.lexists(dst) and not overwrite:
            raise _exists_error(dst)
    tmp = _sibling(dst, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        with _dst_lock(dst):
            if os.path.lexists(dst):
                if not overwrite:
                    raise _exists_error(dst, during=True)
                _swap_in(tmp, dst)
            else:
                os.rename(tmp, dst)
                _fsync_dir(dst.parent)
    except BaseException:
        _remove(tmp)
        raise


def _exists_error(dst: Path, *, during: bool = False) -> DestinationExistsError:
    when = " (another process created it while this one was writing)" if during else ""
    return DestinationExistsError(f"destination {dst} already exists{when}",
                                  hint="pass --overwrite (API: overwrite=True) to replace it, or choose another path")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        _fsync_dir(Path(dirpath))


__all__ = ["DestinationExistsError", "atomic_dir", "atomic_write", "refuse_overwriting_inputs", "rename_exchange",
           "stale_siblings"]
