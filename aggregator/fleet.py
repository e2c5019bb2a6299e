"""The fleet overview over the rollups: one row per tracked server, computed with numpy.

:func:`fleet_table` is the one place that reads the rollup rings: for every tracked server at
once it takes the 60 shown minute buckets, divides sums by counts (never a mean of means) and
picks each server's newest bucket holding cpu (and ram). Another store provides the same
:class:`FleetTable` through a ``fleet_table(now)`` method of its own.

The table only changes when a batch is applied, rows are released or the minute moves, so
:class:`FleetAnswers` keeps it until then; a request then costs a status pass, a filter, one
sort and the page's rows. Ages and statuses are taken at each request, so they never lag.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from servertrack.aggregator.rollups import Rollups
from servertrack.common.buckets import MINUTE, iso_utc, oldest_accepted_ts
from servertrack.common.fleet import (
    DOWN_AFTER,
    HOTTEST,
    SPARKLINE_MINUTES,
    STALE_AFTER,
    STATUSES,
    BadFleetQuery,
    FleetQuery,
    encode_cursor,
    query_from_request,
)

SPARKLINE_DECIMALS = 1
"""Sparkline points are rounded to 0.1 %: a 60-point line of 100 rows stays a few KB of JSON."""
GRID_DECIMALS = 1
STATUS_LETTERS = np.frombuffer(b"dsl", np.uint8)
"""One letter per status rank (down, stale, live) for the compact grid answer."""


@dataclass(slots=True)
class MinuteMean:
    """The fleet's exact mean over the raw samples of one minute bucket."""

    minute: int
    current: bool
    samples: int
    cpu_samples: int
    ram_samples: int
    cpu: float | None
    ram: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "start": iso_utc(self.minute * MINUTE),
            "current": self.current,
            "samples": self.samples,
            "cpu_samples": self.cpu_samples,
            "ram_samples": self.ram_samples,
            "cpu": self.cpu,
            "ram": self.ram,
        }


@dataclass(slots=True)
class FleetTable:
    """Every tracked server, in name order. NaN = no sample of that metric in the window."""

    names: list[str]
    lower: list[str]
    cpu: np.ndarray
    ram: np.ndarray
    last_seen: np.ndarray
    sparkline: np.ndarray
    """``(servers, 60)`` cpu means of the 60 shown minutes, oldest first, rounded."""
    first_minute: int
    """Minute bucket number of the sparkline's first column."""
    mean: MinuteMean

    def __len__(self) -> int:
        return len(self.names)


def _means(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts  # 0 / 0 = NaN: no sample


def _newest(means: np.ndarray) -> np.ndarray:
    """Each row's last non-NaN value (NaN when the row has none)."""
    held = ~np.isnan(means)
    if means.shape[1] == 0:
        return np.full(means.shape[0], np.nan)
    from_end = held[:, ::-1].argmax(axis=1)
    columns = means.shape[1] - 1 - from_end
    newest = means[np.arange(means.shape[0]), columns]
    return np.where(held.any(axis=1), newest, np.nan)


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


def fleet_table(rollups: Rollups, now: float) -> FleetTable:
    """The overview of every server ``rollups`` tracks at ``now`` (moves its windows to now)."""
    rollups.advance(now)
    ring = rollups.minutes
    used = len(rollups.name_of)
    rows = np.flatnonzero(rollups.last_seen[:used] >= oldest_accepted_ts(now))
    names_of = rollups.name_of
    names = [names_of[row] or "" for row in rows.tolist()]
    by_name = np.argsort(np.array(names, dtype=object), kind="stable")
    rows = rows[by_name]
    names = [names[i] for i in by_name.tolist()]
    first = ring.current - SPARKLINE_MINUTES + 1
    buckets = np.arange(first, ring.current + 1, dtype=np.int64)
    slots = buckets % ring.slots
    shown = ring.bucket_of_slot[slots] == buckets
    cells = np.ix_(rows, slots)
    f = ring.fields
    cpu_means = _means(f["cpu_sum"][cells], f["cpu_count"][cells])
    ram_means = _means(f["ram_sum"][cells], f["ram_count"][cells])
    cpu_means[:, ~shown] = np.nan
    ram_means[:, ~shown] = np.nan
    return FleetTable(
        names=names,
        lower=[name.lower() for name in names],
        cpu=_newest(cpu_means),
        ram=_newest(ram_means),
        last_seen=rollups.last_seen[rows].copy(),
        sparkline=np.round(cpu_means, SPARKLINE_DECIMALS),
        first_minute=int(first),
        mean=_minute_mean(rollups, used),
    )


def table_from_rows(rows: Any) -> FleetTable:
    """The table from a store's summary rows (``servertrack.store.summary.FleetRows``): current
    values and sparklines as the summary holds them (0.01 % steps), the fleet's minute mean from
    the exact sums and counts it carries."""
    mean = MinuteMean(rows.minute, True, 0, 0, 0, None, None)
    for minute, current in ((rows.minute, True), (rows.minute - 1, False)):
        totals = rows.totals.get(minute)
        if not totals or (not totals["samples"] and current):
            continue
        cpu_n, ram_n = int(totals["cpu_count"]), int(totals["ram_count"])
        mean = MinuteMean(
            minute,
            current,
            int(totals["samples"]),
            cpu_n,
            ram_n,
            totals["cpu_sum"] / cpu_n if cpu_n else None,
            totals["ram_sum"] / ram_n if ram_n else None,
        )
        break
    return FleetTable(
        names=list(rows.names),
        lower=[name.lower() for name in rows.names],
        cpu=rows.cpu,
        ram=rows.ram,
        last_seen=rows.last_seen,
        sparkline=np.round(rows.cpu_minutes, SPARKLINE_DECIMALS),
        first_minute=rows.minute - SPARKLINE_MINUTES + 1,
        mean=mean,
    )


def table_of(store: Any, now: float) -> FleetTable:
    """The fleet table of any store (each store knows how to build it from its own data)."""
    table: FleetTable = store.fleet_table(now)
    return table


def _number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def status_ranks(table: FleetTable, now: float) -> tuple[np.ndarray, np.ndarray]:
    """Each server's age in seconds (never negative) and status rank (0 down, 1 stale, 2 live)."""
    age = np.maximum(now - table.last_seen, 0.0)
    ranks = np.where(age < STALE_AFTER, 2, np.where(age < DOWN_AFTER, 1, 0)).astype(np.int8)
    return age, ranks


def _ordered(
    table: FleetTable, chosen: np.ndarray, query: FleetQuery, ranks: np.ndarray
) -> np.ndarray:
    """``chosen`` (indices in name order) sorted as the query asks; ties stay in name order,
    servers without a value for the sorted metric come last in either order."""
    if query.sort == "name":
        return chosen if query.order == "asc" else chosen[::-1]
    if query.sort == "status":
        cpu = table.cpu[chosen]
        by_cpu = np.where(np.isnan(cpu), np.inf, -cpu)
        rank = ranks[chosen] if query.order == "asc" else -ranks[chosen]
        return chosen[np.lexsort((by_cpu, rank))]
    values = {"cpu": table.cpu, "ram": table.ram, "last_seen": table.last_seen}[query.sort]
    key = values[chosen]
    if query.order == "desc":
        key = -key  # NaN stays NaN, and argsort puts NaN last
    return chosen[np.argsort(key, kind="stable")]


def fleet_page(table: FleetTable, query: FleetQuery, now: float) -> dict[str, Any]:
    """One page of the overview, with the summary and the paging fields."""
    age, ranks = status_ranks(table, now)
    counts = np.bincount(ranks, minlength=3)
    live = np.flatnonzero((ranks == 2) & ~np.isnan(table.cpu))
    hottest = live[np.lexsort((live, -table.cpu[live]))][:HOTTEST]
    if query.q:
        needle = query.q.lower()
        matches = np.fromiter((needle in name for name in table.lower), bool, len(table))
        chosen = np.flatnonzero(matches)
    else:
        chosen = np.arange(len(table))
    ordered = _ordered(table, chosen, query, ranks)
    end = query.offset + query.limit
    page = ordered[query.offset : end]
    rows = []
    for i in page.tolist():
        spark = table.sparkline[i].tolist()
        rows.append(
            {
                "server": table.names[i],
                "cpu": _number(table.cpu[i]),
                "ram": _number(table.ram[i]),
                "last_seen": iso_utc(float(table.last_seen[i])),
                "age_seconds": round(float(age[i]), 1),
                "status": STATUSES[ranks[i]],
                "sparkline": [None if v != v else v for v in spark],
            }
        )
    return {
        "now": iso_utc(now),
        "summary": {
            "servers": len(table),
            "live": int(counts[2]),
            "stale": int(counts[1]),
            "down": int(counts[0]),
            "minute": table.mean.to_json(),
            "hottest": [
                {"server": table.names[i], "cpu": float(table.cpu[i])} for i in hottest.tolist()
            ],
        },
        "sparkline_start": iso_utc(table.first_minute * MINUTE),
        "sort": query.sort,
        "order": query.order,
        "q": query.q,
        "limit": query.limit,
        "total": int(chosen.size),
        "next_cursor": encode_cursor(end) if end < chosen.size else None,
        "rows": rows,
    }


def fleet_grid(table: FleetTable, now: float) -> dict[str, Any]:
    """Every server's name, current cpu and status letter (d, s, l), in name order."""
    _, ranks = status_ranks(table, now)
    cpu = np.round(table.cpu, GRID_DECIMALS).tolist()
    return {
        "now": iso_utc(now),
        "servers": table.names,
        "cpu": [None if v != v else v for v in cpu],
        "status": STATUS_LETTERS[ranks].tobytes().decode("ascii"),
    }


class FleetAnswers:
    """Answers the aggregator's ``fleet`` and ``grid`` queries over a cached table."""

    def __init__(self) -> None:
        self._store: Any = None
        self._key: tuple[Any, ...] | None = None
        self._table: FleetTable | None = None
        self.rebuilds = 0

    def table(self, store: Any, now: float) -> FleetTable:
        """The cached table, rebuilt when a batch was applied, rows were released, the minute
        moved or the store was replaced (a restored snapshot)."""
        key = store.fleet_version(now)
        if self._table is None or store is not self._store or key != self._key:
            self._table = table_of(store, now)
            self._store, self._key = store, key
            self.rebuilds += 1
        return self._table

    def answer(self, op: str, store: Any, request: dict[str, Any], now: float) -> bytes:
        if op == "grid":
            body = fleet_grid(self.table(store, now), now)
        else:
            try:
                query = query_from_request(request)
            except BadFleetQuery as err:
                return msgpack.packb({"status": 400, "reason": err.reason, "message": err.message})
            body = fleet_page(self.table(store, now), query, now)
        return msgpack.packb({"status": 200, "body": json.dumps(body, allow_nan=False).encode()})
