"""The API's backend over a shared Redis store: with ``--store redis://...`` an API reads Redis
itself and makes the answers the aggregator would make (:mod:`servertrack.readmodel.answers`,
over :class:`~servertrack.store.reader.RedisReader`).

Every read (a server's loads, the server list, the dashboard's fleet) is answered from Redis, with
no aggregator hop, so any number of APIs anywhere answer alike for every server any host wrote.
Records go to a receiver when one is configured (``--receiver-control``), and ``/stats`` and the
health of the daemons come from that host's receiver and aggregator when configured; without
them, records answer 503 and ``/health`` looks at the store alone.

Answers carry the store's generation (:mod:`servertrack.api.store_generation`, a thread started
by the read path), taken before the read, so the read cache can keep them until a writer merges
again and never keeps one under a generation newer than what it shows.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from servertrack.api.backend import Kept, Threaded, Unavailable
from servertrack.api.daemons_backend import DaemonsBackend
from servertrack.api.generation import Current
from servertrack.api.store_generation import StoreGeneration
from servertrack.common.buckets import Clock
from servertrack.common.fleet_query import FleetQuery
from servertrack.common.sample import Sample
from servertrack.readmodel.answers import Answer, servers_answer, view_answer, views_answers
from servertrack.readmodel.errors import CorruptKey, StoreUnavailable
from servertrack.readmodel.fleet import FleetAnswers, last_minute
from servertrack.readmodel.history import histories
from servertrack.readmodel.values import Histories, LastMinute
from servertrack.store.reader import RedisReader
from servertrack.store.redis_store import RedisStore

MAX_VIEWS = 500
"""Servers one ``views`` call may ask for (the read cache refreshes in such groups)."""


class StoreBackend:
    """A :class:`~servertrack.api.backend.Backend` over a Redis store (see the module
    docstring); ``daemons`` is a backend of the local receiver and aggregator, or None."""

    def __init__(
        self, store: RedisStore, daemons: DaemonsBackend | None, clock: Clock = time.time
    ) -> None:
        self.store = store
        self.daemons = daemons
        self.clock = clock
        self.reader = RedisReader(store)
        self.fleet_answers = FleetAnswers()
        self.watch = StoreGeneration(lambda: self._ready().store.changes(), clock)
        """The store's change counter with the minute (a thread: started by the read path)."""
        self._opened = False
        self._open_lock = threading.Lock()

    def _ready(self) -> RedisReader:
        """The reader, the store opened first (a Redis down at start is tried again here)."""
        if not self._opened:
            with self._open_lock:
                if not self._opened:
                    self.store.open()
                    self._opened = True
        return self.reader

    def _read(self, what: Any) -> Any:
        try:
            return what(self._ready())
        except StoreUnavailable as err:
            raise Unavailable(f"the store does not answer: {err}") from err

    # -- reads --------------------------------------------------------------------------------
    def generation(self) -> Current | None:
        return self.watch.current()

    def view(self, name: str, deadline: float | None = None) -> Kept:
        gen = self.watch.tag()  # before the clock and the read: see the module docstring
        now = self.clock()
        view = self._read(lambda reader: reader.views([name], now)[0])
        return gen, view_answer(view)

    def views(self, names: Sequence[str]) -> tuple[int | None, list[Answer | CorruptKey | None]]:
        if len(names) > MAX_VIEWS:
            raise ValueError(f"at most {MAX_VIEWS} servers a call")
        gen = self.watch.tag()
        now = self.clock()
        return gen, self._read(lambda reader: views_answers(reader, names, now))

    def servers(self, after: str | None, limit: int, deadline: float | None = None) -> bytes:
        now = self.clock()
        body: bytes = self._read(lambda reader: servers_answer(reader, after, limit, now))
        return body

    def fleet(self, query: FleetQuery, deadline: float | None = None) -> bytes:
        now = self.clock()
        body: bytes = self._read(lambda reader: self.fleet_answers.page(reader, query, now))
        return body

    def grid(self, known: str | None, deadline: float | None = None) -> bytes:
        now = self.clock()
        body: bytes = self._read(lambda reader: self.fleet_answers.grid(reader, known, now))
        return body

    def last_minute(self, deadline: float | None = None) -> LastMinute:
        now = self.clock()
        table = self._read(lambda reader: self.fleet_answers.table(reader, now))
        return last_minute(table)

    def alerts(self, deadline: float | None = None) -> bytes:
        """The alerts of this host's aggregator, which evaluates them: an API that only reads
        the store has none to list."""
        if self.daemons is None or self.daemons.aggregator is None:
            raise Unavailable(
                "this API only reads the store: alerts are evaluated by an aggregator (give it "
                "--aggregator-query)"
            )
        return self.daemons.alerts(deadline)

    def histories(self, names: Sequence[str], deadline: float | None = None) -> Histories:
        now = self.clock()
        found: Histories = self._read(lambda reader: histories(reader, names, now))
        return found

    def stats(self, deadline: float | None = None) -> dict[str, Any]:
        if self.daemons is None or self.daemons.aggregator is None:
            return {"receiver": {}, "aggregator": {}, "alerts": {}}
        return self.daemons.stats(deadline)

    # -- records and health ---------------------------------------------------------------------
    def record(self, samples: list[Sample]) -> dict[str, Any]:
        if self.daemons is None:
            raise Unavailable(
                "this API only reads the store: give it --receiver-control to take records"
            )
        return self.daemons.record(samples)

    def ping(self) -> dict[str, Any]:
        parts: dict[str, Any] = self.daemons.ping() if self.daemons is not None else {}
        try:
            self._ready().store.ping()
            parts["store"] = {"ok": True}
        except StoreUnavailable as err:
            parts["store"] = {"ok": False, "error": str(err)}
        return parts

    def threads(self) -> list[Threaded]:
        return [self.watch] + (self.daemons.threads() if self.daemons is not None else [])

    def close(self) -> None:
        if self.daemons is not None:
            self.daemons.close()
        self.store.close()
