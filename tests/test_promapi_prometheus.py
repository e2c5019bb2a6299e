"""The protocol modules of ``promapi/`` against a real Prometheus and ``promtool``, over a
frozen synthetic fleet whose every answer the rollup oracle knows exactly (the real API is
tested the same way in ``tests/test_prometheus_host.py``).

A stand-in app serves the synthetic fleet of ``tests/promapi_support.py`` on a real waitress
server, with a read token. Set-up A is a Prometheus that scrapes every family; set-up B one that
scrapes the readings of the moment and reads cpu and ram remotely (``read_recent: true``). What
they answer is checked against the rollup oracle over the fleet's raw samples.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cramjam
import pytest
import yaml

from servertrack.promapi import prompb
from servertrack.promapi.families import BY_NAME, FAMILIES
from servertrack.promapi.remote_read import Limits
from servertrack.promapi.selectors import parse_selector
from servertrack.testing.hosts import wait_until
from tests.promapi_oracle import FleetOracle, value_at
from tests.promapi_support import (
    DOWN,
    GAP_SERVER,
    LIVE,
    STALE,
    ColumnarFleet,
    Prometheus,
    Served,
    StandIn,
    SyntheticFleet,
    by_server,
    documented_configs,
    http,
    scrape_and_read_config,
    scrape_only_config,
    scraping_prometheus,
    tool,
)

pytestmark = pytest.mark.e2e
TOKEN = "prometheus-read-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMITS = Limits(max_series=20, max_samples=2000)


@pytest.fixture(scope="module")
def fleet() -> SyntheticFleet:
    # The fleet sits at the wall clock's present, read once, as Prometheus queries "now".
    return SyntheticFleet.make(time.time())


@pytest.fixture(scope="module")
def oracle(fleet: SyntheticFleet) -> FleetOracle:
    return FleetOracle(fleet)


@pytest.fixture(scope="module")
def stand_in(fleet: SyntheticFleet) -> Iterator[tuple[StandIn, Served]]:
    app = StandIn(ColumnarFleet(fleet), TOKEN, LIMITS)
    served = Served(app.app)
    try:
        yield app, served
    finally:
        served.close()


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("token") / "read-token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def scrape_only(
    stand_in: tuple[StandIn, Served], token_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    """Set-up A."""
    config = scrape_only_config(f"127.0.0.1:{stand_in[1].port}", token_file)
    yield from scraping_prometheus(tmp_path_factory, config, "scrape-only")


@pytest.fixture(scope="module")
def scrape_and_read(
    stand_in: tuple[StandIn, Served], token_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    """Set-up B."""
    config = scrape_and_read_config(f"127.0.0.1:{stand_in[1].port}", token_file)
    yield from scraping_prometheus(tmp_path_factory, config, "scrape-and-read")


def number(text: str) -> float:
    return float(text)


# -- the scrape ---------------------------------------------------------------------------------
def test_promtool_accepts_the_text_exposition(stand_in: tuple[StandIn, Served]) -> None:
    """``promtool check metrics`` finds nothing to complain about in ``/metrics/servers``."""
    status, headers, body = http("GET", f"{stand_in[1].url}/metrics/servers", headers=AUTH)
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b"servertrack_server_cpu_percent{" in body
    check = subprocess.run(
        [tool("promtool"), "check", "metrics"], input=body, capture_output=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_scraping_prometheus_stores_the_fleets_last_complete_minute(
    scrape_only: Prometheus, stand_in: tuple[StandIn, Served], oracle: FleetOracle
) -> None:
    """Every family, every server: the value Prometheus holds is the oracle's (cpu and ram
    means, extremes and sample counts of the last complete minute, bit for bit; anomaly scores,
    last-seen age, status), a family left out where the server has no value."""
    moment = time.time()
    for family in FAMILIES:
        got = by_server(scrape_only.api("query", query=family.name, time=moment)["result"])
        expected = {}
        for name in oracle.fleet.names:
            value = value_at(oracle.scraped(family.name, name), moment, not family.minute)
            if value is not None:
                expected[name] = value
        assert {n: number(r["value"][1]) for n, r in got.items()} == expected, family.name
        assert {r["metric"]["job"] for r in got.values()} == {"servertrack-servers"}
    assert stand_in[0].formats["application/openmetrics-text; version=1.0.0; charset=utf-8"] > 0


def test_scraped_figures_carry_the_minutes_start(
    scrape_only: Prometheus, fleet: SyntheticFleet
) -> None:
    """A minute's figure is stored at the minute's start, once however often it is scraped."""
    query = f'servertrack_server_cpu_percent{{server="{LIVE[0]}"}}[10m]'
    result = scrape_only.api("query", query=query)["result"]
    assert [point[0] for point in result[0]["values"]] == [fleet.last_complete_minute]


def test_match_and_server_filters_split_the_scrape(stand_in: tuple[StandIn, Served]) -> None:
    """``server=`` and ``match[]`` pick series as /federate does; a bad selector is a counted
    400 with a JSON body."""
    url = f"{stand_in[1].url}/metrics/servers"
    status, _, body = http(
        "GET", f"{url}?match[]=servertrack_server_status&server={DOWN}&server={STALE}", None, AUTH
    )
    lines = [line for line in body.decode().splitlines() if not line.startswith("#")]
    assert status == 200 and sorted(lines) == sorted(
        [
            f'servertrack_server_status{{server="{DOWN}"}} 0',
            f'servertrack_server_status{{server="{STALE}"}} 1',
        ]
    )
    before = stand_in[0].refused["bad_regex"]
    status, headers, body = http("GET", f"{url}?match[]=%7Bserver%3D~%22(%22%7D", None, AUTH)
    assert status == 400 and headers["Content-Type"] == "application/json"
    assert b'"reason": "bad_regex"' in body
    assert stand_in[0].refused["bad_regex"] == before + 1


# -- the remote read ----------------------------------------------------------------------------
def test_query_range_over_the_last_hour_returns_the_minute_means(
    scrape_and_read: Prometheus, oracle: FleetOracle, fleet: SyntheticFleet
) -> None:
    """``query_range`` of one server's cpu over the last hour at a 60 s step: at each minute of
    the window, the oracle's minute mean exactly; before it, the hour mean where the lookback
    reaches it; across a gap, the last minute before it for up to 5 minutes."""
    for name in (LIVE[0], GAP_SERVER):
        end = fleet.current_minute
        start = end - 3600
        result = scrape_and_read.api(
            "query_range",
            query=f'servertrack_server_cpu_percent{{server="{name}"}}',
            start=start,
            end=end,
            step=60,
        )["result"]
        assert [r["metric"] for r in result] == [
            {"__name__": "servertrack_server_cpu_percent", "server": name}
        ]
        got = {int(t): number(v) for t, v in result[0]["values"]}
        points = oracle.remote("servertrack_server_cpu_percent", name)
        expected = {}
        for step in range(start, end + 1, 60):
            value = value_at(points, step)
            if value is not None:
                expected[step] = value
        assert got == expected, name
        window = [float(t) for t in fleet.minute_starts()]
        means = {epoch: value for epoch, value in points if epoch in window}
        assert all(got[int(epoch)] == value for epoch, value in means.items())
        assert len(means) >= 50  # 60 minutes, less the gap and a current minute still empty


def test_query_range_over_the_day_shows_the_hour_means_at_the_hours_starts(
    scrape_and_read: Prometheus, oracle: FleetOracle, fleet: SyntheticFleet
) -> None:
    """Over the last 24 hours, before the minute window, each hour's start holds the oracle's
    hour mean (and the lookback carries it 5 minutes); the down server's day is there too."""
    end = fleet.current_minute
    start = end - 24 * 3600
    first_minute = int(fleet.minute_starts()[0])
    for name in (LIVE[1], DOWN):
        result = scrape_and_read.api(
            "query_range",
            query=f'servertrack_server_ram_max_percent{{server="{name}"}}',
            start=start,
            end=end,
            step=60,
        )["result"]
        got = {int(t): number(v) for t, v in result[0]["values"]}
        points = oracle.remote("servertrack_server_ram_max_percent", name)
        expected = {}
        for step in range(start, end + 1, 60):
            value = value_at(points, step)
            if value is not None:
                expected[step] = value
        assert got == expected, name
        hours = [
            (epoch, value) for epoch, value in points if epoch < first_minute and epoch >= start
        ]
        assert len(hours) >= 20 and all(got[int(epoch)] == value for epoch, value in hours)


def test_avg_over_several_servers_is_their_average(
    scrape_and_read: Prometheus, oracle: FleetOracle, fleet: SyntheticFleet
) -> None:
    """``avg`` of the web servers' ram over the last hour is, at each step, the mean of the
    oracle's values of the servers that have one."""
    end = fleet.current_minute
    result = scrape_and_read.api(
        "query_range",
        query='avg(servertrack_server_ram_percent{server=~"web-.*"})',
        start=end - 3600,
        end=end,
        step=60,
    )["result"]
    got = {int(t): number(v) for t, v in result[0]["values"]}
    webs = [name for name in fleet.names if name.startswith("web-")]
    series = [oracle.remote("servertrack_server_ram_percent", name) for name in webs]
    assert len(webs) == 3
    for step, value in got.items():
        present = [v for v in (value_at(points, step) for points in series) if v is not None]
        assert math.isclose(value, sum(present) / len(present), rel_tol=1e-12), step
    assert len(got) >= 60


def test_a_remote_read_over_a_cap_is_a_warning_beside_the_scraped_data(
    scrape_and_read: Prometheus, stand_in: tuple[StandIn, Served], fleet: SyntheticFleet
) -> None:
    """A query whose remote part passes the series cap still answers with what Prometheus
    scraped, and warns with ServerTrack's reason and cap."""
    before = stand_in[0].refused["too_many_series"]
    url = f"http://127.0.0.1:{scrape_and_read.port}/api/v1/query"
    query = urllib.parse.urlencode({"query": '{__name__=~"servertrack_server_.+"}'})
    status, _, body = http("GET", f"{url}?{query}")
    answer = json.loads(body)
    assert status == 200 and answer["status"] == "success"
    names = {r["metric"]["__name__"] for r in answer["data"]["result"]}
    assert "servertrack_server_status" in names
    assert "servertrack_server_cpu_percent" not in names
    assert any("over the cap of 20 series" in warning for warning in answer["warnings"])
    assert stand_in[0].refused["too_many_series"] > before


def read_request(*queries: list[tuple[int, str, str]], types: tuple[int, ...] = ()) -> bytes:
    request = prompb.ReadRequest(accepted_response_types=list(types))
    for matchers in queries:
        query = request.queries.add(start_timestamp_ms=0, end_timestamp_ms=2**62)
        for type_, name, value in matchers:
            query.matchers.add(type=type_, name=name, value=value)
    return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))


SNAPPY = {**AUTH, "Content-Encoding": "snappy", "Content-Type": "application/x-protobuf"}


@pytest.mark.parametrize(
    ("body", "headers", "reason"),
    [
        (b"\x05not snappy", SNAPPY, "bad_snappy"),
        (bytes(cramjam.snappy.compress_raw(b"\xff\xff\xff")), SNAPPY, "bad_protobuf"),
        (
            read_request([(0, "server", "x")]),
            {**SNAPPY, "Content-Encoding": "gzip"},
            "bad_encoding",
        ),
        (b"\xff\xff\xff\x7f" + b"\x00" * 16, SNAPPY, "too_large"),
        (b"x" * ((1 << 20) + 1), SNAPPY, "too_large"),
        (read_request([(2, "server", "(")]), SNAPPY, "bad_regex"),
        (read_request([(0, "server", "x")], types=(1,)), SNAPPY, "unsupported_response_type"),
        (read_request([(2, "__name__", ".+")]), SNAPPY, "too_many_series"),
    ],
)
def test_bad_remote_reads_are_counted_400s(
    stand_in: tuple[StandIn, Served], body: bytes, headers: dict[str, str], reason: str
) -> None:
    """Each way a remote read can be wrong is a 400 with a JSON body naming it, and counted."""
    app, served = stand_in
    before = app.refused[reason]
    status, answer_headers, answer = http("POST", f"{served.url}/api/v1/read", body, headers)
    assert status == 400, answer
    assert answer_headers["Content-Type"] == "application/json"
    assert f'"reason": "{reason}"'.encode() in answer
    assert app.refused[reason] == before + 1


def test_remote_read_needs_the_read_token(stand_in: tuple[StandIn, Served]) -> None:
    """Without the read token the remote read is a 401, and nothing is read."""
    app, served = stand_in
    calls = app.history_calls
    headers = {k: v for k, v in SNAPPY.items() if k != "Authorization"}
    status, _, _ = http(
        "POST", f"{served.url}/api/v1/read", read_request([(0, "server", LIVE[0])]), headers
    )
    assert status == 401 and app.history_calls == calls


# -- the Grafana dashboard ----------------------------------------------------------------------
DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "servertrack.json"
TOPK = re.compile(r"topk\((\d+), (\w+)\)")
COUNT_STATUS = re.compile(r"count\((\w+) == (\d)\) or vector\(0\)")
SELECTOR = re.compile(r'(\w+)(?:\{server="([^"]+)"\})?')


def panel_targets(panels: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for panel in panels:
        yield from panel_targets(panel.get("panels", []))
        for target in panel.get("targets", []):
            yield panel["title"], target


def expected_vector(
    expr: str, oracle: FleetOracle, remote: bool, moment: float
) -> dict[str, float]:
    """What ``expr`` (one of the dashboard's forms) evaluates to at ``moment``, by server
    (``""`` for an aggregate)."""

    def values(family: str, server: str | None) -> dict[str, float]:
        out = {}
        for name in [server] if server else oracle.fleet.names:
            points = oracle.series(family, name, remote)
            value = value_at(points, moment, moment_reading=not BY_NAME[family].minute)
            if value is not None:
                out[name] = value
        return out

    if found := TOPK.fullmatch(expr):
        ranked = sorted(values(found[2], None).items(), key=lambda item: -item[1])
        return dict(ranked[: int(found[1])])
    if found := COUNT_STATUS.fullmatch(expr):
        return {"": float(sum(v == int(found[2]) for v in values(found[1], None).values()))}
    if found := SELECTOR.fullmatch(expr):
        return values(found[1], found[2])
    raise AssertionError(f"the test has no expectation for the dashboard's query {expr!r}")


def got_vector(result: list[dict[str, Any]]) -> dict[str, float]:
    return {r["metric"].get("server", ""): number(r["value"][1]) for r in result}


def settled_moment(prometheus: Prometheus, servers: int) -> float:
    """A moment, off the minute grid (no sample then sits on a lookback edge), by which
    Prometheus has scraped every server's status."""

    def settled() -> float | None:
        moment = int(time.time()) - 0.5
        query = "count(servertrack_server_status)"
        result = prometheus.api("query", query=query, time=moment)["result"]
        return moment if result and number(result[0]["value"][1]) == servers else None

    return float(wait_until(settled, 10.0, "a scrape of every server's status"))


@pytest.mark.parametrize("setup", ["scrape_only", "scrape_and_read"])
def test_every_dashboard_query_returns_the_fleets_numbers(
    setup: str, request: pytest.FixtureRequest, oracle: FleetOracle
) -> None:
    """Each panel query of ``deploy/grafana/servertrack.json``, with ``$server`` filled in, run
    as the panel runs it (instant, or over the last hour at a 60 s step) in both set-ups,
    returns data, and the data are the oracle's numbers; the ``server`` variable lists the
    fleet."""
    prometheus: Prometheus = request.getfixturevalue(setup)
    remote = setup == "scrape_and_read"
    dashboard = json.loads(DASHBOARD.read_text())
    (variable,) = dashboard["templating"]["list"]
    assert variable["query"]["query"] == "label_values(servertrack_server_status, server)"
    # Prometheus 2 has no label lookup over remote read: it says so, and lists what it holds.
    listed = prometheus.api(
        "label/server/values",
        warnings=("not implemented",),
        **{"match[]": "servertrack_server_status"},
    )
    assert listed == sorted(oracle.fleet.names)
    server = LIVE[0]
    targets = list(panel_targets(dashboard["panels"]))
    assert len(targets) >= 10
    moment = settled_moment(prometheus, len(oracle.fleet.names))
    for title, target in targets:
        assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
        expr = target["expr"].replace("$server", server)
        if target.get("instant"):
            got = got_vector(prometheus.api("query", query=expr, time=moment)["result"])
            assert got, (title, expr)
            assert got == expected_vector(expr, oracle, remote, moment), (title, expr)
            continue
        result = prometheus.api(
            "query_range", query=expr, start=moment - 3600, end=moment, step=60
        )["result"]
        assert result, (title, expr)
        got_steps: dict[str, dict[float, float]] = {}
        for item in result:
            got_steps[item["metric"].get("server", "")] = {
                float(t): number(v) for t, v in item["values"]
            }
        want_steps: dict[str, dict[float, float]] = {}
        for step in range(60 + 1):
            at = moment - 3600 + 60 * step
            for name, value in expected_vector(expr, oracle, remote, at).items():
                want_steps.setdefault(name, {})[at] = value
        assert got_steps == want_steps, (title, expr)


def test_the_documented_configs_pass_promtool(tmp_path: Path, token_file: Path) -> None:
    """Both prometheus.yml of the README's "Grafana and Prometheus" (which the tests above
    run) are valid for ``promtool check config``; set-up B scrapes exactly the families without
    history."""
    configs = documented_configs()
    assert len(configs) == 2
    for index, config in enumerate(configs):
        for job in config["scrape_configs"]:
            job["authorization"]["credentials_file"] = str(token_file)
        for remote in config.get("remote_read", []):
            remote["authorization"]["credentials_file"] = str(token_file)
        path = tmp_path / f"prometheus-{index}.yml"
        path.write_text(yaml.safe_dump(config))
        check = subprocess.run(
            [tool("promtool"), "check", "config", str(path)], capture_output=True, timeout=30
        )
        assert check.returncode == 0, check.stdout + check.stderr
    (selector,) = configs[1]["scrape_configs"][0]["params"]["match[]"]
    picked = {f.name for f in FAMILIES if parse_selector(selector)[0].matches(f.name)}
    assert picked == {f.name for f in FAMILIES if not f.history}
