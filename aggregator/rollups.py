"""Per-server rollups as one I/O-free object: numpy rings indexed by server row.

Every server owns a row. The minute ring has 61 slots (the 60 minutes of the window plus the next
minute, for samples up to 60 s ahead of the clock) and the hour ring 25 (24 + the next hour). A slot
is tied to one bucket number for all servers at once (``slot = bucket % slots``); when the window
moves, the column of every slot whose bucket left it is cleared. Each slot holds the number of raw
samples and, for cpu and ram separately, their sum, count, min and max, so every mean is
``sum / count`` over raw samples, never a mean of means.

PERF: a 200k-sample batch is applied with one ``ufunc.at`` per field (a few ms each);
pure-Python dicts cost ~4 µs per sample and ~17 KB per server, these arrays ~5.2 KB per server and
leave the garbage collector nothing to scan.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
from sortedcontainers import SortedList

from servertrack.aggregator.current import CurrentValues
from servertrack.aggregator.fleet_table import fleet_table
from servertrack.aggregator.health_runs import HealthRuns
from servertrack.anomaly.fleet_scores import NEVER as NEVER_SCORED
from servertrack.anomaly.fleet_scores import FleetScores
from servertrack.common.batch import ServerHealth
from servertrack.common.buckets import (
    HOUR,
    HOUR_WINDOW,
    MINUTE,
    MINUTE_WINDOW,
    Clock,
    oldest_accepted_ts,
)
from servertrack.readmodel.cells import CELL_DTYPE, CELL_NAMES, METRICS, clear, shown
from servertrack.readmodel.errors import CorruptKey
from servertrack.readmodel.fleet import FleetTable
from servertrack.readmodel.health import merge_health
from servertrack.readmodel.values import ServersPage, ServerView

NO_BUCKET = np.iinfo(np.int64).min


class Ring:
    """The cells (:mod:`servertrack.readmodel.cells`) of ``slots`` consecutive buckets of
    ``width`` seconds, one row per server: ``cells[row, bucket % slots]``.

    Each field of the cells is also reachable as an array of its own (``fields["cpu_sum"]``: a
    view into the cells, so a write through it is a write to the cells)."""

    def __init__(self, width: int, window: int, capacity: int) -> None:
        self.width = width
        self.window = window
        self.slots = window + 1
        self.bucket_of_slot = np.full(self.slots, NO_BUCKET, dtype=np.int64)
        self.current = NO_BUCKET
        self.cells = np.zeros((capacity, self.slots), CELL_DTYPE)
        self.fields = self._views()
        self.ready = 0
        """Rows made empty so far. The cells start as zeros the system gives on first touch, so
        the rows above ``ready`` cost no memory and no time until :meth:`prepare` empties them
        (min +inf, max -inf, each slot stamped) just before they are used; nothing else reads
        or writes them."""

    def _views(self) -> dict[str, np.ndarray]:
        return {name: self.cells[name] for name in CELL_NAMES if name != "stamp"}

    def _stamps(self) -> np.ndarray:
        """Each slot's bucket number as a cell stamp (0 for a slot no bucket has had yet)."""
        return np.where(self.bucket_of_slot >= 0, self.bucket_of_slot, 0).astype(np.uint32)

    def prepare(self, rows: int) -> None:
        """Make the rows below ``rows`` ready to take samples (empty cells).

        PERF: the rows above ``ready`` were never written, so they are zeros already: only the
        stamps and the extremes are set (a pass over all of each cell would touch its memory
        twice)."""
        if rows > self.ready:
            block = self.cells[self.ready : rows]
            block["stamp"] = self._stamps()
            for metric in METRICS:
                block[f"{metric}_min"] = np.inf
                block[f"{metric}_max"] = -np.inf
        self.ready = max(self.ready, rows)

    def grow(self, capacity: int) -> None:
        bigger = np.zeros((capacity, self.slots), CELL_DTYPE)
        bigger[: self.ready] = self.cells[: self.ready]
        self.cells = bigger
        self.fields = self._views()

    def clear_rows(self, rows: np.ndarray) -> None:
        emptied = self.cells[rows]
        clear(emptied, self._stamps())
        self.cells[rows] = emptied

    def advance(self, current: int) -> None:
        """Move the window so that bucket ``current`` is the newest complete one shown."""
        if current <= self.current:
            return
        self.current = current
        first = current - self.window + 1
        expected = first + (np.arange(self.slots) - first) % self.slots
        stale = self.bucket_of_slot != expected
        if stale.any():
            columns = np.flatnonzero(stale)
            self.bucket_of_slot[columns] = expected[columns]
            stamps = self._stamps()
            for column in columns.tolist():  # each column a view: emptied in place, no copy
                clear(self.cells[: self.ready, column], stamps[column])

    def in_window(self, buckets: np.ndarray) -> np.ndarray:
        """Which buckets have a slot: the window plus the one bucket ahead of it."""
        return (buckets > self.current - self.window) & (buckets <= self.current + 1)

    def accumulate(
        self, rows: np.ndarray, buckets: np.ndarray, values: dict[str, np.ndarray]
    ) -> None:
        """Add samples (NaN = metric absent) into their (row, bucket) cells.

        PERF: unbuffered ``ufunc.at`` handles repeated cells without sorting; with an array
        operand it costs ~2-5 ms per field for 200k samples (an argsort alone costs ~10 ms).
        The fields are views into 64-byte cells, so one sample's fields share a cache line.
        """
        if rows.size == 0:
            return
        cells = rows * self.slots + buckets % self.slots
        ones = np.ones(cells.size, np.uint32)
        f = self.fields
        np.add.at(f["samples"].reshape(-1), cells, ones)
        for metric in METRICS:
            column = values[metric]
            present = ~np.isnan(column)
            if present.all():
                where, counted = cells, ones
            else:
                where, column = cells[present], column[present]
                counted = ones[: where.size]
            np.add.at(f[f"{metric}_sum"].reshape(-1), where, column)
            np.add.at(f[f"{metric}_count"].reshape(-1), where, counted)
            np.minimum.at(f[f"{metric}_min"].reshape(-1), where, column)
            np.maximum.at(f[f"{metric}_max"].reshape(-1), where, column)

    def shown_cells(self, row: int) -> np.ndarray:
        """The cells of ``row`` holding samples inside the window, oldest first."""
        return shown(self.cells[row], self.current - self.window + 1, self.current)

    @property
    def nbytes(self) -> int:
        return int(self.cells.nbytes)


REFUSED = -2
"""The row given for a server beyond ``max_servers``."""
PREPARE_ROWS = 4096
"""Rows emptied at once ahead of use (~11 MB of the rings, a few ms)."""


@dataclass(slots=True)
class ApplyResult:
    applied: int
    expired: int


@dataclass(slots=True)
class NameIndex:
    """Every tracked server's row and name, in name order, with the names in lower case made
    once, when a filter first asks for them."""

    rows: np.ndarray
    names: list[str]
    _lower: list[str] | None = None

    def lower(self) -> list[str]:
        if self._lower is None:
            self._lower = [name.lower() for name in self.names]
        return self._lower


class Rollups:
    """All servers' minute and hour rollups. Pass ``now`` or inject ``clock``; no I/O inside."""

    writes_behind = False
    """Batches go to the store as they are applied."""

    def __init__(
        self, clock: Clock = time.time, capacity: int = 1024, max_servers: int | None = None
    ) -> None:
        """``capacity`` rows to start with (doubled when full); with ``max_servers``, room for
        that many rows is set aside at once, as memory the system hands out only when a row
        is first used: a fleet appearing all at once then never waits for every row to be
        copied into larger arrays (seconds at 100,000 servers and more)."""
        if max_servers is not None:
            capacity = max(capacity, max_servers)
        self.clock = clock
        self.capacity = capacity
        self.max_servers = max_servers
        """Rows at most; :meth:`row_for` answers ``REFUSED`` for a new name beyond it."""
        self.minutes = Ring(MINUTE, MINUTE_WINDOW, capacity)
        self.hours = Ring(HOUR, HOUR_WINDOW, capacity)
        self.last_seen = np.full(capacity, -np.inf, np.float64)
        self.last_seq = np.full(capacity, -1, np.int64)
        self.last_seq_ts = np.full(capacity, -np.inf, np.float64)
        """Each server's newest agent seq and its ts, so a restarted receiver can resume loss
        counting where the previous one stopped."""
        self.health = HealthRuns()
        """Each receiver run's newest health record of each server."""
        self.current_values = CurrentValues(capacity)
        """Each row's current cpu and ram, kept as samples come (for the dashboard's table)."""
        self.row_of: dict[str, int] = {}
        self.sorted_names: SortedList[str] = SortedList()
        """The tracked names in order, for paged listings."""
        self.names_changed = 0
        """Bumped whenever a name comes or goes (the name index is made again then)."""
        self._name_index: tuple[int, NameIndex] | None = None
        self.name_of: list[str | None] = []
        self.free_rows: list[int] = []
        self.expired_total = 0
        self.applied_total = 0
        self.evictions = 0
        """Bumped whenever rows are released, so callers caching rows know to look them up again."""
        self._swept_minute = np.iinfo(np.int64).min
        self.anomaly = FleetScores()
        """Each row's anomaly detectors and the scores of its recent minutes (row for row)."""

    # -- rows ---------------------------------------------------------------------------------
    def row_for(self, name: str) -> int:
        """The row of server ``name``, creating it on first sight (``REFUSED`` at the cap)."""
        row = self.row_of.get(name)
        if row is not None:
            return row
        if self.max_servers is not None and len(self.row_of) >= self.max_servers:
            return REFUSED
        self.sorted_names.add(name)
        self.names_changed += 1
        if self.free_rows:
            row = self.free_rows.pop()
            self.name_of[row] = name
        else:
            row = len(self.name_of)
            if row >= self.capacity:
                self._grow(self.capacity * 2)
            if row >= self.minutes.ready:
                self._prepare(min(self.capacity, row + PREPARE_ROWS))
            self.name_of.append(name)
        self.row_of[name] = row
        return row

    def _prepare(self, rows: int) -> None:
        self.minutes.prepare(rows)
        self.hours.prepare(rows)
        # The detectors of new rows are made with their cells, a few thousand at a time, not
        # all at the next minute's scoring (250,000 at once held the loop for 1.5 s).
        self.anomaly.ensure(rows)

    def _grow(self, capacity: int) -> None:
        self.minutes.grow(capacity)
        self.hours.grow(capacity)
        for name, empty in (("last_seen", -np.inf), ("last_seq", -1), ("last_seq_ts", -np.inf)):
            old = getattr(self, name)
            bigger = np.full(capacity, empty, old.dtype)
            bigger[: self.capacity] = old
            setattr(self, name, bigger)
        self.current_values.grow(capacity)
        self.capacity = capacity

    # -- time ---------------------------------------------------------------------------------
    def advance(self, now: float | None = None) -> float:
        """Move both windows to ``now`` (reads and writes do this; it releases nothing)."""
        now = self.clock() if now is None else now
        self._move_windows(now)
        return now

    def evict_silent(self, now: float | None = None) -> int:
        """Forget the servers silent for the whole 24-hour window (at most once a minute) and
        return how many. Rows are released only here, never inside :meth:`apply` or a read: a
        row created for a batch must not be released before that whole batch is applied, or
        its samples would land in a row another server gets next."""
        now = self.advance(now)
        if self.minutes.current == self._swept_minute:
            return 0
        self._swept_minute = self.minutes.current
        return self._evict_silent(now)

    def score_minutes(self, now: float | None = None) -> int:
        """Score every complete minute not scored yet that the minute ring still holds, oldest
        first (one, unless the aggregator was stopped or held up), with each row's means of that
        minute; returns how many minutes were scored. A sample of a minute applied after it was
        scored counts in its means but not in its score."""
        now = self.advance(now)
        ring = self.minutes
        last = ring.current - 1
        if self.anomaly.scored == NEVER_SCORED:
            first = last  # a fresh start: the minutes before held nothing to score
        else:
            first = max(self.anomaly.scored + 1, ring.current - ring.window + 1)
        if first > last:
            return 0
        self.anomaly.ensure(len(self.name_of))
        rows = self.anomaly.rows  # rows made ready ahead of use hold no sample: absent
        for minute in range(first, last + 1):
            slot = minute % ring.slots
            if ring.bucket_of_slot[slot] == minute and rows:
                self.anomaly.score_cells(minute, ring.cells[:rows, slot])
            else:  # a minute no sample was ever applied in
                self.anomaly.skip(minute)
        return last - first + 1

    def _move_windows(self, now: float) -> bool:
        minute = int(now // MINUTE)
        previous = self.minutes.current
        if minute <= previous:
            return False
        self.minutes.advance(minute)
        self.hours.advance(int(now // HOUR))
        self.current_values.window_moved(self.minutes, previous, len(self.name_of))
        return True

    def _evict_silent(self, now: float) -> int:
        used = len(self.name_of)
        silent = np.flatnonzero(self.last_seen[:used] < oldest_accepted_ts(now))
        if silent.size == 0:
            return 0
        gone = [row for row in silent.tolist() if self.name_of[row] is not None]
        if not gone:
            return 0
        rows = np.asarray(gone)
        self.minutes.clear_rows(rows)
        self.hours.clear_rows(rows)
        self.current_values.clear_rows(rows)
        self.anomaly.reset(rows)
        self.names_changed += 1
        names = []
        for row in gone:
            name = self.name_of[row]
            assert name is not None  # gone holds only rows with a name
            names.append(name)
            self.name_of[row] = None
            del self.row_of[name]
            self.sorted_names.remove(name)
            self.free_rows.append(row)
        self.health.forget(names, oldest_accepted_ts(now))
        self.last_seen[rows] = -np.inf
        self.last_seq[rows] = -1
        self.last_seq_ts[rows] = -np.inf
        self.evictions += 1
        return len(gone)

    # -- writes -------------------------------------------------------------------------------
    def apply(
        self,
        rows: np.ndarray,
        ts: np.ndarray,
        cpu: np.ndarray,
        ram: np.ndarray,
        now: float | None = None,
        seq: np.ndarray | None = None,
        origin: tuple[str, int] | None = None,
    ) -> ApplyResult:
        """Add samples given as parallel arrays (NaN = metric absent) for existing rows
        (``origin``, the batch's identity, is not needed here: the ledger applies it once).
        ``seq`` (-1 = none), in arrival order, updates each server's newest seq.

        Samples whose hour bucket is outside the window at ``now`` are not applied and are
        counted as ``expired``.
        """
        now = self.clock() if now is None else now
        self._move_windows(now)
        rows = np.asarray(rows, dtype=np.int64)
        if seq is not None:
            self._note_seq(rows, np.asarray(ts, np.float64), np.asarray(seq, np.int64))
        ts = np.asarray(ts, dtype=np.float64)
        cpu = np.asarray(cpu, dtype=np.float64)
        ram = np.asarray(ram, dtype=np.float64)
        hour = np.floor_divide(ts, HOUR).astype(np.int64)
        keep = self.hours.in_window(hour)
        expired = int(rows.size - np.count_nonzero(keep))
        if expired:
            rows, ts, cpu, ram, hour = rows[keep], ts[keep], cpu[keep], ram[keep], hour[keep]
        values = {"cpu": cpu, "ram": ram}
        self.hours.accumulate(rows, hour, values)
        minute = np.floor_divide(ts, MINUTE).astype(np.int64)
        recent = self.minutes.in_window(minute)
        shown_rows = rows
        if not recent.all():
            shown_rows, minute = rows[recent], minute[recent]
            values = {"cpu": cpu[recent], "ram": ram[recent]}
        self.minutes.accumulate(shown_rows, minute, values)
        self.current_values.applied(self.minutes, shown_rows, minute, values)
        np.maximum.at(self.last_seen, rows, ts)
        self.expired_total += expired
        self.applied_total += int(rows.size)
        return ApplyResult(applied=int(rows.size), expired=expired)

    def _note_seq(self, rows: np.ndarray, ts: np.ndarray, seq: np.ndarray) -> None:
        numbered = seq >= 0
        if not numbered.any():
            return
        rows, ts, seq = rows[numbered], ts[numbered], seq[numbered]
        # The last occurrence of each row in arrival order is its newest sample.
        unique, first_from_end = np.unique(rows[::-1], return_index=True)
        last = rows.size - 1 - first_from_end
        self.last_seq[unique] = seq[last]
        self.last_seq_ts[unique] = ts[last]

    def sequences(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Names with their newest seq and its ts, for servers that number their samples."""
        used = len(self.name_of)
        rows = np.flatnonzero(self.last_seq[:used] >= 0)
        names = [self.name_of[row] or "" for row in rows.tolist()]
        return names, self.last_seq[rows], self.last_seq_ts[rows]

    def record(
        self, name: str, ts: float, cpu: float | None, ram: float | None, now: float | None = None
    ) -> ApplyResult:
        """Apply one sample as a batch of its own (a convenience over :meth:`apply`), then
        release silent servers as the aggregator does between batches."""
        row = self.row_for(name)
        result = self.apply(
            np.array([row]),
            np.array([ts]),
            np.array([np.nan if cpu is None else cpu]),
            np.array([np.nan if ram is None else ram]),
            now,
        )
        self.evict_silent(now)
        return result

    # -- reads --------------------------------------------------------------------------------
    def view(self, name: str, now: float | None = None) -> ServerView | None:
        """A server's minute and hour cells, or ``None`` if it has no data in the window."""
        now = self.advance(now)
        row = self.row_of.get(name)
        if row is None:
            return None
        hours = self.hours.shown_cells(row)
        if not hours.size:
            return None
        minutes = self.minutes.shown_cells(row)
        cpu_anomaly, ram_anomaly = self.anomaly.at(row, minutes["stamp"])
        return ServerView(
            name,
            minutes,
            hours,
            float(self.last_seen[row]),
            now,
            merge_health(self.health.records(name)),
            cpu_anomaly,
            ram_anomaly,
        )

    def views(
        self, names: Sequence[str], now: float | None = None
    ) -> list[ServerView | CorruptKey | None]:
        now = self.advance(now)
        return [self.view(name, now) for name in names]

    def servers(self, now: float | None = None) -> list[tuple[str, float]]:
        """Tracked servers with their last-seen ts, by name."""
        return self.servers_page(None, len(self.row_of) or 1, now).servers

    def servers_page(self, after: str | None, limit: int, now: float | None = None) -> ServersPage:
        """Up to ``limit`` tracked servers named after ``after`` (from the first when None), by
        name, with their last-seen ts, and how many are tracked in all."""
        self.advance(now)
        names = self.sorted_names
        start = 0 if after is None else names.bisect_right(after)
        page = names[start : start + limit]
        rows = [(name, float(self.last_seen[self.row_of[name]])) for name in page]
        following = page[-1] if page and start + limit < len(names) else None
        return ServersPage(rows, len(names), following)

    def name_index(self) -> NameIndex:
        """Every tracked server's row and name in name order, kept until a name comes or goes.

        PERF: made from the sorted names the rollups keep anyway (~30 ms for 250,000 names),
        never by sorting them again."""
        if self._name_index is None or self._name_index[0] != self.names_changed:
            names = list(self.sorted_names)
            rows = np.fromiter(map(self.row_of.__getitem__, names), np.int64, len(names))
            self._name_index = (self.names_changed, NameIndex(rows, names))
        return self._name_index[1]

    def tracks(self, name: str) -> bool:
        return name in self.row_of

    def note_health(self, epoch: str, health: dict[str, ServerHealth]) -> None:
        """The health of servers as receiver run ``epoch`` reports it: kept per run, merged at
        each read (:func:`~servertrack.readmodel.health.merge_health`), as Redis keeps it. (A
        record of a server refused at the cap is kept but never read; the receiver names at
        most its own cap of them.)"""
        self.health.note(epoch, self.clock(), health)

    def take(self, now: float | None = None, upto: tuple[str, int] | None = None) -> None:
        """Nothing is held back: every sample was applied by :meth:`apply`."""

    def settle(self, job: Any) -> None:
        raise ValueError("the in-memory store hands out no jobs")

    def fleet_version(self, now: float) -> tuple[int, ...]:
        """Changes whenever the fleet table would: a batch applied, rows released, a new minute."""
        return (self.applied_total, self.evictions, int(now // MINUTE), self.anomaly.scored)

    def fleet_table(self, now: float | None = None) -> FleetTable:
        """The dashboard's table of every server (see :mod:`servertrack.aggregator.fleet_table`)."""
        return fleet_table(self, self.advance(now))

    def server_count(self) -> int:
        return len(self.row_of)

    @property
    def nbytes(self) -> int:
        return self.minutes.nbytes + self.hours.nbytes + self.last_seen.nbytes

    # -- snapshots ----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, np.ndarray]:
        """Everything held, as plain arrays (see :func:`rollup_arrays`)."""
        return rollup_arrays(self)

    def restore(self, arrays: dict[str, np.ndarray]) -> None:
        """Replace everything held by what :meth:`snapshot` returned (ValueError or KeyError
        when the arrays do not fit together)."""
        restored = restore_rollups(arrays, self.clock, self.max_servers)
        restored._check_shapes()
        for name in self.__dict__:
            setattr(self, name, getattr(restored, name))

    def _check_shapes(self) -> None:
        used = len(self.name_of)
        for ring in (self.minutes, self.hours):
            if ring.cells.shape != (self.capacity, ring.slots):
                raise ValueError(f"snapshot cells have shape {ring.cells.shape}")
        if self.last_seen.shape[0] < used or len(self.row_of) > used:
            raise ValueError("snapshot names and rows do not agree")

    def _check(self) -> None:
        """Invariants, for stress tests."""
        assert len(self.row_of) + len(self.free_rows) == len(self.name_of)
        assert list(self.sorted_names) == sorted(self.row_of)
        for name, row in self.row_of.items():
            assert self.name_of[row] == name
        index = self.name_index()
        assert index.names == list(self.sorted_names)
        assert [self.row_of[name] for name in index.names] == index.rows.tolist()
        kept = self.current_values
        restated = CurrentValues(self.capacity)
        restated.rebuild(self.minutes, len(self.name_of))
        for metric in METRICS:
            assert np.array_equal(kept.minute[metric], restated.minute[metric]), metric
            assert np.array_equal(kept.mean[metric], restated.mean[metric], equal_nan=True)
        for ring in (self.minutes, self.hours):
            assert ring.ready >= len(self.name_of)
            f = {name: array[: ring.ready] for name, array in ring.fields.items()}
            assert np.all(f["samples"] >= np.maximum(f["cpu_count"], f["ram_count"]))
            for name, array in ring.fields.items():
                assert not array[ring.ready :].any(), f"{name}: a row above ready was written"
            for metric in METRICS:
                empty = f[f"{metric}_count"] == 0
                assert np.all(f[f"{metric}_sum"][empty] == 0)
                assert np.all(np.isinf(f[f"{metric}_min"][empty]))
                full = ~empty
                assert np.all(f[f"{metric}_min"][full] <= f[f"{metric}_max"][full])


# -- snapshots ----------------------------------------------------------------------------------
def rollup_arrays(rollups: Rollups) -> dict[str, np.ndarray]:
    """Everything a :class:`Rollups` holds, as plain arrays (no pickles) for ``np.savez``: the
    cells as they are, the names, and the health records packed with msgpack."""
    used = len(rollups.name_of)
    arrays: dict[str, np.ndarray] = {
        name: getattr(rollups, name)[:used] for name in ("last_seen", "last_seq", "last_seq_ts")
    }
    for label, ring in (("minutes", rollups.minutes), ("hours", rollups.hours)):
        arrays[f"{label}.bucket_of_slot"] = ring.bucket_of_slot
        arrays[f"{label}.current"] = np.array([ring.current], np.int64)
        arrays[f"{label}.cells"] = ring.cells[:used]
    arrays.update(rollups.anomaly.to_arrays(rows=min(used, rollups.anomaly.rows)))
    names = "\n".join(name or "" for name in rollups.name_of).encode()
    arrays["names"] = np.frombuffer(names, np.uint8)
    arrays["health"] = np.frombuffer(msgpack.packb(rollups.health.to_wire()), np.uint8)
    return arrays


def _snapshot_cells(arrays: dict[str, np.ndarray], label: str, count: int) -> np.ndarray:
    """A ring's cells from a snapshot; one written before the cells layout holds each field as
    an array of its own, and its cells are assembled from those (stamped by the caller)."""
    key = f"{label}.cells"
    if key in arrays:
        cells = np.asarray(arrays[key])
        if cells.dtype != CELL_DTYPE or cells.shape[0] != count:
            raise ValueError(f"snapshot {key} does not fit: {cells.dtype}, {cells.shape}")
        return cells
    fields = [name for name in CELL_NAMES if name != "stamp"]
    first = np.asarray(arrays[f"{label}.{fields[0]}"])
    cells = np.zeros(first.shape, CELL_DTYPE)
    for name in fields:
        cells[name] = arrays[f"{label}.{name}"]
    return cells


def restore_rollups(
    arrays: dict[str, np.ndarray], clock: Clock = time.time, max_servers: int | None = None
) -> Rollups:
    """A :class:`Rollups` equal to the one :func:`rollup_arrays` was taken from."""
    raw = bytes(arrays["names"])
    names: list[str | None] = [name or None for name in raw.decode().split("\n")] if raw else []
    rollups = Rollups(clock, capacity=max(1024, len(names)), max_servers=max_servers)
    for label, ring in (("minutes", rollups.minutes), ("hours", rollups.hours)):
        ring.bucket_of_slot[:] = arrays[f"{label}.bucket_of_slot"]
        ring.current = int(arrays[f"{label}.current"][0])
        ring.cells[: len(names)] = _snapshot_cells(arrays, label, len(names))
        ring.cells["stamp"][: len(names)] = ring._stamps()
        ring.ready = len(names)
    for name in ("last_seen", "last_seq", "last_seq_ts"):
        getattr(rollups, name)[: len(names)] = arrays[name]
    rollups.name_of = names
    rollups.row_of = {name: row for row, name in enumerate(names) if name is not None}
    rollups.sorted_names = SortedList(rollups.row_of)
    rollups.free_rows = [row for row, name in enumerate(names) if name is None]
    if "health" in arrays:
        rollups.health = HealthRuns.from_wire(msgpack.unpackb(bytes(arrays["health"])))
        rollups.health.keep_only(rollups.row_of)
    rollups.current_values.rebuild(rollups.minutes, len(names))
    if "anomaly.bank" in arrays:  # a snapshot written before the scores has none
        rollups.anomaly = FleetScores.from_arrays(arrays)
        if rollups.anomaly.rows > len(names):
            raise ValueError("snapshot anomaly rows and names do not agree")
    return rollups
