"""The fleet overview (``readmodel/fleet.py`` over ``aggregator/fleet_table.py``) against a
brute-force restatement over raw samples.

The oracle here keeps every raw sample in a list and recomputes each figure in plain Python
(``math.fsum`` over the samples of a minute, ``sorted`` with explicit keys), sharing nothing with
the numpy code but the definitions' numbers (120 s, 600 s, 60 minutes, 10 hottest).
"""

from __future__ import annotations

import base64
import itertools
import json
import math
import random
from typing import Any

import msgpack
import numpy as np
import pytest

from servertrack.aggregator.fleet_table import fleet_table
from servertrack.aggregator.rollups import Rollups
from servertrack.aggregator.state import AggregatorState
from servertrack.common.buckets import oldest_accepted_ts
from servertrack.common.fleet_query import (
    MAX_LIMIT,
    SORT_COLUMNS,
    BadFleetQuery,
    FleetQuery,
    parse_fleet_query,
    query_from_request,
)
from servertrack.common.oracle import RawSample, iso_z
from servertrack.readmodel.fleet import GRID_NO_CPU, FleetAnswers, fleet_grid, fleet_page
from servertrack.testing.hosts import FakeClock

MINUTE = 60
T0 = 1_699_999_200.0
"""An hour start (2023-11-14T22:00:00Z)."""
NOW = T0 + 3 * 3600 + 30 * MINUTE + 20.0
STATUS_RANK = {"down": 0, "stale": 1, "live": 2}


# -- the oracle ---------------------------------------------------------------------------------
def feed(rollups: Rollups, batch: list[RawSample], now: float) -> None:
    rows = np.array([rollups.row_for(s[0]) for s in batch], dtype=np.int64)
    ts = np.array([s[1] for s in batch])
    cpu = np.array([np.nan if s[2] is None else s[2] for s in batch])
    ram = np.array([np.nan if s[3] is None else s[3] for s in batch])
    rollups.apply(rows, ts, cpu, ram, now)


def minute_of(ts: float) -> int:
    return int((ts - ts % MINUTE) // MINUTE)


def oracle_status(age: float) -> str:
    return "live" if age < 120 else "stale" if age < 600 else "down"


def oracle_mean(values: list[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def oracle_rows(samples: list[RawSample], now: float) -> dict[str, dict[str, Any]]:
    """Every server's row, restated over the raw samples."""
    current = minute_of(now)
    shown = range(current - 59, current + 1)
    by_server: dict[str, list[RawSample]] = {}
    for sample in samples:
        by_server.setdefault(sample[0], []).append(sample)
    rows = {}
    for name, mine in by_server.items():
        seen = max(s[1] for s in mine)
        per_minute: dict[int, list[RawSample]] = {}
        for sample in mine:
            per_minute.setdefault(minute_of(sample[1]), []).append(sample)

        def means(index: int, group: dict[int, list[RawSample]] = per_minute) -> list:
            return [
                oracle_mean([s[index] for s in group.get(m, []) if s[index] is not None])
                for m in shown
            ]

        cpu_line, ram_line = means(2), means(3)
        age = max(now - seen, 0.0)
        rows[name] = {
            "server": name,
            "cpu": next((v for v in reversed(cpu_line) if v is not None), None),
            "ram": next((v for v in reversed(ram_line) if v is not None), None),
            "last_seen": iso_z(seen),
            "seen": seen,
            "age_seconds": age,
            "status": oracle_status(age),
            "sparkline": cpu_line,
            "cpu_anomaly": None,  # these rollups are never asked to score a minute
            "ram_anomaly": None,
        }
    return rows


def oracle_order(rows: list[dict[str, Any]], sort: str, order: str) -> list[str]:
    """Names in the order the query asks: ties by name, a missing value last in either order."""
    desc = order == "desc"
    if sort == "name":
        return sorted((r["server"] for r in rows), reverse=desc)

    def key(row: dict[str, Any]) -> tuple:
        if sort == "status":
            rank = STATUS_RANK[row["status"]]
            cpu = row["cpu"]
            return (-rank if desc else rank, cpu is None, -(cpu or 0.0), row["server"])
        value = row["seen"] if sort == "last_seen" else row[sort]
        if value is None:
            return (1, 0.0, row["server"])
        return (0, -value if desc else value, row["server"])

    return [row["server"] for row in sorted(rows, key=key)]


def random_fleet(seed: int, servers: int, now: float) -> list[RawSample]:
    """Servers with every kind of history: busy, quiet, one metric only, old data only, silent
    for various times (edges of the statuses included), samples up to 60 s ahead."""
    rng = random.Random(seed)
    samples: list[RawSample] = []
    for index in range(servers):
        name = rng.choice(["web", "DB", "cache", "Web"]) + f"-{index:03d}.example.com"
        kind = index % 7
        silent = rng.choice([0.0, 30.0, 119.0, 150.0, 599.0, 700.0, 4000.0, 7000.0])
        newest = now - silent
        count = rng.randint(1, 40)
        for _ in range(count):
            ts = newest - rng.uniform(0, 5400) if rng.random() < 0.5 else newest
            cpu = None if kind == 1 else round(rng.uniform(0, 100), 3)
            ram = None if kind == 2 and cpu is not None else round(rng.uniform(0, 100), 3)
            samples.append((name, ts, cpu, ram))
        if kind == 3:
            samples.append((name, now + 45.0, 50.0, 50.0))  # ahead of the clock: not shown yet
    return samples


def loaded(samples: list[RawSample], now: float) -> Rollups:
    rollups = Rollups(FakeClock(now), capacity=16)
    feed(rollups, samples, now)
    return rollups


def whole(table: Any, now: float, sort: str = "status", order: str = "asc", q: str = "") -> dict:
    return fleet_page(table, FleetQuery(sort=sort, order=order, q=q, limit=MAX_LIMIT), now)


def assert_row(got: dict[str, Any], want: dict[str, Any]) -> None:
    name = want["server"]
    for key in ("server", "last_seen", "status"):
        assert got[key] == want[key], f"{name} {key}: {got[key]!r} != {want[key]!r}"
    assert got["age_seconds"] == pytest.approx(want["age_seconds"], abs=0.051), name
    for key in ("cpu", "ram"):
        if want[key] is None:
            assert got[key] is None, f"{name} {key}: {got[key]} != None"
        else:
            assert math.isclose(got[key], want[key], rel_tol=1e-12), f"{name} {key}"
    assert len(got["sparkline"]) == 60
    for minute, (have, should) in enumerate(zip(got["sparkline"], want["sparkline"], strict=True)):
        if should is None:
            assert have is None, f"{name} minute {minute}: {have} != None"
        else:  # rounded to 0.1 for the wire
            assert abs(have - should) <= 0.05 + 1e-9, f"{name} minute {minute}: {have} {should}"


# -- rows, statuses, sparklines ------------------------------------------------------------------
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_row_matches_the_raw_samples(seed: int) -> None:
    """Current cpu/ram, last seen, age, status and the 60-minute sparkline of every server are
    what the raw samples say."""
    samples = random_fleet(seed, 150, NOW)
    page = whole(fleet_table(loaded(samples, NOW), NOW), NOW)
    expected = oracle_rows(samples, NOW)
    assert page["total"] == len(expected) == page["summary"]["servers"]
    assert page["sparkline_start"] == iso_z((minute_of(NOW) - 59) * MINUTE)
    assert {row["server"] for row in page["rows"]} == set(expected)
    for row in page["rows"]:
        assert_row(row, expected[row["server"]])
    statuses = [row["status"] for row in page["rows"]]
    for status in ("live", "stale", "down"):
        assert page["summary"][status] == statuses.count(status)


@pytest.mark.parametrize(
    ("silence", "status"),
    [
        (0.0, "live"),
        (119.999, "live"),
        (120.0, "stale"),
        (599.999, "stale"),
        (600.0, "down"),
        (23 * 3600.0, "down"),
    ],
)
def test_statuses_at_their_edges(silence: float, status: str) -> None:
    """live below 120 s of silence, stale from 120 s, down from 600 s."""
    rollups = loaded([("edge.example", NOW - silence, 10.0, 20.0)], NOW)
    (row,) = whole(fleet_table(rollups, NOW), NOW)["rows"]
    assert row["status"] == status


def test_a_server_silent_for_24_hours_is_no_longer_listed() -> None:
    """Down servers stay listed until the rollups forget them (their hour left the window)."""
    clock = FakeClock(NOW)
    rollups = Rollups(clock)
    feed(rollups, [("old.example", NOW - 10, 5.0, 5.0), ("new.example", NOW, 5.0, 5.0)], NOW)
    later = NOW + 23 * 3600
    feed(rollups, [("new.example", later, 7.0, 7.0)], later)
    names = [row["server"] for row in whole(fleet_table(rollups, later), later)["rows"]]
    assert names == ["old.example", "new.example"]
    gone = later + 3600
    names = [row["server"] for row in whole(fleet_table(rollups, gone), gone)["rows"]]
    assert names == ["new.example"]


def test_current_values_come_from_the_newest_minute_holding_each_metric() -> None:
    """cpu from one minute, ram from an older one: each metric's own newest bucket."""
    samples = [
        ("a.example", NOW - 600, 10.0, 70.0),
        ("a.example", NOW - 590, 30.0, 90.0),
        ("a.example", NOW - 5, 55.0, None),
        ("a.example", NOW - 4, 65.0, None),
    ]
    (row,) = whole(fleet_table(loaded(samples, NOW), NOW), NOW)["rows"]
    assert row["cpu"] == pytest.approx(60.0)
    assert row["ram"] == pytest.approx(80.0)


# -- sorting, filtering, paging ------------------------------------------------------------------
@pytest.mark.parametrize("sort", SORT_COLUMNS)
@pytest.mark.parametrize("order", ["asc", "desc"])
def test_sorted_on_every_column_in_both_orders(sort: str, order: str) -> None:
    """Every column sorts both ways; ties keep name order and missing values come last."""
    samples = random_fleet(7, 120, NOW)
    page = whole(fleet_table(loaded(samples, NOW), NOW), NOW, sort, order)
    expected = oracle_order(list(oracle_rows(samples, NOW).values()), sort, order)
    assert [row["server"] for row in page["rows"]] == expected


def test_the_default_order_is_down_stale_live_then_hottest() -> None:
    """Without parameters: down servers first, then stale, then live, each by cpu descending."""
    query = parse_fleet_query({})
    assert (query.sort, query.order, query.limit) == ("status", "asc", 100)
    samples = random_fleet(11, 80, NOW)
    page = fleet_page(fleet_table(loaded(samples, NOW), NOW), query, NOW)
    rows = page["rows"]
    ranks = [STATUS_RANK[row["status"]] for row in rows]
    assert ranks == sorted(ranks)
    for a, b in itertools.pairwise(rows):
        if a["status"] == b["status"] and a["cpu"] is not None and b["cpu"] is not None:
            assert a["cpu"] >= b["cpu"]


@pytest.mark.parametrize("q", ["web", "WEB", "-01", "db-0", "nothing-matches", "e"])
def test_the_filter_is_a_case_insensitive_name_substring(q: str) -> None:
    samples = random_fleet(5, 60, NOW)
    page = whole(fleet_table(loaded(samples, NOW), NOW), NOW, "name", "asc", q)
    names = sorted({s[0] for s in samples})
    expected = [name for name in names if q.lower() in name.lower()]
    assert [row["server"] for row in page["rows"]] == expected
    assert page["total"] == len(expected)
    assert page["summary"]["servers"] == len(names)  # the summary is of the whole fleet


@pytest.mark.parametrize("limit", [1, 7, 100])
def test_pages_follow_each_other_without_gap_or_overlap(limit: int) -> None:
    """Following next_cursor from the first page yields every matching row once, in order."""
    samples = random_fleet(9, 90, NOW)
    table = fleet_table(loaded(samples, NOW), NOW)
    everything = whole(table, NOW, "cpu", "desc", "web")
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params = {"sort": "cpu", "q": "web", "limit": str(limit)}
        if cursor:
            params["cursor"] = cursor
        page = fleet_page(table, parse_fleet_query(params), NOW)
        assert len(page["rows"]) <= limit
        assert page["total"] == everything["total"]
        seen += [row["server"] for row in page["rows"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [row["server"] for row in everything["rows"]]


def test_a_cursor_past_the_end_gives_an_empty_last_page() -> None:
    table = fleet_table(loaded(random_fleet(2, 10, NOW), NOW), NOW)
    page = fleet_page(table, parse_fleet_query({"cursor": "500"}), NOW)
    assert page["rows"] == [] and page["next_cursor"] is None and page["total"] == 10


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"sort": "colour"}, "bad_sort"),
        ({"order": "up"}, "bad_order"),
        ({"limit": "0"}, "bad_limit"),
        ({"limit": str(MAX_LIMIT + 1)}, "bad_limit"),
        ({"limit": "ten"}, "bad_limit"),
        ({"limit": "-1"}, "bad_limit"),
        ({"cursor": "-5"}, "bad_cursor"),
        ({"cursor": "abc"}, "bad_cursor"),
        ({"cursor": ""}, "bad_cursor"),
        ({"sort": ""}, "bad_sort"),
        ({"order": ""}, "bad_order"),
        ({"limit": ""}, "bad_limit"),
        ({"q": "x" * 254}, "bad_q"),
        ({"q": ["a", "b"]}, "bad_q"),
        ({"page": "2"}, "unknown_parameter"),
    ],
)
def test_bad_parameters_are_refused_with_their_reason(params: dict, reason: str) -> None:
    with pytest.raises(BadFleetQuery) as caught:
        parse_fleet_query(params)
    assert caught.value.reason == reason


# -- summary ------------------------------------------------------------------------------------
def test_the_fleet_mean_is_over_raw_samples_not_a_mean_of_means() -> None:
    """One server at 10 % once and one at 90 % three times: the minute's mean is 70, not 50."""
    minute = NOW - NOW % MINUTE
    samples = [("a.example", minute + 1, 10.0, 20.0)] + [
        ("b.example", minute + 2 + i, 90.0, 40.0) for i in range(3)
    ]
    summary = whole(fleet_table(loaded(samples, NOW), NOW), NOW)["summary"]["minute"]
    assert summary["cpu"] == pytest.approx(70.0) and summary["ram"] == pytest.approx(35.0)
    assert summary["current"] is True and summary["start"] == iso_z(minute)
    assert (summary["samples"], summary["cpu_samples"]) == (4, 4)


@pytest.mark.parametrize("seed", [4, 5])
def test_the_fleet_mean_matches_the_raw_samples_of_the_minute(seed: int) -> None:
    samples = random_fleet(seed, 120, NOW)
    summary = whole(fleet_table(loaded(samples, NOW), NOW), NOW)["summary"]["minute"]
    current = [s for s in samples if minute_of(s[1]) == minute_of(NOW)]
    for index, metric in ((2, "cpu"), (3, "ram")):
        values = [s[index] for s in current if s[index] is not None]
        assert summary[f"{metric}_samples"] == len(values)
        assert summary[metric] == pytest.approx(math.fsum(values) / len(values), rel=1e-12)


def test_the_fleet_mean_falls_back_to_the_previous_minute_until_the_current_has_samples() -> None:
    minute = NOW - NOW % MINUTE
    samples = [("a.example", minute - 30, 40.0, 10.0), ("b.example", minute - 20, 60.0, 30.0)]
    rollups = loaded(samples, minute + 1)
    summary = whole(fleet_table(rollups, minute + 1), minute + 1)["summary"]["minute"]
    assert summary["start"] == iso_z(minute - MINUTE) and summary["current"] is False
    assert summary["cpu"] == pytest.approx(50.0)
    feed(rollups, [("a.example", minute + 2, 80.0, 80.0)], minute + 3)
    summary = whole(fleet_table(rollups, minute + 3), minute + 3)["summary"]["minute"]
    assert summary["start"] == iso_z(minute) and summary["current"] is True
    assert summary["cpu"] == pytest.approx(80.0)


def test_the_hottest_are_the_ten_live_servers_with_the_highest_cpu() -> None:
    samples = random_fleet(13, 150, NOW)
    page = whole(fleet_table(loaded(samples, NOW), NOW), NOW)
    rows = oracle_rows(samples, NOW).values()
    live = [r for r in rows if r["status"] == "live" and r["cpu"] is not None]
    expected = sorted(live, key=lambda r: (-r["cpu"], r["server"]))[:10]
    assert [h["server"] for h in page["summary"]["hottest"]] == [r["server"] for r in expected]
    assert len(expected) == 10  # the seed gives enough live servers for the check to mean much


def grid_cpu(grid: dict[str, Any]) -> list[float | None]:
    """The grid's cpu column as the page reads it: little-endian uint16 tenths, 65535 = none."""
    raw = base64.b64decode(grid["cpu"], validate=True)
    assert len(raw) == 2 * grid["count"]
    codes = np.frombuffer(raw, "<u2").tolist()
    return [None if code == GRID_NO_CPU else code / 10 for code in codes]


def test_the_grid_lists_every_server_with_its_cpu_and_status() -> None:
    samples = random_fleet(3, 70, NOW)
    grid = fleet_grid(fleet_table(loaded(samples, NOW), NOW), NOW, "v1")
    expected = oracle_rows(samples, NOW)
    assert grid["servers"] == sorted(expected) and grid["count"] == len(expected)
    assert grid["names_version"] == "v1"
    for name, cpu, letter in zip(grid["servers"], grid_cpu(grid), grid["status"], strict=True):
        want = expected[name]
        assert letter == want["status"][0]
        assert (cpu is None) == (want["cpu"] is None)
        if cpu is not None:
            assert abs(cpu - want["cpu"]) <= 0.05 + 1e-9


def test_the_grid_leaves_the_names_out_while_the_callers_are_current() -> None:
    """The names travel when the caller's version is not the current one: on the first call,
    after a server came or left, and from another aggregator run; never for a batch alone."""
    minute = NOW - NOW % MINUTE
    rollups = loaded([("b.example", minute - 30, 10.0, 10.0), ("a.example", minute, 20, 20)], NOW)
    answers = FleetAnswers()
    first = ask(answers, rollups, NOW, op="grid")
    assert first["servers"] == ["a.example", "b.example"]
    version = first["names_version"]
    again = ask(answers, rollups, NOW + 1, op="grid", names=version)
    assert "servers" not in again and again["names_version"] == version
    assert again["count"] == 2 and grid_cpu(again) == [20.0, 10.0]
    feed(rollups, [("a.example", NOW + 2, 30.0, 30.0)], NOW + 2)
    same = ask(answers, rollups, NOW + 3, op="grid", names=version)
    assert "servers" not in same and grid_cpu(same) == [25.0, 10.0]
    feed(rollups, [("c.example", NOW + 4, 40.0, None)], NOW + 4)
    grown = ask(answers, rollups, NOW + 5, op="grid", names=version)
    assert grown["servers"] == ["a.example", "b.example", "c.example"]
    assert grown["names_version"] != version
    later = NOW + 25 * 3600  # b and c are silent for 24 hours: only a is left
    feed(rollups, [("a.example", later, 1.0, 1.0)], later)
    shrunk = ask(answers, rollups, later, op="grid", names=grown["names_version"])
    assert shrunk["servers"] == ["a.example"] and shrunk["status"] == "l"
    elsewhere = ask(FleetAnswers(), rollups, later, op="grid", names=shrunk["names_version"])
    assert elsewhere["servers"] == ["a.example"]


def test_the_table_kept_as_batches_come_matches_the_raw_samples_after_every_batch() -> None:
    """Each server's current values are kept up to date as batches are applied and the window
    moves (a few seconds, new minutes, hours at once, samples ahead of the clock coming into
    the window, servers released after 24 hours of silence): after every batch each row is
    what the raw samples say, and the kept values equal the ones made afresh from the rings."""
    rng = random.Random(17)
    clock = FakeClock(NOW)
    rollups = Rollups(clock, capacity=4)
    names = [f"{rng.choice(['web', 'db'])}-{index:02d}.example" for index in range(30)]
    samples: list[Any] = []
    steps = [0.5, 7.0, 29.0, 45.0, 61.0, 150.0, 3700.0]
    for step in range(80):
        now = clock.advance(26 * 3600.0 if step == 50 else rng.choice(steps))
        batch = []
        for name in rng.sample(names, rng.randint(0, 12)):
            for _ in range(rng.randint(1, 3)):
                offset = rng.choice([-rng.uniform(0, 5400), -rng.uniform(0, 90), 0.0])
                ts = now + (rng.uniform(0, 59) if rng.random() < 0.2 else offset)
                cpu = None if rng.random() < 0.2 else round(rng.uniform(0, 100), 2)
                ram = (
                    None
                    if cpu is not None and rng.random() < 0.2
                    else round(rng.uniform(0, 100), 2)
                )
                batch.append((name, ts, cpu, ram))
        if batch:
            feed(rollups, batch, now)
            samples += batch
        rollups.evict_silent(now)
        rollups._check()
        page = whole(fleet_table(rollups, now), now)
        oldest = oldest_accepted_ts(now)
        expected = {n: r for n, r in oracle_rows(samples, now).items() if r["seen"] >= oldest}
        assert {row["server"] for row in page["rows"]} == set(expected), step
        for row in page["rows"]:
            assert_row(row, expected[row["server"]])
    assert rollups.evictions > 0  # the 26-hour step released servers


@pytest.mark.parametrize("sort", SORT_COLUMNS)
@pytest.mark.parametrize("order", ["asc", "desc"])
def test_pages_are_the_whole_order_cut_when_many_servers_share_a_value(
    sort: str, order: str
) -> None:
    """A page that is a small part of the fleet is picked without sorting the whole fleet; with
    values shared by many servers (ties, missing values) the pages, one after another, are still
    the oracle's order, and so is a page near the end."""
    rng = random.Random(23)
    samples = []
    for index in range(400):
        cpu = rng.choice([None, 10.0, 50.0, 50.0, 90.0])
        ram = rng.choice([None, 20.0, 20.0, 80.0]) if cpu is not None else 20.0
        silent = rng.choice([0.0, 0.0, 150.0, 700.0])
        samples.append((f"n-{index:03d}.example", NOW - silent, cpu, ram))
    table = fleet_table(loaded(samples, NOW), NOW)
    expected = oracle_order(list(oracle_rows(samples, NOW).values()), sort, order)
    seen: list[str] = []
    for offset in range(0, 63, 9):
        query = FleetQuery(sort=sort, order=order, limit=9, offset=offset)
        seen += [row["server"] for row in fleet_page(table, query, NOW)["rows"]]
    assert seen == expected[:63]
    tail = fleet_page(table, FleetQuery(sort=sort, order=order, limit=9, offset=395), NOW)
    assert [row["server"] for row in tail["rows"]] == expected[395:]


# -- the aggregator's answers and their cache ----------------------------------------------------
def ask(answers: FleetAnswers, rollups: Rollups, now: float, **request: Any) -> dict[str, Any]:
    if request.pop("op", "fleet") == "grid":
        body = answers.grid(rollups, request.get("names"), now)
    else:
        body = answers.page(rollups, query_from_request(request), now)
    answer: dict[str, Any] = json.loads(body)
    return answer


def test_the_table_is_rebuilt_only_after_a_batch_or_a_new_minute() -> None:
    """Repeated queries reuse the table; ages and statuses still follow the clock."""
    minute = NOW - NOW % MINUTE
    rollups = loaded([("a.example", minute - 100, 10.0, 10.0)], minute + 1)
    answers = FleetAnswers()
    first = ask(answers, rollups, minute + 1, sort="cpu", order="desc", limit=10)
    assert first["rows"][0]["status"] == "live"
    later = ask(answers, rollups, minute + 25, sort="name")
    assert answers.rebuilds == 1
    assert later["rows"][0]["status"] == "stale"  # 125 s of silence, same table
    feed(rollups, [("b.example", minute + 26, 90.0, 90.0)], minute + 26)
    assert ask(answers, rollups, minute + 27)["total"] == 2
    assert answers.rebuilds == 2
    ask(answers, rollups, minute + 61, op="grid")
    assert answers.rebuilds == 3


def test_a_bad_request_to_the_aggregator_is_refused_with_its_reason() -> None:
    state = AggregatorState(loaded([("a.example", NOW, 1.0, 1.0)], NOW))
    reply = msgpack.unpackb(state.answer({"op": "fleet", "sort": "x"}, NOW))
    assert reply["refused"][0] == "bad_sort"
    reply = msgpack.unpackb(state.answer({"op": "fleet", "limit": "many"}, NOW))
    assert reply["refused"][0] == "bad_request"
