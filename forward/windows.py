"""Which windows are due at ``now``: I/O-free, the wall clock passed in.

A window is ``[t, t + interval)`` with ``t`` a multiple of the interval (UTC epoch seconds). It is
due once it is complete plus a grace period for late samples. ``done_until`` is the end of the
last window handled (sent, empty or skipped); the next window starts at or after it, so the
timestamps sent for a metric only ever increase, across restarts and interval changes too.

The data comes from the API's minute buckets (the current minute and the 59 before) or, for
``interval == 3600``, from its hour buckets (24 hours), since a complete hour never lies inside
the minute window. ``backfill`` bounds how far back a start may lie; windows missed beyond it are
counted as ``skipped``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MINUTE = 60
HOUR = 3600
DEFAULT_GRACE = 15
DEFAULT_BACKFILL = 3300
DEFAULT_BACKFILL_HOURLY = 7200
READ_MARGIN = 60
"""Seconds kept between ``--backfill`` and the edge of the API's window: the time a read of the
whole fleet may take before the oldest bucket leaves it."""
MINUTE_SPAN = 59 * MINUTE
"""The oldest minute bucket the API shows starts this long before the current minute."""
HOUR_SPAN = 23 * HOUR


class ScheduleError(ValueError):
    """An interval, grace or backfill that cannot work."""


def scale_of(interval: int) -> str:
    """The bucket list a window is computed from: ``minutes``, or ``hours`` for hourly windows."""
    return "hours" if interval == HOUR else "minutes"


def oldest_readable(now: float, interval: int) -> int:
    """Start of the oldest bucket the API still shows at ``now`` for this interval's scale."""
    if scale_of(interval) == "hours":
        return int(now // HOUR) * HOUR - HOUR_SPAN
    return int(now // MINUTE) * MINUTE - MINUTE_SPAN


def default_backfill(interval: int) -> int:
    return DEFAULT_BACKFILL_HOURLY if interval == HOUR else DEFAULT_BACKFILL


def check_settings(interval: int, grace: int, backfill: int) -> None:
    """Raise :class:`ScheduleError` with a readable reason unless the three fit together."""
    if interval <= 0 or interval % MINUTE or HOUR % interval:
        raise ScheduleError(
            f"--interval must be a multiple of 60 that divides 3600 (60, 120, ..., 1800, 3600), "
            f"got {interval}"
        )
    if not 0 <= grace < MINUTE:
        raise ScheduleError(f"--grace must be from 0 to 59 seconds, got {grace}")
    span = HOUR_SPAN if interval == HOUR else MINUTE_SPAN
    longest = span - READ_MARGIN
    if not interval + grace <= backfill <= longest:
        raise ScheduleError(
            f"--backfill must be from {interval + grace} (interval + grace, the newest complete "
            f"window) to {longest} (what the API's {scale_of(interval)} still hold, less a "
            f"minute for reading) with --interval {interval}, got {backfill}"
        )


def align_up(ts: float, interval: int) -> int:
    """The first multiple of ``interval`` at or after ``ts``."""
    return -(-math.ceil(ts) // interval) * interval


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do at one moment: read and send ``windows``, give up ``skipped`` older ones."""

    windows: tuple[int, ...]
    skipped: int
    skipped_from: int | None
    done_until: int | None
    """``done_until`` once this plan is carried out."""


class Schedule:
    """The window arithmetic; ``done_until`` is the only state (what ``--state`` keeps)."""

    def __init__(
        self,
        interval: int,
        grace: int = DEFAULT_GRACE,
        backfill: int | None = None,
        done_until: int | None = None,
    ) -> None:
        backfill = default_backfill(interval) if backfill is None else backfill
        check_settings(interval, grace, backfill)
        self.interval = interval
        self.grace = grace
        self.backfill = backfill
        self.done_until = done_until

    def latest_complete(self, now: float) -> int:
        """Start of the newest window that is complete, grace included, at ``now``."""
        return int((now - self.grace - self.interval) // self.interval) * self.interval

    def earliest_allowed(self, now: float) -> int:
        """Start of the oldest window still inside ``--backfill`` at ``now``."""
        return align_up(now - self.backfill, self.interval)

    def plan(self, now: float) -> Plan:
        """The windows due at ``now``, oldest first, and those given up. Changes nothing."""
        latest = self.latest_complete(now)
        earliest = self.earliest_allowed(now)
        if self.done_until is None:
            first, skipped = earliest, 0
        else:
            first = align_up(self.done_until, self.interval)
            skipped = max(0, min(earliest, latest + self.interval) - first) // self.interval
        start = max(first, earliest)
        windows = tuple(range(start, latest + 1, self.interval))
        done_until: int | None
        if windows:
            done_until = windows[-1] + self.interval
        elif skipped:
            done_until = first + skipped * self.interval
        else:
            done_until = self.done_until
        return Plan(windows, skipped, first if skipped else None, done_until)

    def commit(self, plan: Plan) -> None:
        """Record that ``plan`` was carried out."""
        self.done_until = plan.done_until

    def next_due(self, now: float) -> float:
        """Wall time at which the next window becomes due (``now`` or earlier: due already)."""
        if self.done_until is None:
            return now
        start = max(align_up(self.done_until, self.interval), self.earliest_allowed(now))
        return float(start + self.interval + self.grace)
