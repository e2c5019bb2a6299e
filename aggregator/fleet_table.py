"""The fleet table of the in-memory rollups (:class:`~servertrack.readmodel.fleet.FleetTable`).

It reads what the rollups keep for it: each row's current cpu and ram (kept up to date as batches
are applied, :mod:`servertrack.aggregator.current`) and the rows in name order (kept until a name
comes or goes), so a table for 250,000 servers is a few gathers, not a scan of every server's 60
minutes. Sparklines are read from the minute ring for a page's rows only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from servertrack.common.buckets import oldest_accepted_ts
from servertrack.common.fleet_query import SPARKLINE_MINUTES
from servertrack.readmodel.cells import empty_cells
from servertrack.readmodel.fleet import (
    SPARKLINE_DECIMALS,
    FleetTable,
    MinuteMean,
    lazy_lower,
    once,
)

if TYPE_CHECKING:  # the rollups build their table with this module's function
    from servertrack.aggregator.rollups import Rollups


def _means(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        means: np.ndarray = sums / counts  # 0 / 0 = NaN: no sample
    return means


def _minute_mean(rollups: Rollups, used: int) -> MinuteMean:
    """Sum of sums over sum of counts of the current minute, or the previous one while the
    current minute has no sample yet."""
    ring = rollups.minutes
    f = ring.fields
    for minute, current in ((ring.current, True), (ring.current - 1, False)):
        slot = minute % ring.slots
        if ring.bucket_of_slot[slot] != minute:
            continue
        samples = int(f["samples"][:used, slot].sum())
        if samples == 0 and current:
            continue
        values: dict[str, Any] = {}
        for metric in ("cpu", "ram"):
            count = int(f[f"{metric}_count"][:used, slot].sum())
            total = float(f[f"{metric}_sum"][:used, slot].sum())
            values[f"{metric}_samples"] = count
            values[metric] = total / count if count else None
        return MinuteMean(minute, current, samples, **values)
    return MinuteMean(ring.current, True, 0, 0, 0, None, None)


def _ring_sparklines(
    rollups: Rollups, rows: np.ndarray, first: int
) -> Callable[[np.ndarray], np.ndarray]:
    """The sparklines of table indices, read from the minute ring when asked for."""
    ring = rollups.minutes
    buckets = np.arange(first, first + SPARKLINE_MINUTES, dtype=np.int64)
    slots = buckets % ring.slots

    def sparklines(indices: np.ndarray) -> np.ndarray:
        cells = np.ix_(rows[indices], slots)
        f = ring.fields
        means = _means(f["cpu_sum"][cells], f["cpu_count"][cells])
        means[:, ring.bucket_of_slot[slots] != buckets] = np.nan
        return np.round(means, SPARKLINE_DECIMALS)

    return sparklines


def fleet_table(rollups: Rollups, now: float) -> FleetTable:
    """The overview of every server ``rollups`` tracks at ``now`` (moves its windows to now)."""
    rollups.advance(now)
    index = rollups.name_index()
    rows, names, lower = index.rows, index.names, index.lower
    seen = rollups.last_seen[rows]
    visible = seen >= oldest_accepted_ts(now)
    if not visible.all():  # silent for 24 hours, released at the next sweep
        keep = np.flatnonzero(visible)
        rows, seen = rows[keep], seen[keep]
        names = [names[i] for i in keep.tolist()]
        lower = lazy_lower(names)
    current = rollups.current_values.mean
    first = rollups.minutes.current - SPARKLINE_MINUTES + 1
    ring, minute = rollups.minutes, rollups.minutes.current - 1
    slot = minute % ring.slots

    def complete() -> np.ndarray:
        if ring.bucket_of_slot[slot] != minute:
            return empty_cells(rows.size, max(minute, 0))
        cells: np.ndarray = ring.cells[rows, slot]
        return cells

    cpu_anomaly, ram_anomaly = rollups.anomaly.latest(rows)
    return FleetTable(
        names=names,
        cpu=current["cpu"][rows],
        ram=current["ram"][rows],
        last_seen=seen,
        first_minute=int(first),
        mean=_minute_mean(rollups, len(rollups.name_of)),
        sparklines=_ring_sparklines(rollups, rows, first),
        lower=lower,
        complete=once(complete),
        cpu_anomaly=cpu_anomaly,
        ram_anomaly=ram_anomaly,
    )
