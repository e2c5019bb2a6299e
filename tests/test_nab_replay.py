"""Replay a real AWS CloudWatch CPU series (NAB) through the HTTP API and check hourly means."""

from __future__ import annotations

import csv
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from servertrack.common.buckets import HOUR, oldest_accepted_ts
from servertrack.testing.hosts import HostUnderTest as Host
from tests.support import wait_for

pytestmark = pytest.mark.e2e

SHARED = Path(
    os.environ.get("SERVERTRACK_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared")
)
SERIES = SHARED / "data" / "nab" / "ec2_cpu_utilization_5f5533.csv"


def load_series(path: Path) -> list[tuple[float, float]]:
    with path.open(newline="") as handle:
        return [
            (
                datetime.strptime(row["timestamp"], "%Y-%m-%d %H:%M:%S")
                .replace(tzinfo=UTC)
                .timestamp(),
                float(row["value"]),
            )
            for row in csv.DictReader(handle)
        ]


def test_replayed_nab_series_has_exact_hourly_means(start_host: Callable[..., Host]) -> None:
    """The last day of a real CPU series, shifted to end now, gives the same hourly means as a
    direct calculation over the CSV rows."""
    host = start_host("--no-agent")
    series = load_series(SERIES)
    now = time.time()
    shift = (now - 30) - series[-1][0]
    oldest = oldest_accepted_ts(now)
    shifted = [(ts + shift, value) for ts, value in series if ts + shift >= oldest]
    assert len(shifted) > 250  # about a day of 5-minute points
    items = [{"server": "nab-5f5533", "ts": ts, "cpu": value} for ts, value in shifted]
    status, body = host.post("/loads", items)
    assert (status, body["accepted"]) == (202, len(items))

    by_hour: dict[float, list[float]] = defaultdict(list)
    for ts, value in shifted:
        by_hour[ts - ts % HOUR].append(value)
    expected = {start: math.fsum(values) / len(values) for start, values in by_hour.items()}

    def hours() -> list[dict] | None:
        status, view = host.get("/servers/nab-5f5533/loads")
        if status != 200 or sum(h["samples"] for h in view["hours"]) < len(items):
            return None
        return view["hours"]

    got = wait_for(hours, 10, "the replayed series")
    assert len(got) == len(expected)
    for bucket in got:
        start = datetime.strptime(bucket["start"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        values = by_hour[start.timestamp()]
        assert bucket["samples"] == len(values)
        assert bucket["cpu"] == pytest.approx(expected[start.timestamp()], rel=1e-12)
        assert (bucket["cpu_min"], bucket["cpu_max"]) == (min(values), max(values))
        assert bucket["ram"] is None
