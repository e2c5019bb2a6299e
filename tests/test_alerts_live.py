"""Alerts end to end: real hosts (``servertrack run``) evaluate their rules every second and send
to Debian's real ``prometheus-alertmanager``, whose webhook notifications (what a person would
receive) are recorded by the test. Rules use short ``for`` values and Alertmanager short waits
(group_wait 0s, group_interval 1s), so each test waits seconds; those that wait for a minute to
turn, restart hosts, hold an outage for 30 s, wait out a POST timeout or run two hosts are
marked ``faults``.

The cpu rules look at the last *complete* minute's mean, so the tests record samples with past
timestamps (a minute ago) through ``POST /loads``, as any late client may."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from servertrack.alerts.evaluate import go_float
from servertrack.anomaly import STANDARD_THRESHOLD
from servertrack.common.buckets import iso_utc
from servertrack.testing.hosts import (
    ChildProcess,
    HostUnderTest,
    launch_host,
    servertrack_argv,
    wait_until,
)
from servertrack.testing.redis import RedisServer
from tests.alertmanager_support import Alertmanager, Recorder, notified
from tests.anomaly_support import SERVERS, oracle_scores, write_warm_snapshot

pytestmark = pytest.mark.e2e
MINUTE = 60
DEADLINE = 30.0
SILENCE = 5
"""Seconds without a sample before ``AgentSilent`` fires: well above the one-second batches."""
RULES = f"""\
rules:
  - alert: AgentSilent
    when: silent
    for: {SILENCE}s
    servers: "^agent-"
    labels: {{severity: critical}}
    annotations: {{summary: "{{{{ server }}}} silent for {{{{ value }}}} s"}}
  - alert: CpuHot
    when: cpu > 90
    for: 1m
    servers: "^now-"
  - alert: CpuHotTwoMinutes
    when: cpu > 90
    for: 2m
    servers: "^turn-"
"""


@pytest.fixture
def rules_file(tmp_path: Path) -> str:
    path = tmp_path / "rules.yml"
    path.write_text(RULES)
    return str(path)


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Callable[..., HostUnderTest]]:
    """Start ``servertrack run`` (``name`` again: the same data directory, as a restart);
    every host is stopped afterwards."""
    started: list[HostUnderTest] = []

    def start(*extra: str, name: str = "host") -> HostUnderTest:
        host = launch_host(tmp_path, "--no-agent", "--rules-interval", "1", *extra, name=name)
        started.append(host)
        return host

    yield start
    for host in started:
        host.process.stop()


def alerting_host(
    hosts: Callable[..., HostUnderTest],
    rules_file: str,
    alertmanager: Alertmanager,
    *extra: str,
    name: str = "host",
) -> HostUnderTest:
    return hosts("--rules", rules_file, "--alertmanager", alertmanager.url, *extra, name=name)


def post(host: HostUnderTest, loads: list[dict[str, Any]]) -> None:
    status, body = host.post("/loads", loads)
    assert status == 202, body


def listed(host: HostUnderTest) -> dict[tuple[str, str], dict[str, Any]]:
    status, body = host.get("/alerts")
    assert status == 200, body
    return {(a["labels"]["alertname"], a["labels"]["server"]): a for a in body["data"]["alerts"]}


def until(predicate: Callable[[], Any], what: str, deadline: float = DEADLINE) -> Any:
    try:
        return wait_until(predicate, deadline, what, step=0.1)
    except TimeoutError as err:
        pytest.fail(str(err))


def minute_with_room(room: float = 8.0) -> int:
    """The current minute's number, once at least ``room`` seconds of it are left (so that what
    a test records for "this minute" lands in it)."""
    until(lambda: MINUTE - time.time() % MINUTE > room, "a minute with room left", MINUTE)
    return int(time.time() // MINUTE)


def hot_minute(server: str, minute: int, cpu: float) -> list[dict[str, Any]]:
    """Six loads of ``server`` spread over ``minute`` (up to now when it is the current one)."""
    start, end = minute * MINUTE, min(minute * MINUTE + 59, time.time())
    return [
        {"server": server, "ts": start + (end - start) * k / 5, "cpu": cpu, "ram": 40.0}
        for k in range(6)
    ]


def agent(host: HostUnderTest, name: str, workdir: Path) -> ChildProcess:
    argv = servertrack_argv("agent", "--connect", host.ingest, "--interval", "0.2", "--name", name)
    return ChildProcess(argv, workdir / f"{name}.log").start()


def restart(host: HostUnderTest, hosts: Callable[..., HostUnderTest], *args: str) -> HostUnderTest:
    """Stop ``host`` (its daemons save their state) and start it again on the same data."""
    host.process.stop()
    return hosts(*args)


# -- fast: the default run ------------------------------------------------------------------------
def test_a_stopped_agent_fires_once_and_resolves_once_when_it_is_back(
    hosts: Callable[..., HostUnderTest],
    rules_file: str,
    alertmanager: Alertmanager,
    webhook: Recorder,
    tmp_path: Path,
) -> None:
    host = alerting_host(hosts, rules_file, alertmanager)
    name = "agent-stops.example"
    process = agent(host, name, tmp_path)
    try:
        until(lambda: host.get(f"/servers/{name}/loads")[0] == 200, "the agent's samples")
        process.stop()
        webhook.wait_for(notified, "the firing notification", DEADLINE)
        bodies = webhook.received()
        (alert,) = bodies[0]["alerts"]
        assert alert["status"] == "firing"
        assert alert["labels"] == {
            "alertname": "AgentSilent",
            "server": name,
            "severity": "critical",
        }
        assert alert["annotations"]["summary"].startswith(f"{name} silent for ")
        assert alert["generatorURL"] == f"{host.api}/ui/servers/{name}"
        assert listed(host)[("AgentSilent", name)]["state"] == "firing"
        alertmanager.wait_flushes(3)
        assert notified(webhook.received()) == [("firing", "AgentSilent", name)]
        process = agent(host, name, tmp_path)
        webhook.wait_for(lambda b: len(notified(b)) >= 2, "the resolved notification", DEADLINE)
        until(lambda: not listed(host), "the alert to leave /alerts")
        assert notified(webhook.received()) == [
            ("firing", "AgentSilent", name),
            ("resolved", "AgentSilent", name),
        ]
    finally:
        process.stop()
    alerts = host.get("/stats")[1]["alerts"]
    assert alerts["alertmanager_sent"][alertmanager.url] >= 2
    status, metrics = host.get_bytes("/metrics")
    assert status == 200
    assert f'servertrack_alerts_sent_total{{alertmanager="{alertmanager.url}"}}'.encode() in metrics


def test_a_server_hot_over_the_last_minute_fires_and_a_cool_one_does_not(
    hosts: Callable[..., HostUnderTest],
    rules_file: str,
    alertmanager: Alertmanager,
    webhook: Recorder,
) -> None:
    """``for: 1m`` over the last complete minute: a mean of 97 fires at the next evaluation,
    with ``startsAt`` the end of that minute; a mean of 60 never does."""
    host = alerting_host(hosts, rules_file, alertmanager)
    minute = minute_with_room() - 1
    post(host, hot_minute("now-hot.example", minute, 97.0))
    post(host, hot_minute("now-cool.example", minute, 60.0))
    webhook.wait_for(notified, "the firing notification", DEADLINE)
    bodies = webhook.received()
    (alert,) = bodies[0]["alerts"]
    assert alert["labels"] == {"alertname": "CpuHot", "server": "now-hot.example"}
    assert alert["startsAt"] == iso_utc((minute + 1) * MINUTE)
    alertmanager.wait_flushes(3)
    assert notified(webhook.received()) == [("firing", "CpuHot", "now-hot.example")]
    assert set(listed(host)) == {("CpuHot", "now-hot.example")}


@pytest.mark.faults  # waits out the 10-s POST timeout
def test_an_alertmanager_that_hangs_holds_up_neither_ingest_nor_reads_nor_the_stop(
    hosts: Callable[..., HostUnderTest], rules_file: str
) -> None:
    """Its POSTs wait unanswered (each until its 10-s timeout); meanwhile records are taken and
    read back at once, and the host stops at once even with a POST under way."""
    hanging = Recorder().start()
    hanging.hold.clear()
    try:
        host = hosts("--rules", rules_file, "--alertmanager", hanging.url)
        post(host, [{"server": "agent-hang.example", "cpu": 10.0}])
        until(lambda: hanging.received(), "a POST to the hanging Alertmanager")
        for k in range(5):
            began = time.monotonic()
            post(host, [{"server": f"hang-{k}.example", "cpu": 20.0 + k}])
            until(lambda k=k: host.get(f"/servers/hang-{k}.example/loads")[0] == 200, "the read")
            assert time.monotonic() - began < 3.0
        assert host.get("/alerts")[0] == 200
        tried = len(hanging.received())
        until(lambda: len(hanging.received()) > tried, "a fresh POST (after a timeout)")
        assert host.process.stop() < 6.0  # the POST just sent would hold it 10 s
    finally:
        hanging.close()


def test_a_malformed_rules_file_stops_the_host_naming_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad-rules.yml"
    bad.write_text("rules:\n  - alert: Hot\n    when: cpu >= 90\n    for: 5 minutes\n")
    result = subprocess.run(
        servertrack_argv("run", "--no-agent", "--data-dir", "", "--rules", str(bad)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"{bad}:3: rules[0].when:" in result.stderr
    assert f"{bad}:4: rules[0].for:" in result.stderr
    assert "Traceback" not in result.stderr
    check = subprocess.run(
        servertrack_argv("rules", "check", str(bad)), capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 2 and f"{bad}:3:" in check.stderr


def test_the_default_rules_fire_cpu_anomalous_for_the_servers_whose_last_minute_is_anomalous(
    hosts: Callable[..., HostUnderTest],
    alertmanager: Alertmanager,
    webhook: Recorder,
    tmp_path: Path,
) -> None:
    """A host restored from a warmed-up snapshot (:mod:`tests.anomaly_support`) with the
    default rules: Alertmanager notifies ``CpuAnomalous`` once for each server whose last
    complete minute's cpu score (the oracle's) is at or above the standard threshold, with that
    score as its value, and never for the others."""
    minute_with_room(15.0)  # the warmed minute stays the last complete one for 15 s
    samples = write_warm_snapshot(tmp_path / "host-data" / "aggregator.npz", time.time())
    oracle = oracle_scores(samples)
    newest = {name: oracle[(name, "cpu")][max(oracle[(name, "cpu")])] for name in SERVERS}
    anomalous = {name for name, score in newest.items() if score >= STANDARD_THRESHOLD}
    assert anomalous and anomalous != set(SERVERS), newest  # some fire, some do not
    host = hosts("--alertmanager", alertmanager.url)
    want = sorted(("firing", "CpuAnomalous", name) for name in anomalous)

    def cpu_anomalous(bodies: list[Any]) -> list[tuple[str, str, str]]:
        return sorted(alert for alert in notified(bodies) if alert[1] == "CpuAnomalous")

    webhook.wait_for(lambda b: len(cpu_anomalous(b)) >= len(want), "the notifications", DEADLINE)
    alertmanager.wait_flushes(3)
    assert cpu_anomalous(webhook.received()) == want
    firing = {
        server: alert for (rule, server), alert in listed(host).items() if rule == "CpuAnomalous"
    }
    assert set(firing) == anomalous
    for name in anomalous:
        assert firing[name]["state"] == "firing"
        assert firing[name]["value"] == go_float(newest[name])


# -- slow: make test-faults -----------------------------------------------------------------------
@pytest.mark.faults
def test_cpu_fires_after_for_and_a_spike_shorter_than_for_does_not(
    hosts: Callable[..., HostUnderTest],
    rules_file: str,
    alertmanager: Alertmanager,
    webhook: Recorder,
) -> None:
    """``for: 2m``: a server hot in the last minute and this one fires when this minute
    completes; one hot in the last minute only is pending, then gone, never notified."""
    host = alerting_host(hosts, rules_file, alertmanager)
    now = minute_with_room()
    post(host, hot_minute("turn-steady.example", now - 1, 97.0))
    post(host, hot_minute("turn-spike.example", now - 1, 97.0))
    until(lambda: len(listed(host)) == 2, "both pending")
    assert {a["state"] for a in listed(host).values()} == {"pending"}
    post(host, hot_minute("turn-steady.example", now, 96.0))
    post(host, hot_minute("turn-spike.example", now, 30.0))
    webhook.wait_for(notified, "the firing notification", MINUTE + DEADLINE)
    bodies = webhook.received()
    (alert,) = bodies[0]["alerts"]
    assert alert["labels"]["server"] == "turn-steady.example"
    assert alert["startsAt"] == iso_utc((now - 1) * MINUTE + 120)
    until(lambda: set(listed(host)) == {("CpuHotTwoMinutes", "turn-steady.example")}, "the spike")
    alertmanager.wait_flushes(3)
    assert notified(webhook.received()) == [("firing", "CpuHotTwoMinutes", "turn-steady.example")]


@pytest.mark.faults
def test_a_restart_in_the_middle_of_for_neither_restarts_it_nor_loses_the_alert(
    hosts: Callable[..., HostUnderTest],
    rules_file: str,
    alertmanager: Alertmanager,
    webhook: Recorder,
) -> None:
    args = ("--rules", rules_file, "--alertmanager", alertmanager.url)
    host = hosts(*args)
    now = minute_with_room(20.0)
    post(host, hot_minute("turn-restart.example", now - 1, 97.0))
    post(host, hot_minute("turn-restart.example", now, 97.0))
    key = ("CpuHotTwoMinutes", "turn-restart.example")
    pending = until(lambda: listed(host).get(key), "the pending alert")
    assert pending["activeAt"] == iso_utc((now - 1) * MINUTE)
    host = restart(host, hosts, *args)
    assert listed(host)[key]["activeAt"] == pending["activeAt"]
    webhook.wait_for(notified, "the firing notification", MINUTE + DEADLINE)
    bodies = webhook.received()
    assert bodies[0]["alerts"][0]["startsAt"] == iso_utc((now - 1) * MINUTE + 120)
    alertmanager.wait_flushes(3)
    assert notified(webhook.received()) == [("firing", *key)]


@pytest.mark.faults
def test_a_restart_while_firing_announces_nothing_again_and_the_resolution_arrives(
    hosts: Callable[..., HostUnderTest],
    rules_file: str,
    alertmanager: Alertmanager,
    webhook: Recorder,
) -> None:
    args = ("--rules", rules_file, "--alertmanager", alertmanager.url)
    host = hosts(*args)
    name = "agent-restart.example"
    post(host, [{"server": name, "cpu": 10.0}])
    webhook.wait_for(notified, "the firing notification", DEADLINE)
    host = restart(host, hosts, *args)
    key = ("AgentSilent", name)
    assert listed(host)[key]["state"] == "firing"
    batches = host.get("/stats")[1]["aggregator"]["batches"]
    until(lambda: host.get("/stats")[1]["aggregator"]["batches"] >= batches + 3, "evaluations")
    alertmanager.wait_flushes(3)
    assert notified(webhook.received()) == [("firing", "AgentSilent", name)]
    post(host, [{"server": name, "cpu": 10.0}])
    webhook.wait_for(lambda b: len(notified(b)) >= 2, "the resolved notification", DEADLINE)
    assert notified(webhook.received()) == [
        ("firing", "AgentSilent", name),
        ("resolved", "AgentSilent", name),
    ]


@pytest.mark.faults
def test_an_alert_fired_while_alertmanager_is_down_for_30_s_arrives_after(
    hosts: Callable[..., HostUnderTest],
    rules_file: str,
    alertmanager: Alertmanager,
    webhook: Recorder,
) -> None:
    host = alerting_host(hosts, rules_file, alertmanager)
    name = "agent-outage.example"
    alertmanager.stop()
    stopped = time.monotonic()
    post(host, [{"server": name, "cpu": 10.0}])
    until(lambda: listed(host).get(("AgentSilent", name)), "the alert to fire")

    def failing_for_30_s() -> bool:
        failed = host.get("/stats")[1]["alerts"]["alertmanager_failed"][alertmanager.url]
        return failed >= 3 and time.monotonic() - stopped >= 30.0

    until(failing_for_30_s, "30 s of failed sends", 60.0)
    assert webhook.received() == []
    alertmanager.start()
    webhook.wait_for(notified, "the notification after the outage", 60.0)
    alertmanager.wait_flushes(3)
    assert notified(webhook.received()) == [("firing", "AgentSilent", name)]
    dropped = host.get("/stats")[1]["alerts"]["alertmanager_dropped"][alertmanager.url]
    assert sum(dropped.values()) == 0


@pytest.mark.faults
def test_two_hosts_on_one_redis_make_exactly_one_notification(
    hosts: Callable[..., HostUnderTest],
    rules_file: str,
    alertmanager: Alertmanager,
    webhook: Recorder,
    redis_server: RedisServer,
) -> None:
    """Both hosts evaluate the same data in Redis and send the same alert; Alertmanager
    notifies once, and once again when it resolves."""
    store = ("--store", redis_server.url)
    first = alerting_host(hosts, rules_file, alertmanager, *store, name="first")
    second = alerting_host(hosts, rules_file, alertmanager, *store, name="second")
    name = "agent-shared.example"
    post(first, [{"server": name, "cpu": 10.0}])
    for host in (first, second):
        until(lambda host=host: listed(host).get(("AgentSilent", name)), "both hosts firing")
        until(
            lambda host=host: host.get("/stats")[1]["alerts"]["alertmanager_sent"][
                alertmanager.url
            ],
            "each host to send",
        )
    alertmanager.wait_flushes(3)
    assert notified(webhook.received()) == [("firing", "AgentSilent", name)]
    post(second, [{"server": name, "cpu": 10.0}])
    for host in (first, second):
        until(lambda host=host: not listed(host), "both hosts resolved")
    webhook.wait_for(lambda b: len(notified(b)) >= 2, "the resolved notification", DEADLINE)
    assert notified(webhook.received()) == [
        ("firing", "AgentSilent", name),
        ("resolved", "AgentSilent", name),
    ]
