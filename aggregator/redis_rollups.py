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

A flush is three steps so that the daemon can run the slow middle one on a thread of its own and
keep answering queries: :meth:`RedisRollups.take` moves what is held into a :class:`FlushJob`,
:meth:`FlushJob.run` merges it into Redis through the writer's own connection (and touches
nothing else), and :meth:`RedisRollups.settle` counts it, or puts back in front what Redis did
not take. Reads use a second connection, so the two never share a client.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from servertrack.aggregator.rollups import ApplyResult
from servertrack.common.batch import ServerHealth
from servertrack.common.buckets import HOUR, HOUR_WINDOW, Clock
from servertrack.readmodel.errors import CorruptKey, StoreUnavailable
from servertrack.readmodel.fleet import FleetTable
from servertrack.readmodel.values import ServersPage, ServerView
from servertrack.store.anomaly_scores import LeaseScorer
from servertrack.store.cells import BatchColumns
from servertrack.store.reader import RedisReader
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
    corrupt: int = 0
    """Samples of servers whose keys in Redis are corrupt: dropped (reason ``corrupt_key``)."""
    batches: int = 0
    corrupt_servers: dict[str, tuple[str, float]] = field(default_factory=dict)
    """Servers whose keys were corrupt when last merged: name → (what is wrong, when met)."""


@dataclass(slots=True)
class WriterPart:
    """What one receiver run (``writer``) has to merge: its held batches and health."""

    writer: str
    batches: dict[tuple[str, int], list[BatchColumns]]
    health: dict[str, ServerHealth]
    done: bool = False


@dataclass
class FlushJob:
    """Held batches on their way to Redis (see the module docstring)."""

    store: RedisStore
    parts: list[WriterPart]
    names: list[str]
    now: float
    samples: int
    held_since: dict[tuple[str, int], float]
    result: FlushResult = field(default_factory=FlushResult)

    def run(self) -> FlushResult:
        """Merge every part, oldest receiver run first; raises StoreUnavailable at the first
        part Redis does not take (the parts before it stay done, and the samples Redis applied
        before the failure count as applied: the next try finds them already applied)."""
        try:
            if not self.store.opened:
                self.store.open()
            for part in self.parts:
                batches = [c for key in sorted(part.batches) for c in part.batches[key]]
                try:
                    merged = self.store.merge(
                        part.writer, batches, self.names, part.health or None, self.now
                    )
                except StoreUnavailable as err:
                    self.result.applied += err.applied
                    raise
                part.done = True
                self.result.applied += merged.applied
                self.result.expired += merged.expired
                self.result.refused += merged.refused
                self.result.already_applied += merged.already_applied
                self.result.invalid += merged.invalid
                self.result.corrupt += merged.corrupt
                self.result.batches += len(part.batches)
        finally:
            self.result.corrupt_servers = self.store.corrupt_servers()
        return self.result


class RedisRollups:
    """Batches held for Redis, and reads from it (see the module docstring)."""

    writes_behind = True
    """Batches are held and merged into Redis by the aggregator's writer thread."""

    def __init__(
        self,
        store: RedisStore,
        clock: Clock = time.time,
        max_pending: int = DEFAULT_MAX_PENDING,
        hold: float = 300.0,
        reader: RedisStore | None = None,
    ) -> None:
        self.writer = store
        self.redis = reader if reader is not None else store
        self.reader = RedisReader(self.redis)
        """The connection reads go through (the writer's own when no reader is given: then
        flushes must run on the reading thread)."""
        self.clock = clock
        self.max_pending = max_pending
        self.hold = hold
        """Seconds a batch may wait for Redis (the receiver's retention: it can send it again
        for that long, so holding it longer would not save anything)."""
        self.row_of: dict[str, int] = {}
        self.name_of: list[str | None] = []
        self.used_at: list[float] = []
        self.free_rows: list[int] = []
        self.evictions = 0
        self.pending: OrderedDict[tuple[str, int], list[BatchColumns]] = OrderedDict()
        """(receiver epoch, batch number) → the batch's columns (one per apply slice)."""
        self.held_since: dict[tuple[str, int], float] = {}
        self.pending_samples = 0
        self.in_flight: FlushJob | None = None
        self.health: dict[str, dict[str, ServerHealth]] = {}
        """Receiver epoch → server name → health to write with the next flush."""
        self.dropped = 0
        """Samples of held batches dropped (held longer than ``hold``, or over ``max_pending``)."""
        self._next_sweep = float("-inf")
        self.scoring = LeaseScorer(self.redis, clock)
        """Anomaly scores of the whole fleet, while this aggregator holds the lease."""

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
        held_batches = list(self.pending.values())
        if self.in_flight is not None:
            held_batches += [b for part in self.in_flight.parts for b in part.batches.values()]
        held = {int(row) for batches in held_batches for b in batches for row in b.rows}
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
            (self.held_samples > self.max_pending and len(self.pending) > 1)
            or now - self.held_since[next(iter(self.pending))] > self.hold
        ):
            key, dropped = self.pending.popitem(last=False)
            del self.held_since[key]
            count = sum(len(part) for part in dropped)
            self.pending_samples -= count
            self.dropped += count
        return ApplyResult(applied=0, expired=0)

    def score_minutes(self, now: float | None = None) -> int:
        """Score the minute due if this aggregator holds the scoring lease (one host scores
        the whole fleet: :mod:`servertrack.store.anomaly_scores`), on this thread."""
        job = self.scoring_job(now)
        return job() if job is not None else 0

    def scoring_job(self, now: float | None = None) -> Callable[[], int] | None:
        """The scoring of the minute due, as a call that may run on another thread (it uses
        the reading connection and the scorer only, and returns how many minutes it scored),
        or None when there is nothing to try now.

        PERF: the holder reads every server's summary record and writes their scores and the
        detectors (at 100,000 servers, tens of MB each way): on its own thread, that never holds
        up batches or queries."""
        now = self.advance(now)
        if not self.scoring.wants(now):
            return None

        def run() -> int:
            self._reader()  # opened first (StoreUnavailable while Redis is down)
            return self.scoring.tick(now)

        return run

    def release_scoring(self) -> bool:
        """At a clean stop, once no scoring turn runs: give the scoring lease back if this
        aggregator holds it (and it is still its own), so another host scores the next minute
        instead of waiting for the lease to expire. Raises StoreUnavailable when Redis does not
        answer."""
        return self.redis.opened and self.scoring.release()

    def note_health(self, epoch: str, health: dict[str, ServerHealth]) -> None:
        self.health.setdefault(epoch, {}).update(health)

    def take(
        self, now: float | None = None, upto: tuple[str, int] | None = None
    ) -> FlushJob | None:
        """Move everything held into a job for :meth:`FlushJob.run` (of writer ``upto[0]``
        only the batches numbered up to ``upto[1]``: the guards keep the highest batch applied,
        so a batch merged before a missing earlier one would make that one look applied);
        None when nothing is to be written or a job is still out."""
        if self.in_flight is not None or not (self.pending or self.health):
            return None
        now = self.advance(now)
        ready = [
            key for key in self.pending if upto is None or key[0] != upto[0] or key[1] <= upto[1]
        ]
        if not ready and not self.health:
            return None
        writers = list(dict.fromkeys(epoch for epoch, _ in ready))
        writers += [epoch for epoch in self.health if epoch not in writers]
        parts = []
        held_since: dict[tuple[str, int], float] = {}
        samples = 0
        for writer in writers:
            batches = {}
            for key in ready:
                if key[0] == writer:
                    batches[key] = self.pending.pop(key)
                    held_since[key] = self.held_since.pop(key)
                    samples += sum(len(columns) for columns in batches[key])
            parts.append(WriterPart(writer, batches, self.health.pop(writer, {})))
        job = FlushJob(self.writer, parts, self._names(), now, samples, held_since)
        self.pending_samples -= samples
        self.in_flight = job
        return job

    def settle(self, job: FlushJob) -> FlushResult:
        """After :meth:`FlushJob.run`: what Redis did not take is held again, ahead of what came
        in meanwhile (health reported meanwhile is newer and wins)."""
        assert job is self.in_flight, "settle the job take() handed out"
        self.in_flight = None
        back: OrderedDict[tuple[str, int], list[BatchColumns]] = OrderedDict()
        since: dict[tuple[str, int], float] = {}
        for part in job.parts:
            if part.done:
                continue
            for key, batches in part.batches.items():
                back[key] = batches
                since[key] = job.held_since[key]
                self.pending_samples += sum(len(columns) for columns in batches)
            if part.health:
                self.health[part.writer] = {**part.health, **self.health.get(part.writer, {})}
        if back:
            for key, batches in self.pending.items():
                back.setdefault(key, []).extend(batches)
            self.pending = back
            self.held_since = {**since, **self.held_since}
        return job.result

    @property
    def held_samples(self) -> int:
        """Samples waiting for Redis: held, and on their way in a job."""
        out = self.in_flight.samples if self.in_flight is not None else 0
        return self.pending_samples + out

    def _reader(self) -> RedisReader:
        if not self.redis.opened:
            self.redis.open()  # StoreUnavailable while Redis is down
        return self.reader

    def _names(self) -> list[str]:
        return [name or "" for name in self.name_of]

    # -- reads: the Redis read model ---------------------------------------------------------
    def view(self, name: str, now: float | None = None) -> ServerView | None:
        return self._reader().view(name, self.advance(now))

    def views(
        self, names: Sequence[str], now: float | None = None
    ) -> list[ServerView | CorruptKey | None]:
        return self._reader().views(names, self.advance(now))

    def servers_page(self, after: str | None, limit: int, now: float | None = None) -> ServersPage:
        return self._reader().servers_page(after, limit, self.advance(now))

    def server_count(self) -> int:
        return self._reader().store.server_count()

    def sequences(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        return self._reader().sequences()

    def fleet_version(self, now: float) -> int:
        return self.reader.fleet_version(now)

    def fleet_table(self, now: float | None = None) -> FleetTable:
        return self._reader().fleet_table(self.advance(now))

    # -- snapshots: Redis keeps the data ------------------------------------------------------
    def snapshot(self) -> None:
        return None

    def restore(self, arrays: dict[str, np.ndarray]) -> None:
        raise ValueError("a Redis store is not restored from a snapshot")
