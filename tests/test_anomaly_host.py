"""Anomaly scores on a real host: ``GET /servers/{name}/loads``, ``/fleet`` and
``servertrack forward --anomaly`` against a real Graphite-protocol listener.

The host starts from a warmed-up snapshot (:mod:`tests.anomaly_support`): its scores must equal
an independent detector's over the brute-force minute means of the samples that made it.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator

import pytest

from servertrack.anomaly import STANDARD_THRESHOLD
from servertrack.forward.daemon import ForwardConfig, Forwarder
from servertrack.forward.source import ApiSource
from servertrack.testing.hosts import FakeClock, HostUnderTest, launch_host
from tests.anomaly_support import SERVERS, Scores, oracle_scores, write_warm_snapshot
from tests.conftest import stop_all
from tests.support import wait_for
from tests.test_forward_sink import flush_until, listening, make_sink

pytestmark = pytest.mark.e2e
LINE = re.compile(rb"^(\S+) (\S+) (\d+)$")


def same(got: float | None, want: float | None) -> bool:
    if want is None or math.isnan(want):
        return got is None
    return got == want


@pytest.fixture(scope="module")
def warm_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HostUnderTest, Scores]]:
    """A host restored from a warmed-up snapshot, and the oracle's scores."""
    workdir = tmp_path_factory.mktemp("anomaly-host")
    samples = write_warm_snapshot(workdir / "warm-data" / "aggregator.npz", time.time())
    host = launch_host(workdir, "--no-agent", name="warm")
    yield host, oracle_scores(samples)
    stop_all([host])


def minute_of(start: str) -> int:
    return int(time.mktime(time.strptime(start, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone) // 60


def test_minute_buckets_carry_the_scores_of_the_oracle(
    warm_host: tuple[HostUnderTest, Scores],
) -> None:
    """Every minute bucket of every server carries the oracle's cpu and ram scores (null where
    it has none), some of them anomalies; hour buckets carry none."""
    host, oracle = warm_host
    anomalies = 0
    for name in SERVERS:
        status, body = host.get(f"/servers/{name}/loads")
        assert status == 200, body
        assert len(body["minutes"]) >= 59
        for bucket in body["minutes"]:
            minute = minute_of(bucket["start"])
            for metric in ("cpu", "ram"):
                want = oracle[(name, metric)].get(minute)
                assert same(bucket[f"{metric}_anomaly"], want), (name, bucket["start"], metric)
                anomalies += (bucket[f"{metric}_anomaly"] or 0.0) >= STANDARD_THRESHOLD
        assert all("cpu_anomaly" not in bucket for bucket in body["hours"])
    assert anomalies >= 3


def newest(oracle: Scores, name: str, metric: str) -> float | None:
    scores = oracle[(name, metric)]
    return scores[max(scores)] if scores else None


def test_fleet_rows_carry_the_newest_scores_and_sort_by_them(
    warm_host: tuple[HostUnderTest, Scores],
) -> None:
    """/fleet rows carry each server's newest scores; ``sort=cpu_anomaly`` lists the highest
    first, and ``sort=ram_anomaly`` puts the server without ram scores last in either order."""
    host, oracle = warm_host
    status, page = host.get("/fleet?sort=cpu_anomaly")
    assert status == 200, page
    rows = page["rows"]
    assert rows[0]["server"] == SERVERS[0]  # the one that just jumped
    for row in rows:
        for metric in ("cpu", "ram"):
            assert same(row[f"{metric}_anomaly"], newest(oracle, row["server"], metric)), row
    scores = [row["cpu_anomaly"] for row in rows]
    assert scores == sorted(scores, reverse=True)
    for order in ("asc", "desc"):
        status, page = host.get(f"/fleet?sort=ram_anomaly&order={order}")
        assert status == 200 and page["rows"][-1]["server"] == SERVERS[3], page


def points(received: list[bytes]) -> tuple[set[int], dict[tuple[str, str], dict[int, float]]]:
    """The minutes whose means were sent, and the anomaly points by (series, metric)."""
    windows: set[int] = set()
    scores: dict[tuple[str, str], dict[int, float]] = {}
    for line in b"".join(received).splitlines():
        match = LINE.match(line)
        assert match, line
        name, value, ts = (part.decode() for part in match.groups())
        if name.endswith("_anomaly"):
            series, metric = name.removeprefix("fa.").rsplit(".", 1)
            scores.setdefault((series, metric.removesuffix("_anomaly")), {})[int(ts) // 60] = float(
                value
            )
        else:
            windows.add(int(ts) // 60)
    return windows, scores


def test_forward_anomaly_sends_every_scored_minute(
    warm_host: tuple[HostUnderTest, Scores],
) -> None:
    """``forward --anomaly`` sends PREFIX.<server>.cpu_anomaly and ram_anomaly for every scored
    minute of the windows it reads, stamped with the minute, equal to the oracle's scores, and
    nothing for minutes without a score."""
    host, oracle = warm_host
    now = time.time()
    wall = FakeClock(now)
    config = ForwardConfig(interval=60, grace=5, backfill=1800, prefix="fa", anomaly=True)
    with listening() as listener:
        sink = make_sink(listener.port)
        forwarder = Forwarder(config, ApiSource(host.api), sink, clock=wall)
        try:
            forwarder.step()
            flush_until(sink, lambda: not sink.queue.size, "every point written")
        finally:
            forwarder.shutdown()
        sent = forwarder.snapshot()["points_sent"]
        wait_for(
            lambda: b"".join(listener.received).count(b"\n") >= sent, 10, "every point received"
        )
        windows, got = points(listener.received)
    assert len(windows) >= 25  # the last half hour's windows, read at once
    for name in SERVERS:
        series = name.replace(".", "_")
        for metric in ("cpu", "ram"):
            want = {
                minute: score
                for minute, score in oracle[(name, metric)].items()
                if minute in windows and not math.isnan(score)
            }
            assert got.get((series, metric), {}) == want, (name, metric)
    assert sum(len(scores) for scores in got.values()) >= 25 * 5
