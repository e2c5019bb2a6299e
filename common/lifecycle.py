"""Daemon lifecycle helpers: signal handlers that only set a flag, and a deadline schedule."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[threading.Event]:
    """Set ``stop`` on SIGINT/SIGTERM for the duration; restore the old handlers afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class Ticker:
    """A drift-free schedule on the monotonic clock that skips missed ticks instead of bursting."""

    def __init__(self, interval: float, monotonic: type[time.monotonic] | None = None) -> None:
        self.interval = interval
        self.monotonic = monotonic or time.monotonic
        self.deadline = self.monotonic() + interval

    def remaining(self) -> float:
        return max(0.0, self.deadline - self.monotonic())

    def due(self) -> bool:
        """True once per tick; moves the deadline past now."""
        now = self.monotonic()
        if now < self.deadline:
            return False
        missed = int((now - self.deadline) // self.interval)
        self.deadline += (missed + 1) * self.interval
        return True
