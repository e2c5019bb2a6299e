"""Alerts in the aggregator's state, with an injected clock: records go through the real receiver
and aggregator states (``tests/support.InProcessBackend``), the rules are evaluated over the read
model's last complete minute, checked against a brute force over the raw samples; the state goes
through a snapshot and back; a server forgotten after 25 hours resolves its alerts; ``/alerts``
and the ``alerts`` stats section come from the same state."""

from __future__ import annotations

import argparse
import json
import math
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from falcon import testing

from servertrack.aggregator.daemon import AggregatorConfig, AggregatorDaemon
from servertrack.aggregator.rollups import Rollups
from servertrack.aggregator.settings import AggregatorSettings
from servertrack.alerts.columns import fleet_columns
from servertrack.alerts.evaluate import AlertEvaluator
from servertrack.alerts.rules import DEFAULT_RULES, Rule, When
from servertrack.anomaly import STANDARD_THRESHOLD
from servertrack.common.batch import Batch
from servertrack.common.buckets import iso_utc
from servertrack.common.counters import ALERT_COUNTERS
from servertrack.common.sample import Sample
from servertrack.readmodel.cells import empty_cells
from servertrack.readmodel.values import LastMinute
from servertrack.receiver.state import ReceiverState
from servertrack.testing.hosts import FakeClock
from tests.support import Clock, InProcessBackend, api_app

T0 = 1_800_000_000.0
"""A minute's start."""
MINUTE = 60.0
STEP = 15.0
CPU_HOT = Rule("CpuHot", When("cpu", ">", 90.0), for_seconds=120.0)
SILENT = Rule("Silent", When("silent"), for_seconds=120.0)
URL = "http://monitor.example.com:8080"


def host(*rules: Rule, now: float = T0) -> InProcessBackend:
    backend = InProcessBackend(Clock(now))
    backend.aggregator.alerts = AlertEvaluator(rules, interval=STEP, external_url=URL)
    return backend


def record(backend: InProcessBackend, rows: list[tuple[str, float, float]]) -> None:
    """Samples (server, ts, cpu), ram 50, through the receiver and applied."""
    reply = backend.record([Sample(name, ts, cpu, 50.0) for name, ts, cpu in rows])
    assert "error" not in reply, reply


def evaluate(backend: InProcessBackend) -> list[dict[str, Any]]:
    return backend.aggregator.evaluate_alerts(backend.clock())


def listed(backend: InProcessBackend) -> dict[tuple[str, str], dict[str, Any]]:
    body = json.loads(backend.alerts())
    assert body["status"] == "success"
    return {(a["labels"]["alertname"], a["labels"]["server"]): a for a in body["data"]["alerts"]}


@pytest.mark.parametrize("seed", range(3))
def test_cpu_alerts_follow_the_minute_means_of_the_raw_samples(seed: int) -> None:
    """Random servers run hot or cool minute by minute; at every evaluation (every 15 s) an alert
    is pending when the last complete minute's mean of the raw samples is above 90 and fewer than
    two such minutes came in a row, and firing from the second one: as a brute force over the
    samples says."""
    rng = random.Random(seed)
    names = [f"web-{k}.example" for k in range(6)]
    backend = host(CPU_HOT)
    means: dict[str, list[float]] = {name: [] for name in names}
    for minute in range(12):
        start = T0 + minute * MINUTE
        backend.clock.now = start + 1
        rows = []
        for name in names:
            hot = rng.random() < 0.6
            values = [rng.uniform(88, 100) if hot else rng.uniform(0, 92) for _ in range(6)]
            rows += [(name, start + 10 * k + rng.uniform(0, 9), v) for k, v in enumerate(values)]
            means[name].append(sum(values) / len(values))
        record(backend, rows)
        for offset in (1, 16, 31, 46):
            backend.clock.now = start + offset
            evaluate(backend)
            expected = {}
            for name in names:
                done = means[name][:minute]  # complete minutes: the current one is not
                run = 0
                for mean in reversed(done):
                    if mean <= 90:
                        break
                    run += 1
                if run:
                    expected[("CpuHot", name)] = "firing" if run >= 2 else "pending"
            got = {key: alert["state"] for key, alert in listed(backend).items()}
            assert got == expected, (minute, offset)
            for (_, name), alert in listed(backend).items():
                assert float(alert["value"]) == pytest.approx(means[name][minute - 1])


def test_a_silent_server_fires_once_and_its_next_sample_resolves_it() -> None:
    backend = host(SILENT)
    record(backend, [("quiet.example", T0 + 1, 10.0), ("busy.example", T0 + 1, 10.0)])
    sent = []
    for step in range(1, 11):
        backend.clock.now = T0 + 1 + step * STEP
        record(backend, [("busy.example", backend.clock.now, 10.0)])
        sent += evaluate(backend)
    assert [(a["labels"]["server"], a["startsAt"]) for a in sent] == [
        ("quiet.example", iso_utc(T0 + 1 + 120))
    ]
    assert sent[0]["generatorURL"] == f"{URL}/ui/servers/quiet.example"
    assert sent[0]["labels"] == {"alertname": "Silent", "server": "quiet.example"}
    back = backend.clock.now + 5
    backend.clock.now = back
    record(backend, [("quiet.example", back, 10.0)])
    backend.clock.now = back + STEP
    (resolved,) = evaluate(backend)
    assert resolved["labels"]["server"] == "quiet.example"
    assert resolved["endsAt"] == iso_utc(back)
    assert listed(backend) == {}


def restarted(backend: InProcessBackend, *rules: Rule) -> InProcessBackend:
    """A new aggregator state restored from a snapshot of ``backend``'s, through its JSON."""
    meta = json.loads(json.dumps(backend.aggregator.snapshot_meta(backend.clock())))
    again = host(*rules, now=backend.clock())
    assert again.aggregator.restore(backend.aggregator.store.snapshot(), meta) is None
    return again


def test_the_alert_state_goes_through_a_snapshot_and_back() -> None:
    """Restored from a snapshot, a pending alert keeps its ``activeAt`` (``for`` is not started
    again: it fires when it would have) and a firing one is not announced again."""
    backend = host(CPU_HOT, SILENT)
    record(backend, [("hot.example", T0 + 5, 99.0), ("gone.example", T0 + 5, 1.0)])
    backend.clock.now = T0 + 61
    record(backend, [("hot.example", T0 + 65, 99.0)])
    assert evaluate(backend) == []
    assert listed(backend)[("CpuHot", "hot.example")]["state"] == "pending"

    first = restarted(backend, CPU_HOT, SILENT)
    assert listed(first) == listed(backend)
    first.clock.now = T0 + 126
    due = evaluate(first)
    assert [(a["labels"]["alertname"], a["startsAt"]) for a in due] == [
        ("CpuHot", iso_utc(T0 + 120)),
        ("Silent", iso_utc(T0 + 125)),
    ]

    second = restarted(first, CPU_HOT, SILENT)
    second.clock.now = T0 + 141
    assert evaluate(second) == []
    assert {key: a["state"] for key, a in listed(second).items()} == {
        ("CpuHot", "hot.example"): "firing",
        ("Silent", "gone.example"): "firing",
    }


def test_unreadable_alert_state_in_a_snapshot_leaves_the_rest_restored() -> None:
    backend = host(SILENT)
    record(backend, [("one.example", T0 + 5, 1.0)])
    meta = {**backend.aggregator.snapshot_meta(T0 + 6), "alerts": "{not json"}
    restarted = host(SILENT, now=T0 + 6)
    why = restarted.aggregator.restore(backend.aggregator.store.snapshot(), meta)
    assert why is not None and "not JSON" in why
    assert restarted.aggregator.store.server_count() == 1


def test_a_server_forgotten_after_25_hours_resolves_its_alerts() -> None:
    backend = host(SILENT)
    record(backend, [("gone.example", T0 + 5, 1.0)])
    backend.clock.now = T0 + 300
    (firing,) = evaluate(backend)
    assert firing["labels"]["server"] == "gone.example"
    backend.clock.now = T0 + 25 * 3600
    backend.aggregator.housekeeping(backend.clock())
    assert backend.aggregator.store.server_count() == 0
    (resolved,) = evaluate(backend)
    assert resolved["labels"]["server"] == "gone.example"
    assert resolved["endsAt"] == iso_utc(backend.clock())
    assert listed(backend) == {}


def test_the_anomaly_rules_read_the_scores_of_the_last_minute_against_the_standard_threshold() -> (
    None
):
    names = ["at.example", "above.example", "below.example", "unscored.example"]
    cells = empty_cells(len(names), stamp=int(T0 // 60))
    cpu = np.array([STANDARD_THRESHOLD, 0.9, STANDARD_THRESHOLD * 0.99, math.nan])
    last = LastMinute(
        int(T0 // 60), names, np.full(4, T0 + 50), cells, cpu, np.array([math.nan, 1, 0, 0.0])
    )
    evaluator = AlertEvaluator(DEFAULT_RULES, anomaly_threshold=STANDARD_THRESHOLD)
    evaluator.evaluate(fleet_columns(last), T0 + 61)
    firing = {
        (a["labels"]["alertname"], a["labels"]["server"])
        for a in evaluator.api_alerts()["data"]["alerts"]
        if a["state"] == "firing"
    }
    assert firing == {
        ("CpuAnomalous", "at.example"),
        ("CpuAnomalous", "above.example"),
        ("RamAnomalous", "above.example"),
    }


def test_minute_means_come_from_the_raw_sums_and_none_is_nan() -> None:
    cells = empty_cells(3, stamp=1)
    cells["cpu_count"] = [2, 0, 1]
    cells["cpu_sum"] = [190.0, 0.0, 7.5]
    cells["ram_count"] = [0, 4, 1]
    cells["ram_sum"] = [0.0, 100.0, 1.0]
    last = LastMinute(1, ["a", "b", "c"], np.zeros(3), cells, np.zeros(3), np.zeros(3))
    columns = fleet_columns(last)
    assert columns.minute == 60.0
    np.testing.assert_array_equal(columns.cpu, [95.0, math.nan, 7.5])
    np.testing.assert_array_equal(columns.ram, [math.nan, 25.0, 1.0])


def test_the_alerts_stats_section_has_the_declared_counters() -> None:
    backend = host(SILENT)
    record(backend, [("gone.example", T0 + 5, 1.0)])
    backend.clock.now = T0 + 300
    evaluate(backend)
    section = backend.stats()["alerts"]
    assert set(section) == {counter.key for counter in ALERT_COUNTERS}
    assert section["alerts_firing"] == 1 and section["alerts_pending"] == 0
    assert section["alertmanager_sent"] == {}


def test_no_rules_evaluates_nothing_and_lists_nothing() -> None:
    backend = host()
    record(backend, [("gone.example", T0 + 5, 1.0)])
    backend.clock.now = T0 + 3600
    assert evaluate(backend) == []
    assert listed(backend) == {}


def test_get_alerts_lists_them_as_prometheus_does_behind_the_read_token() -> None:
    backend = host(SILENT)
    record(backend, [("gone.example", T0 + 5, 1.0)])
    backend.clock.now = T0 + 300
    evaluate(backend)
    client = testing.TestClient(api_app(backend, backend.clock, read_token="r" * 32))
    assert client.simulate_get("/alerts").status_code == 401
    answer = client.simulate_get("/alerts", headers={"Authorization": "Bearer " + "r" * 32})
    assert answer.status_code == 200
    assert answer.json == {
        "status": "success",
        "data": {
            "alerts": [
                {
                    "labels": {"alertname": "Silent", "server": "gone.example"},
                    "annotations": {},
                    "state": "firing",
                    "activeAt": iso_utc(T0 + 5),
                    "value": "2.95e+02",
                }
            ]
        },
    }
    refused = client.simulate_get(
        "/alerts", params={"state": "firing"}, headers={"Authorization": "Bearer " + "r" * 32}
    )
    assert refused.status_code == 400 and refused.json["reason"] == "unknown_parameter"


# -- the daemon: when it evaluates, and the state file of a daemon without a snapshot ------------
@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Callable[..., AggregatorDaemon]]:
    """Aggregator daemons (not run: their methods are called as their loop would) over an
    in-memory store, keeping the alert state in ``tmp_path/alerts.json`` as with Redis."""
    context = zmq.Context()
    made: list[AggregatorDaemon] = []

    def make(clock: FakeClock) -> AggregatorDaemon:
        config = AggregatorConfig(
            rules=(SILENT,), rules_interval=STEP, alerts_state=str(tmp_path / "alerts.json")
        )
        daemon = AggregatorDaemon(config, Rollups(clock), context=context, clock=clock)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.alertmanagers.close()
        daemon.receiver.close()
    context.destroy(linger=0)


def feed(daemon: AggregatorDaemon, receiver: ReceiverState, name: str, ts: float) -> None:
    """A sample of ``name`` through the receiver's state, its batch applied by ``daemon``."""
    assert "error" not in receiver.record([[name, ts, 10.0, 20.0]], ts)
    daemon.state.apply(Batch.decode(receiver.flush(ts).encode()), ts)


def test_a_daemon_without_a_snapshot_keeps_its_alerts_in_their_own_file(
    daemons: Callable[..., AggregatorDaemon], tmp_path: Path
) -> None:
    clock = FakeClock(T0)
    first = daemons(clock)
    receiver = ReceiverState(clock=clock)
    first.restore_alerts()  # no file yet: nothing to restore
    first.state.apply(Batch.decode(receiver.flush(T0).encode()), T0)
    feed(first, receiver, "gone.example", T0 + 1)
    clock.set(T0 + 200)
    first.evaluate_alerts()
    saved = json.loads((tmp_path / "alerts.json").read_bytes())
    assert saved["format"] == "servertrack-alerts/1"
    listing = first.state.alerts.api_alerts()
    assert listing["data"]["alerts"][0]["state"] == "firing"

    second = daemons(clock)
    second.restore_alerts()
    assert second.state.alerts.api_alerts() == listing
    assert second.state.alerts.due(clock()) == []  # sent before the restart: not again yet


def test_a_daemon_evaluates_only_once_a_batch_was_applied_since_it_started(
    daemons: Callable[..., AggregatorDaemon],
) -> None:
    """Restored from a snapshot, its data is as old as the snapshot until the receiver's next
    batch: every server would look silent."""
    clock = FakeClock(T0)
    before = daemons(clock)
    feed(before, ReceiverState(clock=clock), "old.example", T0 + 1)
    clock.set(T0 + 600)
    restored = daemons(clock)
    meta = json.loads(json.dumps(before.state.snapshot_meta(clock())))
    assert restored.state.restore(before.state.store.snapshot(), meta) is None
    restored.evaluate_alerts()
    assert restored.state.alerts.stats()["alerts_firing"] == 0
    receiver = ReceiverState(clock=clock)  # the host's new receiver run
    restored.state.apply(Batch.decode(receiver.flush(clock()).encode()), clock())
    restored.evaluate_alerts()
    assert restored.state.alerts.stats()["alerts_firing"] == 1


def test_an_unreadable_alerts_file_starts_the_alerts_afresh(
    daemons: Callable[..., AggregatorDaemon], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "alerts.json").write_bytes(b'{"format": "something else"}')
    daemon = daemons(FakeClock(T0))
    daemon.restore_alerts()
    assert "unreadable" in caplog.text
    assert daemon.state.alerts.api_alerts()["data"]["alerts"] == []


def test_the_default_rules_run_without_a_file_and_none_with_no_rules(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text("rules:\n  - alert: Hot\n    when: cpu > 95\n    for: 1m\n")
    parser = argparse.ArgumentParser()
    AggregatorSettings.add_options(parser)

    def config(*argv: str) -> AggregatorConfig:
        return AggregatorSettings.from_args(parser.parse_args(argv)).daemon_config()

    assert config().rules == DEFAULT_RULES
    assert [rule.describe() for rule in config("--rules", str(rules)).rules] == [
        "Hot: cpu > 95 for 1m"
    ]
    assert config("--no-rules").rules == ()
    assert config("--no-rules", "--rules", str(rules)).rules == ()
