"""One read model: the in-memory rollups and the Redis reader answer the same batches with the
same typed values, made into the same answers by the one renderer; health is kept per receiver
run and merged by one rule in both."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from servertrack.aggregator.fleet_table import fleet_table
from servertrack.aggregator.rollups import Rollups
from servertrack.aggregator.state import AggregatorState
from servertrack.common.batch import ServerHealth
from servertrack.common.oracle import iso_z, oracle_buckets
from servertrack.common.sample import Sample
from servertrack.readmodel.answers import Answer, servers_answer, view_answer, views_answers
from servertrack.readmodel.errors import CorruptKey
from servertrack.readmodel.fleet import last_minute
from servertrack.readmodel.health import Health
from servertrack.readmodel.render import bucket_rows, view_document
from servertrack.store.reader import RedisReader
from servertrack.store.redis_store import RedisStore
from servertrack.testing.hosts import FakeClock
from servertrack.testing.redis import RedisServer
from tests.store_support import HOUR, T0, Fleet, hour_kept
from tests.support import Clock, InProcessBackend

NAMES = [f"rm-{k}.example" for k in range(12)]


@pytest.fixture
def redis_store(tmp_path: Path) -> Iterator[tuple[RedisStore, FakeClock]]:
    server = RedisServer(tmp_path / "redis").start()
    clock = FakeClock(T0)
    store = RedisStore(server.url, clock=clock, max_servers=None)
    store.open()
    try:
        yield store, clock
    finally:
        store.close()
        server.stop()


def alike(one: Any, other: Any) -> bool:
    """Two answers' JSON documents are the same: every field equal, sums and means within
    float64 rounding (Redis adds a batch's samples together before it adds them to a bucket,
    memory adds them one by one: the order of the additions differs)."""
    if isinstance(one, dict) and isinstance(other, dict):
        return one.keys() == other.keys() and all(alike(one[k], other[k]) for k in one)
    if isinstance(one, list | tuple) and isinstance(other, list | tuple):
        return len(one) == len(other) and all(map(alike, one, other))
    if isinstance(one, float) and isinstance(other, float):
        return math.isclose(one, other, rel_tol=1e-12)
    return bool(one == other)


def parsed(answer: Answer | CorruptKey | None) -> Any:
    assert not isinstance(answer, CorruptKey)
    return None if answer is None else (json.loads(answer.body), answer.as_of)


def test_memory_and_redis_answer_the_same_batches_alike(
    redis_store: tuple[RedisStore, FakeClock],
) -> None:
    """Three hours of random batches (late, early, missing metrics, too old) go into the
    in-memory rollups and into Redis; every server's answer, the answers of many at once and
    the servers page are the same from both, at several moments."""
    store, clock = redis_store
    fleet = Fleet(NAMES, seed=11)
    rollups = Rollups(clock)
    compared = 0
    for step in range(3 * 60):
        now = clock.advance(60.0)
        batch = fleet.batch("writer", now)
        # The receiver refuses what is outside the window: the aggregator names only the rest.
        kept = np.array([hour_kept(ts, now) for ts in batch.ts.tolist()], bool)
        rows = np.array([rollups.row_for(NAMES[k]) for k in batch.rows[kept].tolist()], np.int64)
        rollups.apply(rows, batch.ts[kept], batch.cpu[kept], batch.ram[kept], now)
        store.merge("writer", [batch], NAMES, None, now)
        if step % 37 == 0 or step == 3 * 60 - 1:
            reader = RedisReader(store)
            for name in NAMES:
                memory = parsed(view_answer(rollups.view(name, now)))
                redis = parsed(view_answer(reader.view(name, now)))
                assert alike(memory, redis), name
                compared += memory is not None
            assert alike(
                [parsed(a) for a in views_answers(rollups, NAMES, now)],
                [parsed(a) for a in views_answers(reader, NAMES, now)],
            )
            assert servers_answer(rollups, None, 5, now) == servers_answer(reader, None, 5, now)
    assert compared > len(NAMES)  # servers with data were compared, not only empty answers


def test_health_is_kept_per_receiver_run_and_merged_alike_in_both_stores(
    redis_store: tuple[RedisStore, FakeClock],
) -> None:
    """Two receiver runs report one server (a restart): counters add up over the runs, the
    newest run's addresses and skew show; the in-memory store and Redis merge them alike."""
    store, clock = redis_store
    rollups = Rollups(clock)
    row = rollups.row_for("restarted")
    fleet = Fleet(["restarted"], seed=3)
    batch = fleet.batch("run-a", clock.advance(10.0), rate=0)
    rollups.apply(np.full(len(batch), row), batch.ts, batch.cpu, batch.ram, clock())
    first = ServerHealth(("10.0.0.1",), lost=3, duplicates=1, rejected=0, skew=0.5)
    rollups.note_health("run-a", {"restarted": first})
    store.merge("run-a", [batch], ["restarted"], {"restarted": first}, clock())
    clock.advance(30.0)
    second = ServerHealth(("10.0.0.2",), lost=2, duplicates=0, rejected=4, skew=0.25)
    batch = fleet.batch("run-b", clock(), rate=0)
    rollups.apply(np.full(len(batch), row), batch.ts, batch.cpu, batch.ram, clock())
    rollups.note_health("run-b", {"restarted": second})
    store.merge("run-b", [batch], ["restarted"], {"restarted": second}, clock())
    expected = Health(("10.0.0.2",), lost=5, duplicates=1, rejected=4, skew=0.25)
    memory, redis = rollups.view("restarted", clock()), RedisReader(store).view("restarted")
    assert memory is not None and redis is not None
    assert memory.health == redis.health == expected


def test_a_snapshot_of_the_old_layout_keeps_its_buckets_and_health() -> None:
    """A snapshot written before the cells layout (each field an array, health in the
    aggregator's bookkeeping) restores to the same answers, its health as records of the runs."""
    clock = FakeClock(T0 + HOUR)
    state = AggregatorState(Rollups(clock), clock)
    rollups = state.store
    assert isinstance(rollups, Rollups)
    row = rollups.row_for("kept")
    rollups.apply(
        np.array([row, row]),
        np.array([T0 + 30, T0 + HOUR - 5]),
        np.array([10.0, 30.0]),
        np.array([np.nan, 50.0]),
        clock(),
    )
    arrays = rollups.snapshot()
    used = len(rollups.name_of)
    old = {key: value for key, value in arrays.items() if not key.endswith(".cells")}
    del old["health"]
    for label, ring in (("minutes", rollups.minutes), ("hours", rollups.hours)):
        for field, column in ring.fields.items():
            old[f"{label}.{field}"] = np.ascontiguousarray(column[:used])
    meta = state.snapshot_meta(clock())
    meta["receiver_names"] = [[0, "kept"]]
    meta["ledger"]["epoch"] = "run-now"
    meta["servers"] = [[0, ServerHealth(("10.1.1.1",), 1, 0, 0, 0.1).to_wire()]]
    meta["health_before"] = {"kept": [7, 2, 1, 1]}
    restored = AggregatorState(Rollups(clock), clock)
    restored.restore(old, meta)
    view, before = restored.store.view("kept", clock()), rollups.view("kept", clock())
    assert view is not None and before is not None
    shown = view_document(view)
    assert {**shown, "health": None} == {**view_document(before), "health": None}
    assert view.health == Health(("10.1.1.1",), 8, 2, 1, 0.1, 1, False)


def test_the_last_complete_minute_is_the_same_in_both_stores_and_the_oracles(
    redis_store: tuple[RedisStore, FakeClock],
) -> None:
    """Every server's last complete minute (what alerts and Prometheus read): the same cell in
    memory and in Redis (the summary records carry it), and the oracle's bucket for it."""
    store, clock = redis_store
    fleet = Fleet(NAMES, seed=5)
    rollups = Rollups(clock)
    for _ in range(30):
        now = clock.advance(20.0)
        batch = fleet.batch("writer", now)
        kept = np.array([hour_kept(ts, now) for ts in batch.ts.tolist()], bool)
        rows = np.array([rollups.row_for(NAMES[k]) for k in batch.rows[kept].tolist()], np.int64)
        rollups.apply(rows, batch.ts[kept], batch.cpu[kept], batch.ram[kept], now)
        store.merge("writer", [batch], NAMES, None, now)
    store.merge("writer", [], NAMES, None, clock())  # the summary records are written
    memory = last_minute(fleet_table(rollups, clock()))
    redis = last_minute(RedisReader(store).fleet_table(clock()))
    assert memory.minute == redis.minute == int(clock() // 60) - 1
    assert memory.names == redis.names
    start = memory.minute * 60
    for k, name in enumerate(memory.names):
        expected = [b for b in oracle_buckets(fleet.raw, clock(), name)["minutes"]]
        bucket = [b for b in expected if b["start"] == iso_z(start)]
        for cells in (memory.cells, redis.cells):
            shown = bucket_rows(cells[k : k + 1], 60) if cells["samples"][k] else []
            assert alike(
                [{**b, "start": None} for b in shown], [{**b, "start": None} for b in bucket]
            ), name
    assert memory.cells["samples"].sum() > 0


def test_the_api_gets_the_last_minute_from_the_aggregator_as_it_has_it() -> None:
    """Over the aggregator's query socket the last complete minute arrives whole."""
    clock = Clock(T0 + 130)
    backend = InProcessBackend(clock)
    backend.record([Sample("lm-1", T0 + 70, 10.0, 20.0), Sample("lm-2", T0 + 75, 30.0, None)])
    got = backend.last_minute()
    table = backend.aggregator.store.fleet_table(clock())
    expected = last_minute(table)
    assert got.minute == expected.minute == int((T0 + 130) // 60) - 1
    assert got.names == expected.names == ["lm-1", "lm-2"]
    assert got.cells.tobytes() == expected.cells.tobytes()
    assert got.cells["cpu_sum"].tolist() == [10.0, 30.0] and got.cells["ram_count"].tolist() == [
        1,
        0,
    ]
