"""Which state a Redis store's answers come from, for the read cache of an API in Redis mode.

Every writer raises the store's change counter after each merge (``st:{#changes}:n``); a
thread reads it every ``poll`` seconds. A server's answer also slides with the minute (its
buckets are the last 60 minutes and 24 hours), so the generation is the pair (counter, minute)
as one number. ``current()`` is None when the counter was not read for ``fresh_for`` seconds
(Redis is down or slow): the cache is then bypassed and reads go to Redis, which answers 503.

A generation starts when the counter was first read at its value or when the minute turned,
whichever came last, and the one before it is the pair with the counter read before (a merge) or
the minute before (a turn). The minute's start is placed on the monotonic clock from the wall
clock when it is first asked for, so a turn nobody asked about during a quiet spell is dated
when it happened, not at the next read.

An answer must never carry a generation newer than what it shows: the backend takes the
generation before it reads, so an answer read while a merge lands is kept under the older
number and asked again once the new one is heard.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from servertrack.api.generation import Current, Heard
from servertrack.common.buckets import MINUTE, Clock
from servertrack.store.redis_nodes import StoreUnavailable

log = logging.getLogger(__name__)
POLL = 0.05
"""Seconds between two reads of the change counter: what a cached answer may lag behind."""
FRESH_FOR = 0.5
"""Seconds a counter read stays usable: once Redis stops answering, cached answers are served
for at most this long (a refused connection ends them at the next poll)."""
MINUTE_BITS = 32


def compose(count: int, minute: int) -> int:
    """The generation of a counter value in a minute (the minute as an epoch minute index)."""
    return (count << MINUTE_BITS) | (minute % (1 << MINUTE_BITS))


class StoreGeneration(Heard):
    """A daemon thread reading the change counter (see the module docstring)."""

    thread_name = "store-generation"

    def __init__(
        self,
        read_count: Callable[[], int],
        clock: Clock = time.time,
        poll: float = POLL,
        fresh_for: float = FRESH_FOR,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(fresh_for, monotonic)
        self.read_count = read_count
        self.clock = clock
        self.poll = poll
        self._turn: tuple[int, float] | None = None
        """The minute last asked about and when it began (monotonic)."""

    def _number(self, now: float) -> Current | None:
        """The counter as heard, with the minute (see the module docstring)."""
        heard = self._current
        if heard is None:
            return None
        wall = self.clock()
        minute = int(wall // MINUTE)
        turn = self._turn
        if turn is None or turn[0] != minute:
            turn = self._turn = (minute, now - (wall - minute * MINUTE))
        began = turn[1]
        if heard.since >= began:  # a merge came last
            before = None if heard.before is None else compose(heard.before, minute)
            return Current(compose(heard.number, minute), heard.since, before)
        return Current(compose(heard.number, minute), began, compose(heard.number, minute - 1))

    def tag(self) -> int | None:
        """The generation to stamp on an answer about to be read (None: do not keep it)."""
        current = self.current()
        return None if current is None else current[0]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                count = self.read_count()
            except StoreUnavailable as err:
                log.debug("change counter not read: %s", err)
                self._deaf()
                self._stop.wait(self.poll * 4)
                continue
            self._hear(count)
            self._stop.wait(self.poll)
