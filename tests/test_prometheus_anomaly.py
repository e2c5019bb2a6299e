"""Anomaly scores through a real Prometheus: a host restored from a warmed-up snapshot
(:mod:`tests.anomaly_support`) serves ``GET /metrics/servers``, Debian's Prometheus scrapes it in
each set-up the README documents, and what it stores and what the Grafana dashboard's anomaly
panel queries answer must be the scores of ``GET /servers/{name}/loads`` (which
``tests/test_anomaly_host.py`` holds to an independent detector), with data, not an empty
answer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from servertrack.testing.hosts import HostUnderTest, launch_host, wait_until
from tests.anomaly_support import SERVERS, now_with_room, oracle_scores, write_warm_snapshot
from tests.conftest import stop_all
from tests.promapi_oracle import epoch, value_at
from tests.promapi_support import (
    Prometheus,
    by_server,
    http,
    scrape_and_read_config,
    scrape_only_config,
    scraped_up,
    start_prometheus,
)
from tests.test_promapi_prometheus import DASHBOARD, SELECTOR, panel_targets

pytestmark = pytest.mark.e2e
TOKEN = "prometheus-anomaly-read-token"
FAMILIES = {
    "cpu": "servertrack_server_cpu_anomaly_score",
    "ram": "servertrack_server_ram_anomaly_score",
}
SETUPS = {"scrape_only": scrape_only_config, "scrape_and_read": scrape_and_read_config}
Scored = dict[str, dict[str, dict[float, float]]]
"""metric → server → minute start → score."""


@pytest.fixture(scope="module")
def warm_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HostUnderTest, Path]]:
    """A host restored from a warmed-up snapshot, with a read token; and the token's file."""
    workdir = tmp_path_factory.mktemp("prometheus-anomaly")
    token = workdir / "read-token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    now = now_with_room(30.0)  # the host shows the warmed minute's scores for 30 s at least
    samples = write_warm_snapshot(workdir / "warm-data" / "aggregator.npz", now)
    assert any(oracle_scores(samples)[(SERVERS[0], "cpu")].values())  # the warm-up scored
    host = launch_host(workdir, "--no-agent", "--read-token-file", str(token), name="warm")
    yield host, token
    stop_all([host])


@pytest.fixture(scope="module")
def prometheuses(
    warm_host: tuple[HostUnderTest, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Prometheus]]:
    """Both documented set-ups scraping the warm host, started at once: the warmed minute is
    the host's last complete one (what it exposes) for a short while only."""
    host, token = warm_host
    started: dict[str, Prometheus] = {}
    try:
        for setup, make in SETUPS.items():
            config = make(f"127.0.0.1:{host.api_port}", token)
            started[setup] = start_prometheus(tmp_path_factory.mktemp(setup), config)
        for prometheus in started.values():
            scraped_up(prometheus)
        yield started
    finally:
        for prometheus in started.values():
            prometheus.stop()


def host_scores(host: HostUnderTest) -> Scored:
    """Every minute score of every server, from ``GET /servers/{name}/loads``."""
    scored: Scored = {metric: {} for metric in FAMILIES}
    for name in SERVERS:
        status, _, body = http(
            "GET", f"{host.api}/servers/{name}/loads", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert status == 200, body
        for bucket in json.loads(body)["minutes"]:
            for metric in FAMILIES:
                if bucket[f"{metric}_anomaly"] is not None:
                    scored[metric].setdefault(name, {})[epoch(bucket["start"])] = bucket[
                        f"{metric}_anomaly"
                    ]
    return scored


def stored(prometheus: Prometheus, family: str) -> dict[str, list[tuple[float, float]]]:
    """Every sample Prometheus stored of ``family`` over the last hour, by server."""
    result = prometheus.api("query", query=f"{family}[1h]")["result"]
    return {
        name: [(float(t), float(v)) for t, v in item["values"]]
        for name, item in by_server(result).items()
    }


@pytest.mark.parametrize("setup", list(SETUPS))
def test_prometheus_stores_the_hosts_scores_and_the_anomaly_panel_shows_them(
    warm_host: tuple[HostUnderTest, Path], prometheuses: dict[str, Prometheus], setup: str
) -> None:
    """Each documented set-up: Prometheus stores, for every server and metric with a score,
    the newest scored minute's score of ``/servers/{name}/loads`` stamped with that minute
    (and nothing for a series without a score: anomaly-d sends no ram); each query of the
    dashboard's anomaly panel, run as the panel runs it over the last hour, has data and
    answers those scores at every step."""
    host, _ = warm_host
    prometheus = prometheuses[setup]
    scores = host_scores(host)
    newest = {
        metric: {name: max(minutes.items()) for name, minutes in by_name.items()}
        for metric, by_name in scores.items()
    }
    assert set(newest["cpu"]) == set(SERVERS)
    assert set(newest["ram"]) == set(SERVERS) - {SERVERS[3]}

    def every_newest_stored() -> dict[str, dict[str, list[tuple[float, float]]]] | None:
        held = {metric: stored(prometheus, family) for metric, family in FAMILIES.items()}
        wanted = all(
            newest[metric][name] in held[metric].get(name, [])
            for metric in FAMILIES
            for name in newest[metric]
        )
        return held if wanted else None

    held = wait_until(every_newest_stored, 15.0, "the newest scores scraped", step=0.2)
    for metric in FAMILIES:
        assert set(held[metric]) == set(newest[metric]), metric
        for name, points in held[metric].items():
            for at, value in points:
                assert scores[metric][name][at] == value, (metric, name, at)

    server = SERVERS[0]
    moment = float(int(time.time()))  # whole seconds: the steps are exact
    targets = [
        target
        for title, target in panel_targets(json.loads(DASHBOARD.read_text())["panels"])
        if "anomaly" in target["expr"]
    ]
    assert {SELECTOR.fullmatch(t["expr"])[1] for t in targets} == set(FAMILIES.values())  # type: ignore[index]
    for target in targets:
        expr = target["expr"].replace("$server", server)
        metric = "cpu" if "cpu" in expr else "ram"
        assert not target.get("instant")
        result = prometheus.api(
            "query_range", query=expr, start=moment - 3600, end=moment, step=60
        )["result"]
        (series,) = result
        assert series["metric"]["server"] == server
        assert series["values"], expr
        points = stored(prometheus, FAMILIES[metric])[server]
        steps = [moment - 3600 + 60 * step for step in range(61)]
        want = {at: value_at(points, at) for at in steps}
        got = {float(at): float(value) for at, value in series["values"]}
        assert got == {at: value for at, value in want.items() if value is not None}, expr
