"""What a real Prometheus should answer about the synthetic fleet, from the rollup oracle.

The stored samples of each series are restated from :func:`oracle_buckets` (the bucket rules
over raw samples, nothing from :mod:`servertrack.promapi`), and a query's value at a time is
Prometheus' own rule: the newest sample at or before it, no older than the 5-minute lookback.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from servertrack.common.fleet_query import STATUSES, status_of
from servertrack.common.oracle import oracle_buckets
from tests.promapi_support import SyntheticFleet

LOOKBACK = 300.0
STAT_OF = {
    "servertrack_server_cpu_percent": "cpu",
    "servertrack_server_cpu_min_percent": "cpu_min",
    "servertrack_server_cpu_max_percent": "cpu_max",
    "servertrack_server_ram_percent": "ram",
    "servertrack_server_ram_min_percent": "ram_min",
    "servertrack_server_ram_max_percent": "ram_max",
    "servertrack_server_minute_samples": "samples",
}
Points = list[tuple[float, float]]


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class FleetOracle:
    """The samples each series should have, as Prometheus stores them in each set-up."""

    def __init__(self, fleet: SyntheticFleet) -> None:
        self.fleet = fleet
        self.buckets = {
            name: oracle_buckets(fleet.samples, fleet.now, name) for name in fleet.names
        }

    def minute(self, name: str, start: float) -> dict[str, Any] | None:
        return next((b for b in self.buckets[name]["minutes"] if epoch(b["start"]) == start), None)

    def scraped(self, family: str, name: str) -> Points:
        """The samples a scrape stores: the last complete minute's figure at its start, or a
        reading of the moment (taken as holding from long before the queries)."""
        fleet = self.fleet
        if family in STAT_OF:
            bucket = self.minute(name, fleet.last_complete_minute)
            if family == "servertrack_server_minute_samples":
                value = bucket["samples"] if bucket else 0
            else:
                value = bucket[STAT_OF[family]] if bucket else None
            return [] if value is None else [(fleet.last_complete_minute, float(value))]
        last_seen = max(sample[1] for sample in fleet.of(name))
        values = {
            "servertrack_server_cpu_anomaly_score": fleet.anomaly(name, "cpu"),
            "servertrack_server_ram_anomaly_score": fleet.anomaly(name, "ram"),
            "servertrack_server_last_seen_age_seconds": round(fleet.now - last_seen, 3),
            "servertrack_server_status": float(STATUSES.index(status_of(fleet.now - last_seen))),
        }
        value = values[family]
        if math.isnan(value):
            return []
        at = fleet.last_complete_minute if "anomaly" in family else fleet.now
        return [(at, value)]

    def remote(self, family: str, name: str) -> Points:
        """The samples a remote read answers: hour values before the minute window, then
        minute values."""
        stat = STAT_OF[family]
        first_minute = float(self.fleet.minute_starts()[0])
        buckets = self.buckets[name]
        points = [
            (epoch(b["start"]), float(b[stat]))
            for b in buckets["hours"]
            if epoch(b["start"]) < first_minute and b[stat] is not None
        ]
        points += [
            (epoch(b["start"]), float(b[stat])) for b in buckets["minutes"] if b[stat] is not None
        ]
        return points

    def series(self, family: str, name: str, remote_read: bool) -> Points:
        """The samples of one series in set-up A (``remote_read`` False: everything scraped)
        or B (cpu and ram read remotely, the rest scraped)."""
        if remote_read and family in STAT_OF and family != "servertrack_server_minute_samples":
            return self.remote(family, name)
        return self.scraped(family, name)


def value_at(points: Points, t: float, moment_reading: bool = False) -> float | None:
    """Prometheus' value of a series at ``t``: the newest sample at or before ``t`` within the
    lookback. A reading of the moment is scraped again every second, so it always holds."""
    if moment_reading:
        return points[-1][1] if points else None
    found = [value for ts, value in points if ts <= t and t - ts <= LOOKBACK]
    return found[-1] if found else None
