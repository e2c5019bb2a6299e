"""A read cache in front of any :class:`~servertrack.api.backend.Backend`: a server's answer is
kept until the aggregator's state changes, so an unchanged answer costs no round trip.

The aggregator numbers its state (``gen``): the number changes whenever an answer could change (a
batch with samples or news of a server applied, a new minute, servers released, a snapshot
restored) and rides on every ``view`` answer. A :class:`Generation` source
(``ZmqBackend.generation``, a long poll on the aggregator) says which number is current; it hears
of a new one within milliseconds of the batch. In Redis mode the number is the store's change
counter with the minute (``StoreBackend.generation``, :mod:`servertrack.api.store_generation`).

When the generation changes, one background thread asks the aggregator again for each server
read in the generation that ended, in groups (``views``); until their new answers are in, for at
most ``GRACE`` seconds after the new number was heard, a read gets the previous answer. So no
read waits for the aggregator at the moment it is busiest (right after a batch).

The freshness rule: an answer is served from the cache only while its generation is the current
one, or, for ``GRACE`` seconds after the current one was first heard, when its generation is the
one that was current immediately before (the source says which that was: ``Current.before``).
Answers kept from any older generation (the cache was not read while several generations went
by) are never served. So a read never shows an answer older than the newest applied batch for
longer than ``GRACE`` seconds plus the time the announcement takes (milliseconds for the
aggregator's long poll, up to the 50-ms poll of the counter in Redis mode). A server not read
before, or a refresh that is late, is asked directly as without a cache. When the aggregator is
not heard from for ``Generation.fresh_for`` seconds (1 s), nothing kept is served: reads go to
the backend (503s when it is down).

The bytes served are the aggregator's own, byte for byte.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from servertrack.api.backend import Backend, Unavailable
from servertrack.api.generation import Current

log = logging.getLogger(__name__)
MAX_ENTRIES = 100_000
"""Answers kept at most (a few KB each); past it the cache starts over."""
GRACE = 0.5
"""Seconds after a new generation during which the previous answer may still be served."""
REFRESH_GROUP = 500
"""Servers asked for in one ``views`` query."""

Entry = tuple[int, dict[str, Any]]


class Generation(Protocol):
    def current(self) -> Current | None:
        """The aggregator's current state number, when it was first heard (monotonic) and the
        number current just before it, or None when the aggregator was not heard from
        recently."""
        ...


class CachedReads:
    """A Backend: ``view`` queries are answered from the cache when the generation allows, every
    other call goes straight through."""

    def __init__(
        self,
        backend: Backend,
        generation: Generation | None,
        grace: float = GRACE,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.generation = generation
        self.grace = grace
        self.monotonic = monotonic
        self._entries: dict[str, Entry] = {}
        self._previous: dict[str, Entry] = {}
        self._gen: int | None = None
        self._read: set[str] = set()
        """Servers read in the current generation: the next refresh asks for these."""
        self._to_refresh: list[str] = []
        self._changed = float("-inf")
        self._rotate = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None
        self.hits = 0
        self.stale = 0
        self.misses = 0
        """Counted without a lock (an increment lost between threads now and then is the price
        of not taking one on every read)."""

    def counts(self) -> dict[str, int]:
        """Reads by how they were served (the ``read_cache`` counter of ``/stats``)."""
        return {"hit": self.hits, "stale": self.stale, "miss": self.misses}

    # -- the Backend protocol ------------------------------------------------------------------
    def record(self, samples: Any) -> dict[str, Any]:
        return self.backend.record(samples)

    def ping(self) -> dict[str, Any]:
        return self.backend.ping()

    def query(self, request: dict[str, Any], deadline: float | None = None) -> dict[str, Any]:
        name = request.get("name")
        if request.get("op") != "view" or self.generation is None or not isinstance(name, str):
            return self.backend.query(request, deadline)
        current = self.generation.current()
        if current is not None:
            kept = self._lookup(name, *current)
            if kept is not None:
                return kept
        self.misses += 1
        reply = self.backend.query(request, deadline)
        self._keep(name, reply)
        self._read.add(name)
        return reply

    def peek(self, name: str) -> dict[str, Any] | None:
        """The answer for ``name`` the cache may serve now, else None (nothing is asked)."""
        current = self.generation.current() if self.generation is not None else None
        return None if current is None else self._lookup(name, *current)

    # -- inside --------------------------------------------------------------------------------
    def _lookup(
        self, name: str, current: int, since: float, before: int | None
    ) -> dict[str, Any] | None:
        if current != self._gen and since >= self._changed:
            self._new_generation(current, since, before)
        entry = self._entries.get(name)
        if entry is not None and entry[0] == current:
            self.hits += 1
            self._read.add(name)
            return entry[1]
        if self.monotonic() - self._changed < self.grace:
            entry = self._previous.get(name)
            if entry is not None:
                self.stale += 1
                self._read.add(name)
                return entry[1]
        return None

    def _keep(self, name: str, reply: dict[str, Any]) -> None:
        gen = reply.get("gen")
        if not isinstance(gen, int) or gen != self._gen:
            return  # an answer of another generation than the one served now
        entries = self._entries
        if len(entries) >= MAX_ENTRIES:
            entries = self._entries = {}
        entries[name] = (gen, reply)

    def _new_generation(self, current: int, since: float, before: int | None) -> None:
        """Keep the answers kept so far as the previous ones for ``GRACE`` seconds if they are
        of the generation just before ``current`` (else none: they are older than that), and
        have the servers read in the background."""
        with self._rotate:
            if current == self._gen or since < self._changed:
                return  # another thread did it, or went on to a newer one already
            kept = self._entries
            # Each swap replaces a reference: threads reading meanwhile see a whole dict.
            self._previous = kept if before is not None and before == self._gen else {}
            self._entries = {}
            read, self._read = self._read, set()
            self._to_refresh = [name for name in read if name in kept]
            self._gen = current
            self._changed = since
            if self._to_refresh:
                self._start_refresher()
                self._wake.set()

    def _start_refresher(self) -> None:
        if self._refresher is None and not self._stop.is_set():
            self._refresher = threading.Thread(
                target=self._refresh_loop, name="read-cache-refresh", daemon=True
            )
            self._refresher.start()

    def _refresh_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                return
            gen, names = self._gen, self._to_refresh
            for start in range(0, len(names), REFRESH_GROUP):
                if gen != self._gen or self._stop.is_set():
                    break  # superseded: the next round asks again
                group = names[start : start + REFRESH_GROUP]
                try:
                    reply = self.backend.query({"op": "views", "names": group})
                except Unavailable as err:
                    log.debug("read cache refresh failed: %s", err)
                    break
                views = reply.get("views")
                if not isinstance(views, list) or len(views) != len(group):
                    break  # an aggregator without "views": reads ask one by one
                answer_gen = reply.get("gen")
                for name, view in zip(group, views, strict=True):
                    self._keep(name, {**view, "gen": answer_gen})

    def close(self) -> None:
        """Stop the refresh thread (at most one aggregator reply timeout later)."""
        self._stop.set()
        self._wake.set()
        if self._refresher is not None:
            self._refresher.join(timeout=5)
