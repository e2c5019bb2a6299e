"""The aggregator's store when the rollups live in Redis: batches are held here and merged into
Redis every ``--store-flush`` seconds, reads go to Redis.

:class:`RedisRollups` implements :class:`~servertrack.aggregator.store.RollupStore` over a
:class:`~servertrack.store.redis_store.RedisStore`. Its rows are a local name table only (the
aggregator maps receiver ids to them); the samples of each receiver batch are kept as that batch's
columns until a flush merges them, one call per server, exactly once per (receiver run, batch)
whatever is sent again (the guards live in Redis). A flush that fails keeps everything for the
next one; what is held is bounded by ``max_pending`` samples, beyond which the oldest batches are
dropped and counted (the receiver still holds them for its ``--retention`` and sends them again
when asked).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from servertrack.aggregator.rollups import ApplyResult
from servertrack.common.batch import ServerHealth
from servertrack.common.buckets import HOUR, HOUR_WINDOW, Clock
from servertrack.store.cells import BatchColumns
from servertrack.store.redis_store import RedisStore

DEFAULT_MAX_PENDING = 5_000_000
"""Samples held while Redis does not answer (about 200 MB): 50 s of a 100k samples/s fleet."""
FORGET_ROWS_AFTER = (HOUR_WINDOW + 1) * HOUR


@dataclass(slots=True)
class FlushResult:
    applied: int = 0
    expired: int = 0
    refused: int = 0
    already_applied: int = 0
    invalid: int = 0
    batches: int = 0


class RedisRollups:
    """Batches held for Redis, and reads from it (see the module docstring)."""

    def __init__(
        self,
        store: RedisStore,
        clock: Clock = time.time,
        max_pending: int = DEFAULT_MAX_PENDING,
        hold: float = 300.0,
    ) -> None:
        self.redis = store
        self.clock = clock
        self.max_pending = max_pending
        self.hold = hold
        """Seconds a batch may wait for Redis (the receiver's retention: it can send it again
        for that long, so holding it longer would not save anything)."""
        self.opened = False
        self.row_of: dict[str, int] = {}
        self.name_of: list[str | None] = []
        self.used_at: list[float] = []
        self.free_rows: list[int] = []
        self.evictions = 0
        self.pending: OrderedDict[tuple[str, int], list[BatchColumns]] = OrderedDict()
        """(receiver epoch, batch number) → the batch's columns (one per apply slice)."""
        self.held_since: dict[tuple[str, int], float] = {}
        self.pending_samples = 0
        self.health: dict[str, dict[str, ServerHealth]] = {}
        """Receiver epoch → server name → health to write with the next flush."""
        self.dropped = 0
        """Samples of held batches dropped (held longer than ``hold``, or over ``max_pending``)."""
        self._next_sweep = float("-inf")

    # -- rows ---------------------------------------------------------------------------------
    def row_for(self, name: str) -> int:
        row = self.row_of.get(name)
        now = self.clock()
        if row is None:
            if self.free_rows:
                row = self.free_rows.pop()
                self.name_of[row] = name
                self.used_at[row] = now
            else:
                row = len(self.name_of)
                self.name_of.append(name)
                self.used_at.append(now)
            self.row_of[name] = row
        return row

    def tracks(self, name: str) -> bool:
        return name in self.row_of

    def advance(self, now: float | None = None) -> float:
        return self.clock() if now is None else now

    def evict_silent(self, now: float | None = None) -> int:
        """Forget local rows no batch used for 25 hours (Redis expires its own keys); looked at
        once a minute."""
        now = self.advance(now)
        if now < self._next_sweep:
            return 0
        self._next_sweep = now + 60.0
        cutoff = now - FORGET_ROWS_AFTER
        held = {int(row) for batches in self.pending.values() for b in batches for row in b.rows}
        gone = [
            row
            for row, name in enumerate(self.name_of)
            if name is not None and self.used_at[row] < cutoff and row not in held
        ]
        for row in gone:
            name = self.name_of[row]
            assert name is not None
            del self.row_of[name]
            self.name_of[row] = None
            self.free_rows.append(row)
        if gone:
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
        """Hold the samples for the next flush; nothing counts as applied until Redis took it.
        ``origin`` (receiver epoch, batch number) identifies the batch for the guards."""
        if origin is None:
            raise ValueError("a Redis store needs each batch's (epoch, number)")
        rows = np.asarray(rows, np.int64)
        now = self.advance(now)
        for row in np.unique(rows).tolist():
            self.used_at[row] = now
        columns = BatchColumns(
            origin[1],
            rows.copy(),
            np.asarray(ts, np.float64).copy(),
            np.asarray(cpu, np.float64).copy(),
            np.asarray(ram, np.float64).copy(),
            None if seq is None else np.asarray(seq, np.int64).copy(),
        )
        self.pending.setdefault(origin, []).append(columns)
        self.held_since.setdefault(origin, now)
        self.pending_samples += len(columns)
        while self.pending and (
            (self.pending_samples > self.max_pending and len(self.pending) > 1)
            or now - self.held_since[next(iter(self.pending))] > self.hold
        ):
            key, dropped = self.pending.popitem(last=False)
            del self.held_since[key]
            count = sum(len(part) for part in dropped)
            self.pending_samples -= count
            self.dropped += count
        return ApplyResult(applied=0, expired=0)

    def note_health(self, epoch: str, health: dict[str, ServerHealth]) -> None:
        self.health.setdefault(epoch, {}).update(health)

    def flush(self, now: float | None = None) -> FlushResult:
        """Merge everything held into Redis, oldest receiver run first; StoreUnavailable (from
        the store) leaves it all held for the next call."""
        now = self.advance(now)
        result = FlushResult()
        if not self.opened:
            self.redis.open()  # StoreUnavailable while Redis is down
            self.opened = True
        writers = list(dict.fromkeys(epoch for epoch, _ in self.pending))
        writers += [epoch for epoch in self.health if epoch not in writers]
        for writer in writers:
            keys = sorted(key for key in self.pending if key[0] == writer)
            batches = [part for key in keys for part in self.pending[key]]
            health = self.health.get(writer)
            if not batches and not health:
                continue
            merged = self.redis.merge(writer, batches, self._names(), health or None, now)
            for key in keys:
                self.pending_samples -= sum(len(part) for part in self.pending.pop(key))
                del self.held_since[key]
            self.health.pop(writer, None)
            result.applied += merged.applied
            result.expired += merged.expired
            result.refused += merged.refused
            result.already_applied += merged.already_applied
            result.invalid += merged.invalid
            result.batches += len(keys)
        return result

    def _names(self) -> list[str]:
        return [name or "" for name in self.name_of]

    # -- reads --------------------------------------------------------------------------------
    def view(self, name: str, now: float | None = None) -> dict[str, Any] | None:
        view = self.redis.view(name, self.advance(now))
        if view is not None:
            view.pop("health", None)  # the aggregator answers with its own health record
        return view

    def servers_page(
        self, now: float | None, after: str | None, limit: int
    ) -> tuple[list[tuple[str, float]], int, bool]:
        rows, total, following = self.redis.servers(self.advance(now), limit, after)
        return rows, total, following is not None

    def server_count(self) -> int:
        return self.redis.server_count()

    def sequences(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        return self.redis.sequences()

    def fleet_version(self, now: float) -> int:
        """Redis changes under other writers too: the table is read again every second."""
        return int(now)

    def fleet_table(self, now: float | None = None) -> Any:
        from servertrack.aggregator.fleet import table_from_rows

        return table_from_rows(self.redis.fleet_rows(self.advance(now)))

    # -- snapshots: Redis keeps the data ------------------------------------------------------
    def snapshot(self) -> None:
        return None

    def restore(self, arrays: dict[str, np.ndarray]) -> None:
        raise ValueError("a Redis store is not restored from a snapshot")
