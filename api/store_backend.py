"""Reads straight from a shared store: with ``--store redis://...`` an API is a read replica.

Every read (a server's loads, the server list, the dashboard's fleet) is answered from Redis,
with no aggregator hop, so any number of APIs anywhere answer alike for every server any host
wrote. Records go to a receiver when one is configured (``--receiver-control``), and ``/stats``
and the health of the daemons come from that host's receiver and aggregator when configured;
without them, records answer 503 and ``/health`` looks at the store alone.

Answers of a server's loads carry the store's generation (:mod:`servertrack.api.store_generation`),
so the read cache (:mod:`servertrack.api.cache`) can keep them until a writer merges again.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import msgpack

from servertrack.aggregator.fleet import FleetAnswers, table_from_rows
from servertrack.aggregator.state import corrupt_answer
from servertrack.api.backend import Unavailable, ZmqBackend
from servertrack.api.store_generation import StoreGeneration
from servertrack.common.buckets import Clock, iso_utc
from servertrack.common.sample import Sample
from servertrack.common.views import view_reply
from servertrack.store.redis_nodes import CorruptKey, StoreUnavailable
from servertrack.store.redis_store import RedisStore

MAX_VIEWS = 500
"""Servers one ``views`` query may ask for (the read cache refreshes in such groups)."""


def _answer(view: dict[str, Any] | CorruptKey | None, now: float) -> dict[str, Any]:
    if isinstance(view, CorruptKey):
        return corrupt_answer(view)
    return view_reply(view, now)


class StoreReader:
    """What the dashboard's fleet answers need of a store, read from Redis."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store

    def fleet_version(self, now: float) -> int:
        """Other hosts write too: the table is read again every second."""
        return int(now)

    def fleet_table(self, now: float | None = None) -> Any:
        return table_from_rows(self.store.fleet_rows(now))


class StoreBackend:
    """A :class:`~servertrack.api.backend.Backend` over a Redis store (see the module
    docstring); ``daemons`` is a backend of the local receiver and aggregator, or None."""

    def __init__(
        self, store: RedisStore, daemons: ZmqBackend | None, clock: Clock = time.time
    ) -> None:
        self.store = store
        self.daemons = daemons
        self.clock = clock
        self.reader = StoreReader(store)
        self.fleet = FleetAnswers()
        self.generation = StoreGeneration(lambda: self._ready().changes(), clock)
        self._opened = False
        self._open_lock = threading.Lock()
        self._closing: list[Callable[[], None]] = []

    def on_close(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` first in :meth:`close` (to stop threads that read through this)."""
        self._closing.append(hook)

    def _ready(self) -> RedisStore:
        if not self._opened:
            with self._open_lock:
                if not self._opened:
                    self.store.open()
                    self._opened = True
        return self.store

    # -- records ------------------------------------------------------------------------------
    def record(self, samples: list[Sample]) -> dict[str, Any]:
        if self.daemons is None:
            raise Unavailable(
                "this API only reads the store: give it --receiver-control to take records"
            )
        return self.daemons.record(samples)

    # -- reads --------------------------------------------------------------------------------
    def query(self, request: dict[str, Any], deadline: float | None = None) -> dict[str, Any]:
        op = request.get("op")
        # The generation comes before the clock and the read, so an answer is never older than
        # the generation it is kept under (the generation includes the minute).
        gen = self.generation.tag() if op in ("view", "views") else None
        now = self.clock()
        try:
            if op == "stats":
                return self._stats(request, deadline)
            store = self._ready()
            if op == "view":
                reply = _answer(store.views([str(request.get("name"))], now)[0], now)
                return reply if gen is None else {**reply, "gen": gen}
            if op == "views":
                names = request.get("names")
                if not isinstance(names, list) or len(names) > MAX_VIEWS:
                    return {"status": 400, "message": f"names: a list of at most {MAX_VIEWS}"}
                views = store.views([str(name) for name in names], now)
                return {"views": [_answer(view, now) for view in views], "gen": gen}
            if op == "servers":
                limit = request.get("limit")
                after = request.get("after")
                rows, total, following = store.servers(
                    now,
                    limit if type(limit) is int and limit > 0 else 1000,
                    after if isinstance(after, str) else None,
                )
                servers = [{"server": name, "last_seen": iso_utc(seen)} for name, seen in rows]
                body = {"servers": servers, "total": total, "next_cursor": following}
                return {"status": 200, "body": json.dumps(body).encode()}
            if op in ("fleet", "grid"):
                answer: dict[str, Any] = msgpack.unpackb(
                    self.fleet.answer(op, self.reader, request, now)
                )
                return answer
        except StoreUnavailable as err:
            raise Unavailable(f"the store does not answer: {err}") from err
        return {"status": 400, "message": f"unknown op {op!r}"}

    def _stats(self, request: dict[str, Any], deadline: float | None) -> dict[str, Any]:
        stats: dict[str, Any] = {"receiver": {}, "aggregator": {}}
        if self.daemons is not None and self.daemons.aggregator is not None:
            stats = json.loads(self.daemons.query(request, deadline)["body"])
        return {"status": 200, "body": json.dumps(stats).encode()}

    def ping(self) -> dict[str, Any]:
        parts: dict[str, Any] = self.daemons.ping() if self.daemons is not None else {}
        try:
            self._ready().ping()
            parts["store"] = {"ok": True}
        except StoreUnavailable as err:
            parts["store"] = {"ok": False, "error": str(err)}
        return parts

    def close(self) -> None:
        for hook in self._closing:
            hook()
        self.generation.close()
        if self.daemons is not None:
            self.daemons.close()
        self.store.close()
