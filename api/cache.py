"""A read cache in front of any :class:`~servertrack.api.backend.Backend`: a server's answer is
kept until the aggregator's state changes, so an unchanged answer costs no round trip.

The aggregator numbers its state (``gen``): the number changes whenever an answer could change (a
batch applied, a new minute, servers released, a snapshot restored) and rides on every ``view``
answer. A :class:`Generation` source (``ZmqBackend.generation``, a long poll on the aggregator)
says which number is current. A kept answer is served only while its number is the current one
*and* the source heard from the aggregator within ``Generation.fresh_for`` seconds; otherwise the
read goes to the backend as before, so an aggregator that stops answering gives 503s, not old
data, after that time.

PERF: a hit is a dictionary look-up and a monotonic clock read; the answer's bytes are those the
aggregator built, byte for byte. Measured (``python -m bench --only http``): GETs over 300 names
at 64 connections go from a ZeroMQ round trip per request to about one per name per second.
"""

from __future__ import annotations

from typing import Any, Protocol

from servertrack.api.backend import Backend

MAX_ENTRIES = 100_000
"""Answers kept at most (a few KB each); past it the cache starts over."""


class Generation(Protocol):
    def current(self) -> int | None:
        """The aggregator's current state number, or None when it is not known to be fresh."""
        ...


class CachedReads:
    """A Backend: ``view`` queries are answered from the cache when the generation allows, every
    other call goes straight through."""

    def __init__(self, backend: Backend, generation: Generation | None) -> None:
        self.backend = backend
        self.generation = generation
        self._entries: dict[str, tuple[int, dict[str, Any]]] = {}
        self._gen: int | None = None
        self.hits = 0
        self.misses = 0
        """Counted without a lock: approximate under threads, for the bench only."""

    def record(self, samples: Any) -> dict[str, Any]:
        return self.backend.record(samples)

    def ping(self) -> dict[str, Any]:
        return self.backend.ping()

    def query(self, request: dict[str, Any], deadline: float | None = None) -> dict[str, Any]:
        if request.get("op") != "view" or self.generation is None:
            return self.backend.query(request, deadline)
        current = self.generation.current()
        name = request.get("name")
        if current is not None and isinstance(name, str):
            if current != self._gen:
                # A new generation: every kept answer is stale. Replacing the dict is one
                # reference swap, so threads reading the old one meanwhile see only old entries,
                # which the generation check below refuses.
                self._entries = {}
                self._gen = current
            entry = self._entries.get(name)
            if entry is not None and entry[0] == current:
                self.hits += 1
                return entry[1]
        self.misses += 1
        reply = self.backend.query(request, deadline)
        gen = reply.get("gen")
        if current is not None and gen == current and isinstance(name, str):
            entries = self._entries
            if len(entries) >= MAX_ENTRIES:
                entries = self._entries = {}
            entries[name] = (gen, reply)
        return reply
