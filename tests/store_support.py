"""Shared by the Redis store's tests: a simulated fleet of batches with every raw sample kept,
and the comparison of a store's views with the oracle."""

from __future__ import annotations

import random

import numpy as np

from servertrack.common.oracle import RawSample, bucket_differences, iso_z, oracle_buckets
from servertrack.readmodel.model import ReadModel
from servertrack.store.cells import BatchColumns
from servertrack.store.reader import RedisReader
from servertrack.store.redis_store import RedisStore
from tests.support import document

MINUTE = 60
HOUR = 3600
T0 = 1_699_999_200.0
"""An hour start, so offsets read as minutes and hours."""


# -- a simulated fleet ---------------------------------------------------------------------------
def hour_kept(ts: float, now: float) -> bool:
    """Whether a sample is inside the 24-hour window at ``now`` (restated, not imported)."""
    return (ts - ts % HOUR) >= (now - now % HOUR) - 23 * HOUR


class Fleet:
    """Random batches for ``names``, numbered per writer, with every raw sample remembered."""

    def __init__(self, names: list[str], seed: int = 1) -> None:
        self.names = names
        self.rng = random.Random(seed)
        self.raw: list[RawSample] = []
        """Every sample sent, for the oracle (the ones expired on arrival included: the oracle
        shows nothing outside its windows)."""
        self.kept: list[RawSample] = []
        """Samples inside the hour window when merged: what last_seen is taken from."""
        self.seq = dict.fromkeys(names, 0)
        self.numbers: dict[str, int] = {}
        self.expired = 0

    def batch(
        self, writer: str, now: float, servers: list[str] | None = None, rate: float = 1.5
    ) -> BatchColumns:
        """One batch: each server sends 0-3 samples, mostly fresh, some late, some a little
        ahead of ``now``, a few too old; about one metric in six is missing."""
        rng = self.rng
        number = self.numbers.get(writer, 0)
        self.numbers[writer] = number + 1
        rows, ts, cpu, ram, seq = [], [], [], [], []
        for name in servers or self.names:
            for _ in range(rng.choice((0, 1, 1, 2, 3)) if rate else 1):
                kind = rng.random()
                if kind < 0.80:
                    stamp = now - rng.uniform(0, 5)
                elif kind < 0.90:
                    stamp = now - rng.uniform(60, 3 * HOUR)
                elif kind < 0.96:
                    stamp = now + rng.uniform(0, 59)
                else:
                    stamp = now - rng.uniform(24 * HOUR, 26 * HOUR)
                stamp = round(stamp, 3)
                has_cpu, has_ram = rng.random() > 1 / 6, rng.random() > 1 / 6
                if not (has_cpu or has_ram):
                    has_cpu = True
                c = round(rng.uniform(0, 100), 2) if has_cpu else None
                r = round(rng.uniform(0, 100), 2) if has_ram else None
                rows.append(self.names.index(name))
                ts.append(stamp)
                cpu.append(np.nan if c is None else c)
                ram.append(np.nan if r is None else r)
                seq.append(self.seq[name])
                self.seq[name] += 1
                self.raw.append((name, stamp, c, r))
                if hour_kept(stamp, now):
                    self.kept.append((name, stamp, c, r))
                else:
                    self.expired += 1
        return BatchColumns(
            number,
            np.asarray(rows, np.int64),
            np.asarray(ts, np.float64),
            np.asarray(cpu, np.float64),
            np.asarray(ram, np.float64),
            np.asarray(seq, np.int64),
        )

    def last_seen(self, name: str) -> float:
        return max(ts for fqdn, ts, _, _ in self.kept if fqdn == name)


def assert_matches(
    model: RedisStore | ReadModel, fleet: Fleet, now: float, names: list[str] | None = None
) -> int:
    """Every server's view (of ``names``, by default the fleet's) equals the oracle at ``now``,
    read from a read model or straight from a Redis store; returns how many servers had
    data."""
    reader = RedisReader(model) if isinstance(model, RedisStore) else model
    shown = 0
    for name in fleet.names if names is None else names:
        view = document(reader.view(name, now))
        expected = oracle_buckets(fleet.raw, now, name)
        if not expected["hours"]:
            assert view is None, f"{name} at {iso_z(now)}: expected no data"
            continue
        assert view is not None, f"{name} at {iso_z(now)}: no view"
        assert bucket_differences(view, expected) == [], f"{name} at {iso_z(now)}"
        assert view["last_seen"] == iso_z(fleet.last_seen(name))
        shown += 1
    return shown


def sample_count(batches: list[BatchColumns]) -> int:
    return sum(len(batch) for batch in batches)


def one_each(number: int, rows: list[int], now: float) -> BatchColumns:
    """A batch with one sample from each of ``rows`` at ``now``."""
    return BatchColumns(
        number,
        np.asarray(rows, np.int64),
        np.full(len(rows), now),
        np.full(len(rows), 10.0),
        np.full(len(rows), 20.0),
    )
