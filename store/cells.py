"""Rollup cells for the Redis store: pure numpy, no I/O.

A cell is one bucket of one server, packed in 64 little-endian bytes (the layout the Redis
Function reads with ``struct``)::

    stamp u32 | samples u32 | cpu_count u32 | ram_count u32 |
    cpu_sum f64 | cpu_min f64 | cpu_max f64 | ram_sum f64 | ram_min f64 | ram_max f64

``stamp`` is the bucket number (``ts // 60`` or ``ts // 3600``); 0 marks an empty slot. A metric
without samples has count 0, sum 0, min +inf and max -inf. Sums are float64 and counts integers,
so a mean is ``sum / count`` over raw samples, as exact as in memory.

:func:`fold` groups the samples of one or more batches by (server, bucket) with the bucket rules
of :mod:`servertrack.common.buckets` and the same windows as the in-memory rollups: hours inside
the 24-hour window plus the next hour, minutes inside the 60-minute window plus the next minute.
64 bytes is also the largest value Redis keeps in a compact listpack hash (``hash-max-listpack-
value``), which the hour hash relies on.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from servertrack.common.buckets import HOUR, HOUR_WINDOW, MINUTE, MINUTE_WINDOW, iso_utc
from servertrack.common.sample import valid_columns

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
CELL_SIZE = CELL_DTYPE.itemsize
MINUTE_SLOTS = MINUTE_WINDOW + 1
"""The minute ring: the 60 minutes shown plus the next one (samples up to 60 s ahead)."""
HOUR_SLOTS = HOUR_WINDOW + 1
HEAD_DTYPE = np.dtype([("last_seen", "<f8"), ("seq", "<f8"), ("seq_ts", "<f8")])
"""Per server and call: newest ts folded, and the newest agent seq with its ts (-1 = none)."""
METRICS = ("cpu", "ram")

assert CELL_SIZE == 64, "the Redis Function reads 64-byte cells"


@dataclass(slots=True)
class BatchColumns:
    """One receiver batch as the store takes it: ``rows`` index the ``names`` given alongside;
    ``cpu``/``ram`` are NaN where the sample lacks the metric; ``seq`` is -1 where it has none."""

    number: int
    rows: np.ndarray
    ts: np.ndarray
    cpu: np.ndarray
    ram: np.ndarray
    seq: np.ndarray | None = None

    def __len__(self) -> int:
        return int(np.asarray(self.rows).size)


@dataclass(slots=True)
class Samples:
    """Several batches as one set of columns, in batch-number then arrival order."""

    rows: np.ndarray
    ts: np.ndarray
    cpu: np.ndarray
    ram: np.ndarray
    seq: np.ndarray
    number: np.ndarray

    def __len__(self) -> int:
        return int(self.rows.size)

    def select(self, mask: np.ndarray) -> Samples:
        return Samples(
            self.rows[mask],
            self.ts[mask],
            self.cpu[mask],
            self.ram[mask],
            self.seq[mask],
            self.number[mask],
        )


def concat(batches: list[BatchColumns], names: int) -> Samples:
    """The batches' columns end to end, sorted by batch number (arrival order within each).
    ValueError for columns of different lengths or rows outside ``names``."""
    ordered = sorted(batches, key=lambda batch: batch.number)
    parts: dict[str, list[np.ndarray]] = {key: [] for key in ("rows", "ts", "cpu", "ram", "seq")}
    numbers = []
    for batch in ordered:
        rows = np.asarray(batch.rows, np.int64)
        columns = {
            "ts": np.asarray(batch.ts, np.float64),
            "cpu": np.asarray(batch.cpu, np.float64),
            "ram": np.asarray(batch.ram, np.float64),
            "seq": np.full(rows.size, -1, np.int64)
            if batch.seq is None
            else np.asarray(batch.seq, np.int64),
        }
        for key, column in columns.items():
            if column.shape != rows.shape:
                raise ValueError(
                    f"batch {batch.number}: column {key} has {column.size} values for "
                    f"{rows.size} rows"
                )
        if rows.size and (rows.min() < 0 or rows.max() >= names):
            raise ValueError(f"batch {batch.number}: a row is outside the {names} names given")
        parts["rows"].append(rows)
        for key, column in columns.items():
            parts[key].append(column)
        numbers.append(np.full(rows.size, batch.number, np.int64))
    if not ordered:
        empty_f, empty_i = np.empty(0, np.float64), np.empty(0, np.int64)
        return Samples(empty_i, empty_f, empty_f, empty_f, empty_i, empty_i)
    return Samples(
        np.concatenate(parts["rows"]),
        np.concatenate(parts["ts"]),
        np.concatenate(parts["cpu"]),
        np.concatenate(parts["ram"]),
        np.concatenate(parts["seq"]),
        np.concatenate(numbers),
    )


@dataclass(slots=True)
class Folded:
    """Per server (``servers``, ascending rows): the batch range folded, the samples folded,
    the head record, and its minute and hour cells (``*_bounds[k]:*_bounds[k+1]``)."""

    servers: np.ndarray
    first: np.ndarray
    last: np.ndarray
    samples: np.ndarray
    head: np.ndarray
    minute_cells: np.ndarray
    minute_bounds: np.ndarray
    hour_cells: np.ndarray
    hour_bounds: np.ndarray
    expired: int
    invalid: int

    def __len__(self) -> int:
        return int(self.servers.size)


def _group_starts(keys: np.ndarray) -> np.ndarray:
    """Start index of each run of equal values in sorted ``keys``."""
    if keys.size == 0:
        return np.empty(0, np.int64)
    change = np.empty(keys.size, bool)
    change[0] = True
    np.not_equal(keys[1:], keys[:-1], out=change[1:])
    return np.flatnonzero(change)


def _cells(
    rows: np.ndarray,
    buckets: np.ndarray,
    cpu: np.ndarray,
    ram: np.ndarray,
    low: int,
    slots: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Cells of samples grouped by (row, bucket), sorted by row then bucket, and their rows.
    ``buckets`` lie in ``low .. low + slots - 1``."""
    keys = rows * slots + (buckets - low)
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    starts = _group_starts(keys)
    cells = np.zeros(starts.size, CELL_DTYPE)
    if starts.size == 0:
        return cells, np.empty(0, np.int64)
    counts = np.diff(np.append(starts, keys.size))
    cells["stamp"] = low + keys[starts] % slots
    cells["samples"] = counts
    for metric, column in (("cpu", cpu[order]), ("ram", ram[order])):
        present = ~np.isnan(column)
        cells[f"{metric}_count"] = np.add.reduceat(present.astype(np.uint32), starts)
        cells[f"{metric}_sum"] = np.add.reduceat(np.where(present, column, 0.0), starts)
        cells[f"{metric}_min"] = np.minimum.reduceat(np.where(present, column, np.inf), starts)
        cells[f"{metric}_max"] = np.maximum.reduceat(np.where(present, column, -np.inf), starts)
    return cells, keys[starts] // slots


def fold(samples: Samples, now: float) -> Folded:
    """Fold ``samples`` into per-(server, bucket) cells for the windows at ``now``.

    Samples whose hour is outside the hour window are ``expired``; samples with a ts or a value
    the receiver would have refused (:func:`valid_columns`) are ``invalid``; neither is folded.
    A sample older than the minute window but inside the hour window counts in its hour only.
    """
    ts, cpu, ram = samples.ts, samples.cpu, samples.ram
    valid = valid_columns(ts, cpu, ram)
    invalid = int(valid.size - np.count_nonzero(valid))
    hour = np.floor_divide(np.where(valid, ts, 0.0), HOUR).astype(np.int64)
    current_hour = int(now // HOUR)
    low_hour = current_hour - HOUR_WINDOW + 1
    keep = valid & (hour >= low_hour) & (hour <= current_hour + 1)
    expired = int(np.count_nonzero(valid) - np.count_nonzero(keep))
    if not keep.all():
        kept = samples.select(keep)
        hour = hour[keep]
    else:
        kept = samples
    rows, ts, cpu, ram = kept.rows, kept.ts, kept.cpu, kept.ram

    hour_cells, hour_rows = _cells(rows, hour, cpu, ram, low_hour, HOUR_SLOTS)
    minute = np.floor_divide(ts, MINUTE).astype(np.int64)
    current_minute = int(now // MINUTE)
    low_minute = current_minute - MINUTE_WINDOW + 1
    recent = (minute >= low_minute) & (minute <= current_minute + 1)
    minute_cells, minute_rows = _cells(
        rows[recent], minute[recent], cpu[recent], ram[recent], low_minute, MINUTE_SLOTS
    )

    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    starts = _group_starts(sorted_rows)
    servers = sorted_rows[starts]
    if starts.size:
        number = kept.number[order]
        first = np.minimum.reduceat(number, starts)
        last = np.maximum.reduceat(number, starts)
        newest = np.maximum.reduceat(ts[order], starts)
        counts = np.diff(np.append(starts, rows.size))
    else:
        first = last = counts = np.empty(0, np.int64)
        newest = np.empty(0, np.float64)
    head = np.zeros(servers.size, HEAD_DTYPE)
    head["last_seen"] = newest
    head["seq"] = -1.0
    head["seq_ts"] = -1.0
    numbered = np.flatnonzero(kept.seq >= 0)
    if numbered.size and servers.size:
        # The last numbered sample of each server in arrival order is its newest seq.
        seq_rows = rows[numbered][::-1]
        unique, from_end = np.unique(seq_rows, return_index=True)
        newest_index = numbered[::-1][from_end]
        where = np.searchsorted(servers, unique)
        head["seq"][where] = kept.seq[newest_index]
        head["seq_ts"][where] = ts[newest_index]
    return Folded(
        servers=servers,
        first=first,
        last=last,
        samples=counts,
        head=head,
        minute_cells=minute_cells,
        minute_bounds=np.searchsorted(minute_rows, np.append(servers, np.iinfo(np.int64).max)),
        hour_cells=hour_cells,
        hour_bounds=np.searchsorted(hour_rows, np.append(servers, np.iinfo(np.int64).max)),
        expired=expired,
        invalid=invalid,
    )


def unpack_cells(raw: bytes) -> np.ndarray:
    """Cells from their packed bytes (a whole minute ring or concatenated cells)."""
    usable = len(raw) - len(raw) % CELL_SIZE
    return np.frombuffer(raw, CELL_DTYPE, count=usable // CELL_SIZE)


@lru_cache(maxsize=4096)
def _start(seconds: int) -> str:
    """PERF: formatting a bucket start took half of a view's CPU; every server shows the same
    86 starts at a time, so they are formatted once."""
    return iso_utc(seconds)


def bucket_dicts(cells: np.ndarray, width: int, oldest: int, newest: int) -> list[dict[str, Any]]:
    """The non-empty cells with a stamp in ``oldest..newest``, oldest first, in the shape of
    :meth:`servertrack.aggregator.rollups.Rollups.view` (``null`` for a metric without
    samples)."""
    shown = cells[(cells["stamp"] >= oldest) & (cells["stamp"] <= newest) & (cells["samples"] > 0)]
    shown = shown[np.argsort(shown["stamp"], kind="stable")]
    stamps, samples = shown["stamp"].tolist(), shown["samples"].tolist()
    cpu_n, cpu_sum = shown["cpu_count"].tolist(), shown["cpu_sum"].tolist()
    cpu_min, cpu_max = shown["cpu_min"].tolist(), shown["cpu_max"].tolist()
    ram_n, ram_sum = shown["ram_count"].tolist(), shown["ram_sum"].tolist()
    ram_min, ram_max = shown["ram_min"].tolist(), shown["ram_max"].tolist()
    out = []
    for k, stamp in enumerate(stamps):
        c, r = cpu_n[k], ram_n[k]
        out.append(
            {
                "start": _start(stamp * width),
                "cpu": cpu_sum[k] / c if c else None,
                "cpu_sum": cpu_sum[k] if c else None,
                "cpu_min": cpu_min[k] if c else None,
                "cpu_max": cpu_max[k] if c else None,
                "cpu_samples": c,
                "ram": ram_sum[k] / r if r else None,
                "ram_sum": ram_sum[k] if r else None,
                "ram_min": ram_min[k] if r else None,
                "ram_max": ram_max[k] if r else None,
                "ram_samples": r,
                "samples": samples[k],
            }
        )
    return out


__all__ = [
    "CELL_DTYPE",
    "CELL_SIZE",
    "HEAD_DTYPE",
    "HOUR_SLOTS",
    "MINUTE_SLOTS",
    "BatchColumns",
    "Folded",
    "Samples",
    "bucket_dicts",
    "concat",
    "fold",
    "unpack_cells",
]
