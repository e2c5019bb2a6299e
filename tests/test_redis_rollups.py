"""The aggregator's Redis-backed store: batches held, handed out as a write job, and held again
(in order, ahead of newer ones) when Redis does not take them. A real redis-server, paused with
SIGSTOP for the outage; the views checked with the oracle."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import msgpack
import pytest

from servertrack.aggregator.redis_rollups import RedisRollups
from servertrack.aggregator.state import AggregatorState
from servertrack.readmodel.answers import Answer, decode_answer
from servertrack.readmodel.errors import CorruptKey, StoreUnavailable
from servertrack.store.cells import BatchColumns
from servertrack.store.keys import server_keys
from servertrack.store.redis_store import RedisStore
from servertrack.testing.hosts import FakeClock
from servertrack.testing.redis import RedisServer
from tests.store_support import T0, Fleet, assert_matches, one_each

pytestmark = pytest.mark.e2e


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0 + 30.0)


@pytest.fixture
def rollups_on(clock: FakeClock) -> Iterator[Callable[[RedisServer], RedisRollups]]:
    """Rollups over a writer and a reader store of a given server; closed afterwards."""
    stores: list[RedisStore] = []

    def make(server: RedisServer) -> RedisRollups:
        writer = RedisStore(server.url, clock=clock, timeout=0.3)
        reader = RedisStore(server.url, clock=clock, timeout=0.3)
        stores.extend((writer, reader))
        return RedisRollups(writer, clock, reader=reader)

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def rollups(
    redis_server: RedisServer, rollups_on: Callable[[RedisServer], RedisRollups]
) -> RedisRollups:
    return rollups_on(redis_server)


def hold(store: RedisRollups, writer: str, batch: BatchColumns, fleet: Fleet) -> None:
    rows = [store.row_for(fleet.names[k]) for k in batch.rows.tolist()]
    store.apply(rows, batch.ts, batch.cpu, batch.ram, seq=batch.seq, origin=(writer, batch.number))


def test_batches_after_a_missing_one_wait_for_it(
    rollups: RedisRollups, clock: FakeClock, redis_server: RedisServer
) -> None:
    """Batch 1 of a receiver run is missing (lost on its way to a killed aggregator) while 2
    came: 2 stays held until 1 is there, or the guards (highest batch applied) would make 1
    look applied and it would be skipped when it comes."""
    fleet = Fleet([f"node-{k}" for k in range(10)], seed=3)
    batches = [fleet.batch("run-a", clock() + k) for k in range(3)]
    hold(rollups, "run-a", batches[0], fleet)
    hold(rollups, "run-a", batches[2], fleet)
    job = rollups.take(upto=("run-a", 0))
    assert job is not None
    job.run()
    rollups.settle(job)
    assert list(rollups.pending) == [("run-a", 2)]
    assert rollups.held_samples == len(batches[2].rows)
    hold(rollups, "run-a", batches[1], fleet)  # the replay brings it
    job = rollups.take(upto=("run-a", 2))
    assert job is not None
    job.run()
    rollups.settle(job)
    assert not rollups.pending and rollups.held_samples == 0
    assert_matches(rollups, fleet, clock() + 2)


def test_a_job_redis_refuses_is_held_again_ahead_of_newer_batches(
    own_redis: RedisServer, rollups_on: Callable[[RedisServer], RedisRollups], clock: FakeClock
) -> None:
    redis_server = own_redis
    rollups = rollups_on(redis_server)
    fleet = Fleet([f"node-{k}" for k in range(40)], seed=7)
    for _ in range(3):
        hold(rollups, "run-a", fleet.batch("run-a", clock()), fleet)
        clock.advance(1.0)
    held = rollups.held_samples
    assert held > 0
    job = rollups.take()
    assert job is not None
    assert rollups.pending_samples == 0 and rollups.held_samples == held
    hold(rollups, "run-a", fleet.batch("run-a", clock()), fleet)  # arrives while the job is out
    assert rollups.take() is None, "one job at a time"
    redis_server.pause()
    with pytest.raises(StoreUnavailable):
        job.run()
    result = rollups.settle(job)
    assert result.applied == 0
    assert list(rollups.pending) == [("run-a", n) for n in range(4)]
    assert rollups.held_samples == len(fleet.raw)

    redis_server.resume()
    job = rollups.take()
    assert job is not None
    job.run()
    result = rollups.settle(job)
    assert rollups.held_samples == 0 and not rollups.pending
    assert result.batches == 4
    assert result.applied + result.expired == len(fleet.raw)
    assert assert_matches(rollups.redis, fleet, clock()) == len({n for n, *_ in fleet.kept})


def test_reads_go_on_while_a_job_writes_on_another_thread(
    rollups: RedisRollups, clock: FakeClock
) -> None:
    fleet = Fleet([f"host-{k}" for k in range(3000)], seed=3)
    for _ in range(2):
        hold(rollups, "run-b", fleet.batch("run-b", clock()), fleet)
        clock.advance(1.0)
    job = rollups.take()
    assert job is not None
    failure: list[BaseException] = []

    def write() -> None:
        try:
            job.run()
        except BaseException as err:  # reported below, in the test's thread
            failure.append(err)

    writer = threading.Thread(target=write, name="store-writer")
    writer.start()
    reads = 0
    while writer.is_alive() and reads < 10_000:
        rollups.servers_page(None, 10, clock())
        reads += 1
    writer.join(timeout=60)
    assert not writer.is_alive() and failure == []
    rollups.settle(job)
    assert reads > 0
    sending = len({name for name, *_ in fleet.kept})
    assert rollups.server_count() == sending
    assert assert_matches(rollups.redis, fleet, clock()) == sending


def test_the_aggregator_reports_failing_merges_and_corrupt_keys_and_reads_the_rest(
    redis_server: RedisServer, rollups: RedisRollups, clock: FakeClock
) -> None:
    """Through the aggregator's state: while Redis is full the health problems say merges fail,
    with Redis' reason, until one succeeds; a server whose hour key is a string has its samples
    counted as corrupt_key and is named in the problems for a minute after the last merge that
    met it; a views query answers it 502 corrupt_key and the others as usual."""
    state = AggregatorState(rollups, clock)
    names = ["victim", "fine-0", "fine-1"]
    fleet = Fleet(names)
    hold(rollups, "run-c", one_each(0, [0, 1, 2], clock()), fleet)
    state.flush_store(clock())
    assert state.problems(clock()) == []
    client = redis_server.client()
    client.config_set("maxmemory", 1)
    try:
        hold(rollups, "run-c", one_each(1, [0, 1, 2], clock()), fleet)
        with pytest.raises(StoreUnavailable):
            state.flush_store(clock())
        (problem,) = state.problems(clock())
        assert problem.startswith("store: merges fail") and "maxmemory" in problem
    finally:
        client.config_set("maxmemory", 0)
    key = server_keys("victim")[1]
    client.delete(key)
    client.set(key, "not a hash")
    clock.advance(1.0)
    hold(rollups, "run-c", one_each(2, [0, 1, 2], clock()), fleet)
    state.flush_store(clock())
    counters = state.stats(clock())["aggregator"]
    assert counters["dropped"]["corrupt_key"] == 2 and counters["applied"] == 3 + 4
    (problem,) = state.problems(clock())
    assert "1 server(s) not merged" in problem and key.decode() in problem
    reply = msgpack.unpackb(state.answer({"op": "views", "names": names}, clock()))
    answers = [decode_answer(raw) for raw in reply["answers"]]
    assert isinstance(answers[0], CorruptKey) and answers[0].key == key.decode()
    assert all(isinstance(answer, Answer) for answer in answers[1:])
    clock.advance(60.0)
    assert state.problems(clock()) != []
    clock.advance(1.0)
    assert state.problems(clock()) == []
