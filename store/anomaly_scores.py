"""Anomaly scores in Redis: one host scores the whole fleet, every API reads the scores.

Where the scoring runs
----------------------
Every aggregator of a Redis store competes for one lease (``st:{#anomaly}:lease``, a key set
with ``NX`` and a ``PX`` of ``LEASE_MS``). The holder renews it at each minute it scores; the
others try to take it every ``RETRY`` seconds. ``SCORE_DELAY`` seconds after each minute ends (the
other hosts' last samples of it merged and their summary records rewritten), the holder reads
every server's cell of that minute from the summary records (the same read as ``/fleet``), scores
the whole fleet with one :class:`~servertrack.anomaly.fleet_scores.FleetScores` step, and writes:

- each scored server's cpu and ram scores into its ring ``st:{<name>}:a`` (61 slots of 24
  bytes: minute, cpu, ram; ``SETRANGE`` of its slot), read with its other keys by a view;
- the newest scores of the fleet (``st:{#anomaly}:latest``: minute, names, two float64 columns),
  read with the summary records by ``/fleet`` and the last minute;
- the detectors (``st:{#anomaly}:state``: minute, names, the bank's bytes), so a host that takes
  the lease over goes on from the minute the last holder scored.

A holder that stops cleanly gives the lease back (deleting the key only while it still holds its
own id, so a holder whose lease another host took since deletes nothing): another aggregator takes
it at its next try, within ``RETRY`` seconds of a minute being due, and no minute goes unscored.

A holder that dies stops renewing: within ``LEASE_MS`` the lease expires, another aggregator
takes it within ``RETRY`` seconds, loads the detectors and scores the minute then due (the
minutes in between are not scored: each detector simply sees no value for them). Scoring thus
stops for at most about ``LEASE_MS + RETRY`` plus the wait for a minute to be due (80 to
95 s), under the 2 minutes asked for.

The aggregator's daemon runs it on a thread of its own (one call at a time), through the
aggregator's reading connection.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

import msgpack
import numpy as np

from servertrack.anomaly.fleet_scores import SLOTS, FleetScores
from servertrack.common.buckets import MINUTE, Clock
from servertrack.readmodel.cells import means
from servertrack.store.anomaly_records import (
    LATEST,
    LEASE,
    LEASE_MS,
    LEASE_SCRIPT,
    RELEASE_SCRIPT,
    RETRY,
    RING_DTYPE,
    RING_TTL_MS,
    SCORE_DELAY,
    STATE,
    STATE_TTL_MS,
    WRITE_CHUNK,
    decode_state,
    encode_state,
    ring_key,
)
from servertrack.store.keys import slot_of
from servertrack.store.reader import RedisReader
from servertrack.store.redis_store import RedisStore

log = logging.getLogger(__name__)


class LeaseScorer:
    """Scores the fleet's minutes while holding the lease (see the module docstring)."""

    def __init__(
        self,
        store: RedisStore,
        clock: Clock = time.time,
        lease_ms: int = LEASE_MS,
        retry: float = RETRY,
        delay: float = SCORE_DELAY,
    ) -> None:
        self.store = store
        self.reader = RedisReader(store)
        self.clock = clock
        self.lease_ms = lease_ms
        self.retry = retry
        self.delay = delay
        self.me = secrets.token_hex(8)
        self.holding = False
        self.scores: FleetScores | None = None
        self.names: list[str] = []
        self.index: dict[str, int] = {}
        self._table_names: list[str] | None = None
        self._table_rows = np.empty(0, np.int64)
        self.next_try = float("-inf")

    def due(self, now: float) -> int | None:
        """The minute to score at ``now``: the last complete one, from ``delay`` seconds after
        its end to the end of the next minute (the summary records then hold its exact cells);
        None when none is due or it was scored here already."""
        if now % MINUTE < self.delay:
            return None
        minute = int(now // MINUTE) - 1
        if self.holding and self.scores is not None and minute <= self.scores.scored:
            return None
        return minute

    def wants(self, now: float) -> bool:
        """Whether :meth:`tick` has anything to do at ``now`` (a minute due, and the lease held
        or worth trying again)."""
        return self.due(now) is not None and (self.holding or now >= self.next_try)

    def tick(self, now: float | None = None) -> int:
        """Score the minute due, if this host holds (or takes) the lease; 1 when it scored it.
        Raises StoreUnavailable when Redis does not answer."""
        now = self.clock() if now is None else now
        minute = self.due(now)
        if minute is None or (not self.holding and now < self.next_try):
            return 0
        if not self._lease():
            self.next_try = now + self.retry
            return 0
        rows = self.reader.fleet_rows(now)
        if rows.minute - 1 != minute:
            return 0  # the clock moved on while reading: the next turn scores the new minute
        return int(self._score(minute, rows.names, rows.complete))

    def _lease(self) -> bool:
        """Renew or take the lease; on taking it, load the detectors the last holder left."""
        (answer,) = self.store.read_keys(
            [(slot_of(LEASE), ("EVAL", LEASE_SCRIPT, 1, LEASE, self.me, self.lease_ms))]
        )
        if int(answer) == 0:
            if self.holding:
                log.warning("the anomaly scoring lease was taken by another host")
            self.holding, self.scores = False, None
            return False
        if int(answer) == 2 or not self.holding or self.scores is None:
            self._load()
            self.holding = True
            log.info("holding the anomaly scoring lease: this host scores the fleet")
        return True

    def release(self) -> bool:
        """Give the lease back (at a clean stop), so another host takes it at its next try
        instead of after the lease expires; only while the key is still this host's (it may
        have expired and been taken since). True when it was deleted. Raises StoreUnavailable
        when Redis does not answer."""
        if not self.holding:
            return False
        self.holding, self.scores = False, None
        (answer,) = self.store.read_keys(
            [(slot_of(LEASE), ("EVAL", RELEASE_SCRIPT, 1, LEASE, self.me))]
        )
        if int(answer) == 1:
            log.info("gave the anomaly scoring lease back")
            return True
        log.warning("the anomaly scoring lease was taken by another host")
        return False

    def _load(self) -> None:
        (raw,) = self.store.read_keys([(slot_of(STATE), ("GET", STATE))])
        state = decode_state(raw)
        self.scores = FleetScores(0)
        self.names, self.index, self._table_names = [], {}, None
        if state is not None:
            minute, names, bank = state
            self.scores.bank = bank
            self.scores.keep(
                np.full((len(names), SLOTS), np.nan), np.full((len(names), SLOTS), np.nan)
            )
            self.scores.scored = minute
            self.names = names
            self.index = {name: k for k, name in enumerate(names)}

    def _rows_of(self, names: list[str]) -> np.ndarray:
        """Each table name's row (new servers get fresh rows; servers gone are dropped)."""
        assert self.scores is not None
        if names == self._table_names:
            return self._table_rows
        present = set(names)
        gone = [k for k, name in enumerate(self.names) if name not in present]
        if gone:
            kept = np.setdiff1d(np.arange(len(self.names)), gone)
            self.scores = self.scores.take(kept)
            self.names = [self.names[k] for k in kept.tolist()]
            self.index = {name: k for k, name in enumerate(self.names)}
        new = [name for name in names if name not in self.index]
        if new:
            for row, name in zip(self.scores.add(len(new)).tolist(), new, strict=True):
                self.index[name] = row
            self.names += new
        self._table_names = names
        self._table_rows = np.fromiter(map(self.index.__getitem__, names), np.int64, len(names))
        return self._table_rows

    def _score(self, minute: int, names: list[str], cells: np.ndarray) -> bool:
        """Score ``minute`` (each server's cell of it, ``names`` in table order) and write the
        scores; False when it was scored already (by the holder before this one)."""
        assert self.scores is not None
        if minute <= self.scores.scored:
            return False
        rows = self._rows_of(names)
        cpu = np.full(self.scores.rows, np.nan)
        ram = np.full(self.scores.rows, np.nan)
        cpu[rows], ram[rows] = means(cells, "cpu"), means(cells, "ram")
        cpu_scores, ram_scores = self.scores.score(minute, cpu, ram)
        self._write(minute, names, cpu_scores[rows], ram_scores[rows], cells["samples"] > 0)
        return True

    def _write(
        self,
        minute: int,
        names: list[str],
        cpu: np.ndarray,
        ram: np.ndarray,
        sent: np.ndarray,
    ) -> None:
        assert self.scores is not None
        record = np.zeros(1, RING_DTYPE)
        offset = (minute % SLOTS) * RING_DTYPE.itemsize
        commands: list[tuple[int, tuple[Any, ...]]] = []
        for k in np.flatnonzero(sent).tolist():
            key = ring_key(names[k])
            record["minute"], record["cpu"], record["ram"] = minute, cpu[k], ram[k]
            slot = slot_of(key)
            commands.append((slot, ("SETRANGE", key, offset, record.tobytes())))
            commands.append((slot, ("PEXPIRE", key, RING_TTL_MS)))
        latest = msgpack.packb(
            {
                "minute": minute,
                "names": names,
                "cpu": np.ascontiguousarray(cpu, "<f8").tobytes(),
                "ram": np.ascontiguousarray(ram, "<f8").tobytes(),
            }
        )
        state = encode_state(minute, self.names, self.scores.bank)
        commands.append((slot_of(LATEST), ("SET", LATEST, latest, "PX", RING_TTL_MS)))
        commands.append((slot_of(STATE), ("SET", STATE, state, "PX", STATE_TTL_MS)))
        for start in range(0, len(commands), WRITE_CHUNK):
            self.store.read_keys(commands[start : start + WRITE_CHUNK])
        self.store.note_change()
