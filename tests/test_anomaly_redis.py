"""Anomaly scores in Redis mode, on a real redis-server, with an injected clock: two aggregators
(their states and Redis stores in this process) write one Redis; the one holding the lease scores
the whole fleet; when it stops, the other takes the lease over and goes on from its detectors.

The oracle runs an independent detector per series over the brute-force minute means of the raw
samples; what any reader of the store answers (a server's minute buckets, the fleet table's newest
scores, the last minute) must equal it, before and after the takeover.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator

import numpy as np
import pytest

from servertrack.aggregator.redis_rollups import RedisRollups
from servertrack.aggregator.state import AggregatorState
from servertrack.common.batch import Batch
from servertrack.common.oracle import RawSample
from servertrack.readmodel.fleet import last_minute
from servertrack.store import anomaly_records
from servertrack.store.anomaly_records import LATEST, LEASE, RETRY, STATE
from servertrack.store.reader import RedisReader
from servertrack.store.redis_store import RedisStore
from servertrack.testing.hosts import FakeClock
from servertrack.testing.redis import RedisServer
from tests.anomaly_support import nab_values, oracle_scores
from tests.support import wait_for

T0 = 1_800_000_000.0 - 1_800_000_000.0 % 3600
MINUTES = 150
TAKEOVER = 125
"""The first minute the second aggregator scores (the first stops after scoring the one
before)."""
NAMES = ("ra-1.example", "ra-2.example", "rb-1.example")
"""The first two report through aggregator A, the last through B."""
LEASE_MS = 2000
"""A short lease (Redis counts it in real time, while the clock here is injected), so the
takeover waits a moment only; long enough that the holder always renews it in time."""


class Aggregator:
    """One aggregator's state over its own Redis store, fed batches of its receiver run."""

    def __init__(self, url: str, clock: FakeClock, epoch: str, names: tuple[str, ...]) -> None:
        self.store = RedisStore(url, clock=clock)
        self.store.open()
        self.rollups = RedisRollups(self.store, clock)
        self.rollups.scoring.lease_ms = LEASE_MS
        self.state = AggregatorState(self.rollups, clock)
        self.state.replay_answered({"epoch": epoch, "first": 0, "sent": 0})  # nothing before
        self.epoch, self.names, self.number = epoch, names, 0

    def send(self, samples: list[RawSample], now: float) -> None:
        mine = [s for s in samples if s[0] in self.names]
        self.state.apply(
            Batch(
                epoch=self.epoch,
                number=self.number,
                sent=now,
                ids=np.array([self.names.index(s[0]) for s in mine], np.int32),
                ts=np.array([s[1] for s in mine]),
                cpu=np.array([np.nan if s[2] is None else s[2] for s in mine]),
                ram=np.array([np.nan if s[3] is None else s[3] for s in mine]),
                names=list(enumerate(self.names)) if self.number == 0 else [],
            ),
            now,
        )
        self.number += 1
        self.state.flush_store(now)

    def close(self) -> None:
        self.store.close()


@functools.cache
def series() -> tuple[list[float], list[float]]:
    return (
        nab_values("ec2_cpu_utilization_5f5533.csv", MINUTES),
        nab_values("rds_cpu_utilization_e47b3b.csv", MINUTES),
    )


def samples_of(minute: int) -> list[RawSample]:
    a, b = series()
    start = T0 + minute * 60
    jump = 40.0 if minute == MINUTES - 1 else 0.0
    return [
        (NAMES[0], start + 5, a[minute], b[minute]),
        (NAMES[0], start + 8, a[minute] + 0.5, b[minute]),
        (NAMES[1], start + 6, b[minute] + jump, None if minute % 3 == 0 else a[minute]),
        (NAMES[2], start + 7, 100.0 - a[minute], 50.0 + b[minute] / 10),
    ]


@pytest.fixture(scope="module")
def run(module_redis: RedisServer) -> Iterator[dict[str, object]]:
    redis = module_redis.reset()
    clock = FakeClock(T0)
    first = Aggregator(redis.url, clock, "ra", NAMES[:2])
    second = Aggregator(redis.url, clock, "rb", NAMES[2:])
    sent: list[RawSample] = []
    scored: dict[str, list[int]] = {"first": [], "second": []}
    try:
        for minute in range(MINUTES):
            now = clock.set(T0 + minute * 60 + 10)
            batch = samples_of(minute)
            sent += batch
            first.send(batch, now)
            second.send(batch, now)
            now = clock.set(T0 + minute * 60 + 20)  # the minute before is due now
            if minute == TAKEOVER:  # the first one stopped after the minute before
                wait_for(lambda: not redis.client().exists(LEASE), 10, "the lease to expire")
            elif minute < TAKEOVER and first.rollups.score_minutes(now):
                scored["first"].append(minute - 1)
            if second.rollups.score_minutes(now):
                scored["second"].append(minute - 1)
        reader = RedisReader(second.store)
        now = clock.set(T0 + MINUTES * 60 + 20)
        second.rollups.score_minutes(now)
        scored["second"].append(MINUTES - 1)
        yield {
            "views": {name: reader.view(name, now) for name in NAMES},
            "table": reader.fleet_table(now),
            "oracle": oracle_scores(sent, NAMES),
            "scored": scored,
            "keys": {key: redis.client().pttl(key) for key in (LATEST, STATE)},
        }
    finally:
        first.close()
        second.close()


def test_the_lease_holder_alone_scores_until_it_stops_then_the_other_takes_over(
    run: dict[str, object],
) -> None:
    """Every minute is scored once, by the holder of the lease: the first aggregator until it
    stops, then the second, which tried every minute meanwhile."""
    scored = run["scored"]
    assert isinstance(scored, dict)
    assert scored["first"] == list(range(-1, TAKEOVER - 1))
    assert scored["second"] == list(range(TAKEOVER - 1, MINUTES))


def same(got: float, want: float | None) -> bool:
    if want is None or math.isnan(want):
        return math.isnan(got)
    return got == want


def test_every_reader_gets_the_oracle_scores_across_the_takeover(
    run: dict[str, object],
) -> None:
    """A server's minute buckets (read from Redis) carry the oracle's scores, for minutes the
    first aggregator scored and minutes the second scored from the detectors it took over."""
    oracle = run["oracle"]
    views = run["views"]
    assert isinstance(oracle, dict) and isinstance(views, dict)
    checked = 0
    for name in NAMES:
        view = views[name]
        for k, minute in enumerate(view.minutes["stamp"].tolist()):
            for metric, column in (("cpu", view.cpu_anomaly), ("ram", view.ram_anomaly)):
                want = oracle[(name, metric)].get(minute)
                assert same(float(column[k]), want), (name, minute, metric, column[k], want)
                checked += want is not None and not math.isnan(want)
    assert checked > 3 * 50


def test_the_fleet_table_and_last_minute_carry_the_newest_scores(
    run: dict[str, object],
) -> None:
    """The fleet table read from Redis (what /fleet and the last minute are made of) carries
    each server's scores of the newest minute scored."""
    oracle, table = run["oracle"], run["table"]
    assert isinstance(oracle, dict)
    newest = int(T0 // 60) + MINUTES - 1
    last = last_minute(table)  # type: ignore[arg-type]
    assert last.minute == newest
    for k, name in enumerate(last.names):
        for metric, column in (("cpu", last.cpu_anomaly), ("ram", last.ram_anomaly)):
            assert same(float(column[k]), oracle[(name, metric)].get(newest)), (name, metric)
    assert last.cpu_anomaly[last.names.index(NAMES[1])] > 0.0  # its jump in that minute


def test_the_scores_kept_for_the_fleet_expire(run: dict[str, object]) -> None:
    keys = run["keys"]
    assert isinstance(keys, dict)
    assert all(ttl > 0 for ttl in keys.values()), keys


# -- the lease at a clean stop --------------------------------------------------------------------
@pytest.fixture
def pair(redis_server: RedisServer) -> Iterator[tuple[Aggregator, Aggregator, FakeClock]]:
    """Two aggregators on an empty Redis with the real lease (75 s, longer than a minute), the
    first holding it after scoring minute 0 (the second tried too, and must retry later)."""
    clock = FakeClock(T0 + 10)
    first = Aggregator(redis_server.url, clock, "ra", NAMES[:2])
    second = Aggregator(redis_server.url, clock, "rb", NAMES[2:])
    try:
        for aggregator in (first, second):
            aggregator.rollups.scoring.lease_ms = anomaly_records.LEASE_MS
            aggregator.send(samples_of(0), clock())
        now = clock.set(T0 + 60 + 20)
        assert first.rollups.score_minutes(now) == 1
        assert second.rollups.score_minutes(now) == 0
        assert holder(redis_server) == first.rollups.scoring.me
        yield first, second, clock
    finally:
        first.close()
        second.close()


def holder(redis: RedisServer) -> str | None:
    value = redis.client().get(LEASE)
    return value.decode() if isinstance(value, bytes) else None


def test_a_holder_that_stops_gives_the_lease_back_and_the_other_scores_the_next_minute(
    pair: tuple[Aggregator, Aggregator, FakeClock], redis_server: RedisServer
) -> None:
    """Given back at a clean stop, the lease is the other aggregator's at its next try (not 75 s
    later), and it scores the next minute from the detectors the first left."""
    first, second, clock = pair
    assert first.rollups.release_scoring()
    assert holder(redis_server) is None
    assert not first.rollups.release_scoring()  # nothing held any more: nothing to give back
    now = clock.set(clock() + RETRY)
    assert second.rollups.score_minutes(now) == 0  # minute 0: scored already, by the first
    assert second.rollups.scoring.holding
    assert holder(redis_server) == second.rollups.scoring.me
    second.send(samples_of(1), clock.set(T0 + 60 + 30))
    assert second.rollups.score_minutes(clock.set(T0 + 120 + 20)) == 1
    assert second.rollups.scoring.scores is not None
    assert second.rollups.scoring.scores.scored == int(T0 // 60) + 1


def test_a_holder_whose_lease_was_taken_over_leaves_the_new_holders_key(
    pair: tuple[Aggregator, Aggregator, FakeClock], redis_server: RedisServer
) -> None:
    """The first aggregator's lease expires (Redis counts it in real time) and the second takes
    it; the first, stopping later, still believes it holds it, yet deletes nothing."""
    first, second, clock = pair
    redis_server.client().pexpire(LEASE, 1)
    wait_for(lambda: holder(redis_server) is None, 10, "the lease to expire")
    assert second.rollups.score_minutes(clock.set(clock() + RETRY)) == 0
    assert holder(redis_server) == second.rollups.scoring.me
    assert first.rollups.scoring.holding  # it has not tried since
    assert not first.rollups.release_scoring()
    assert holder(redis_server) == second.rollups.scoring.me
    assert redis_server.client().pttl(LEASE) > 60_000
