"""Anomaly scores in the aggregator (in-memory store) against an independent oracle.

Real NAB CloudWatch series are replayed as raw samples through the aggregator's state with an
injected clock (hours pass in milliseconds). The oracle works out each minute's mean from the raw
samples by brute force and runs a detector of its own per series over those means; the scores the
aggregator answers with (the last minute, the minute buckets of a server's loads, the /fleet rows
and their order) must equal the oracle's, across a snapshot and a restart.
"""

from __future__ import annotations

import csv
import json
import math
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from servertrack.aggregator.rollups import Rollups
from servertrack.aggregator.snapshot import read_snapshot, write_snapshot
from servertrack.aggregator.state import AggregatorState
from servertrack.anomaly import STANDARD_THRESHOLD, DetectorBank
from servertrack.anomaly.fleet_scores import FleetScores
from servertrack.common.batch import Batch
from servertrack.forward.main import build_parser
from servertrack.forward.main import run as run_forward
from servertrack.forward.points import MalformedAnswer, WindowCollector, window_points
from servertrack.readmodel.answers import decode_answer, decode_last_minute
from servertrack.testing.hosts import FakeClock

SHARED = Path(
    os.environ.get("SERVERTRACK_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared")
)
CLOUDWATCH = SHARED / "data" / "nab" / "corpus" / "data" / "realAWSCloudwatch"
T0 = 1_800_000_000.0 - 1_800_000_000.0 % 3600
MINUTES = 230
RESTART_AT = 150
OFFSETS = (5.0, 25.0, 45.0, 59.8)
"""Seconds into its minute each sample is taken; the last one arrives after the minute turned."""
SERVERS = [f"s{k}.example" for k in range(6)]


def nab_values(name: str, count: int) -> list[float]:
    with (CLOUDWATCH / name).open(newline="") as handle:
        return [float(row["value"]) for row in csv.DictReader(handle)][:count]


def fleet_samples() -> dict[int, list[tuple[str, float, float | None, float | None]]]:
    """Raw samples by minute index: two NAB series as given, one with cpu only every other
    minute, one silent for a while, and in the last minute a jump of a different size for each
    server (so the newest scores differ)."""
    cpu_a = nab_values("ec2_cpu_utilization_5f5533.csv", MINUTES)
    cpu_b = nab_values("rds_cpu_utilization_e47b3b.csv", MINUTES)
    ram_c = nab_values("ec2_cpu_utilization_825cc2.csv", MINUTES)
    rng = np.random.default_rng(5)
    out: dict[int, list[tuple[str, float, float | None, float | None]]] = {}
    for minute in range(MINUTES):
        rows: list[tuple[str, float, float | None, float | None]] = []
        for offset in OFFSETS:
            ts = T0 + minute * 60 + offset
            jitter = float(np.round(rng.uniform(-0.5, 0.5), 3))
            last = minute == MINUTES - 1
            rows.append((SERVERS[0], ts, cpu_a[minute] + jitter, 100.0 - cpu_b[minute]))
            rows.append((SERVERS[1], ts, cpu_b[minute] + (40.0 if last else 0.0), ram_c[minute]))
            rows.append((SERVERS[2], ts, cpu_a[minute] if minute % 2 else None, ram_c[minute]))
            if not 60 <= minute < 90:
                rows.append((SERVERS[3], ts, ram_c[minute] + jitter, cpu_a[minute]))
            for k in (4, 5):
                bump = (25.0 * k) if last else 0.0
                rows.append((SERVERS[k], ts, 20.0 + 3 * k + jitter + bump, 50.0 + jitter))
        out[minute] = rows
    return out


def oracle_scores(
    samples: dict[int, list[tuple[str, float, float | None, float | None]]],
) -> dict[tuple[str, str], dict[int, float]]:
    """(server, metric) -> minute -> score: brute-force minute means (summed in arrival order),
    each series through a detector of its own, absent minutes skipped."""
    totals: dict[tuple[str, str, int], list[float]] = {}
    for rows in samples.values():
        for name, ts, cpu, ram in rows:
            minute = int(ts // 60)
            for metric, value in (("cpu", cpu), ("ram", ram)):
                if value is not None:
                    totals.setdefault((name, metric, minute), []).append(value)
    out: dict[tuple[str, str], dict[int, float]] = {}
    for name in SERVERS:
        for metric in ("cpu", "ram"):
            bank = DetectorBank(1)
            scores: dict[int, float] = {}
            first = int(T0 // 60)
            for minute in range(first, first + MINUTES):
                values = totals.get((name, metric, minute))
                if not values:
                    continue
                total = 0.0
                for value in values:
                    total += value
                mean = total / len(values)
                score = bank.step(np.array([mean]), np.array([True]), minute * 60.0)[0]
                scores[minute] = float(score)
            out[(name, metric)] = scores
    return out


def batch(
    number: int, now: float, rows: list[tuple[str, float, float | None, float | None]]
) -> Batch:
    return Batch(
        epoch="replay",
        number=number,
        sent=now,
        ids=np.array([SERVERS.index(r[0]) for r in rows], np.int32),
        ts=np.array([r[1] for r in rows]),
        cpu=np.array([np.nan if r[2] is None else r[2] for r in rows]),
        ram=np.array([np.nan if r[3] is None else r[3] for r in rows]),
        names=list(enumerate(SERVERS)) if number == 0 else [],
    )


def ask(state: AggregatorState, request: dict[str, Any], now: float) -> dict[str, Any]:
    reply = state.answer(request, now)
    assert reply is not None
    answer: dict[str, Any] = msgpack.unpackb(reply)
    return answer


def same(got: float | None, want: float | None) -> bool:
    if want is None or math.isnan(want):
        return got is None or (isinstance(got, float) and math.isnan(got))
    return got == want


def restart(state: AggregatorState, clock: FakeClock, path: Path) -> AggregatorState:
    arrays = state.store.snapshot()
    assert arrays is not None
    write_snapshot(path, arrays, state.snapshot_meta(clock()))
    loaded = read_snapshot(path)
    assert loaded is not None
    fresh = AggregatorState(Rollups(clock), clock)
    fresh.restore(*loaded)
    return fresh


@pytest.fixture(scope="module")
def replay(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The whole replay, with what was answered at every minute turn."""
    samples = fleet_samples()
    clock = FakeClock(T0)
    state = AggregatorState(Rollups(clock), clock)
    number = 0
    answered: dict[int, Any] = {}
    views_before = views_after = None
    for minute in range(MINUTES):
        if minute == RESTART_AT:
            now = clock()
            views_before = [ask(state, {"op": "view", "name": n}, now) for n in SERVERS]
            state = restart(state, clock, tmp_path_factory.mktemp("snap") / "agg.npz")
            views_after = [ask(state, {"op": "view", "name": n}, now) for n in SERVERS]
        for offset in OFFSETS:
            rows = [r for r in samples[minute] if r[1] == T0 + minute * 60 + offset]
            now = clock.set(rows[0][1] + 0.5)  # the last one's batch comes after the turn
            state.apply(batch(number, now, rows), now)
            number += 1
            state.housekeeping(now)
        answered[minute] = decode_last_minute(
            ask(state, {"op": "last_minute"}, clock())["last_minute"]
        )
    now = clock.set(T0 + MINUTES * 60 + 1.0)
    state.housekeeping(now)
    return {
        "state": state,
        "now": now,
        "answered": answered,
        "oracle": oracle_scores(samples),
        "views": (views_before, views_after),
    }


def test_the_last_minute_carries_the_oracle_scores_at_every_turn(replay: dict[str, Any]) -> None:
    """At every minute turn (across a snapshot and a restart) each server's scores of the minute
    that just completed equal an independent detector's over the brute-force minute means."""
    oracle = replay["oracle"]
    scored = 0
    for index, last in replay["answered"].items():
        completed = int(T0 // 60) + index  # its last batch came just after it ended
        assert last.minute == completed, index
        for k, name in enumerate(last.names):
            for metric, column in (("cpu", last.cpu_anomaly), ("ram", last.ram_anomaly)):
                want = oracle[(name, metric)].get(completed)
                assert same(float(column[k]), want), (index, name, metric, column[k], want)
                scored += want is not None and not math.isnan(want)
    assert scored > 5 * 100  # most series are past the warm-up for most of the replay


def test_minute_buckets_carry_the_oracle_scores(replay: dict[str, Any]) -> None:
    """Each minute bucket of ``GET /servers/{name}/loads`` carries its minute's scores (null
    where the oracle has none), and some of them are anomalies."""
    state, now, oracle = replay["state"], replay["now"], replay["oracle"]
    anomalies = 0
    for name in SERVERS:
        answer = decode_answer(ask(state, {"op": "view", "name": name}, now)["answer"])
        document = json.loads(answer.body)
        assert len(document["minutes"]) == 59  # the current minute has no sample yet
        for bucket in document["minutes"]:
            minute = int(np.datetime64(bucket["start"].rstrip("Z"), "s").astype(np.int64)) // 60
            for metric in ("cpu", "ram"):
                want = oracle[(name, metric)].get(minute)
                got = bucket[f"{metric}_anomaly"]
                assert same(got, want), (name, bucket["start"], metric, got, want)
                anomalies += got is not None and got >= STANDARD_THRESHOLD
        assert all("cpu_anomaly" not in bucket for bucket in document["hours"])
    assert anomalies >= 4


def test_a_restart_from_the_snapshot_answers_the_same(replay: dict[str, Any]) -> None:
    """Each server's answer just after a restart from the snapshot is the answer just before it
    (scores included); the scores after it are checked at every turn above."""
    before, after = replay["views"]
    assert [view["answer"] for view in before] == [view["answer"] for view in after]
    scores = [
        b["cpu_anomaly"]
        for view in before
        for b in json.loads(decode_answer(view["answer"]).body)["minutes"]
    ]
    assert any(s is not None for s in scores)


def test_fleet_rows_carry_the_newest_scores_and_sort_by_them(replay: dict[str, Any]) -> None:
    """/fleet rows carry each server's newest scores; sort=cpu_anomaly puts the highest first
    (ties by name, servers without a score last), and asc the reverse."""
    state, now, oracle = replay["state"], replay["now"], replay["oracle"]
    newest = int(T0 // 60) + MINUTES - 1
    for metric in ("cpu", "ram"):
        want = {name: oracle[(name, metric)].get(newest, math.nan) for name in SERVERS}
        for order in ("desc", "asc"):
            request = {"op": "fleet", "sort": f"{metric}_anomaly", "limit": 100}
            if order == "asc":
                request["order"] = "asc"
            body = json.loads(ask(state, request, now)["body"])
            rows = body["rows"]
            for row in rows:
                assert same(row[f"{metric}_anomaly"], want[row["server"]]), row
            sign = -1.0 if order == "desc" else 1.0
            expected = sorted(
                SERVERS,
                key=lambda n: (math.isnan(want[n]), sign * np.nan_to_num(want[n]), n),
            )
            assert [row["server"] for row in rows] == expected, (metric, order)
    jumped = [want_cpu for want_cpu in (oracle[(n, "cpu")].get(newest) for n in SERVERS[4:])]
    assert all(score is not None and score > 0 for score in jumped)


def test_a_released_row_starts_a_fresh_detector() -> None:
    """A server silent for 24 hours is released; a new server given its row starts warming up
    again instead of inheriting the old one's detector and scores."""
    clock = FakeClock(T0)
    rollups = Rollups(clock)
    for minute in range(120):
        now = clock.set(T0 + minute * 60 + 1)
        rollups.record("old.example", now, 10.0 + minute % 7, 20.0, now)
        rollups.score_minutes(now)
    row = rollups.row_of["old.example"]
    assert not np.isnan(rollups.anomaly.latest(np.array([row]))[0][0])
    later = clock.set(T0 + 26 * 3600)
    rollups.evict_silent(later)
    rollups.record("new.example", later, 50.0, 50.0, later)
    assert rollups.row_of["new.example"] == row
    now = clock.set(later + 60)
    rollups.score_minutes(now)
    cpu, ram = rollups.anomaly.latest(np.array([row]))
    assert np.isnan(cpu[0]) and np.isnan(ram[0])  # warming up: the detector is a fresh one
    view = rollups.view("new.example", now)
    assert view is not None and view.cpu_anomaly is not None and np.isnan(view.cpu_anomaly).all()


def test_scores_survive_their_arrays() -> None:
    """FleetScores to_arrays/from_arrays keep detectors and scores: the next step scores alike."""
    scores = FleetScores(3)
    rng = np.random.default_rng(1)
    for minute in range(150):
        scores.score(minute, rng.uniform(0, 100, 3), rng.uniform(0, 100, 3))
    copy = FleetScores.from_arrays(scores.to_arrays())
    cpu, ram = rng.uniform(0, 200, 3), rng.uniform(0, 200, 3)
    assert np.array_equal(
        np.stack(scores.score(150, cpu, ram)), np.stack(copy.score(150, cpu, ram))
    )
    with pytest.raises(ValueError, match="not after"):
        scores.score(150, cpu, ram)


def test_forward_anomaly_refuses_hourly_windows_and_answers_without_scores() -> None:
    """--anomaly with --interval 3600 stops with a message (minute scores are kept 60 minutes);
    an answer without scores, or with a score out of [0, 1], is refused (read again later),
    never sent as a point."""
    args = build_parser().parse_args(
        ["--graphite", "tcp://127.0.0.1:2003", "--anomaly", "--interval", "3600"]
    )
    with pytest.raises(SystemExit, match="--anomaly needs --interval below 3600"):
        run_forward(args)
    bucket = {
        "start": "2027-01-15T10:00:00Z",
        **{f"{m}{s}": 1.0 for m in ("cpu", "ram") for s in ("", "_sum", "_min", "_max")},
        "cpu_samples": 1,
        "ram_samples": 1,
        "samples": 1,
    }
    t = int(datetime(2027, 1, 15, 10, tzinfo=UTC).timestamp())
    for scores, reason in (({}, "no cpu_anomaly"), ({"cpu_anomaly": 1.5}, "1.5")):
        collector = WindowCollector([t], 300, anomaly=True)
        answer = {"minutes": [{**bucket, "ram_anomaly": None, **scores}], "hours": []}
        if "cpu_anomaly" not in scores:
            del answer["minutes"][0]["ram_anomaly"]
        with pytest.raises(MalformedAnswer, match=reason):
            collector.add("a.example", answer)
    collector = WindowCollector([t], 300, anomaly=True)
    collector.add("a.example", {"minutes": [{**bucket, "cpu_anomaly": 0.5, "ram_anomaly": None}]})
    lines = window_points(t, collector.windows[t], "p", (collector.anomaly or {})[t]).lines
    assert f"p.a_example.cpu_anomaly 0.5 {t}\n".encode() in lines
    assert not any(b"ram_anomaly" in line for line in lines)


def test_rows_added_removed_and_taken_keep_each_servers_detectors() -> None:
    """Servers added a few at a time, removed or taken into a new object keep their own
    detectors and scores: the same as a bank of those servers from the start."""
    rng = np.random.default_rng(4)
    grown, whole = FleetScores(1), FleetScores(5)
    values = rng.uniform(0, 100, (160, 5, 2))
    values[:, 0] += np.arange(160)[:, None] / 10  # the first one keeps beyond its range: scores
    for minute in range(160):
        if minute in (105, 115, 125, 135):  # its scores are past the warm-up by then
            grown.add(1)
        rows = grown.rows
        cpu, ram = values[minute, :, 0].copy(), values[minute, :, 1].copy()
        cpu_grown = np.where(np.arange(5) < rows, cpu, np.nan)
        got = grown.score(minute, cpu_grown[:rows], ram[:rows])
        late = np.arange(5) >= rows
        cpu[late] = np.nan
        ram[late] = np.nan
        want = whole.score(minute, cpu, ram)
        assert np.array_equal(np.stack(got), np.stack(want)[:, :rows], equal_nan=True), minute
        for ring in ("cpu", "ram"):  # the kept scores too, row for row
            held = getattr(whole, ring)[:rows]
            assert np.array_equal(getattr(grown, ring), held, equal_nan=True), (minute, ring)
    taken = grown.take(np.array([4, 1]))
    grown.remove([0, 2, 3])
    for scores, order in ((taken, [4, 1]), (grown, [1, 4])):
        for ring in ("cpu", "ram"):
            held = getattr(whole, ring)[order]
            assert np.array_equal(getattr(scores, ring), held, equal_nan=True), ring
    cpu, ram = rng.uniform(0, 300, 2), rng.uniform(0, 300, 2)
    after_take = np.stack(taken.score(160, cpu, ram))
    after_remove = np.stack(grown.score(160, cpu[::-1], ram[::-1]))[:, ::-1]
    assert np.array_equal(after_take, after_remove, equal_nan=True)
