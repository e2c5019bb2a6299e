"""The read cache in front of any :class:`~servertrack.api.backend.Backend`: a server's answer is
kept until the store's state changes, so an unchanged answer costs no round trip.

The aggregator numbers its state (``gen``): the number changes whenever an answer could change (a
batch with samples or news of a server applied, a new minute, servers released, a snapshot
restored) and rides on every ``view`` answer. ``Backend.generation()`` says which number is
current: over the host's daemons a long poll on the aggregator
(:class:`~servertrack.api.generation.GenerationWatch`), which hears of a new one within
milliseconds of the batch; in Redis mode the store's change counter with the minute
(:mod:`servertrack.api.store_generation`).

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

The bytes served are the store's answer as :mod:`servertrack.readmodel.answers` made it, byte
for byte. The refresh thread is started and stopped by its owner
(:class:`~servertrack.api.read_path.ReadPath`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from servertrack.api.backend import Backend, Unavailable
from servertrack.readmodel.answers import Answer
from servertrack.readmodel.errors import CorruptKey

log = logging.getLogger(__name__)
MAX_ENTRIES = 100_000
"""Answers kept at most (a few KB each); past it the cache starts over."""
GRACE = 0.5
"""Seconds after a new generation during which the previous answer may still be served."""
REFRESH_GROUP = 500
"""Servers asked for in one ``views`` call."""

Entry = tuple[int, Answer | CorruptKey | None]
"""A kept answer with its generation (None: the server had no data; its ``CorruptKey``: its data
could not be read)."""


class CachedReads:
    """Servers' answers kept per generation (see the module docstring)."""

    def __init__(
        self,
        backend: Backend,
        grace: float = GRACE,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
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

    def view(self, name: str, deadline: float | None = None) -> Answer | CorruptKey | None:
        """The server's answer: kept when the generation allows, else asked (and kept)."""
        current = self.backend.generation()
        if current is not None:
            found, kept = self._lookup(name, *current)
            if found:
                return kept
        self.misses += 1
        gen, answer = self.backend.view(name, deadline)
        self._keep(name, gen, answer)
        self._read.add(name)
        return answer

    def peek(self, name: str) -> Answer | None:
        """The answer for ``name`` the cache may serve now, if it is one with data, else None
        (nothing is asked)."""
        current = self.backend.generation()
        if current is None:
            return None
        answer = self._lookup(name, *current)[1]
        return answer if isinstance(answer, Answer) else None

    # -- inside --------------------------------------------------------------------------------
    def _lookup(
        self, name: str, current: int, since: float, before: int | None
    ) -> tuple[bool, Answer | CorruptKey | None]:
        """Whether an answer may be served from the cache, and which."""
        if current != self._gen and since >= self._changed:
            self._new_generation(current, since, before)
        entry = self._entries.get(name)
        if entry is not None and entry[0] == current:
            self.hits += 1
            self._read.add(name)
            return True, entry[1]
        if self.monotonic() - self._changed < self.grace:
            entry = self._previous.get(name)
            if entry is not None:
                self.stale += 1
                self._read.add(name)
                return True, entry[1]
        return False, None

    def _keep(self, name: str, gen: int | None, answer: Answer | CorruptKey | None) -> None:
        if gen is None or gen != self._gen:
            return  # an answer of another generation than the one served now
        entries = self._entries
        if len(entries) >= MAX_ENTRIES:
            entries = self._entries = {}
        entries[name] = (gen, answer)

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
                self._wake.set()

    # -- the refresh thread ---------------------------------------------------------------------
    def start(self) -> None:
        """Start the refresh thread."""
        if self._refresher is None:
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
                    answer_gen, answers = self.backend.views(group)
                except Unavailable as err:
                    log.debug("read cache refresh failed: %s", err)
                    break
                for name, answer in zip(group, answers, strict=True):
                    self._keep(name, answer_gen, answer)

    def close(self) -> None:
        """Stop the refresh thread (at most one backend reply timeout later); safe to call
        twice, or without a start."""
        self._stop.set()
        self._wake.set()
        if self._refresher is not None:
            self._refresher.join(timeout=5)
