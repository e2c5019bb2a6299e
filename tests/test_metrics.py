"""``GET /metrics``: the collector over ``/stats``, the endpoint in-process, and a live host whose
output ``promtool check metrics`` accepts and which a real Prometheus scrapes as ``up``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from falcon import testing
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from servertrack.api.metrics import StatsCollector
from servertrack.common.counters import (
    AGGREGATOR_DROP_REASONS,
    GRAPHITE_CLOSE_REASONS,
    REJECT_REASONS,
    STATS_ONLY,
    declared,
)
from servertrack.receiver.graphite import GraphiteIntake
from servertrack.receiver.state import ReceiverState
from servertrack.testing.hosts import ChildProcess, HostUnderTest, free_port, wait_until
from tests.support import Clock, DownBackend, InProcessBackend, api_app

SHARED = Path(
    os.environ.get("SERVERTRACK_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared")
)
PROMETHEUS_TEMPLATE = SHARED / "realclients" / "prometheus.yml"
SCRAPE_DEADLINE = 30.0
STATS: dict[str, Any] = {
    "receiver": {
        "received": {"zmq": 120, "http": 7},
        "accepted": {"zmq": 100},
        "rejected": {"zmq": {"bad_cpu": 3, "too_old": 17}, "http": {"future": 2}},
        "duplicates": 2,
        "lost": 5,
        "seq_resets": 1,
        "name_conflicts": 1,
        "servers_seen": 4,
        "batches": 30,
        "forward_dropped": 1,
    },
    "aggregator": {
        "applied": 99,
        "expired": 1,
        "batches": 29,
        "dropped": {"unknown_server": 6},
        "batches_lost": 2,
        "servers_tracked": 3,
        "flush_lag_seconds": 0.004,
        "flush_lag_p50_seconds": 0.002,
        "flush_lag_p99_seconds": 0.009,
        "flush_lag_max_seconds": 0.011,
        "flush_lag_recent_seconds": [0.002, 0.011],
        "batch_size_last": 12,
        "batch_size_max": 40,
        "last_batch_age_seconds": 0.3,
        "snapshot_errors": 4,
    },
    "api": {
        "rejected": {"future": 3, "bad_json": 1},
        "requests_abandoned": 5,
        "connections_closed": {"slow_request": 7},
        "rss_bytes": 1234,
    },
}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition by (name, sorted labels)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(stats: dict[str, Any]) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(lambda: stats))
    return generate_latest(registry).decode()


def rejected(source: str, reason: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return ("servertrack_samples_rejected_total", (("reason", reason), ("source", source)))


# -- the collector ------------------------------------------------------------------------------
def test_collector_exports_the_stats_counters() -> None:
    """Each /stats counter shows under its Prometheus name, labelled by source or reason; the
    API's own refusals join the receiver's under ``source="http"``, added up."""
    got = samples(scrape(STATS))
    assert got[("servertrack_samples_received_total", (("source", "zmq"),))] == 120
    assert got[("servertrack_samples_received_total", (("source", "http"),))] == 7
    assert got[("servertrack_samples_accepted_total", (("source", "zmq"),))] == 100
    assert got[("servertrack_samples_accepted_total", (("source", "http"),))] == 0
    assert got[rejected("zmq", "bad_cpu")] == 3
    assert got[rejected("zmq", "too_old")] == 17
    assert got[rejected("http", "future")] == 2 + 3
    assert got[rejected("http", "bad_json")] == 1
    assert got[("servertrack_samples_duplicate_total", ())] == 2
    assert got[("servertrack_samples_lost_total", ())] == 5
    assert got[("servertrack_sequence_resets_total", ())] == 1
    assert got[("servertrack_servers_name_conflict", ())] == 1
    assert got[("servertrack_samples_forward_dropped_total", ())] == 1
    assert got[("servertrack_batches_lost_total", ())] == 2
    assert got[("servertrack_samples_applied_total", ())] == 99
    assert got[("servertrack_samples_expired_total", ())] == 1
    assert got[("servertrack_aggregator_dropped_total", (("reason", "unknown_server"),))] == 6
    assert got[("servertrack_aggregator_dropped_total", (("reason", "server_limit"),))] == 0
    assert got[("servertrack_snapshot_errors_total", ())] == 4
    assert got[("servertrack_servers_tracked", ())] == 3
    assert got[("servertrack_batch_flush_lag_p50_seconds", ())] == 0.002
    assert got[("servertrack_batch_flush_lag_p99_seconds", ())] == 0.009
    assert got[("servertrack_batch_flush_lag_max_seconds", ())] == 0.011
    assert got[("servertrack_batch_size_samples", ())] == 12
    assert got[("servertrack_batch_size_max_samples", ())] == 40
    assert got[("servertrack_http_requests_abandoned_total", ())] == 5
    closed = "servertrack_http_connections_closed_total"
    assert got[(closed, (("reason", "slow_request"),))] == 7
    assert got[(closed, (("reason", "idle"),))] == 0
    assert got[("servertrack_process_rss_bytes", (("process", "api"),))] == 1234


def test_counter_names_end_in_total() -> None:
    """Every counter family's samples are named ``*_total`` (the exposition appends it)."""
    for family in text_string_to_metric_families(scrape(STATS)):
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), family.name


def test_daemon_rss_is_exported_when_the_stats_carry_it() -> None:
    """``rss_bytes`` of the receiver and the aggregator, when present, join the API's."""
    got = samples(scrape(STATS))
    assert ("servertrack_process_rss_bytes", (("process", "receiver"),)) not in got
    with_rss = {
        **STATS,
        "receiver": {**STATS["receiver"], "rss_bytes": 10_000},
        "aggregator": {**STATS["aggregator"], "rss_bytes": 20_000},
    }
    got = samples(scrape(with_rss))
    assert got[("servertrack_process_rss_bytes", (("process", "receiver"),))] == 10_000
    assert got[("servertrack_process_rss_bytes", (("process", "aggregator"),))] == 20_000


def test_empty_stats_before_the_first_batch_still_scrape() -> None:
    """Before any batch (empty receiver counters, null lags) the exposition is still valid."""
    text = scrape({"receiver": {}, "aggregator": {"flush_lag_p50_seconds": None}})
    got = samples(text)
    assert got[("servertrack_samples_received_total", (("source", "zmq"),))] == 0
    assert not any(name.startswith("servertrack_batch_flush_lag") for name, _ in got)


def test_the_daemons_stats_are_exactly_the_declared_counters() -> None:
    """What the receiver, the aggregator and the API put in /stats is what
    ``common/counters.py`` declares (the /metrics and OpenAPI derivations rely on it)."""
    clock = Clock(1_800_000_000.0)
    client = testing.TestClient(api_app(InProcessBackend(clock), clock))  # as servertrack api
    client.simulate_post("/servers/web-1/loads", json={"cpu": 5})
    client.simulate_post("/servers/web-1/loads", json={"cpu": 500})
    stats = client.simulate_get("/stats").json
    for section in ("receiver", "aggregator", "api"):
        keys = set(stats[section]) - {key for sec, key in STATS_ONLY if sec == section}
        missing = set(declared(section)) - keys
        assert keys <= set(declared(section)) and missing <= {"rss_bytes"}, (section, keys)
    assert set(stats["aggregator"]["dropped"]) == set(AGGREGATOR_DROP_REASONS)
    reasons = {reason for counts in stats["receiver"]["rejected"].values() for reason in counts}
    assert reasons | set(stats["api"]["rejected"]) <= set(REJECT_REASONS)


def test_the_receivers_graphite_counters_are_exported() -> None:
    """Graphite lines show under ``source="graphite"``, refused ones by reason, and every
    connection close reason has a series from the start."""
    state = ReceiverState(Clock(1_800_000_000.0))
    intake = GraphiteIntake(state)
    stream = intake.open(0.0)
    lines = b"servertrack.a.cpu 100.5 -1\nservertrack.a.disk 1 -1\nservertrack.b.ram nan -1\n"
    intake.feed(stream, lines, 1_800_000_000.0, 0.0)
    state.graphite_connections_closed["client"] += 1
    got = samples(scrape({"receiver": state.counters()}))
    assert got[("servertrack_samples_received_total", (("source", "graphite"),))] == 3
    assert got[("servertrack_samples_accepted_total", (("source", "graphite"),))] == 1
    assert got[rejected("graphite", "unmapped")] == 1
    assert got[rejected("graphite", "nan")] == 1
    assert got[("servertrack_graphite_clamped_total", ())] == 1
    closed = "servertrack_graphite_connections_closed_total"
    assert got[(closed, (("reason", "client"),))] == 1
    for reason in GRAPHITE_CLOSE_REASONS:
        assert (closed, (("reason", reason),)) in got


# -- the endpoint -------------------------------------------------------------------------------
def test_metrics_endpoint_serves_the_prometheus_text_format() -> None:
    """/metrics answers in Prometheus' content type, with the API process's own metrics."""
    clock = Clock(1_800_000_000.0)
    client = testing.TestClient(api_app(InProcessBackend(clock), clock))
    client.simulate_post("/servers/web-1/loads", json={"cpu": 5})
    result = client.simulate_get("/metrics")
    assert result.status_code == 200
    assert result.headers["content-type"] == CONTENT_TYPE_LATEST
    names = {family.name for family in text_string_to_metric_families(result.text)}
    assert {"process_resident_memory_bytes", "servertrack_samples_received"} <= names


def test_each_app_has_its_own_registry() -> None:
    """Two apps in one process both serve /metrics: nothing is registered globally."""
    clock = Clock(1_800_000_000.0)
    clients = [testing.TestClient(api_app(InProcessBackend(clock), clock)) for _ in range(2)]
    for client in clients:
        assert client.simulate_get("/metrics").status_code == 200


def test_metrics_is_503_json_when_the_aggregator_does_not_answer() -> None:
    """Without stats there is nothing to scrape: a 503 JSON error, like the other reads."""
    client = testing.TestClient(api_app(DownBackend(), Clock(1_800_000_000.0)))
    result = client.simulate_get("/metrics")
    assert result.status_code == 503
    assert result.json["reason"] == "backend_unavailable"


# -- a live host, promtool and Prometheus -------------------------------------------------------
def tool(name: str) -> str:
    """The path of ``name``; the test fails when it is missing (``make test`` installs it)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found (make test installs Debian's prometheus package)")
    return path


def get_metrics(host: HostUnderTest, token: str | None = None) -> tuple[str, str]:
    request = urllib.request.Request(f"{host.api}/metrics")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.headers["Content-Type"], response.read().decode()


def fed_host(start_host: Callable[..., HostUnderTest], *extra: str) -> HostUnderTest:
    """A host that has recorded a few loads over HTTP and passed them through one batch."""
    host = start_host("--no-agent", *extra)
    status, _ = host.post("/loads", [{"server": f"m-{i}", "cpu": i} for i in range(5)])
    assert status == 202
    return host


@pytest.mark.e2e
def test_promtool_accepts_the_live_metrics(start_host: Callable[..., HostUnderTest]) -> None:
    """``promtool check metrics`` finds nothing to complain about in a live host's /metrics."""
    promtool = tool("promtool")
    host = fed_host(start_host)

    def counted() -> str:
        text = get_metrics(host)[1]
        received = samples(text).get(("servertrack_samples_received_total", (("source", "http"),)))
        return text if received == 5 else ""

    text = wait_until(counted, 10.0, "the posted loads to show in /metrics")
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr


def prometheus_config(target: str, token_file: Path) -> dict[str, Any]:
    """The shared scrape config (when there is one) pointed at ``target``, every second, with
    the read token; else the same thing written out here."""
    if PROMETHEUS_TEMPLATE.is_file():
        config = yaml.safe_load(PROMETHEUS_TEMPLATE.read_text())
    else:
        config = {"scrape_configs": [{"job_name": "servertrack", "metrics_path": "/metrics"}]}
    config["global"] = {**config.get("global", {}), "scrape_interval": "1s", "scrape_timeout": "1s"}
    job = config["scrape_configs"][0]
    job["static_configs"] = [{"targets": [target]}]
    job["authorization"] = {"type": "Bearer", "credentials_file": str(token_file)}
    return config


def prometheus_api(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
        return json.load(response)["data"]


@pytest.mark.e2e
def test_prometheus_scrapes_the_live_api_with_the_read_token(
    start_host: Callable[..., HostUnderTest], tmp_path: Path
) -> None:
    """A real Prometheus, given the read token, scrapes /metrics as ``up`` and stores its
    samples; it runs on its own free loopback port and storage, and is stopped afterwards."""
    binary = tool("prometheus")
    token = tmp_path / "read-token"
    token.write_text("prometheus-scrape-token\n")
    token.chmod(0o600)
    host = fed_host(start_host, "--read-token-file", str(token))
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(f"127.0.0.1:{host.api_port}", token)))
    port = free_port()
    prometheus = ChildProcess(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
            "--storage.tsdb.retention.time=1h",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        tmp_path / "prometheus.log",
    ).start()
    try:

        def target_up() -> dict[str, Any] | None:
            targets = prometheus_api(port, "/api/v1/targets")["activeTargets"]
            up = [t for t in targets if t["health"] == "up"]
            return up[0] if up else None

        try:
            target = wait_until(target_up, SCRAPE_DEADLINE, "Prometheus to scrape the API as up")
        except TimeoutError:
            targets = prometheus_api(port, "/api/v1/targets")
            pytest.fail(f"target never up: {targets}\n{prometheus.log()[-3000:]}")
        assert target["scrapeUrl"] == f"http://127.0.0.1:{host.api_port}/metrics"
        query = "/api/v1/query?query=servertrack_samples_received_total"
        stored = wait_until(lambda: prometheus_api(port, query)["result"], 10.0, "a stored sample")
        assert {r["metric"]["source"] for r in stored} >= {"zmq", "http"}
    finally:
        prometheus.stop()
