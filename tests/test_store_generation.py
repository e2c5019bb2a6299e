"""The generation an API in Redis mode caches answers under: the store's change counter and the
minute, read by a polling thread (a real thread, an injected counter and wall clock), and how the
backend stamps answers with it (against a real redis-server)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from servertrack.api.store_backend import StoreBackend
from servertrack.api.store_generation import StoreGeneration
from servertrack.common.oracle import iso_z
from servertrack.common.redis_testing import RedisServer
from servertrack.common.testing import FakeClock, wait_until
from servertrack.store.cells import BatchColumns
from servertrack.store.redis_nodes import StoreUnavailable
from servertrack.store.redis_store import RedisStore


class Counter:
    """The change counter as the store would answer it, or Redis down."""

    def __init__(self) -> None:
        self.count = 0
        self.down = False

    def __call__(self) -> int:
        if self.down:
            raise StoreUnavailable("redis at 127.0.0.1:1: connection refused")
        return self.count


@pytest.fixture
def counter() -> Counter:
    return Counter()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_699_999_985.0)  # 5 s into a minute


@pytest.fixture
def generation(counter: Counter, clock: FakeClock) -> Iterator[StoreGeneration]:
    source = StoreGeneration(counter, clock, poll=0.01, fresh_for=0.3)
    yield source
    source.close()


def test_the_generation_moves_with_the_counter_and_the_minute(
    generation: StoreGeneration, counter: Counter, clock: FakeClock
) -> None:
    first = wait_until(generation.current, 5, "the first read of the counter")
    assert generation.tag() == first[0]
    assert generation.current() == first  # unchanged: the same number, first seen then
    counter.count = 7
    second = wait_until(lambda: generation.current() != first and generation.current(), 5, "7")
    assert second[0] != first[0] and second[1] >= first[1]
    clock.advance(30)  # the same minute
    assert generation.current() == second
    clock.advance(30)  # the next one: every answer's window has slid
    third = generation.current()
    assert third is not None and third[0] not in (first[0], second[0])
    counter.count = 0
    clock.advance(-60)  # counter and minute as at first: the same number again
    assert wait_until(lambda: generation.tag() == first[0], 5, "the first number")


def test_no_generation_while_the_counter_cannot_be_read(
    generation: StoreGeneration, counter: Counter
) -> None:
    """Redis down: within ``fresh_for`` nothing may be served from the cache."""
    wait_until(generation.current, 5, "the first read of the counter")
    counter.down = True
    wait_until(lambda: generation.current() is None, 5, "the generation given up")
    assert generation.tag() is None
    counter.down = False
    wait_until(generation.current, 5, "the counter read again")


def test_a_merge_follows_the_counter_read_before_unless_reads_failed_between(
    generation: StoreGeneration, counter: Counter
) -> None:
    """After a merge the generation before is the counter read last (the same minute); after a
    spell in which the counter could not be read it is unknown: merges may have come and gone
    unheard, so no answer kept before may pass for the previous one."""
    first = wait_until(generation.current, 5, "the first read of the counter")
    counter.count = 3
    second = wait_until(lambda: generation.tag() != first.number and generation.current(), 5, "3")
    assert second.before == first.number and second.since >= first.since
    counter.down = True
    wait_until(lambda: generation.current() is None, 5, "the generation given up")
    counter.count = 5
    counter.down = False
    third = wait_until(generation.current, 5, "the counter read again")
    assert third.number != second.number and third.before is None


def test_a_minute_that_turned_while_nobody_asked_is_dated_when_it_turned(
    counter: Counter, clock: FakeClock
) -> None:
    """The minute turned 40 s before the first question after a quiet spell: the new generation
    is dated at the turn, not at the question (the cache's grace for the previous answer is long
    over), and the one before it is the same counter in the minute before."""
    ticks = FakeClock(1000.0)
    generation = StoreGeneration(counter, clock, poll=0.01, fresh_for=0.3, monotonic=ticks)
    try:
        first = wait_until(generation.current, 5, "the first read of the counter")
        assert first.since == 1000.0
        clock.advance(55 + 40)  # from :05 to :40 of the next minute, nobody asking
        ticks.advance(55 + 40)
        current = wait_until(generation.current, 5, "the counter read again")
        assert current.number != first.number and current.before == first.number
        assert current.since == 1000.0 + 55
        assert generation.current() == current  # dated once
    finally:
        generation.close()


def test_an_answer_read_from_redis_is_as_of_the_clock_the_read_took(tmp_path: Path) -> None:
    minute = 1_699_999_980.0
    clock = FakeClock(minute + 7.25)
    redis_server = RedisServer(tmp_path / "redis").start()
    store = RedisStore(redis_server.url, clock=clock)
    backend = StoreBackend(store, None, clock)
    try:
        store.open()
        batch = BatchColumns(
            0, np.zeros(1, np.int64), np.array([minute + 1]), np.ones(1), np.ones(1)
        )
        store.merge("w", [batch], ["dated"], None, minute + 2)
        assert backend.query({"op": "view", "name": "dated"})["as_of"] == iso_z(minute + 7.25)
        views = backend.query({"op": "views", "names": ["dated"]})["views"]
        assert views[0]["as_of"] == iso_z(minute + 7.25)
    finally:
        backend.close()
        redis_server.stop()


class SteppingClock:
    """Answers ``first`` once after :meth:`step_at` is called, then ``then`` for good."""

    def __init__(self, now: float) -> None:
        self.values = [now]

    def step_at(self, first: float, then: float) -> None:
        self.values = [first, then]

    def __call__(self) -> float:
        return self.values.pop(0) if len(self.values) > 1 else self.values[0]


def test_an_answer_is_never_kept_under_a_later_minute_than_it_shows(tmp_path: Path) -> None:
    """The minute turns while a read runs: the answer (read for the new minute) may be kept under
    the old minute's generation, never the old minute's answer under the new one (it would be
    served for a whole minute without the newest bucket)."""
    minute = 1_699_999_980.0  # a minute's start
    clock = SteppingClock(minute - 0.5)
    redis_server = RedisServer(tmp_path / "redis").start()
    store = RedisStore(redis_server.url, clock=clock)
    backend = StoreBackend(store, None, clock)
    try:
        store.open()
        batch = BatchColumns(
            0, np.zeros(1, np.int64), np.array([minute + 0.25]), np.ones(1), np.ones(1)
        )
        store.merge("w", [batch], ["turning"], None, minute + 1)
        wait_until(backend.generation.current, 5, "the change counter read")
        clock.step_at(minute - 0.001, minute + 0.5)  # the read starts at :59.999, ends at :00.5
        reply = backend.query({"op": "view", "name": "turning"})
        kept_minute = reply["gen"] & 0xFFFFFFFF
        starts = [m["start"] for m in json.loads(reply["body"])["minutes"]]
        shows_new_minute = iso_z(minute) in starts
        assert kept_minute < minute // 60 or shows_new_minute, (kept_minute, starts)
    finally:
        backend.close()
        redis_server.stop()
