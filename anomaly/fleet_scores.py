"""Every server's cpu and ram minute means scored as each minute completes, and the scores of
the last 61 minutes kept per server.

:class:`FleetScores` is one :class:`~servertrack.anomaly.detector.DetectorBank` over a fleet:
server ``r`` owns detector rows ``2r`` (cpu) and ``2r + 1`` (ram), so one vectorised ``step``
scores the whole fleet's minute. A server with no sample of a metric in a minute is absent from
that step (its detector neither scores nor changes). The scores are kept in a ring of
``MINUTE_SLOTS`` minutes (the 60 a server's loads show plus the next one), like the minute
rollups: ``cpu[r, minute % slots]``, valid while ``minute_of_slot`` holds that minute. NaN
means "no score": the detector warms up, or the server sent no sample of that metric.

It does no I/O and reads no clock: the caller says which minute it scores, with which means.
The detector is told each minute's start as its timestamp.

PERF: a step over 100,000 servers (200,000 series) takes ~15 ms with every series present; the
ring costs 976 bytes a server (float64, so a score read back equals the score computed).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from servertrack.anomaly.detector import DetectorBank
from servertrack.common.buckets import MINUTE
from servertrack.readmodel.cells import MINUTE_SLOTS, means

SLOTS = MINUTE_SLOTS
NEVER = -1
"""``scored`` before any minute was scored."""
METRICS = ("cpu", "ram")


class FleetScores:
    """One detector bank and the recent scores of ``rows`` servers (see the module docstring)."""

    def __init__(self, rows: int = 0) -> None:
        self.bank = DetectorBank(2 * rows)
        self.minute_of_slot = np.full(SLOTS, NEVER, np.int64)
        self.cpu = self.ram = np.empty((0, SLOTS))
        self._held = (self.cpu, self.ram)
        self.keep(np.full((rows, SLOTS), np.nan), np.full((rows, SLOTS), np.nan))
        self.scored = NEVER
        """The newest minute scored (``NEVER`` before the first)."""

    @property
    def rows(self) -> int:
        return int(self.cpu.shape[0])

    def keep(self, cpu: np.ndarray, ram: np.ndarray) -> None:
        """Hold these score rings (``(rows, SLOTS)`` each) as they are."""
        self._held = (cpu, ram)
        self.cpu, self.ram = cpu, ram

    # -- rows -----------------------------------------------------------------------------------
    def add(self, count: int) -> np.ndarray:
        """``count`` new servers at the end (fresh detectors, no scores); their rows.

        PERF: the rings grow by doubling, so servers coming a few at a time do not copy the
        fleet's rings (98 MB at 100,000 servers) each minute."""
        first = self.rows
        needed = first + count
        self.bank.add(2 * count)
        cpu, ram = self._held
        if needed > cpu.shape[0]:
            capacity = max(needed, 2 * cpu.shape[0])
            cpu, ram = (np.full((capacity, SLOTS), np.nan) for _ in range(2))
            cpu[:first], ram[:first] = self.cpu, self.ram
            self._held = (cpu, ram)
        else:
            cpu[first:needed] = np.nan
            ram[first:needed] = np.nan
        self.cpu, self.ram = cpu[:needed], ram[:needed]
        return np.arange(first, needed)

    def ensure(self, rows: int) -> None:
        """At least ``rows`` servers (new ones fresh)."""
        if rows > self.rows:
            self.add(rows - self.rows)

    def reset(self, rows: Iterable[int] | np.ndarray) -> None:
        """Make ``rows`` fresh again: a new server in an old row."""
        index = np.asarray(rows, np.int64).reshape(-1)
        index = index[index < self.rows]
        if index.size == 0:
            return
        self.bank.reset(np.concatenate([2 * index, 2 * index + 1]))
        self.cpu[index] = np.nan
        self.ram[index] = np.nan

    def remove(self, rows: Iterable[int] | np.ndarray) -> None:
        """Delete ``rows``; the rows after them move up (``np.delete`` order)."""
        index = np.unique(np.asarray(rows, np.int64).reshape(-1))
        if index.size == 0:
            return
        self.bank.remove(np.concatenate([2 * index, 2 * index + 1]))
        self.keep(np.delete(self.cpu, index, axis=0), np.delete(self.ram, index, axis=0))

    def take(self, rows: np.ndarray) -> FleetScores:
        """A new :class:`FleetScores` of the servers at ``rows`` of this one, in that order."""
        rows = np.asarray(rows, np.int64)
        out = FleetScores(0)
        out.bank = DetectorBank.from_bytes(self.bank.to_bytes(_interleaved(rows)))
        out.keep(self.cpu[rows].copy(), self.ram[rows].copy())
        out.minute_of_slot, out.scored = self.minute_of_slot.copy(), self.scored
        return out

    # -- scoring --------------------------------------------------------------------------------
    def score(self, minute: int, cpu: np.ndarray, ram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Score minute ``minute``: ``cpu`` and ``ram`` are each server's means (NaN = absent),
        one per row. Returns the scores (NaN = none) and keeps them in the ring. Minutes are
        scored in order: one not after ``scored`` is refused (ValueError)."""
        if minute <= self.scored:
            raise ValueError(f"minute {minute} is not after the last one scored ({self.scored})")
        rows = self.rows
        if np.shape(cpu) != (rows,) or np.shape(ram) != (rows,):
            raise ValueError(f"cpu and ram must have shape ({rows},)")
        values = np.empty(2 * rows)
        values[0::2], values[1::2] = cpu, ram
        scores = self.bank.step(values, ~np.isnan(values), float(minute * MINUTE))
        slot = minute % SLOTS
        self.minute_of_slot[slot] = minute
        self.cpu[:, slot] = scores[0::2]
        self.ram[:, slot] = scores[1::2]
        self.scored = minute
        return scores[0::2], scores[1::2]

    def skip(self, minute: int) -> None:
        """Minute ``minute`` had no sample at all: no detector changes, no server has a score
        (the same as :meth:`score` with every mean absent, without the step)."""
        if minute <= self.scored:
            raise ValueError(f"minute {minute} is not after the last one scored ({self.scored})")
        slot = minute % SLOTS
        self.minute_of_slot[slot] = minute
        self.cpu[:, slot] = np.nan
        self.ram[:, slot] = np.nan
        self.scored = minute

    def score_cells(self, minute: int, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`score` with each server's cell of ``minute`` (one per row)."""
        return self.score(minute, means(cells, "cpu"), means(cells, "ram"))

    # -- reads ----------------------------------------------------------------------------------
    def at(self, row: int, minutes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Server ``row``'s scores of ``minutes`` (NaN where none is kept)."""
        minutes = np.asarray(minutes, np.int64)
        if row >= self.rows:
            blank = np.full(minutes.size, np.nan)
            return blank, blank.copy()
        slots = minutes % SLOTS
        kept = self.minute_of_slot[slots] == minutes
        cpu = np.where(kept, self.cpu[row, slots], np.nan)
        ram = np.where(kept, self.ram[row, slots], np.nan)
        return cpu, ram

    def latest(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The scores of the newest minute scored, of the servers at ``rows`` (NaN for none or
        for a row this object does not have yet)."""
        rows = np.asarray(rows, np.int64)
        cpu = np.full(rows.size, np.nan)
        ram = np.full(rows.size, np.nan)
        if self.scored == NEVER:
            return cpu, ram
        slot = self.scored % SLOTS
        held = rows < self.rows
        cpu[held] = self.cpu[rows[held], slot]
        ram[held] = self.ram[rows[held], slot]
        return cpu, ram

    # -- saving ---------------------------------------------------------------------------------
    def to_arrays(self, prefix: str = "anomaly.", rows: int | None = None) -> dict[str, np.ndarray]:
        """Everything held (of the first ``rows`` servers), as plain arrays (for a snapshot's
        ``np.savez``)."""
        rows = self.rows if rows is None else rows
        bank = self.bank.to_bytes(None if rows == self.rows else np.arange(2 * rows))
        return {
            f"{prefix}bank": np.frombuffer(bank, np.uint8),
            f"{prefix}minute_of_slot": self.minute_of_slot,
            f"{prefix}cpu": self.cpu[:rows],
            f"{prefix}ram": self.ram[:rows],
            f"{prefix}scored": np.array([self.scored], np.int64),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str = "anomaly.") -> FleetScores:
        """What :meth:`to_arrays` made (ValueError or KeyError when it does not fit)."""
        out = cls(0)
        out.bank = DetectorBank.from_bytes(bytes(arrays[f"{prefix}bank"]))
        cpu = np.asarray(arrays[f"{prefix}cpu"], np.float64)
        ram = np.asarray(arrays[f"{prefix}ram"], np.float64)
        minute_of_slot = np.asarray(arrays[f"{prefix}minute_of_slot"], np.int64)
        rows = cpu.shape[0] if cpu.ndim == 2 else -1
        if (
            cpu.shape != (rows, SLOTS)
            or ram.shape != cpu.shape
            or minute_of_slot.shape != (SLOTS,)
            or out.bank.rows != 2 * rows
        ):
            raise ValueError("anomaly scores of a snapshot do not fit together")
        out.keep(cpu.copy(), ram.copy())
        out.minute_of_slot = minute_of_slot.copy()
        out.scored = int(arrays[f"{prefix}scored"][0])
        return out


def _interleaved(rows: np.ndarray) -> np.ndarray:
    """The detector rows of servers ``rows``: cpu, ram, cpu, ram, ..."""
    out = np.empty(2 * rows.size, np.int64)
    out[0::2], out[1::2] = 2 * rows, 2 * rows + 1
    return out
