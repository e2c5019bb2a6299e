"""The read model over a Redis store (:class:`~servertrack.readmodel.model.ReadModel`): every
read any API or aggregator makes of Redis, in the values the in-memory rollups answer with.

A server's view is its three keys read in one round trip (per node), its cells the same bytes
the writer merged, its health every writer's record merged by
:func:`servertrack.readmodel.health.merge_health`. The fleet's table comes from the summary
records (one HGETALL per shard), built here as the in-memory store builds its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from redis.exceptions import ResponseError

from servertrack.common.buckets import (
    HOUR,
    HOUR_WINDOW,
    MINUTE,
    MINUTE_WINDOW,
    oldest_accepted_ts,
)
from servertrack.common.fleet_query import SPARKLINE_MINUTES
from servertrack.readmodel.cells import CELL_SIZE, shown, unpack_cells
from servertrack.readmodel.errors import CorruptKey
from servertrack.readmodel.fleet import SPARKLINE_DECIMALS, FleetTable, MinuteMean, lazy_lower
from servertrack.readmodel.health import merge_health
from servertrack.readmodel.values import ServersPage, ServerView
from servertrack.store.anomaly_records import LATEST, align, ring_key, ring_scores
from servertrack.store.health import records
from servertrack.store.keys import SHARDS, on_shard, server_keys, slot_of
from servertrack.store.redis_store import META, RedisStore
from servertrack.store.summary import FleetRows, decode_fleet


class RedisReader:
    """Reads of a :class:`~servertrack.store.redis_store.RedisStore` (opened by its owner)."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store

    def servers_page(self, after: str | None, limit: int, now: float | None = None) -> ServersPage:
        rows, total, following = self.servers(now, limit, after)
        return ServersPage(rows, total, following)

    def fleet_version(self, now: float) -> int:
        """Other hosts write too: the table is read again every second."""
        return int(now)

    def fleet_table(self, now: float) -> FleetTable:
        rows = self.fleet_rows(now)
        (latest,) = self.store.read_keys([(slot_of(LATEST), ("GET", LATEST))])
        return table_from_rows(rows, align(rows.names, latest))

    def view(self, name: str, now: float | None = None) -> ServerView | None:
        """A server's minute and hour cells, last-seen time and health merged over writers;
        ``None`` without data in the window. Raises :class:`CorruptKey` when a key of the
        server cannot be read."""
        answer = self.views([name], now)[0]
        if isinstance(answer, CorruptKey):
            raise answer
        return answer

    def views(
        self, names: Sequence[str], now: float | None = None
    ) -> list[ServerView | CorruptKey | None]:
        """:meth:`view` of each of ``names``, read in one round trip per node; a server whose
        keys cannot be read is answered with its :class:`CorruptKey` in its place."""
        now = self.store.clock() if now is None else float(now)
        commands: list[tuple[int, tuple[Any, ...]]] = []
        for name in names:
            minutes_key, hours_key, health_key = server_keys(name)
            slot = slot_of(hours_key)
            commands += [
                (slot, ("GET", minutes_key)),
                (slot, ("HGETALL", hours_key)),
                (slot, ("HGETALL", health_key)),
                (slot, ("GET", ring_key(name))),
            ]
        replies = self.store.read_keys(commands, in_place=True)
        out: list[ServerView | CorruptKey | None] = []
        for k, name in enumerate(names):
            try:
                ring, hours, health, scores = replies[4 * k : 4 * k + 4]
                out.append(_view(name, ring, hours, health, scores, now))
            except CorruptKey as problem:
                out.append(problem)
        return out

    def _index_names(self) -> list[bytes]:
        replies = self.store.read_keys([on_shard(k, "ZRANGE", 0, 0, -1) for k in range(SHARDS)])
        return sorted(name for names in replies for name in names)

    def _metas(self, names: list[bytes]) -> list[tuple[float, float, float] | None]:
        """(last_seen, seq, seq_ts) of each server, None when it has no data."""
        keys = [server_keys(name.decode())[1] for name in names]
        replies = self.store.read_keys([(slot_of(key), ("HGET", key, "s")) for key in keys], True)
        return [  # a server whose meta cannot be read is left out, as one without data
            META.unpack(raw)[:3] if isinstance(raw, bytes) and len(raw) == META.size else None
            for raw in replies
        ]

    def servers(
        self, now: float | None = None, limit: int = 1000, cursor: str | None = None
    ) -> tuple[list[tuple[str, float]], int, str | None]:
        """One page of servers by name after ``cursor``: ``(rows of (name, last_seen), total,
        next_cursor)``; ``next_cursor`` is None on the last page. Servers silent for the whole
        window are left out of the rows (``total`` counts the index, which is pruned within a
        minute or so)."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        now = self.store.clock() if now is None else float(now)
        page, more = self._page(limit, cursor.encode() if cursor else None)
        oldest = oldest_accepted_ts(now)
        rows = [
            (name.decode(), meta[0])
            for name, meta in zip(page, self._metas(page), strict=True)
            if meta is not None and meta[0] >= oldest
        ]
        next_cursor = page[-1].decode() if more and page else None
        return rows, self.store.server_count(), next_cursor

    def _page(self, limit: int, after: bytes | None) -> tuple[list[bytes], bool]:
        """The first ``limit`` names after ``after`` over all shards, and whether more follow.
        Each shard is read in name order from its last name read; a name is certain once every
        shard not yet exhausted has been read past it."""
        want = max(8, 2 * limit // SHARDS + 4)
        fetched: dict[int, list[bytes]] = {k: [] for k in range(SHARDS)}
        open_shards: set[int] = set(range(SHARDS))
        ask = {k: want for k in range(SHARDS)}
        while True:
            commands = []
            for k, count in ask.items():
                start = fetched[k][-1] if fetched[k] else after
                low = b"(" + start if start is not None else b"-"
                commands.append(on_shard(k, "ZRANGE", 0, low, "+", "BYLEX", "LIMIT", 0, count))
            for (k, count), names in zip(ask.items(), self.store.read_keys(commands), strict=True):
                fetched[k].extend(names)
                if len(names) < count:
                    open_shards.discard(k)
            every = sorted(name for names in fetched.values() for name in names)
            if not open_shards:
                return every[:limit], len(every) > limit
            bound = min(fetched[k][-1] for k in open_shards)
            certain = [name for name in every if name <= bound]
            if len(certain) >= limit:
                return certain[:limit], True
            ask = {k: 2 * want for k in open_shards if fetched[k][-1] == bound}

    def sequences(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Each server's newest agent seq and its ts, for servers that number their samples."""
        oldest = oldest_accepted_ts(self.store.clock())
        names = self._index_names()
        out_names: list[str] = []
        seqs: list[int] = []
        stamps: list[float] = []
        for name, meta in zip(names, self._metas(names), strict=True):
            if meta is None or meta[1] < 0 or meta[0] < oldest:
                continue
            out_names.append(name.decode())
            seqs.append(int(meta[1]))
            stamps.append(meta[2])
        return out_names, np.asarray(seqs, np.int64), np.asarray(stamps, np.float64)

    def fleet_rows(self, now: float | None = None) -> FleetRows:
        """Every server's last-seen time, current cpu/ram and cpu sparkline, from the summary
        records (one HGETALL per shard)."""
        now = self.store.clock() if now is None else float(now)
        replies = self.store.read_keys([on_shard(k, "HGETALL", 1) for k in range(SHARDS)])
        names = [name.decode() for reply in replies for name in reply]
        records = [record for reply in replies for record in reply.values()]
        return decode_fleet(names, records, now)


def _view(
    name: str, ring: Any, hours: Any, health: Any, scores: Any, now: float
) -> ServerView | None:
    """A server's view from its keys' replies (see :meth:`RedisReader.view`); raises
    CorruptKey for a key of the wrong type or a field of the wrong size (a damaged scores key
    only loses its scores)."""
    _check_replies(name, ring, hours, health)
    if not hours or b"s" not in hours:
        return None
    hour_cells = unpack_cells(b"".join(v for f, v in hours.items() if f.isdigit()))
    current_hour = int(now // HOUR)
    hour_cells = shown(hour_cells, current_hour - HOUR_WINDOW + 1, current_hour)
    if not hour_cells.size:
        return None
    current_minute = int(now // MINUTE)
    minutes = shown(unpack_cells(ring or b""), current_minute - MINUTE_WINDOW + 1, current_minute)
    cpu_anomaly, ram_anomaly = ring_scores(scores, minutes["stamp"])
    return ServerView(
        name,
        minutes,
        hour_cells,
        META.unpack(hours[b"s"])[0],
        now,
        merge_health(records(health.values())),
        cpu_anomaly,
        ram_anomaly,
    )


def _check_replies(name: str, ring: Any, hours: Any, health: Any) -> None:
    """Raise CorruptKey unless a server's replies have the shapes the Function writes."""
    minutes_key, hours_key, health_key = (key.decode() for key in server_keys(name))
    for key, reply in ((minutes_key, ring), (hours_key, hours), (health_key, health)):
        if isinstance(reply, ResponseError):
            raise CorruptKey(key, str(reply))
    if ring is not None and len(ring) % CELL_SIZE:
        raise CorruptKey(minutes_key, f"{len(ring)} bytes, not a multiple of {CELL_SIZE}")
    for field, value in hours.items():
        size = META.size if field == b"s" else CELL_SIZE if field.isdigit() else None
        if size is not None and len(value) != size:
            raise CorruptKey(hours_key, f"field {field.decode()} is {len(value)} bytes, not {size}")


def table_from_rows(
    rows: FleetRows, anomaly: tuple[np.ndarray, np.ndarray] | None = None
) -> FleetTable:
    """The table from a store's summary rows (``servertrack.store.summary.FleetRows``): current
    values and sparklines as the summary holds them (0.01 % steps), the fleet's minute mean from
    the exact sums and counts it carries; ``anomaly``, each server's newest cpu and ram
    scores (none: NaN)."""
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
        complete=lambda: rows.complete,
        cpu_anomaly=anomaly[0] if anomaly else np.full(len(names), np.nan),
        ram_anomaly=anomaly[1] if anomaly else np.full(len(names), np.nan),
    )
