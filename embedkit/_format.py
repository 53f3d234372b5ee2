"""The one human-readable byte size embedkit prints: binary units (``87.3 MiB``), as ``ls -lh`` / ``du -h``."""

from __future__ import annotations

_UNITS = ("KiB", "MiB", "GiB", "TiB")


def format_bytes(n: float) -> str:
    """A byte count for people, in binary units (powers of 1024).

    Whole bytes below 1 KiB, one decimal above (never ``1024.0 KiB``: that is ``1.0 MiB``), ``TiB`` the largest
    unit; a negative count keeps its sign.

    >>> format_bytes(512), format_bytes(1536), format_bytes(91_540_000)
    ('512 B', '1.5 KiB', '87.3 MiB')
    """
    if abs(n) < 1024:
        return f"{int(n)} B"
    value = float(n)
    for unit in _UNITS:
        value /= 1024
        if round(abs(value), 1) < 1024 or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


__all__ = ["format_bytes"]
