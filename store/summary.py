"""The fleet summary behind the dashboard: one small packed record per server.

The writer keeps, per server it writes, the cpu and ram means of the newest 61 minutes as Redis
answered them after each merge (the cells as merged, every writer's samples included), and
every few seconds packs them into a record in the server's index shard (a hash, one field per
server), so the whole fleet is read with one HGETALL per shard instead of two reads per server.

Record (380 bytes, little endian): last_seen f64, then the cpu means and the ram means of the
61 minutes ending with the minute of last_seen (oldest first), as u16 hundredths of a percent
(65535 = no sample), then the cells (:mod:`servertrack.readmodel.cells`: exact sums, counts,
extremes) of the two newest of those minutes. No minute after last_seen's can hold a sample, so a
reader realigns the record to its own clock from last_seen alone. The sparkline is for the eye,
so a 0.01 % step is plenty; the fleet's mean of a minute is the sum of the exact sums over the
sum of the counts (never a mean of means).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from servertrack.common.buckets import MINUTE, MINUTE_WINDOW, iso_utc, oldest_accepted_ts
from servertrack.readmodel.cells import CELL_DTYPE, MINUTE_SLOTS, empty_cells

SHOWN = MINUTE_WINDOW
"""Minutes a reader shows: the 60 up to its current one."""
KEPT = MINUTE_SLOTS
"""Minutes in a record: 61, so a sample up to 60 s ahead of a reader's clock is covered."""
NO_VALUE = 0xFFFF
TOTALS_DTYPE = CELL_DTYPE
"""One minute's exact totals for one server: its cell."""
SUMMED = ("samples", "cpu_sum", "cpu_count", "ram_sum", "ram_count")
"""What adds up over servers into the fleet's totals of a minute."""
EXACT = 2
"""Minutes whose exact totals a record carries: its newest two."""
EXACT_SLOTS = 3
RECORD_DTYPE = np.dtype(
    [
        ("last_seen", "<f8"),
        ("cpu", "<u2", (KEPT,)),
        ("ram", "<u2", (KEPT,)),
        ("totals", TOTALS_DTYPE, (EXACT,)),
    ]
)
RECORD_SIZE = RECORD_DTYPE.itemsize


class SparkRing:
    """Per local row, the cpu and ram means of the minutes ``current - 59 .. current + 1`` as
    record values (u16 hundredths, NO_VALUE where unknown): 244 bytes a server. One column per
    minute slot, shared by every row (the window moves for all rows at once), as in the
    in-memory rollups."""

    def __init__(self, capacity: int = 1024) -> None:
        self.bucket_of_slot = np.full(MINUTE_SLOTS, -1, np.int64)
        self.current = -1
        self.cpu = np.full((capacity, MINUTE_SLOTS), NO_VALUE, np.uint16)
        self.ram = np.full((capacity, MINUTE_SLOTS), NO_VALUE, np.uint16)
        self.totals = empty_cells((capacity, EXACT_SLOTS))
        """The cells of minutes ``current - 1 .. current + 1`` (slot = minute % 3)."""
        self.totals_minute = np.full(EXACT_SLOTS, -1, np.int64)

    @property
    def capacity(self) -> int:
        return int(self.cpu.shape[0])

    def grow(self, capacity: int) -> None:
        for name in ("cpu", "ram"):
            old = getattr(self, name)
            bigger = np.full((capacity, MINUTE_SLOTS), NO_VALUE, np.uint16)
            bigger[: old.shape[0]] = old
            setattr(self, name, bigger)
        totals = empty_cells((capacity, EXACT_SLOTS))
        totals[: self.totals.shape[0]] = self.totals
        self.totals = totals

    def clear_rows(self, rows: np.ndarray) -> None:
        self.cpu[rows] = NO_VALUE
        self.ram[rows] = NO_VALUE
        self.totals[rows] = empty_cells(1)

    def advance(self, minute: int) -> None:
        """Make ``minute`` the newest minute shown; columns of minutes that left are cleared."""
        if minute <= self.current:
            return
        self.current = minute
        first = minute - MINUTE_WINDOW + 1
        expected = first + (np.arange(MINUTE_SLOTS) - first) % MINUTE_SLOTS
        stale = np.flatnonzero(self.bucket_of_slot != expected)
        if stale.size:
            self.cpu[:, stale] = NO_VALUE
            self.ram[:, stale] = NO_VALUE
            self.bucket_of_slot[stale] = expected[stale]
        for wanted in range(minute - 1, minute + 2):
            slot = wanted % EXACT_SLOTS
            if self.totals_minute[slot] != wanted:
                self.totals[:, slot] = empty_cells(1, wanted)
                self.totals_minute[slot] = wanted

    def note(self, rows: np.ndarray, cells: np.ndarray) -> None:
        """Take the means of ``cells`` (``rows[k]`` owns ``cells[k]``) for minutes in the ring;
        a later cell of the same (row, minute) wins."""
        if cells.size == 0:
            return
        stamps = cells["stamp"].astype(np.int64)
        slots = stamps % MINUTE_SLOTS
        fits = (self.bucket_of_slot[slots] == stamps) & (cells["samples"] > 0)
        if not fits.any():
            return
        rows, slots, cells = rows[fits], slots[fits], cells[fits]
        stamps = stamps[fits]
        exact = self.totals_minute[stamps % EXACT_SLOTS] == stamps
        if exact.any():
            self.totals[rows[exact], (stamps[exact] % EXACT_SLOTS)] = cells[exact]
        with np.errstate(invalid="ignore", divide="ignore"):
            for metric in ("cpu", "ram"):
                count = cells[f"{metric}_count"]
                mean = np.where(count > 0, cells[f"{metric}_sum"] / count, np.nan)
                getattr(self, metric)[rows, slots] = quantize(mean)

    def records(self, rows: np.ndarray, last_seen: np.ndarray) -> np.ndarray:
        """Summary records of ``rows``: the minutes ending with each one's last-seen minute."""
        out = np.zeros(rows.size, RECORD_DTYPE)
        if rows.size == 0:
            return out
        out["last_seen"] = last_seen
        newest = np.floor_divide(last_seen, MINUTE).astype(np.int64)
        minutes = newest[:, None] - (KEPT - 1) + np.arange(KEPT)[None, :]
        slots = minutes % MINUTE_SLOTS
        known = self.bucket_of_slot[slots] == minutes
        picked = np.broadcast_to(rows[:, None], slots.shape)
        for metric in ("cpu", "ram"):
            out[metric] = np.where(known, getattr(self, metric)[picked, slots], NO_VALUE)
        for k in range(EXACT):  # the record's two newest minutes: newest - 1, newest
            minute = newest - (EXACT - 1) + k
            slot = minute % EXACT_SLOTS
            held = self.totals_minute[slot] == minute
            values = self.totals[rows, slot]
            values[~held] = empty_cells(1)
            out["totals"][:, k] = values
        return out


def quantize(means: np.ndarray) -> np.ndarray:
    """Means in percent as u16 hundredths (NO_VALUE for NaN)."""
    scaled = np.round(np.nan_to_num(means, nan=-1.0) * 100.0)
    return np.where(np.isnan(means), NO_VALUE, np.clip(scaled, 0, NO_VALUE - 1)).astype(np.uint16)


@dataclass(slots=True)
class FleetRows:
    """Every server in the window at ``minute``, by name: last-seen ts, ``cpu_minutes`` and
    ``ram_minutes`` (the means of the 60 minutes up to ``minute``, oldest first, NaN = no
    sample) and ``cpu``/``ram``, the mean of the newest of those minutes holding the metric
    (NaN when none)."""

    names: list[str]
    last_seen: np.ndarray
    cpu: np.ndarray
    ram: np.ndarray
    cpu_minutes: np.ndarray
    ram_minutes: np.ndarray
    minute: int
    totals: dict[int, dict[str, float]] = field(default_factory=dict)
    """Exact fleet totals (``samples``, ``cpu_sum``, ``cpu_count``, ``ram_sum``, ``ram_count``)
    of the minutes ``minute`` and ``minute - 1``, summed over every server's record."""
    complete: np.ndarray = field(default_factory=lambda: empty_cells(0))
    """Each server's cell of the minute before ``minute`` (the last complete one; no samples
    when it sent none then)."""

    def __len__(self) -> int:
        return len(self.names)

    def as_dicts(self) -> list[dict[str, Any]]:
        """JSON-ready rows (``None`` for a missing value); ``spark`` is the cpu minutes."""
        spark = self.cpu_minutes.tolist()
        out = []
        for k, name in enumerate(self.names):
            cpu, ram = float(self.cpu[k]), float(self.ram[k])
            out.append(
                {
                    "server": name,
                    "last_seen": iso_utc(float(self.last_seen[k])),
                    "cpu": None if cpu != cpu else cpu,
                    "ram": None if ram != ram else ram,
                    "spark": [None if v != v else v for v in spark[k]],
                }
            )
        return out


def _newest(values: np.ndarray) -> np.ndarray:
    """Per row, the last non-NaN value (NaN when none)."""
    present = ~np.isnan(values)
    last = values.shape[1] - 1 - np.argmax(present[:, ::-1], axis=1)
    picked = values[np.arange(values.shape[0]), last]
    return np.where(present.any(axis=1), picked, np.nan)


def decode_fleet(names: list[str], raw: list[bytes], now: float) -> FleetRows:
    """Records read from the shards, realigned to the minute of ``now``; servers silent for the
    whole 24-hour window, and records of a size this version does not know, are left out."""
    minute = int(now // MINUTE)
    sized = [k for k, record in enumerate(raw) if len(record) == RECORD_SIZE]
    records = np.frombuffer(b"".join(raw[k] for k in sized), RECORD_DTYPE)
    keep = np.flatnonzero(records["last_seen"] >= oldest_accepted_ts(now))
    kept_names = [names[sized[k]] for k in keep.tolist()]
    order = np.asarray(sorted(range(len(kept_names)), key=kept_names.__getitem__), np.int64)
    records = records[keep][order]
    kept_names = [kept_names[k] for k in order.tolist()]
    newest = np.floor_divide(records["last_seen"], MINUTE).astype(np.int64)
    # reader column i is minute (minute - SHOWN + 1 + i); record column j is (newest - KEPT + 1 + j)
    columns = np.arange(SHOWN)[None, :] + (minute - SHOWN + 1 - (newest - KEPT + 1))[:, None]
    inside = (columns >= 0) & (columns < KEPT)
    rows = np.broadcast_to(np.arange(len(records))[:, None], columns.shape)
    aligned = {}
    for metric in ("cpu", "ram"):
        values = records[metric]
        scaled = np.where(values == NO_VALUE, np.nan, values / 100.0)
        out = np.full(columns.shape, np.nan)
        out[inside] = scaled[rows[inside], columns[inside]]
        aligned[metric] = out
    totals: dict[int, dict[str, float]] = {}
    for wanted in (minute - 1, minute):
        sums = dict.fromkeys(SUMMED, 0.0)
        for k in range(EXACT):
            holds = newest - (EXACT - 1) + k == wanted
            for name in SUMMED:
                sums[name] += float(records["totals"][name][holds, k].sum())
        totals[wanted] = sums
    complete = empty_cells(len(records), minute - 1)
    for k in range(EXACT):
        holds = np.flatnonzero(newest - (EXACT - 1) + k == minute - 1)
        complete[holds] = records["totals"][holds, k]
    return FleetRows(
        totals=totals,
        complete=complete,
        names=kept_names,
        last_seen=records["last_seen"].astype(np.float64),
        cpu=_newest(aligned["cpu"]),
        ram=_newest(aligned["ram"]),
        cpu_minutes=aligned["cpu"],
        ram_minutes=aligned["ram"],
        minute=minute,
    )
