"""Which state the aggregator's answers come from, learnt by a long poll on its query socket.

A thread sends ``{"op": "watch", "after": N}``; the aggregator answers as soon as its generation
is not ``N`` any more (right after it applied a batch, say) or after 0.25 s anyway, so replies
keep coming while the aggregator runs. ``current()`` is the last number
heard (with when it was first heard and the number heard just before it), or None when nothing
was heard for ``fresh_for`` seconds (the aggregator is down or stalled): the read cache is then
bypassed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

import zmq

from servertrack.common import rpc

log = logging.getLogger(__name__)
FRESH_FOR = 1.0
"""Seconds a generation heard stays usable: the aggregator answers a watch at least every 0.25 s
(0.45 s with its poll), so this is two missed heartbeats; a stopped aggregator's answers are not
served from the cache for longer."""
RETRY_PAUSE = 0.2


class Current(NamedTuple):
    """The generation now, as a :class:`Heard` source knows it."""

    number: int
    since: float
    """When it was first heard (monotonic): the previous generation ended no later."""
    before: int | None
    """The generation that was current immediately before it, or None when that is not known
    (the first number heard, or the first after a spell in which nothing was heard)."""


class Heard:
    """A daemon thread that keeps hearing a number (see :meth:`_run`); :meth:`current` is what
    it last heard, with when it was first heard and what it heard just before, while it was
    heard within ``fresh_for``."""

    thread_name = "heard"

    def __init__(self, fresh_for: float, monotonic: Callable[[], float]) -> None:
        self.fresh_for = fresh_for
        self.monotonic = monotonic
        self._current: Current | None = None
        self._heard = float("-inf")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def current(self) -> Current | None:
        """The number last heard, when it was first heard (``monotonic``) and the number heard
        just before it, if it was heard recently enough (never before :meth:`start`)."""
        now = self.monotonic()
        if now - self._heard > self.fresh_for:
            return None
        return self._number(now)

    def _number(self, now: float) -> Current | None:
        return self._current

    def _hear(self, number: int) -> None:
        """Called by the thread with each number it hears. The number before a new one is known
        only when it was still heard within ``fresh_for`` (else some numbers may have come and
        gone unheard in between)."""
        now = self.monotonic()
        heard = self._current
        if heard is None or heard.number != number:
            unbroken = heard is not None and now - self._heard <= self.fresh_for
            before = heard.number if heard is not None and unbroken else None
            self._current = Current(number, now, before)
        self._heard = now

    def _deaf(self) -> None:
        """Called by the thread when it could not hear: nothing kept may be served."""
        self._heard = float("-inf")

    def start(self) -> None:
        """Start the thread (its owner does, once; a second call does nothing)."""
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._run, name=self.thread_name, daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop the thread (it notices within ``rpc.INTERRUPT_SLICE_MS``)."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=self.fresh_for + 1)


class GenerationWatch(Heard):
    """A daemon thread owning one REQ socket to the aggregator's query endpoint."""

    thread_name = "generation-watch"

    def __init__(
        self,
        context: zmq.SyncContext,
        endpoint: str,
        fresh_for: float = FRESH_FOR,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(fresh_for, monotonic)
        self.context = context
        self.endpoint = endpoint

    def _run(self) -> None:
        client = rpc.RpcClient(self.context, self.endpoint, 0.5, self.fresh_for)
        after: int | None = None
        try:
            while not self._stop.is_set():
                try:
                    reply = client.call({"op": "watch", "after": after}, self._stop)
                except rpc.Unavailable:
                    self._deaf()
                    self._stop.wait(RETRY_PAUSE)
                    continue
                gen = reply.get("gen") if isinstance(reply, dict) else None
                if not isinstance(gen, int):  # an aggregator that does not know the op
                    self._deaf()
                    self._stop.wait(1.0)
                    continue
                self._hear(gen)
                after = gen
        finally:
            client.close()
