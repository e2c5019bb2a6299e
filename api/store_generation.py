"""Which state a Redis store's answers come from, for the read cache of an API in Redis mode.

Every writer raises the store's change counter after each merge (``st:{#changes}:n``); a
thread reads it every ``poll`` seconds. A server's answer also slides with the minute (its
buckets are the last 60 minutes and 24 hours), so the generation is the pair (counter, minute)
as one number. ``current()`` is None when the counter was not read for ``fresh_for`` seconds
(Redis is down or slow): the cache is then bypassed and reads go to Redis, which answers 503.

An answer must never carry a generation newer than what it shows: the backend takes the
generation before it reads, so an answer read while a merge lands is kept under the older
number and asked again once the new one is heard.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from servertrack.common.buckets import MINUTE, Clock
from servertrack.store.redis_nodes import StoreUnavailable

log = logging.getLogger(__name__)
POLL = 0.05
"""Seconds between two reads of the change counter: what a cached answer may lag behind."""
FRESH_FOR = 0.5
"""Seconds a counter read stays usable: once Redis stops answering, cached answers are served
for at most this long (a refused connection ends them at the next poll)."""
MINUTE_BITS = 32


class StoreGeneration:
    """A daemon thread reading the change counter (see the module docstring)."""

    def __init__(
        self,
        read_count: Callable[[], int],
        clock: Clock = time.time,
        poll: float = POLL,
        fresh_for: float = FRESH_FOR,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.read_count = read_count
        self.clock = clock
        self.poll = poll
        self.fresh_for = fresh_for
        self.monotonic = monotonic
        self._count = 0
        self._heard = float("-inf")
        self._current: tuple[int, float] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def current(self) -> tuple[int, float] | None:
        """The generation and when it was first seen (``monotonic``), or None when the counter
        was not read recently enough."""
        if self._thread is None:
            self.start()
        now = self.monotonic()
        if now - self._heard > self.fresh_for:
            return None
        gen = (self._count << MINUTE_BITS) | (int(self.clock() // MINUTE) % (1 << MINUTE_BITS))
        current = self._current
        if current is None or current[0] != gen:
            current = self._current = (gen, now)
        return current

    def tag(self) -> int | None:
        """The generation to stamp on an answer about to be read (None: do not keep it)."""
        current = self.current()
        return None if current is None else current[0]

    def start(self) -> None:
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="store-generation", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                count = self.read_count()
            except StoreUnavailable as err:
                log.debug("change counter not read: %s", err)
                self._heard = float("-inf")
                self._stop.wait(self.poll * 4)
                continue
            self._count = count
            self._heard = self.monotonic()
            self._stop.wait(self.poll)

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=self.fresh_for + 1)
