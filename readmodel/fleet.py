"""The fleet overview: the table both stores build, and its answers (a page of the table, the
heat grid), made here whichever store built the table.

A store builds a :class:`FleetTable` its own way (the in-memory rollups keep each row's current
values as batches are applied, :mod:`servertrack.aggregator.fleet_table`; Redis keeps a summary
record per server, :mod:`servertrack.store.reader`). :class:`FleetAnswers` keeps the table until
the store's ``fleet_version`` changes (a batch applied, rows released, the minute moved); a
request then costs a status pass, a filter, the page's part of the order (a partial selection, not
a sort of the whole fleet) and its rows. Ages and statuses are taken at each request, so they
never lag.

The heat grid's answer is compact: each server's cpu as one little-endian uint16 of tenths of a
percent (base64), its status as one letter, and its name only when the names changed since the
caller's ``names`` version.
"""

from __future__ import annotations

import base64
import json
import math
import secrets
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

from servertrack.common.buckets import MINUTE, iso_utc
from servertrack.common.fleet_query import (
    DOWN_AFTER,
    HOTTEST,
    SPARKLINE_MINUTES,
    STALE_AFTER,
    STATUSES,
    FleetQuery,
    encode_cursor,
)
from servertrack.readmodel.values import LastMinute

T = TypeVar("T")
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


def once(make: Callable[[], T]) -> Callable[[], T]:
    """``make``, called on the first call only; later calls give what it made."""
    made: list[T] = []

    def get() -> T:
        if not made:
            made.append(make())
        return made[0]

    return get


def lazy_lower(names: list[str]) -> Callable[[], list[str]]:
    """``names`` in lower case, made on the first call and kept."""
    return once(lambda: [name.lower() for name in names])


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
    complete: Callable[[], np.ndarray]
    """Each server's cell of the last complete minute (the one before the current minute: its
    means are final), in table order; ``samples`` 0 for a server that sent none then. Made when
    first asked for (alerts and the Prometheus exposition ask; the dashboard does not)."""
    cpu_anomaly: np.ndarray
    """Each server's newest anomaly score of its cpu minute mean (of the newest minute scored:
    the last complete one, once it is scored), in [0, 1); NaN when it has none."""
    ram_anomaly: np.ndarray

    def __len__(self) -> int:
        return len(self.names)


def last_minute(table: FleetTable) -> LastMinute:
    """The last complete minute of every server of ``table``."""
    return LastMinute(
        table.first_minute + SPARKLINE_MINUTES - 2,
        table.names,
        table.last_seen,
        table.complete(),
        table.cpu_anomaly,
        table.ram_anomaly,
    )


class FleetSource(Protocol):
    """What :class:`FleetAnswers` needs of a store (every read model has it)."""

    def fleet_version(self, now: float) -> Hashable: ...

    def fleet_table(self, now: float) -> FleetTable: ...


def _number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def ages_and_ranks(last_seen: np.ndarray, now: float) -> tuple[np.ndarray, np.ndarray]:
    """Each last-seen time's age in seconds at ``now`` (never negative) and status rank (0
    down, 1 stale, 2 live)."""
    age = np.maximum(now - last_seen, 0.0)
    ranks = np.where(age < STALE_AFTER, 2, np.where(age < DOWN_AFTER, 1, 0)).astype(np.int8)
    return age, ranks


def status_ranks(table: FleetTable, now: float) -> tuple[np.ndarray, np.ndarray]:
    """Each server's age in seconds (never negative) and status rank (0 down, 1 stale, 2 live)."""
    return ages_and_ranks(table.last_seen, now)


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
        parts: list[np.ndarray] = []
        for rank in (0, 1, 2) if ascending else (2, 1, 0):
            left = count - sum(part.size for part in parts)
            if left <= 0:
                break
            group = chosen[ranks_chosen == rank]
            parts.append(group[first_in_order(hotter_first[group], left)])
        return np.concatenate(parts) if parts else chosen[:0]
    values = {
        "cpu": table.cpu,
        "ram": table.ram,
        "last_seen": table.last_seen,
        "cpu_anomaly": table.cpu_anomaly,
        "ram_anomaly": table.ram_anomaly,
    }[query.sort]
    key = values[chosen]
    ordered: np.ndarray = chosen[first_in_order(_missing_last(key if ascending else -key), count)]
    return ordered


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
                "cpu_anomaly": _number(table.cpu_anomaly[i]),
                "ram_anomaly": _number(table.ram_anomaly[i]),
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
    """The fleet answers over a table kept until the store's ``fleet_version`` changes."""

    def __init__(self) -> None:
        self._source: FleetSource | None = None
        self._key: Hashable = None
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

    def table(self, source: FleetSource, now: float) -> FleetTable:
        """The cached table, rebuilt when a batch was applied, rows were released, the minute
        moved or the store was replaced (a restored snapshot)."""
        key = source.fleet_version(now)
        if self._table is None or source is not self._source or key != self._key:
            table = source.fleet_table(now)
            if table.names is not self._names and table.names != self._names:
                self._names_changes += 1
            self._names = table.names
            self._table = table
            self._source, self._key = source, key
            self.rebuilds += 1
        return self._table

    def page(self, source: FleetSource, query: FleetQuery, now: float) -> bytes:
        """The JSON of one page of the overview (``GET /fleet``)."""
        return _json(fleet_page(self.table(source, now), query, now))

    def grid(self, source: FleetSource, known: str | None, now: float) -> bytes:
        """The JSON of the heat grid (``GET /fleet/grid``); the names only when ``known`` is not
        the current names version."""
        table = self.table(source, now)
        return _json(fleet_grid(table, now, self.names_version, known))


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body, allow_nan=False, separators=(",", ":")).encode()
