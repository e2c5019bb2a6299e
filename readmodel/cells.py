"""Rollup cells, the one layout every store keeps: one bucket of one server in 64 bytes.

::

    stamp u32 | samples u32 | cpu_count u32 | ram_count u32 |
    cpu_sum f64 | cpu_min f64 | cpu_max f64 | ram_sum f64 | ram_min f64 | ram_max f64

``stamp`` is the bucket number (``ts // 60`` or ``ts // 3600``). A metric without samples has
count 0, sum 0, min +inf and max -inf; a cell without samples is empty whatever its stamp. Sums
are float64 and counts integers, so a mean is ``sum / count`` over raw samples, never a mean of
means. The in-memory rollups hold a numpy array of these cells per ring, the Redis store keeps
the same bytes (the layout its Function reads with ``struct``), and snapshots write them as
they are. 64 bytes is also the largest value Redis keeps in a compact listpack hash.
"""

from __future__ import annotations

import numpy as np

from servertrack.common.buckets import HOUR_WINDOW, MINUTE_WINDOW

CELL_DTYPE = np.dtype(
    [
        ("stamp", "<u4"),
        ("samples", "<u4"),
        ("cpu_count", "<u4"),
        ("ram_count", "<u4"),
        ("cpu_sum", "<f8"),
        ("cpu_min", "<f8"),
        ("cpu_max", "<f8"),
        ("ram_sum", "<f8"),
        ("ram_min", "<f8"),
        ("ram_max", "<f8"),
    ]
)
CELL_NAMES: tuple[str, ...] = CELL_DTYPE.names or ()
"""The cell's field names in order (numpy types ``names`` as optional: a plain dtype has none)."""
CELL_SIZE = CELL_DTYPE.itemsize
MINUTE_SLOTS = MINUTE_WINDOW + 1
"""The minute ring: the 60 minutes shown plus the next one (samples up to 60 s ahead)."""
HOUR_SLOTS = HOUR_WINDOW + 1
METRICS = ("cpu", "ram")

assert CELL_SIZE == 64, "the Redis Function reads 64-byte cells"


def empty_cells(shape: int | tuple[int, ...], stamp: int = 0) -> np.ndarray:
    """Cells holding no sample (mins +inf, maxes -inf), stamped ``stamp``."""
    cells = np.zeros(shape, CELL_DTYPE)
    clear(cells, stamp)
    return cells


def clear(cells: np.ndarray, stamp: int | np.ndarray = 0) -> None:
    """Empty ``cells`` in place and stamp them."""
    cells[...] = 0
    cells["stamp"] = stamp
    for metric in METRICS:
        cells[f"{metric}_min"] = np.inf
        cells[f"{metric}_max"] = -np.inf


def unpack_cells(raw: bytes) -> np.ndarray:
    """Cells from their packed bytes (a whole ring or concatenated cells); a torn tail is left
    out."""
    usable = len(raw) - len(raw) % CELL_SIZE
    return np.frombuffer(raw, CELL_DTYPE, count=usable // CELL_SIZE)


def shown(cells: np.ndarray, oldest: int, newest: int) -> np.ndarray:
    """The cells holding samples whose stamp is in ``oldest..newest``, oldest first."""
    stamps = cells["stamp"]
    kept = cells[(stamps >= oldest) & (stamps <= newest) & (cells["samples"] > 0)]
    return kept[np.argsort(kept["stamp"], kind="stable")]


def means(cells: np.ndarray, metric: str) -> np.ndarray:
    """``sum / count`` of ``metric`` per cell, NaN where it has no sample."""
    with np.errstate(invalid="ignore", divide="ignore"):
        result: np.ndarray = cells[f"{metric}_sum"] / cells[f"{metric}_count"]
    return result


__all__ = [
    "CELL_DTYPE",
    "CELL_SIZE",
    "HOUR_SLOTS",
    "METRICS",
    "MINUTE_SLOTS",
    "clear",
    "empty_cells",
    "means",
    "shown",
    "unpack_cells",
]
