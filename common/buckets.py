"""Time buckets and the acceptance window, shared by every component.

A minute bucket starts at ``ts - ts % 60`` and an hour bucket at ``ts - ts % 3600`` (UTC epoch
seconds). Windows are counted in whole buckets: the minute window is the 60 minute buckets up to
and including the current one, the hour window the 24 hour buckets up to and including the current
one. A sample is accepted while its hour bucket is inside the hour window and it is at most
``MAX_FUTURE_SECONDS`` ahead of the clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], float]

MINUTE = 60
HOUR = 3600
MINUTE_WINDOW = 60
HOUR_WINDOW = 24
MAX_FUTURE_SECONDS = 60.0


def minute_index(ts: float) -> int:
    """Number of the minute bucket holding ``ts`` (its start is ``index * 60``)."""
    return int(ts // MINUTE)


def hour_index(ts: float) -> int:
    """Number of the hour bucket holding ``ts`` (its start is ``index * 3600``)."""
    return int(ts // HOUR)


def oldest_accepted_ts(now: float) -> float:
    """Start of the oldest hour bucket still inside the 24-hour window at ``now``."""
    return (hour_index(now) - HOUR_WINDOW + 1) * HOUR


class TimeWindow:
    """The acceptance window at one moment ``now``: ``oldest <= ts <= newest``.

    PERF: the receiver judges every sample of a flush interval at one ``now``; it keeps the window
    of that ``now`` instead of working out the oldest hour again for each sample.
    """

    __slots__ = ("newest", "now", "oldest")

    def __init__(self, now: float) -> None:
        self.now = now
        self.oldest = oldest_accepted_ts(now)
        self.newest = now + MAX_FUTURE_SECONDS

    def verdict(self, ts: float) -> str | None:
        """``None`` when ``ts`` is inside the window, else the drop reason."""
        if ts > self.newest:
            return "future"
        if ts < self.oldest:
            return "too_old"
        return None


def time_verdict(ts: float, now: float) -> str | None:
    """``None`` when ``ts`` is inside the acceptance window at ``now``, else the drop reason."""
    return TimeWindow(now).verdict(ts)


def iso_utc(ts: float) -> str:
    """``2026-11-22T10:01:00Z`` style UTC timestamp, with fractions only when present."""
    moment = datetime.fromtimestamp(ts, tz=UTC)
    if moment.microsecond:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def system_clock() -> float:
    """The wall clock used for data timestamps (injected everywhere else)."""
    return time.time()
