"""The fleet overview over the rollups: one row per tracked server, computed with numpy.

:func:`fleet_table` reads what the rollups keep for it: each row's current cpu and ram (kept up
to date as batches are applied, :mod:`servertrack.aggregator.current`) and the rows in name order
(kept until a name comes or goes), so a table for 250,000 servers is a few gathers, not a scan of
every server's 60 minutes. Sparklines are read from the rings for a page's rows only. Another
store provides the same :class:`FleetTable` through a ``fleet_table(now)`` method of its own.

The table only changes when a batch is applied, rows are released or the minute moves, so
:class:`FleetAnswers` keeps it until then; a request then costs a status pass, a filter, the
page's part of the order (a partial selection, not a sort of the whole fleet) and its rows. Ages
and statuses are taken at each request, so they never lag.

The heat grid's answer is compact: each server's cpu as one little-endian uint16 of tenths of a
percent (base64), its status as one letter, and its name only when the names changed since the
caller's ``names`` version.
"""

from __future__ import annotations

import base64
import json
import math
import secrets
from collections.abc import Callable
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
GRID_NO_CPU = 0xFFFF
"""The grid's cpu code of a server without a current cpu (others are tenths, 0 to 1000)."""
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


def lazy_lower(names: list[str]) -> Callable[[], list[str]]:
    """``names`` in lower case, made on the first call and kept."""
    made: list[list[str]] = []

    def lower() -> list[str]:
        if not made:
            made.append([name.lower() for name in names])
        return made[0]

    return lower


@dataclass(slots=True)
class FleetTable:
    """Every tracked server, in name order. NaN = no sample of that metric in the window."""

    names: list[str]
    cpu: np.ndarray
    ram: np.ndarray
    last_seen: np.ndarray
    first_minute: int
    """Minute bucket number of the sparklines' first column."""
    mean: MinuteMean
    sparklines: Callable[[np.ndarray], np.ndarray]
    """The ``(len(indices), 60)`` cpu means of the 60 shown minutes of the servers at these
    table indices, oldest first, rounded (NaN = no cpu sample): only a page's are ever made."""
    lower: Callable[[], list[str]]
    """The names in lower case, for the filter (made when a filter first asks)."""

    def __len__(self) -> int:
        return len(self.names)


def _means(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts  # 0 / 0 = NaN: no sample


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


def _ring_sparklines(rollups: Rollups, rows: np.ndarray, first: int) -> Callable:
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
    return FleetTable(
        names=names,
        cpu=current["cpu"][rows],
        ram=current["ram"][rows],
        last_seen=seen,
        first_minute=int(first),
        mean=_minute_mean(rollups, len(rollups.name_of)),
        sparklines=_ring_sparklines(rollups, rows, first),
        lower=lower,
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
    names = list(rows.names)
    minutes = rows.cpu_minutes
    return FleetTable(
        names=names,
        cpu=rows.cpu,
        ram=rows.ram,
        last_seen=rows.last_seen,
        first_minute=rows.minute - SPARKLINE_MINUTES + 1,
        mean=mean,
        sparklines=lambda indices: np.round(minutes[indices], SPARKLINE_DECIMALS),
        lower=lazy_lower(names),
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


def first_in_order(key: np.ndarray, count: int) -> np.ndarray:
    """Positions of the ``count`` smallest of ``key`` (no NaN) by key, ties by position: the
    first ``count`` of a stable sort.

    PERF: a page near the top of 250,000 servers needs 100 of them: a partial selection finds
    them in ~2 ms where sorting the whole fleet takes ~15-20 ms."""
    size = key.size
    count = min(count, size)
    if count <= 0:
        return np.empty(0, np.intp)
    if count * 4 >= size:
        return np.argsort(key, kind="stable")[:count]
    kth = np.partition(key, count - 1)[count - 1]
    candidates = np.flatnonzero(key <= kth)  # ties with the last one included, by position
    return candidates[np.argsort(key[candidates], kind="stable")][:count]


def _missing_last(key: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(key), np.inf, key)


def _ordered(
    table: FleetTable, chosen: np.ndarray, query: FleetQuery, ranks: np.ndarray, count: int
) -> np.ndarray:
    """The first ``count`` of ``chosen`` (indices in name order) in the order the query asks;
    ties stay in name order, servers without a value for the sorted metric come last in either
    order."""
    ascending = query.order == "asc"
    if query.sort == "name":
        return chosen[:count] if ascending else chosen[::-1][:count]
    if query.sort == "status":
        hotter_first = _missing_last(-table.cpu)
        ranks_chosen = ranks[chosen]
        parts = []
        for rank in (0, 1, 2) if ascending else (2, 1, 0):
            left = count - sum(part.size for part in parts)
            if left <= 0:
                break
            group = chosen[ranks_chosen == rank]
            parts.append(group[first_in_order(hotter_first[group], left)])
        return np.concatenate(parts) if parts else chosen[:0]
    values = {"cpu": table.cpu, "ram": table.ram, "last_seen": table.last_seen}[query.sort]
    key = values[chosen]
    return chosen[first_in_order(_missing_last(key if ascending else -key), count)]


def fleet_page(table: FleetTable, query: FleetQuery, now: float) -> dict[str, Any]:
    """One page of the overview, with the summary and the paging fields."""
    age, ranks = status_ranks(table, now)
    counts = np.bincount(ranks, minlength=3)
    live = np.flatnonzero((ranks == 2) & ~np.isnan(table.cpu))
    hottest = live[first_in_order(-table.cpu[live], HOTTEST)]
    if query.q:
        needle = query.q.lower()
        matches = np.fromiter((needle in name for name in table.lower()), bool, len(table))
        chosen = np.flatnonzero(matches)
    else:
        chosen = np.arange(len(table))
    end = query.offset + query.limit
    page = _ordered(table, chosen, query, ranks, end)[query.offset : end]
    sparklines = table.sparklines(page).tolist() if page.size else []
    rows = []
    for i, spark in zip(page.tolist(), sparklines, strict=True):
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


def grid_cpu(cpu: np.ndarray) -> bytes:
    """Each current cpu as a little-endian uint16 of tenths of a percent (``GRID_NO_CPU`` for
    none): the value rounded to 0.1 that the table shows, in two bytes."""
    codes = np.full(cpu.size, GRID_NO_CPU, "<u2")
    held = ~np.isnan(cpu)
    codes[held] = np.rint(cpu[held] * 10.0)
    return codes.tobytes()


def fleet_grid(
    table: FleetTable, now: float, names_version: str, known: str | None = None
) -> dict[str, Any]:
    """Every server's current cpu and status letter (d, s, l), in name order, compact; the
    names themselves only when ``known`` (the caller's names version) is not ``names_version``."""
    _, ranks = status_ranks(table, now)
    body: dict[str, Any] = {
        "now": iso_utc(now),
        "count": len(table),
        "names_version": names_version,
        "cpu": base64.b64encode(grid_cpu(table.cpu)).decode("ascii"),
        "status": STATUS_LETTERS[ranks].tobytes().decode("ascii"),
    }
    if known != names_version:
        body["servers"] = table.names
    return body


class FleetAnswers:
    """Answers the aggregator's ``fleet`` and ``grid`` queries over a cached table."""

    def __init__(self) -> None:
        self._store: Any = None
        self._key: tuple[Any, ...] | None = None
        self._table: FleetTable | None = None
        self.rebuilds = 0
        self._names: list[str] | None = None
        self._names_epoch = secrets.token_hex(4)
        """Tells this object's names versions from those of another (a restarted aggregator)."""
        self._names_changes = 0

    @property
    def names_version(self) -> str:
        """Changes whenever the table's list of names does (a server came, left or was hidden)."""
        return f"{self._names_epoch}-{self._names_changes}"

    def table(self, store: Any, now: float) -> FleetTable:
        """The cached table, rebuilt when a batch was applied, rows were released, the minute
        moved or the store was replaced (a restored snapshot)."""
        key = store.fleet_version(now)
        if self._table is None or store is not self._store or key != self._key:
            table = table_of(store, now)
            if table.names is not self._names and table.names != self._names:
                self._names_changes += 1
            self._names = table.names
            self._table = table
            self._store, self._key = store, key
            self.rebuilds += 1
        return self._table

    def answer(self, op: str, store: Any, request: dict[str, Any], now: float) -> bytes:
        if op == "grid":
            known = request.get("names")
            table = self.table(store, now)
            body = fleet_grid(
                table, now, self.names_version, known if isinstance(known, str) else None
            )
        else:
            try:
                query = query_from_request(request)
            except BadFleetQuery as err:
                return msgpack.packb({"status": 400, "reason": err.reason, "message": err.message})
            body = fleet_page(self.table(store, now), query, now)
        text = json.dumps(body, allow_nan=False, separators=(",", ":"))
        return msgpack.packb({"status": 200, "body": text.encode()})
