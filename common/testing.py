"""Test helpers that ship with the project: a fake clock, a free loopback port and a rollup oracle.

:func:`oracle_buckets` is a deliberately naive re-statement of the bucket rules in plain Python
(no numpy, nothing from :mod:`servertrack.aggregator`), so the real rollups can be checked
against it: it groups the raw samples of one server by bucket in a dict and keeps the buckets
that are inside the windows at ``now``.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

MINUTE = 60
HOUR = 3600
MINUTES_SHOWN = 60
HOURS_SHOWN = 24

RawSample = tuple[str, float, float | None, float | None]
"""``(fqdn, ts, cpu, ram)`` with ``None`` for a metric the sample does not carry."""


class FakeClock:
    """A clock to inject as ``clock=``: calling it returns the time it was set or advanced to."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move the clock forward (or back, with a negative value) and return the new time."""
        self.now += seconds
        return self.now

    def set(self, ts: float) -> float:
        """Jump the clock to ``ts`` and return it."""
        self.now = float(ts)
        return self.now


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def iso_z(ts: float) -> str:
    """``ts`` as ``2026-11-22T10:01:00Z``, with microseconds only when there are some."""
    moment = datetime.fromtimestamp(ts, tz=UTC)
    if moment.microsecond:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _start(ts: float, width: int) -> int:
    """Start of the bucket of ``width`` seconds holding ``ts``: ``ts - ts % width``."""
    return int(ts - ts % width)


def _bucket(start: int, group: list[RawSample]) -> dict[str, Any]:
    bucket: dict[str, Any] = {"start": iso_z(start)}
    for index, metric in ((2, "cpu"), (3, "ram")):
        values = [sample[index] for sample in group if sample[index] is not None]
        if values:
            bucket[metric] = math.fsum(values) / len(values)
            bucket[f"{metric}_min"] = min(values)
            bucket[f"{metric}_max"] = max(values)
        else:
            bucket[metric] = bucket[f"{metric}_min"] = bucket[f"{metric}_max"] = None
        bucket[f"{metric}_samples"] = len(values)
    bucket["samples"] = len(group)
    return bucket


def _window(samples: list[RawSample], now: float, width: int, shown: int) -> list[dict[str, Any]]:
    newest = _start(now, width)
    oldest = newest - (shown - 1) * width
    groups: dict[int, list[RawSample]] = {}
    for sample in samples:
        start = _start(sample[1], width)
        if oldest <= start <= newest:
            groups.setdefault(start, []).append(sample)
    return [_bucket(start, groups[start]) for start in sorted(groups)]


def oracle_buckets(
    samples: Iterable[RawSample], now: float, fqdn: str | None = None
) -> dict[str, list[dict[str, Any]]]:
    """The minute and hour buckets one server should show at ``now``, in the shape of ``view()``.

    ``samples`` are the raw samples the server sent (those of other servers are skipped when
    ``fqdn`` is given). Only non-empty buckets inside the windows are returned, oldest first: the
    60 minute buckets and the 24 hour buckets up to and including the ones holding ``now``. Means
    are taken over raw samples; ``samples`` counts raw samples, whichever metrics they carry.
    The stream is assumed to respect the acceptance rule (``ts`` at most 60 s ahead of the clock
    when sent); anything older than the windows is simply not shown.
    """
    mine = [sample for sample in samples if fqdn is None or sample[0] == fqdn]
    return {
        "minutes": _window(mine, now, MINUTE, MINUTES_SHOWN),
        "hours": _window(mine, now, HOUR, HOURS_SHOWN),
    }
