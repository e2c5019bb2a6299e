"""An independent oracle for the rollups: the buckets one server should show, computed naively.

:func:`oracle_buckets` is a deliberately plain re-statement of the bucket rules in Python (no numpy,
nothing from the aggregator or any store): it groups the raw samples of one server by bucket in a
dict and keeps the buckets that are inside the windows at ``now``. The load generator checks a
live host against it, and the tests check every store against it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

MINUTE = 60
HOUR = 3600
MINUTES_SHOWN = 60
HOURS_SHOWN = 24

RawSample = tuple[str, float, float | None, float | None]
"""``(fqdn, ts, cpu, ram)`` with ``None`` for a metric the sample does not carry."""


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
    columns = {"cpu": [sample[2] for sample in group], "ram": [sample[3] for sample in group]}
    for metric, column in columns.items():
        values = [value for value in column if value is not None]
        if values:
            total = math.fsum(values)
            bucket[metric] = total / len(values)
            bucket[f"{metric}_sum"] = total
            bucket[f"{metric}_min"] = min(values)
            bucket[f"{metric}_max"] = max(values)
        else:
            bucket[metric] = bucket[f"{metric}_sum"] = None
            bucket[f"{metric}_min"] = bucket[f"{metric}_max"] = None
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


EXACT_FIELDS = ("samples", "cpu_samples", "ram_samples", "cpu_min", "cpu_max", "ram_min", "ram_max")


def bucket_differences(
    view: dict[str, Any], expected: dict[str, list[dict[str, Any]]], rel_tol: float = 1e-12
) -> list[str]:
    """How a ``GET /servers/{name}/loads`` answer differs from :func:`oracle_buckets`, as
    readable lines (none when they agree): the same buckets in the same order, counts and
    extremes exactly equal, means and sums equal within ``rel_tol``, ``null`` where the oracle
    has none."""
    problems = []
    for scale in ("minutes", "hours"):
        got, want = view[scale], expected[scale]
        if [b["start"] for b in got] != [b["start"] for b in want]:
            problems.append(
                f"{scale}: buckets {[b['start'] for b in got]} != {[b['start'] for b in want]}"
            )
            continue
        for have, bucket in zip(got, want, strict=True):
            start = bucket["start"]
            for key in EXACT_FIELDS:
                if have[key] != bucket[key]:
                    problems.append(f"{scale} {start} {key}: {have[key]} != {bucket[key]}")
            for key in ("cpu", "ram", "cpu_sum", "ram_sum"):
                if (have[key] is None) != (bucket[key] is None) or (
                    bucket[key] is not None
                    and not math.isclose(have[key], bucket[key], rel_tol=rel_tol)
                ):
                    problems.append(f"{scale} {start} {key}: {have[key]!r} != {bucket[key]!r}")
    return problems


def forwarded_points(
    samples: Iterable[RawSample], t: int, interval: int, prefix: str
) -> dict[str, float]:
    """What ``servertrack forward`` should send for the window ``[t, t + interval)``, name by
    name, brute force over the raw samples: each server's mean per metric, and per metric the
    fleet's mean over every sample, the highest server mean and the number of servers. Names
    are made Graphite-safe as the README says (``.`` and anything outside ``[A-Za-z0-9_-]``
    become ``_``); servers whose safe names collide are not supported here."""
    values: dict[str, dict[str, list[float]]] = {}
    for fqdn, ts, cpu, ram in samples:
        if t <= ts < t + interval:
            mine = values.setdefault(fqdn, {"cpu": [], "ram": []})
            for metric, value in (("cpu", cpu), ("ram", ram)):
                if value is not None:
                    mine[metric].append(value)
    points: dict[str, float] = {}
    for metric in ("cpu", "ram"):
        groups = {name: got[metric] for name, got in values.items() if got[metric]}
        for name, group in groups.items():
            safe = "".join(c if c.isascii() and (c.isalnum() or c in "_-") else "_" for c in name)
            points[f"{prefix}.{safe}.{metric}"] = math.fsum(group) / len(group)
        if groups:
            every = [value for group in groups.values() for value in group]
            points[f"{prefix}._fleet.{metric}.mean"] = math.fsum(every) / len(every)
            points[f"{prefix}._fleet.{metric}.max"] = max(
                math.fsum(group) / len(group) for group in groups.values()
            )
            points[f"{prefix}._fleet.{metric}.servers"] = len(groups)
    return points
