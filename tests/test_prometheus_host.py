"""A real Prometheus against a real host: ``servertrack run`` serving ``GET /metrics/servers``
and ``POST /api/v1/read`` from its own read model, with a read token.

The host is fed the synthetic fleet of ``tests/promapi_support.py`` through ``POST /loads`` (24
hours of samples, a gap, a cpu-only server, a stale and a down one) and runs without an agent,
so nothing changes while the tests read. What Prometheus answers is compared with ServerTrack's
own answer, ``GET /servers/{name}/loads``, read around each query (within one minute, since the
minute window moves). Set-up A scrapes every family; set-up B scrapes the readings of the
moment and reads cpu and ram remotely (``read_recent: true``), as the README shows them.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import cramjam
import pytest

from servertrack.common.buckets import MINUTE, minute_index
from servertrack.common.fleet_query import DOWN_AFTER, STALE_AFTER
from servertrack.promapi import prompb
from servertrack.promapi.families import BY_NAME, FAMILIES
from servertrack.testing.hosts import HostUnderTest, launch_host, wait_until
from tests.promapi_oracle import STAT_OF, Points, epoch, value_at
from tests.promapi_support import (
    GAP_SERVER,
    LIVE,
    Prometheus,
    SyntheticFleet,
    http,
    scrape_and_read_config,
    scrape_only_config,
    scraping_prometheus,
    tool,
)
from tests.test_promapi_prometheus import (
    COUNT_STATUS,
    DASHBOARD,
    SELECTOR,
    TOPK,
    panel_targets,
)

pytestmark = pytest.mark.e2e
TOKEN = "prometheus-host-read-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SNAPPY = {**AUTH, "Content-Encoding": "snappy", "Content-Type": "application/x-protobuf"}
SCRAPE_SLACK = 2.0
"""Seconds between Prometheus' scrape timestamp and the host's clock when it answered."""
T = TypeVar("T")
FAMILY_IN = re.compile(r"servertrack_server_\w+")


# -- the host, fed the synthetic fleet -----------------------------------------------------------
@pytest.fixture(scope="module")
def fleet() -> SyntheticFleet:
    return SyntheticFleet.make(time.time())


def feed(host: HostUnderTest, fleet: SyntheticFleet) -> None:
    """POST every sample of ``fleet`` and wait until each server shows all of its own."""
    items = []
    for name, ts, cpu, ram in fleet.samples:
        item: dict[str, Any] = {"server": name, "ts": ts, "cpu": cpu}
        if ram is not None:
            item["ram"] = ram
        items.append(item)
    for start in range(0, len(items), 5000):
        status, _, body = http(
            "POST",
            f"{host.api}/loads",
            json.dumps(items[start : start + 5000]).encode(),
            {"Content-Type": "application/json"},
        )
        assert status == 202, body

    def all_shown() -> bool:
        for name in fleet.names:
            status, body = read_loads(host, name)
            if status != 200 or sum(b["samples"] for b in body["hours"]) != len(fleet.of(name)):
                return False
        return True

    wait_until(all_shown, 20.0, "every posted sample to show")


def read_loads(host: HostUnderTest, name: str) -> tuple[int, Any]:
    status, _, body = http("GET", f"{host.api}/servers/{name}/loads", headers=AUTH)
    return status, json.loads(body)


def start_fed_host(workdir: Path, fleet: SyntheticFleet, *flags: str) -> HostUnderTest:
    token = workdir / "read-token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    host = launch_host(workdir, "--no-agent", "--read-token-file", str(token), *flags)
    try:
        feed(host, fleet)
    except BaseException:
        host.process.stop()
        raise
    return host


@pytest.fixture(scope="module")
def host(
    fleet: SyntheticFleet, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HostUnderTest]:
    served = start_fed_host(tmp_path_factory.mktemp("host"), fleet)
    yield served
    served.process.stop()


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prom-token") / "read-token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def scrape_only(
    host: HostUnderTest, token_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    """Set-up A: every family scraped."""
    config = scrape_only_config(f"127.0.0.1:{host.api_port}", token_file)
    yield from scraping_prometheus(tmp_path_factory, config, "host-scrape-only")


@pytest.fixture(scope="module")
def scrape_and_read(
    host: HostUnderTest, token_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    """Set-up B: the readings of the moment scraped, cpu and ram read remotely."""
    config = scrape_and_read_config(f"127.0.0.1:{host.api_port}", token_file)
    yield from scraping_prometheus(tmp_path_factory, config, "host-scrape-and-read")


# -- ServerTrack's own answers -------------------------------------------------------------------
def in_one_minute(read: Callable[[], T]) -> T:
    """``read()``, done again (up to 3 times) when a minute turned while it ran."""
    for _ in range(3):
        before = minute_index(time.time())
        result = read()
        if minute_index(time.time()) == before:
            return result
    raise AssertionError("could not read within one minute")


def remote_points(body: dict[str, Any], stat: str, now: float) -> Points:
    """The samples a remote read answers for one series of a loads answer read at ``now``: the
    hour buckets before the minute window at their starts, then the minute buckets."""
    first_minute = (minute_index(now) - 59) * MINUTE
    points = [
        (epoch(b["start"]), float(b[stat]))
        for b in body["hours"]
        if epoch(b["start"]) < first_minute and b[stat] is not None
    ]
    points += [(epoch(b["start"]), float(b[stat])) for b in body["minutes"] if b[stat] is not None]
    return points


def steps(points: Points, start: float, end: float, step: int = 60) -> dict[int, float]:
    """What a ``query_range`` of a series holding ``points`` answers, by step."""
    out = {}
    for at in range(int(start), int(end) + 1, step):
        value = value_at(points, at)
        if value is not None:
            out[at] = value
    return out


def ranks_about(last_seen: float, at: float) -> set[float]:
    """The status ranks a server seen last at ``last_seen`` has within the scrape slack of
    ``at`` (two near an edge)."""
    ranks = set()
    for moment in (at - SCRAPE_SLACK, at + SCRAPE_SLACK):
        age = moment - last_seen
        ranks.add(2.0 if age < STALE_AFTER else 1.0 if age < DOWN_AFTER else 0.0)
    return ranks


# -- the scrape ----------------------------------------------------------------------------------
def test_promtool_accepts_the_hosts_exposition(host: HostUnderTest) -> None:
    """``promtool check metrics`` passes on the real ``/metrics/servers``, which carries every
    server of the fleet."""
    status, headers, body = http("GET", f"{host.api}/metrics/servers", headers=AUTH)
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    for name in LIVE:
        assert f'servertrack_server_cpu_percent{{server="{name}"}}'.encode() in body
    check = subprocess.run(
        [tool("promtool"), "check", "metrics"], input=body, capture_output=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_exposition_needs_the_read_token_and_counts_bad_selectors(host: HostUnderTest) -> None:
    """Without the token a scrape is a 401; a selector RE2 cannot compile is a 400 with the
    JSON body, counted by reason in ``/stats`` and ``/metrics``."""
    assert http("GET", f"{host.api}/metrics/servers")[0] == 401
    before = json.loads(http("GET", f"{host.api}/stats", headers=AUTH)[2])["api"]
    url = f"{host.api}/metrics/servers?match[]=%7Bserver%3D~%22(%22%7D"
    status, headers, body = http("GET", url, headers=AUTH)
    assert status == 400 and headers["Content-Type"] == "application/json"
    assert json.loads(body)["reason"] == "bad_regex"
    after = json.loads(http("GET", f"{host.api}/stats", headers=AUTH)[2])["api"]
    counted = after["prometheus_rejected"].get("bad_regex", 0)
    assert counted == before["prometheus_rejected"].get("bad_regex", 0) + 1
    metrics = http("GET", f"{host.api}/metrics", headers=AUTH)[2].decode()
    line = f'servertrack_prometheus_requests_rejected_total{{reason="bad_regex"}} {counted:.1f}'
    assert line in metrics


def test_a_scraping_prometheus_holds_the_numbers_of_the_loads_answers(
    scrape_only: Prometheus, host: HostUnderTest, fleet: SyntheticFleet
) -> None:
    """Every sample Prometheus stored of a minute's figure (cpu and ram mean, min, max, the
    sample count) is the value of that minute in ``GET /servers/{name}/loads``, bit for bit, at
    the minute's start; the status and the last-seen age are those of the server's last-seen
    time at the scrape."""
    answers = {name: read_loads(host, name)[1] for name in fleet.names}
    buckets = {
        name: {epoch(b["start"]): b for b in body["minutes"]} for name, body in answers.items()
    }
    stored = 0
    for family, stat in STAT_OF.items():
        result = scrape_only.api("query", query=f"{family}[15m]")["result"]
        if stat == "cpu":
            assert {item["metric"]["server"] for item in result} >= set(LIVE)
        for item in result:
            name = item["metric"]["server"]
            for at, value in item["values"]:
                bucket = buckets[name].get(float(at))
                expected = bucket[stat] if bucket else (0 if stat == "samples" else None)
                assert float(value) == expected, (family, name, at)
                stored += 1
    assert stored >= len(LIVE) * 6 + len(fleet.names)  # the stale and down ones: samples only
    for family in ("servertrack_server_status", "servertrack_server_last_seen_age_seconds"):
        result = scrape_only.api("query", query=f"{family}[15m]")["result"]
        assert {item["metric"]["server"] for item in result} == set(fleet.names)
        for item in result:
            last_seen = epoch(answers[item["metric"]["server"]]["last_seen"])
            for at, value in item["values"]:
                if family.endswith("status"):
                    assert float(value) in ranks_about(last_seen, float(at))
                else:
                    assert abs(float(value) - (float(at) - last_seen)) <= SCRAPE_SLACK


# -- the remote read -----------------------------------------------------------------------------
def test_query_range_over_the_last_hour_returns_the_minute_means(
    scrape_and_read: Prometheus, host: HostUnderTest
) -> None:
    """``query_range`` of one server's cpu over the last hour at a 60 s step gives, at each
    minute's start, the minute mean of ``GET /servers/{name}/loads`` exactly (before the window
    the hour means, across a gap the last minute before it for up to 5 minutes)."""
    for name in (LIVE[0], GAP_SERVER):

        def read(name: str = name) -> tuple[dict[int, float], dict[int, float], Points]:
            now = time.time()
            end = minute_index(now) * MINUTE
            body = read_loads(host, name)[1]
            result = scrape_and_read.api(
                "query_range",
                query=f'servertrack_server_cpu_percent{{server="{name}"}}',
                start=end - 3600,
                end=end,
                step=60,
            )["result"]
            assert [r["metric"] for r in result] == [
                {"__name__": "servertrack_server_cpu_percent", "server": name}
            ]
            points = remote_points(body, "cpu", now)
            got = {int(t): float(v) for t, v in result[0]["values"]}
            return got, steps(points, end - 3600, end), points

        got, expected, points = in_one_minute(read)
        assert got == expected, name
        means = [(at, value) for at, value in points if int(at) in got and at % 3600]
        assert len(means) >= 50 and all(got[int(at)] == value for at, value in means)


def test_avg_over_several_servers_is_their_average(
    scrape_and_read: Prometheus, host: HostUnderTest, fleet: SyntheticFleet
) -> None:
    """``avg`` of the web servers' ram over the last hour is, at each step, the mean of their
    values in ServerTrack's own answers."""
    webs = [name for name in fleet.names if name.startswith("web-")]
    assert len(webs) == 3

    def read() -> tuple[dict[int, float], list[Points], int]:
        now = time.time()
        end = minute_index(now) * MINUTE
        series = [remote_points(read_loads(host, name)[1], "ram", now) for name in webs]
        result = scrape_and_read.api(
            "query_range",
            query='avg(servertrack_server_ram_percent{server=~"web-.*"})',
            start=end - 3600,
            end=end,
            step=60,
        )["result"]
        return {int(t): float(v) for t, v in result[0]["values"]}, series, end

    got, series, end = in_one_minute(read)
    assert len(got) >= 60
    for at in range(end - 3600, end + 1, 60):
        present = [v for v in (value_at(points, at) for points in series) if v is not None]
        if not present:
            assert at not in got
            continue
        assert math.isclose(got[at], sum(present) / len(present), rel_tol=1e-12), at


def test_query_range_over_the_day_shows_the_hour_means(
    scrape_and_read: Prometheus, host: HostUnderTest, fleet: SyntheticFleet
) -> None:
    """Over 24 hours, before the minute window, each hour's start holds the hour's value of
    ``GET /servers/{name}/loads`` (the down server's day included)."""
    for name in (LIVE[1], fleet.names[0]):

        def read(name: str = name) -> tuple[dict[int, float], dict[int, float]]:
            now = time.time()
            end = minute_index(now) * MINUTE
            points = remote_points(read_loads(host, name)[1], "ram_max", now)
            result = scrape_and_read.api(
                "query_range",
                query=f'servertrack_server_ram_max_percent{{server="{name}"}}',
                start=end - 24 * 3600,
                end=end,
                step=60,
            )["result"]
            got = {int(t): float(v) for t, v in result[0]["values"]}
            return got, steps(points, end - 24 * 3600, end)

        got, expected = in_one_minute(read)
        assert got == expected, name
        assert sum(1 for at in got if at % 3600 == 0) >= 20


def read_request(matchers: list[tuple[int, str, str]]) -> bytes:
    request = prompb.ReadRequest()
    query = request.queries.add(start_timestamp_ms=0, end_timestamp_ms=2**62)
    for type_, name, value in matchers:
        query.matchers.add(type=type_, name=name, value=value)
    return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))


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
        (b"x" * ((1 << 20) + 1), SNAPPY, "too_large"),
        (read_request([(2, "server", "(")]), SNAPPY, "bad_regex"),
    ],
)
def test_bad_remote_reads_are_counted_400s(
    host: HostUnderTest, body: bytes, headers: dict[str, str], reason: str
) -> None:
    """Each way a remote read can be wrong is a 400 with a JSON body naming it, counted by
    reason in ``/stats``."""

    def counted() -> int:
        stats = json.loads(http("GET", f"{host.api}/stats", headers=AUTH)[2])
        return int(stats["api"]["prometheus_rejected"].get(reason, 0))

    before = counted()
    status, answer_headers, answer = http("POST", f"{host.api}/api/v1/read", body, headers)
    assert status == 400, answer
    assert answer_headers["Content-Type"] == "application/json"
    assert json.loads(answer)["reason"] == reason
    assert counted() == before + 1


def test_remote_read_needs_the_read_token_not_the_record_token(host: HostUnderTest) -> None:
    """The remote read is a read: without the read token a 401, with it the series."""
    body = read_request([(0, "server", LIVE[0]), (0, "__name__", "servertrack_server_cpu_percent")])
    plain = {k: v for k, v in SNAPPY.items() if k != "Authorization"}
    assert http("POST", f"{host.api}/api/v1/read", body, plain)[0] == 401
    status, headers, answer = http("POST", f"{host.api}/api/v1/read", body, SNAPPY)
    assert status == 200 and headers["Content-Encoding"] == "snappy"
    response = prompb.ReadResponse.FromString(bytes(cramjam.snappy.decompress_raw(answer)))
    (series,) = response.results[0].timeseries
    assert len(series.samples) > 60


# -- the Grafana dashboard -----------------------------------------------------------------------
class HostAnswers:
    """What each series of set-up B holds, from ServerTrack's own answers read at ``now``: cpu
    and ram as the remote read answers them; the scraped families from the timestamps
    Prometheus stored, with ServerTrack's values."""

    def __init__(self, host: HostUnderTest, prometheus: Prometheus, names: list[str]) -> None:
        self.now = time.time()
        self.bodies = {name: read_loads(host, name)[1] for name in names}
        self.prometheus = prometheus
        self.scraped: dict[str, dict[str, list[float]]] = {}

    def stamps(self, family: str, name: str) -> list[float]:
        if family not in self.scraped:
            result = self.prometheus.api("query", query=f"{family}[2h]")["result"]
            self.scraped[family] = {
                item["metric"]["server"]: [float(t) for t, _ in item["values"]] for item in result
            }
        return self.scraped[family].get(name, [])

    def points(self, family: str, name: str) -> Points:
        body = self.bodies[name]
        if BY_NAME[family].history:
            return remote_points(body, STAT_OF[family], self.now)
        if family == "servertrack_server_minute_samples":
            buckets = {epoch(b["start"]): b["samples"] for b in body["minutes"]}
            return [(at, float(buckets.get(at, 0))) for at in self.stamps(family, name)]
        return []  # anomaly scores: none while the detector has no score (NaN, left out)

    def moment_reading(self, family: str, name: str, at: float) -> set[float]:
        last_seen = epoch(self.bodies[name]["last_seen"])
        if family == "servertrack_server_status":
            return ranks_about(last_seen, at)
        return {at - last_seen}


def expected_at(expr: str, answers: HostAnswers, at: float) -> dict[str, set[float]]:
    """The values (a set: two near a status edge) ``expr`` may have at ``at``, by server."""

    def values(family: str, server: str | None) -> dict[str, set[float]]:
        out = {}
        for name in [server] if server else list(answers.bodies):
            if not BY_NAME[family].minute:
                out[name] = answers.moment_reading(family, name, at)
                continue
            value = value_at(answers.points(family, name), at)
            if value is not None:
                out[name] = {value}
        return out

    if found := TOPK.fullmatch(expr):
        ranked = sorted(values(found[2], None).items(), key=lambda item: -max(item[1]))
        return dict(ranked[: int(found[1])])
    if found := COUNT_STATUS.fullmatch(expr):
        held = values(found[1], None).values()
        low = sum(ranks == {float(found[2])} for ranks in held)
        high = sum(float(found[2]) in ranks for ranks in held)
        return {"": {float(count) for count in range(low, high + 1)}}
    if found := SELECTOR.fullmatch(expr):
        return values(found[1], found[2])
    raise AssertionError(f"the test has no expectation for the dashboard's query {expr!r}")


def matches(got: dict[str, float], expected: dict[str, set[float]], family: str) -> bool:
    if set(got) != set(expected):
        return False
    if family == "servertrack_server_last_seen_age_seconds":
        return all(any(abs(got[k] - v) <= SCRAPE_SLACK for v in expected[k]) for k in got)
    return all(got[k] in expected[k] for k in got)


def test_every_dashboard_query_returns_servertracks_numbers(
    scrape_and_read: Prometheus, host: HostUnderTest, fleet: SyntheticFleet
) -> None:
    """Each panel query of ``deploy/grafana/servertrack.json``, ``$server`` filled in from the
    ``server`` variable's query, run as the panel runs it (instant, or the last hour at a 60 s
    step) against set-up B, answers what ServerTrack's own answers say; every panel but the
    anomaly scores (none: this host's detectors have not warmed up) has data. The anomaly panel
    with data, on a warmed-up host: ``tests/test_prometheus_anomaly.py``."""
    listed = scrape_and_read.api(
        "label/server/values",
        warnings=("not implemented",),
        **{"match[]": "servertrack_server_status"},
    )
    assert listed == sorted(fleet.names)
    server = LIVE[0]
    targets = list(panel_targets(json.loads(DASHBOARD.read_text())["panels"]))
    assert len(targets) >= 10

    def settled() -> float | None:
        """A moment off the minute grid (no sample on a lookback edge) by which Prometheus has
        scraped every server's status."""
        moment = int(time.time()) - 0.5
        query = "count(servertrack_server_status)"
        result = scrape_and_read.api("query", query=query, time=moment)["result"]
        return moment if result and float(result[0]["value"][1]) == len(fleet.names) else None

    def check_all() -> None:
        moment = float(wait_until(settled, 10.0, "a scrape of every server's status"))
        answers = HostAnswers(host, scrape_and_read, fleet.names)
        for title, target in targets:
            expr = target["expr"].replace("$server", server)
            family = FAMILY_IN.search(expr)[0]  # type: ignore[index]
            if target.get("instant"):
                result = scrape_and_read.api("query", query=expr, time=moment)["result"]
                got = {r["metric"].get("server", ""): float(r["value"][1]) for r in result}
                want = expected_at(expr, answers, moment)
                assert matches(got, want, family), (title, expr, got, want)
                assert got or "anomaly" in expr, (title, expr)
                continue
            result = scrape_and_read.api(
                "query_range", query=expr, start=moment - 3600, end=moment, step=60
            )["result"]
            assert result or "anomaly" in expr, (title, expr)
            for item in result:
                name = item["metric"].get("server", "")
                for at, value in item["values"]:
                    want = expected_at(expr, answers, float(at)).get(name, set())
                    assert matches({name: float(value)}, {name: want}, family), (title, at)
            wanted = {
                name
                for step in range(61)
                for name in expected_at(expr, answers, moment - 3600 + 60 * step)
            }
            assert {item["metric"].get("server", "") for item in result} == wanted, (title, expr)

    in_one_minute(check_all)


# -- Redis mode ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def redis_host(
    fleet: SyntheticFleet, module_redis: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HostUnderTest]:
    served = start_fed_host(
        tmp_path_factory.mktemp("redis-host"), fleet, "--store", module_redis.url
    )
    yield served
    served.process.stop()


def test_redis_mode_serves_the_same_exposition_and_remote_read(
    redis_host: HostUnderTest, fleet: SyntheticFleet
) -> None:
    """Over Redis, the exposition's minute figures are the loads answer's last complete minute
    and a remote read of a server's cpu is its minute and hour means, as in memory mode."""
    name = LIVE[2]

    def read() -> tuple[dict[str, Any], bytes, bytes, float]:
        now = time.time()
        body = read_loads(redis_host, name)[1]
        scraped = http("GET", f"{redis_host.api}/metrics/servers?server={name}", headers=AUTH)
        request = read_request(
            [(0, "server", name), (0, "__name__", "servertrack_server_cpu_percent")]
        )
        answer = http("POST", f"{redis_host.api}/api/v1/read", request, SNAPPY)
        assert scraped[0] == 200 and answer[0] == 200
        return body, scraped[2], answer[2], now

    body, scraped, answer, now = in_one_minute(read)
    last = (minute_index(now) - 1) * MINUTE
    bucket = next(b for b in body["minutes"] if epoch(b["start"]) == last)
    for family in FAMILIES:
        if family.name in STAT_OF:
            value = bucket[STAT_OF[family.name]]
            line = f'{family.name}{{server="{name}"}} {float(value)!r} {int(last) * 1000}'
            if family.integer:
                line = f'{family.name}{{server="{name}"}} {value} {int(last) * 1000}'
            assert line.encode() in scraped, line
    response = prompb.ReadResponse.FromString(bytes(cramjam.snappy.decompress_raw(answer)))
    (series,) = response.results[0].timeseries
    got = [(s.timestamp / 1000, s.value) for s in series.samples]
    assert got == remote_points(body, "cpu", now)
