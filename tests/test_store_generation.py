"""The generation an API in Redis mode caches answers under: the store's change counter and the
minute, read by a polling thread (a real thread, an injected counter and wall clock)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from servertrack.api.store_generation import StoreGeneration
from servertrack.common.testing import FakeClock, wait_until
from servertrack.store.redis_nodes import StoreUnavailable


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
