"""The alert evaluator (``alerts/evaluate.py``) with an injected clock: Prometheus' states
(pending, firing, kept firing, resolved and kept), silence, forgotten servers, restarts through
``to_bytes``/``from_bytes``, two hosts on the same data; and, over random fleets, against a
scalar restatement that replays each rule for each server from raw samples."""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from servertrack.alerts.evaluate import (
    AlertEvaluator,
    FleetColumns,
    StateError,
    go_float,
)
from servertrack.alerts.rules import DEFAULT_RULES, Rule, When
from servertrack.common.buckets import iso_utc
from servertrack.common.counters import ALERT_COUNTERS

T0 = 1_800_000_000.0
"""A minute's start: minute k of a scenario starts at ``T0 + 60 k``."""
MINUTE = 60.0
NAN = math.nan
CPU_HIGH = Rule("CpuHigh", When("cpu", ">", 90.0), for_seconds=300.0)
SILENT = Rule("ServerSilent", When("silent"), for_seconds=120.0)

Row = dict[str, float]


def last_complete_minute(now: float) -> float:
    return now - now % MINUTE - MINUTE


def columns(now: float, rows: dict[str, Row], minute: float | None = None) -> FleetColumns:
    """A snapshot at ``now``: one row per server, NaN for what a row leaves out."""
    names = list(rows)

    def column(key: str) -> np.ndarray:
        return np.array([rows[name].get(key, NAN) for name in names], dtype=float)

    return FleetColumns(
        names=names,
        last_seen=column("last_seen"),
        cpu=column("cpu"),
        ram=column("ram"),
        cpu_anomaly=column("cpu_anomaly"),
        ram_anomaly=column("ram_anomaly"),
        minute=last_complete_minute(now) if minute is None else minute,
    )


def listed(evaluator: AlertEvaluator) -> list[dict[str, Any]]:
    return evaluator.api_alerts()["data"]["alerts"]


def states(evaluator: AlertEvaluator) -> dict[tuple[str, str], str]:
    return {
        (a["labels"]["alertname"], a["labels"]["server"]): a["state"] for a in listed(evaluator)
    }


@dataclass
class Scenario:
    """Evaluates ``rows(now)`` every ``step`` seconds, then asks what is due, as the daemon will."""

    evaluator: AlertEvaluator
    rows: Callable[[float], dict[str, Row]]
    sent: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    def at(self, now: float) -> list[dict[str, Any]]:
        self.evaluator.evaluate(columns(now, self.rows(now)), now)
        due = self.evaluator.due(now)
        self.sent += [(now, alert) for alert in due]
        return due

    def run(self, start: float, stop: float, step: float = 15.0) -> None:
        now = start
        while now < stop:
            self.at(now)
            now += step


def cpu_by_minute(levels: dict[int, float], default: float = 20.0) -> Callable[[float], dict]:
    """One live server ``web-1`` whose minute ``k`` has mean ``levels.get(k, default)``."""

    def rows(now: float) -> dict[str, Row]:
        minute = int((last_complete_minute(now) - T0) // MINUTE)
        return {"web-1": {"last_seen": now - 1, "cpu": levels.get(minute, default)}}

    return rows


# -- the states, one rule at a time ---------------------------------------------------------------
def test_pending_for_five_high_minutes_then_firing_then_resolved() -> None:
    """cpu > 90 for 5m: pending from the start of the first high minute; firing once five
    minutes in a row were high (startsAt = activeAt + 5m); resolved by the first low minute,
    which is its endsAt, and no longer listed."""
    run = Scenario(AlertEvaluator([CPU_HIGH]), cpu_by_minute(dict.fromkeys(range(7), 95.0)))
    for now in np.arange(T0 + 60 + 5, T0 + 60 * 12, 15.0):
        due = run.at(float(now))
        seen = int((last_complete_minute(now) - T0) // MINUTE)
        expected = "pending" if seen < 4 else "firing" if seen < 7 else None
        assert states(run.evaluator).get(("CpuHigh", "web-1")) == expected, now
        if expected:
            assert listed(run.evaluator)[0]["activeAt"] == iso_utc(T0)
    firing = [alert for _, alert in run.sent if alert["endsAt"] > alert["startsAt"]]
    assert {a["startsAt"] for a in firing} == {iso_utc(T0 + 300)}
    assert run.sent[0][0] == T0 + 300 + 5  # the first evaluation that saw minute 4
    resolved = [(now, a) for now, a in run.sent if a["endsAt"] == iso_utc(T0 + 420)]
    assert resolved[0][0] == T0 + 480 + 5  # sent as soon as minute 7 (low) was seen
    assert due == [] or all(a["endsAt"] == iso_utc(T0 + 420) for a in due)


def test_for_zero_fires_at_once() -> None:
    rule = Rule("CpuHigh", When("cpu", ">", 90.0))
    run = Scenario(AlertEvaluator([rule]), cpu_by_minute({0: 95.0}))
    due = run.at(T0 + 60 + 1)
    assert states(run.evaluator) == {("CpuHigh", "web-1"): "firing"}
    assert [(a["startsAt"], a["labels"]["server"]) for a in due] == [(iso_utc(T0), "web-1")]


@pytest.mark.parametrize("minutes", [1, 2, 3, 4])
def test_a_spike_shorter_than_for_never_fires(minutes: int) -> None:
    """Four high minutes (or fewer) against for 5m: pending, then gone; nothing is ever sent."""
    run = Scenario(AlertEvaluator([CPU_HIGH]), cpu_by_minute(dict.fromkeys(range(minutes), 99.0)))
    pending_seen = False
    for now in np.arange(T0 + 61, T0 + 60 * 10, 15.0):
        run.at(float(now))
        assert "firing" not in states(run.evaluator).values()
        pending_seen |= bool(states(run.evaluator))
    assert pending_seen and run.sent == [] and states(run.evaluator) == {}


def test_keep_firing_for_holds_a_firing_alert_through_short_gaps() -> None:
    """for 0s, keep_firing_for 2m: one low minute keeps it firing (keepFiringSince shown); the
    condition coming back keeps the same alert; two low minutes in a row resolve it, with
    endsAt = the first low minute's start + 2m."""
    rule = Rule("CpuHigh", When("cpu", ">", 90.0), keep_firing_for_seconds=120.0)
    levels = {0: 95.0, 1: 95.0, 2: 95.0, 3: 50.0, 4: 95.0}
    run = Scenario(AlertEvaluator([rule]), cpu_by_minute(levels, default=50.0))
    run.at(T0 + 60 * 4 + 1)  # minute 3 seen only now: no alert yet
    assert states(run.evaluator) == {}
    run = Scenario(AlertEvaluator([rule]), cpu_by_minute(levels, default=50.0))
    timeline = {}
    for now in np.arange(T0 + 61, T0 + 60 * 10, 15.0):
        run.at(float(now))
        alerts = listed(run.evaluator)
        timeline[float(now)] = alerts[0] if alerts else None
    during_gap = timeline[T0 + 60 * 4 + 1]  # minute 3 (low) seen
    assert during_gap is not None and during_gap["state"] == "firing"
    assert during_gap["keepFiringSince"] == iso_utc(T0 + 180)
    back = timeline[T0 + 60 * 5 + 1]  # minute 4 (high) seen
    assert back is not None and back["activeAt"] == iso_utc(T0) and "keepFiringSince" not in back
    assert timeline[T0 + 60 * 6 + 1] is not None  # minute 5 low: kept
    assert timeline[T0 + 60 * 7 + 1] is None  # minute 6 low too: resolved
    starts = {a["startsAt"] for _, a in run.sent}
    assert starts == {iso_utc(T0)}, "one alert all along"
    ends = [a["endsAt"] for now, a in run.sent if now == T0 + 60 * 7 + 1]
    assert ends == [iso_utc(T0 + 300 + 120)]


def test_a_silent_server_fires_after_for_without_pending_and_its_next_sample_resolves_it() -> None:
    """silent for 2m: nothing while the silence is shorter; then firing at once with activeAt =
    the last sample, startsAt = last sample + 2m and the silence as value; the next sample
    resolves it, its time being endsAt."""
    last, back = T0 + 100.0, T0 + 400.0

    def rows(now: float) -> dict[str, Row]:
        # silent from ``last``; from ``back`` on, a sample every 30 s
        seen = min(now, last) if now < back else back + 30 * ((now - back) // 30)
        return {"db-1": {"last_seen": seen}, "db-2": {"last_seen": now}}

    run = Scenario(AlertEvaluator([SILENT]), rows)
    for now in np.arange(T0 + 5, T0 + 600, 15.0):
        run.at(float(now))
        alerts = listed(run.evaluator)
        if last + 120 <= now < back:
            assert [(a["labels"]["server"], a["state"]) for a in alerts] == [("db-1", "firing")]
            assert alerts[0]["activeAt"] == iso_utc(last)
            assert alerts[0]["value"] == go_float(now - last)
            assert alerts[0]["annotations"] == {}
        else:
            assert alerts == [], now
    assert {a["startsAt"] for _, a in run.sent} == {iso_utc(last + 120)}
    assert next(a["endsAt"] for now, a in run.sent if now >= back) == iso_utc(back)


def test_a_forgotten_server_resolves_its_alerts_at_once() -> None:
    """A server missing from the snapshot (forgotten after 25 h) resolves even an alert that
    keep_firing_for would have kept, with endsAt = now."""
    rule = Rule("ServerSilent", When("silent"), for_seconds=60.0, keep_firing_for_seconds=600.0)
    evaluator = AlertEvaluator([rule])
    evaluator.evaluate(columns(T0, {"gone": {"last_seen": T0 - 3600}, "here": {}}), T0)
    evaluator.due(T0)
    assert states(evaluator) == {("ServerSilent", "gone"): "firing"}
    evaluator.evaluate(columns(T0 + 15, {"here": {"last_seen": T0}}), T0 + 15)
    assert states(evaluator) == {}
    assert [(a["labels"]["server"], a["endsAt"]) for a in evaluator.due(T0 + 15)] == [
        ("gone", iso_utc(T0 + 15))
    ]


def test_firing_alerts_are_sent_again_every_minute_with_endsat_four_intervals_ahead() -> None:
    """As Prometheus: resent when the last send is more than the resend delay ago; endsAt is
    now + 4 x max(evaluation interval, resend delay)."""
    for interval, lifetime in ((15.0, 240.0), (90.0, 360.0)):
        rule = Rule("CpuHigh", When("cpu", ">", 90.0))
        run = Scenario(AlertEvaluator([rule], interval=interval), cpu_by_minute({}, 95.0))
        run.run(T0 + 61, T0 + 61 + 600, step=15.0)
        times = [now for now, _ in run.sent]
        assert times == [T0 + 61 + 75 * k for k in range(len(times))]  # first tick past 60 s
        assert all(a["endsAt"] == iso_utc(now + lifetime) for now, a in run.sent)


def test_a_resolved_alert_is_sent_once_then_every_minute_for_15_minutes() -> None:
    """Then dropped; a condition that comes back afterwards is a new alert (a new activeAt)."""
    rule = Rule("CpuHigh", When("cpu", ">", 90.0))
    run = Scenario(AlertEvaluator([rule]), cpu_by_minute({0: 95.0, 25: 95.0}))
    run.run(T0 + 61, T0 + 60 * 27, step=15.0)
    resolved = [now for now, a in run.sent if a["endsAt"] == iso_utc(T0 + 60)]
    assert resolved[0] == T0 + 121  # minute 1 (low) seen
    assert all(b - a == 75 for a, b in itertools.pairwise(resolved))
    assert resolved[-1] <= T0 + 121 + 900 < resolved[-1] + 75
    again = [a for now, a in run.sent if now > T0 + 60 * 26]
    assert [a["startsAt"] for a in again] == [iso_utc(T0 + 60 * 25)]


def test_the_servers_regex_limits_a_rule_even_when_the_names_move() -> None:
    """``servers:`` is searched in each name; a snapshot with other names (or another order) is
    matched again."""
    rule = Rule("CpuHigh", When("cpu", ">", 90.0), servers="^web-")
    evaluator = AlertEvaluator([rule])
    hot = {"cpu": 99.0, "last_seen": T0}
    evaluator.evaluate(columns(T0, {"web-1": hot, "db-1": hot}), T0)
    assert set(states(evaluator)) == {("CpuHigh", "web-1")}
    evaluator.evaluate(columns(T0, {"db-1": hot, "web-1": hot, "web-2": hot}), T0)
    assert set(states(evaluator)) == {("CpuHigh", "web-1"), ("CpuHigh", "web-2")}
    evaluator.evaluate(columns(T0, {"db-1": hot, "xweb-1": hot}), T0)
    assert set(states(evaluator)) == set()


def test_anomaly_rules_hold_at_or_above_the_threshold_given() -> None:
    rules = [Rule("CpuAnomalous", When("cpu_anomaly")), Rule("RamAnomalous", When("ram_anomaly"))]
    evaluator = AlertEvaluator(rules, anomaly_threshold=0.8)
    rows = {
        "at": {"cpu_anomaly": 0.8, "ram_anomaly": 0.79},
        "above": {"cpu_anomaly": 1.0, "ram_anomaly": 0.95},
        "none": {},
    }
    evaluator.evaluate(columns(T0, rows), T0)
    assert set(states(evaluator)) == {
        ("CpuAnomalous", "at"),
        ("CpuAnomalous", "above"),
        ("RamAnomalous", "above"),
    }


def test_below_conditions_and_missing_means() -> None:
    """``ram < 10`` holds on a low mean; a NaN mean (no sample in the minute) holds nothing."""
    evaluator = AlertEvaluator([Rule("RamLow", When("ram", "<", 10.0))])
    rows = {"low": {"ram": 5.0}, "high": {"ram": 50.0}, "none": {"ram": NAN}}
    evaluator.evaluate(columns(T0, rows), T0)
    assert set(states(evaluator)) == {("RamLow", "low")}


def test_alerts_are_listed_in_the_shape_of_prometheus_api() -> None:
    rule = Rule(
        "CpuHigh",
        When("cpu", ">", 90.0),
        for_seconds=300.0,
        labels=(("severity", "warning"),),
        annotations=DEFAULT_RULES[1].annotations,
    )
    evaluator = AlertEvaluator([rule], external_url="http://monitor.example:8080/")
    evaluator.evaluate(columns(T0 + 61, {"web-1": {"cpu": 95.25}}), T0 + 61)
    assert evaluator.api_alerts() == {
        "status": "success",
        "data": {
            "alerts": [
                {
                    "labels": {"alertname": "CpuHigh", "server": "web-1", "severity": "warning"},
                    "annotations": {
                        "description": "The mean cpu load of web-1 has stayed above 90 % for 5 "
                        "minutes (last minute: 95.25 %).",
                        "summary": "web-1 cpu at 95.25 %",
                    },
                    "state": "pending",
                    "activeAt": "2027-01-15T08:00:00Z",
                    "value": "9.525e+01",
                }
            ]
        },
    }
    assert evaluator.due(T0 + 61) == []
    assert (
        evaluator.generator_url("web 1/a") == "http://monitor.example:8080/ui/servers/web%201%2Fa"
    )
    assert evaluator.stats() == {"alerts_pending": 1, "alerts_firing": 0}


def test_what_is_sent_has_what_prometheus_sends() -> None:
    evaluator = AlertEvaluator([Rule("CpuHigh", When("cpu", ">", 90.0))])
    evaluator.evaluate(columns(T0 + 61, {"web-1": {"cpu": 95.0}}), T0 + 61)
    assert evaluator.due(T0 + 61) == [
        {
            "labels": {"alertname": "CpuHigh", "server": "web-1"},
            "annotations": {},
            "startsAt": iso_utc(T0),
            "endsAt": iso_utc(T0 + 61 + 240),
            "generatorURL": "http://127.0.0.1:8080/ui/servers/web-1",
        }
    ]


@pytest.mark.parametrize(
    "value", [95.5, 1.0, 0.0, 123456.789, 0.00012, 1e21, 95.53333333333333, NAN, math.inf]
)
def test_values_are_written_as_go_writes_them(value: float) -> None:
    """``strconv.FormatFloat(v, 'e', -1, 64)``: the shortest digits that read back the same."""
    expected = {
        95.5: "9.55e+01",
        1.0: "1e+00",
        0.0: "0e+00",
        123456.789: "1.23456789e+05",
        0.00012: "1.2e-04",
        1e21: "1e+21",
        95.53333333333333: "9.553333333333333e+01",
        math.inf: "+Inf",
    }
    assert go_float(value) == ("NaN" if math.isnan(value) else expected[value])
    if math.isfinite(value):
        assert float(go_float(value)) == value


def test_the_stats_are_the_declared_alert_counters() -> None:
    """What the evaluator reports is declared in ``common/counters.py``."""
    keys = set(AlertEvaluator(DEFAULT_RULES).stats())
    assert keys <= {counter.key for counter in ALERT_COUNTERS}


def test_bad_snapshots_are_refused() -> None:
    with pytest.raises(ValueError, match="cpu must be an array of 2 numbers"):
        FleetColumns(
            ["a", "b"], np.zeros(2), np.zeros(3), np.zeros(2), np.zeros(2), np.zeros(2), T0
        )
    with pytest.raises(ValueError, match="minute's start"):
        FleetColumns(["a"], *(np.zeros(1) for _ in range(5)), minute=T0 + 1)


# -- restarts and two hosts -----------------------------------------------------------------------
def fleet_story(now: float) -> dict[str, Row]:
    """web-1 hot from minute 0 to 9; db-1 silent from T0 + 30 to T0 + 500; web-2 always fine."""
    minute = int((last_complete_minute(now) - T0) // MINUTE)
    silent = T0 + 30 <= now < T0 + 500
    every_10s = now - now % 10  # each server's newest sample
    return {
        "web-1": {"last_seen": every_10s, "cpu": 97.0 if 0 <= minute <= 9 else 40.0},
        "db-1": {"last_seen": T0 + 30 if silent else every_10s, "cpu": 30.0},
        "web-2": {"last_seen": every_10s, "cpu": 10.0, "cpu_anomaly": 0.1},
    }


STORY_RULES = [
    CPU_HIGH,
    SILENT,
    Rule("CpuFlapping", When("cpu", ">", 90.0), keep_firing_for_seconds=120.0),
]


def test_restarting_at_every_evaluation_changes_nothing() -> None:
    """State saved and restored between every two evaluations: what is listed and sent is
    exactly what an evaluator that never stopped lists and sends."""
    steady = Scenario(AlertEvaluator(STORY_RULES), fleet_story)
    restarted = AlertEvaluator(STORY_RULES)
    for now in np.arange(T0 + 5, T0 + 60 * 16, 15.0):
        expected = steady.at(float(now))
        restarted = AlertEvaluator.from_bytes(restarted.to_bytes(), STORY_RULES)
        restarted.evaluate(columns(float(now), fleet_story(float(now))), float(now))
        assert restarted.api_alerts() == steady.evaluator.api_alerts()
        restarted = AlertEvaluator.from_bytes(restarted.to_bytes(), STORY_RULES)
        assert restarted.due(float(now)) == expected
    assert steady.sent, "the story sends alerts"


def test_a_restart_mid_for_does_not_restart_for() -> None:
    """Down for 2 minutes while pending: the restarted host fires when the first would have,
    with the same startsAt."""
    steady = Scenario(AlertEvaluator([CPU_HIGH]), fleet_story)
    steady.run(T0 + 61, T0 + 60 * 8, step=15.0)
    first = Scenario(AlertEvaluator([CPU_HIGH]), fleet_story)
    first.run(T0 + 61, T0 + 180, step=15.0)
    assert states(first.evaluator) == {("CpuHigh", "web-1"): "pending"}
    again = Scenario(AlertEvaluator.from_bytes(first.evaluator.to_bytes(), [CPU_HIGH]), fleet_story)
    again.run(T0 + 301, T0 + 60 * 8, step=15.0)
    assert again.sent[0] == steady.sent[0]


def test_a_restart_while_firing_does_not_announce_again() -> None:
    """Restarted 30 s after a send: nothing is sent before the resend delay has passed, and the
    resend carries the same labels and startsAt (Alertmanager sees the same alert)."""
    first = Scenario(AlertEvaluator(DEFAULT_RULES), fleet_story)
    first.run(T0 + 5, T0 + 60 * 7, step=15.0)
    last_send = max(now for now, _ in first.sent)
    firing_before = {
        (a["labels"]["alertname"], a["labels"]["server"]): a["startsAt"]
        for now, a in first.sent
        if now == last_send
    }
    assert ("CpuHigh", "web-1") in firing_before and ("ServerSilent", "db-1") in firing_before
    saved = first.evaluator.to_bytes()
    again = Scenario(AlertEvaluator.from_bytes(saved, DEFAULT_RULES), fleet_story)
    assert again.at(last_send + 30) == []
    assert states(again.evaluator) == states(first.evaluator)
    resent = again.at(last_send + 61)
    assert {
        (a["labels"]["alertname"], a["labels"]["server"]): a["startsAt"] for a in resent
    } == firing_before


def test_two_hosts_on_the_same_data_send_the_same_alerts() -> None:
    """Two evaluators on their own schedules (7 s apart) send the same labels and startsAt for
    every alert, and the same endsAt for every resolution of a minute-mean rule (a silence ends
    at the newest sample each host saw: within one evaluation interval); at the same instant,
    the very same bytes."""
    a = Scenario(AlertEvaluator(STORY_RULES), fleet_story)
    b = Scenario(AlertEvaluator(STORY_RULES), fleet_story)
    a.run(T0 + 2, T0 + 60 * 16, step=15.0)
    b.run(T0 + 9, T0 + 60 * 16, step=15.0)

    def identities(run: Scenario) -> set[tuple[str, ...]]:
        found = set()
        for now, alert in run.sent:
            resolved = alert["endsAt"] <= iso_utc(now)
            ends = alert["endsAt"] if resolved else "firing"
            if resolved and alert["labels"]["alertname"] == "ServerSilent":
                assert iso_utc(T0 + 500) <= ends <= iso_utc(T0 + 515)
                ends = "silence over"
            labels = json.dumps(alert["labels"], sort_keys=True)
            found.add((labels, alert["startsAt"], ends))
        return found

    assert identities(a) == identities(b)
    assert {ends for _, _, ends in identities(a)} >= {"firing", "silence over", iso_utc(T0 + 600)}
    c = Scenario(AlertEvaluator(STORY_RULES), fleet_story)
    c.run(T0 + 2, T0 + 60 * 16, step=15.0)
    assert json.dumps(c.sent) == json.dumps(a.sent)


def test_state_that_cannot_be_read_is_refused_and_gone_rules_are_left_out() -> None:
    for data in (
        b"",
        b"{",
        b"\xff",
        b"[]",
        b'{"format": "other"}',
        b'{"format": "servertrack-alerts/1"}',
        b'{"format": "servertrack-alerts/1", "fields": [], "rules": []}',
    ):
        with pytest.raises(StateError):
            AlertEvaluator.from_bytes(data, STORY_RULES)
    run = Scenario(AlertEvaluator(STORY_RULES), fleet_story)
    run.run(T0 + 5, T0 + 60 * 6, step=15.0)
    saved = json.loads(run.evaluator.to_bytes())
    (server, row), *_ = saved["rules"][0]["alerts"].items()
    for field_, value, message in (
        (1, "yesterday", "active_at is not a number"),
        (0, "sleeping", "unknown state"),
        (9, 1, "resolution_sent is not true or false"),
    ):
        broken = json.loads(json.dumps(saved))
        broken["rules"][0]["alerts"][server][field_] = value
        with pytest.raises(StateError, match=f"rule 0 \\(CpuHigh\\), {server}: {message}"):
            AlertEvaluator.from_bytes(json.dumps(broken).encode(), STORY_RULES)
    broken = json.loads(json.dumps(saved))
    broken["rules"][0]["alerts"][server] = row[:5]
    with pytest.raises(StateError, match="not a list of 10 fields"):
        AlertEvaluator.from_bytes(json.dumps(broken).encode(), STORY_RULES)
    only_silent = AlertEvaluator.from_bytes(run.evaluator.to_bytes(), [SILENT])
    assert {name for name, _ in states(only_silent)} == {"ServerSilent"}
    assert states(only_silent) == {
        k: v for k, v in states(run.evaluator).items() if k[0] == "ServerSilent"
    }


# -- against a scalar restatement over raw samples ------------------------------------------------
ORACLE_RULES = [
    Rule("Silent1m", When("silent"), for_seconds=60.0),
    Rule(
        "WebSilent",
        When("silent"),
        for_seconds=120.0,
        keep_firing_for_seconds=60.0,
        servers="^web-",
    ),
    Rule("CpuHigh", When("cpu", ">", 90.0), for_seconds=120.0),
    Rule("CpuHot", When("cpu", ">", 90.0), keep_firing_for_seconds=120.0, labels=(("s", "x"),)),
    Rule("RamLow", When("ram", "<", 30.0), for_seconds=90.0),
    Rule("CpuOdd", When("cpu_anomaly"), keep_firing_for_seconds=90.0),
]
RETENTION = 900.0
RESEND = 60.0
LIFETIME = 240.0


@dataclass
class World:
    """Raw samples of a random fleet, and when each server leaves the snapshots."""

    samples: dict[str, list[tuple[float, float | None, float | None]]]
    scores: dict[tuple[str, int], float]
    gone_at: dict[str, float]

    def last_seen(self, name: str, now: float) -> float:
        return max((ts for ts, _, _ in self.samples[name] if ts <= now), default=NAN)

    def mean(self, name: str, metric: int, minute: float) -> float:
        values = [
            sample[metric]
            for sample in self.samples[name]
            if minute <= sample[0] < minute + MINUTE and sample[metric] is not None
        ]
        return math.fsum(values) / len(values) if values else NAN

    def present(self, name: str, now: float) -> bool:
        return now < self.gone_at.get(name, math.inf)

    def snapshot(self, now: float) -> FleetColumns:
        minute = last_complete_minute(now)
        rows = {}
        for name in self.samples:
            if not self.present(name, now):
                continue
            index = int(minute // MINUTE)
            rows[name] = {
                "last_seen": self.last_seen(name, now),
                "cpu": self.mean(name, 1, minute),
                "ram": self.mean(name, 2, minute),
                "cpu_anomaly": self.scores.get((name, index), NAN),
            }
        return columns(now, rows)


def random_world(rng: random.Random, start: float, stop: float) -> World:
    samples: dict[str, list[tuple[float, float | None, float | None]]] = {}
    scores: dict[tuple[str, int], float] = {}
    names = [f"web-{i}" for i in range(8)] + [f"db-{i}" for i in range(8)]
    for name in names:
        period = rng.choice([5.0, 10.0, 20.0])
        gaps = []
        for _ in range(rng.randint(0, 2)):
            begin = rng.uniform(start, stop)
            gaps.append((begin, begin + rng.uniform(30, 400)))
        hot = rng.random() < 0.5
        ts = start - 120 + rng.uniform(0, period)
        while ts < stop:
            if rng.random() < 0.08:
                hot = not hot
            if not any(a <= ts < b for a, b in gaps):
                cpu = rng.uniform(88, 100) if hot else rng.uniform(20, 92)
                ram = rng.uniform(10, 40)
                missing = rng.random()
                samples.setdefault(name, []).append(
                    (ts, None if missing < 0.05 else cpu, None if 0.05 <= missing < 0.1 else ram)
                )
            ts += period
        for minute in range(int(start // MINUTE) - 2, int(stop // MINUTE) + 1):
            if rng.random() < 0.8:
                scores[(name, minute)] = rng.random()
        samples.setdefault(name, [(start - 60, 50.0, 50.0)])
    gone = rng.sample(names, 2)
    return World(samples, scores, {name: rng.uniform(start, stop) for name in gone})


def replay(rule: Rule, name: str, world: World, times: list[float]) -> list[tuple[Any, Any]]:
    """What one rule lists and sends for one server at each evaluation, restated in scalars:
    Prometheus' rule evaluation (``rules/alerting.go``) with the data's times, from the raw
    samples."""
    out = []
    alert: dict[str, Any] | None = None
    matches = rule.servers is None or name.startswith("web-")
    for now in times:
        minute = last_complete_minute(now)
        if not world.present(name, now):
            if alert and alert["state"] == "pending":
                alert = None
            elif alert and alert["state"] == "firing":
                alert.update(state="inactive", ends=now, retain=now + RETENTION, told=False)
        else:
            if rule.when.subject == "silent":
                seen = world.last_seen(name, now)
                value, clock, since, clear = now - seen, now, seen, seen
                holds = value >= rule.for_seconds
            else:
                if rule.when.subject == "cpu_anomaly":
                    value = world.scores.get((name, int(minute // MINUTE)), NAN)
                    holds = value >= 0.5
                else:
                    value = world.mean(name, 1 if rule.when.subject == "cpu" else 2, minute)
                    number = rule.when.number
                    holds = value > number if rule.when.op == ">" else value < number
                clock, since, clear = minute + MINUTE, minute, minute
            holds = holds and matches
            if holds:
                if alert is None or alert["state"] == "inactive":
                    alert = {"state": "pending", "active": since, "sent": None}
                alert.update(value=value, keep=None)
                if alert["state"] == "pending" and clock - alert["active"] >= rule.for_seconds:
                    alert.update(state="firing", starts=alert["active"] + rule.for_seconds)
            elif alert and alert["state"] == "pending":
                alert = None
            elif alert and alert["state"] == "firing":
                kff = rule.keep_firing_for_seconds
                if kff and alert["keep"] is None:
                    alert["keep"] = clear
                if not kff or clock - alert["keep"] >= kff:
                    ends = alert["keep"] + kff if kff else clear
                    alert.update(state="inactive", ends=ends, retain=now + RETENTION, told=False)
                    alert["keep"] = None
        if alert and alert["state"] == "inactive" and now > alert["retain"]:
            alert = None
        shown = sent = None
        if alert and alert["state"] != "inactive":
            shown = (alert["state"], iso_utc(alert["active"]), go_float(alert["value"]))
            if alert["keep"] is not None:
                shown += (iso_utc(alert["keep"]),)
        if alert and alert["state"] != "pending":
            new = alert["state"] == "inactive" and not alert["told"]
            if new or alert["sent"] is None or alert["sent"] + RESEND < now:
                alert["sent"] = now
                if alert["state"] == "inactive":
                    alert["told"] = True
                    sent = (iso_utc(alert["starts"]), iso_utc(alert["ends"]))
                else:
                    sent = (iso_utc(alert["starts"]), iso_utc(now + LIFETIME))
        out.append((shown, sent))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_the_evaluator_matches_a_scalar_restatement_over_random_fleets(seed: int) -> None:
    """16 servers for 40 minutes (samples every 5-20 s, silences, hot and cool spells, missing
    metrics, anomaly scores, two servers forgotten), evaluated at random 5-30 s steps by six
    rules: listed and sent alerts equal the restatement's at every evaluation."""
    rng = random.Random(seed)
    start, stop = T0 + 37.0, T0 + 40 * MINUTE
    world = random_world(rng, start, stop)
    times = []
    now = start
    while now < stop:
        times.append(now)
        now += rng.uniform(5, 30)
    expected: dict[float, tuple[set[Any], set[Any]]] = {now: (set(), set()) for now in times}
    for rule in ORACLE_RULES:
        for name in world.samples:
            for now, (shown, sent) in zip(times, replay(rule, name, world, times), strict=True):
                if shown:
                    expected[now][0].add((rule.alert, name, *shown))
                if sent:
                    expected[now][1].add((rule.alert, name, *sent))
    evaluator = AlertEvaluator(ORACLE_RULES)
    kinds: set[str] = set()
    for now in times:
        evaluator.evaluate(world.snapshot(now), now)
        got_shown = set()
        for alert in listed(evaluator):
            keep = (alert["keepFiringSince"],) if "keepFiringSince" in alert else ()
            labels = alert["labels"]
            got_shown.add(
                (
                    labels["alertname"],
                    labels["server"],
                    alert["state"],
                    alert["activeAt"],
                    alert["value"],
                    *keep,
                )
            )
            kinds.add(alert["state"] + ("-kept" if keep else ""))
        got_sent = {
            (a["labels"]["alertname"], a["labels"]["server"], a["startsAt"], a["endsAt"])
            for a in evaluator.due(now)
        }
        assert (got_shown, got_sent) == expected[now], now
    assert {"pending", "firing", "firing-kept"} <= kinds, kinds
