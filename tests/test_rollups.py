"""Rollups checked against the brute-force oracle in :mod:`servertrack.testing.hosts`."""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from servertrack.aggregator.rollups import REFUSED, ApplyResult, Rollups
from servertrack.common.buckets import iso_utc, time_verdict
from servertrack.common.oracle import RawSample, iso_z, oracle_buckets
from servertrack.testing.hosts import FakeClock
from tests.support import document

MINUTE = 60
HOUR = 3600
T0 = 1_699_999_200.0
"""An hour start (2023-11-14T22:00:00Z), so offsets from it read as minutes and hours."""

Expected = dict[str, list[dict[str, Any]]]


# -- helpers ------------------------------------------------------------------------------------
def accepted(ts: float, now: float) -> bool:
    """Whether ``ts`` is still inside the 24-hour window at ``now`` (restated independently)."""
    return ts - ts % HOUR >= (now - now % HOUR) - 23 * HOUR


def feed(rollups: Rollups, batch: list[RawSample], now: float | None = None) -> ApplyResult:
    """Apply ``batch`` the way the aggregator does: resolve every row, apply, then release the
    servers silent for 24 hours (only between batches)."""
    rows = np.array([rollups.row_for(sample[0]) for sample in batch], dtype=np.int64)
    ts = np.array([sample[1] for sample in batch], dtype=np.float64)
    cpu = np.array([np.nan if s[2] is None else s[2] for s in batch], dtype=np.float64)
    ram = np.array([np.nan if s[3] is None else s[3] for s in batch], dtype=np.float64)
    result = rollups.apply(rows, ts, cpu, ram, now)
    rollups.evict_silent(now)
    return result


def assert_view(view: dict[str, Any] | None, expected: Expected, where: str = "") -> None:
    """``view`` equals the oracle's buckets: means and sums to 1e-12 relative, the rest exact."""
    if not expected["hours"]:
        assert view is None, f"{where}: expected no data, got {view}"
        return
    assert view is not None, f"{where}: expected {expected}, got None"
    for kind in ("minutes", "hours"):
        got, want = view[kind], expected[kind]
        assert [b["start"] for b in got] == [b["start"] for b in want], f"{where} {kind}"
        for have, should in zip(got, want, strict=True):
            if kind == "minutes":  # these rollups are never asked to score: no score anywhere
                assert (have.pop("cpu_anomaly"), have.pop("ram_anomaly")) == (None, None)
            assert set(have) == set(should), f"{where} {kind} {should['start']}"
            for field, value in should.items():
                if field in ("cpu", "ram", "cpu_sum", "ram_sum") and value is not None:
                    assert math.isclose(have[field], value, rel_tol=1e-12, abs_tol=0.0), (
                        f"{where} {kind} {should['start']} {field}: {have[field]} != {value}"
                    )
                else:
                    assert have[field] == value, (
                        f"{where} {kind} {should['start']} {field}: {have[field]!r} != {value!r}"
                    )


def starts(view: dict[str, Any] | None, kind: str) -> list[str]:
    """The bucket starts of one kind (``minutes`` or ``hours``) of a view."""
    assert view is not None
    return [bucket["start"] for bucket in view[kind]]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0 + 30.0)


@pytest.fixture
def rollups(clock: FakeClock) -> Rollups:
    return Rollups(clock=clock, capacity=4)


# -- random stream and properties ---------------------------------------------------------------
def test_random_stream_matches_oracle_over_25_hours() -> None:
    """A seeded random stream over 25 simulated hours gives the oracle's views at every check."""
    rng = random.Random(20261122)
    clock = FakeClock(T0 + 17.125)
    rollups = Rollups(clock=clock, capacity=2)
    end = clock() + 25 * HOUR
    # (name, cpu?, ram?, active spans as offsets in hours); "mixed" drops one metric at random.
    servers = [
        ("steady.example.com", True, True, [(0, 25)]),
        ("cpu-only.example.com", True, False, [(0, 25)]),
        ("ram-only.example.com", False, True, [(2, 25)]),
        ("gone-early.example.com", True, True, [(0, 0.5)]),
        ("returns.example.com", True, True, [(0, 0.75), (24.9, 25)]),
        ("late-joiner.example.com", True, True, [(20, 25)]),
        ("bursty.example.com", True, True, [(1, 3), (12, 13), (23, 25)]),
        ("mixed.example.com", True, True, [(0, 25)]),
    ]
    sent: dict[str, list[RawSample]] = {name: [] for name, *_ in servers}
    newest: dict[str, float] = {}
    checks = 0
    step = 0
    while clock() < end:
        now = clock.advance(rng.randint(1, 20_000) / 1000)
        hours_in = (now - T0) / HOUR
        batch: list[RawSample] = []
        for name, has_cpu, has_ram, spans in servers:
            if not any(a <= hours_in < b for a, b in spans) or rng.random() < 0.5:
                continue
            for _ in range(rng.randint(1, 3)):
                roll = rng.random()
                if roll < 0.84:
                    ts = now - rng.uniform(0, 3)
                elif roll < 0.89:
                    ts = now + rng.uniform(0, 60)
                elif roll < 0.94:
                    ts = now - rng.uniform(0, 23 * HOUR)
                elif roll < 0.97:
                    ts = now - rng.uniform(HOUR, 2 * HOUR)
                else:
                    ts = now - rng.uniform(23 * HOUR, 26 * HOUR)
                if rng.random() < 0.05:
                    ts = min(ts - ts % MINUTE, now + 60) - rng.choice([0.0, 1e-6])
                cpu = rng.choice([rng.uniform(0, 100), 0.0, 100.0, 42.5]) if has_cpu else None
                ram = rng.choice([rng.uniform(0, 100), 0.0, 100.0, 17.25]) if has_ram else None
                if name.startswith("mixed") and rng.random() < 0.6:
                    cpu, ram = (None, ram) if rng.random() < 0.5 else (cpu, None)
                batch.append((name, ts, cpu, ram))
        rng.shuffle(batch)
        if rng.random() < 0.2:  # sometimes one record() per sample instead of one batch
            results = [rollups.record(*sample) for sample in batch]
            result = ApplyResult(sum(r.applied for r in results), sum(r.expired for r in results))
        else:
            result = feed(rollups, batch)
        keep = [sample for sample in batch if accepted(sample[1], now)]
        assert result == ApplyResult(applied=len(keep), expired=len(batch) - len(keep))
        for sample in keep:
            sent[sample[0]].append(sample)
            newest[sample[0]] = max(newest.get(sample[0], -math.inf), sample[1])
        step += 1
        if step % 40 == 0:
            checks += 1
            rollups._check()
            for name in rng.sample(sorted(sent), 3):
                # Only samples of the last 26 hours can be in any window; trim to keep it fast.
                sent[name] = [s for s in sent[name] if s[1] >= now - 26 * HOUR]
                view = document(rollups.view(name))
                assert_view(view, oracle_buckets(sent[name], now), f"{name} at {now:.3f}")
                if view is not None:
                    assert view["last_seen"] == iso_z(newest[name])
    now = clock()
    rollups._check()
    for name in sent:
        assert_view(
            document(rollups.view(name)), oracle_buckets(sent[name], now), f"{name} at the end"
        )
    tracked = {name for name, _ in rollups.servers()}
    assert "gone-early.example.com" not in tracked
    assert "returns.example.com" in tracked
    assert len(rollups.name_of) <= len(servers)
    assert checks > 100


EVENTS = st.lists(
    st.tuples(
        st.one_of(st.integers(0, 90_000), st.integers(0, 30 * HOUR * 1000)),  # ms to advance
        st.integers(0, 2),  # which server
        st.one_of(  # ts offset from now, seconds
            st.floats(-26 * HOUR, 60),
            st.integers(-26 * HOUR, 60).map(float),
            st.integers(-3 * MINUTE, 60).map(float),
        ),
        st.booleans(),  # snap ts to the start of its minute
        st.sampled_from(["cpu", "ram", "both"]),  # which metrics the sample carries
        st.floats(0, 100),
        st.floats(0, 100),
    ),
    max_size=40,
)
PROPERTY_SERVERS = ("a.example", "b.example", "c.example")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(start_ms=st.integers(0, HOUR * 1000), events=EVENTS)
def test_small_random_streams_match_oracle(start_ms: int, events: list[Any]) -> None:
    """For any small stream of in-window samples, every view equals the oracle's after each one."""
    clock = FakeClock(T0 + start_ms / 1000)
    rollups = Rollups(clock=clock, capacity=1)
    sent: list[RawSample] = []
    for advance_ms, which, offset, snap, metrics, cpu, ram in events:
        now = clock.advance(advance_ms / 1000)
        ts = now + offset
        if snap:
            ts -= ts % MINUTE
        sample = (
            PROPERTY_SERVERS[which],
            ts,
            None if metrics == "ram" else cpu,
            None if metrics == "cpu" else ram,
        )
        result = feed(rollups, [sample])
        assert result.expired == (0 if accepted(ts, now) else 1)
        if accepted(ts, now):
            sent.append(sample)
        rollups._check()
        for other in PROPERTY_SERVERS:
            expected = oracle_buckets(sent, now, fqdn=other)
            assert_view(document(rollups.view(other)), expected, f"{other} at {now}")


# -- buckets -----------------------------------------------------------------------------------
def test_bucket_boundaries_follow_ts_minus_ts_mod_width(rollups: Rollups, clock: FakeClock) -> None:
    """A ts on :00 or on the hour opens a new bucket; a ts at x.999999 stays in the previous one."""
    feed(rollups, [("a", T0 - 1e-6, 1.0, 1.0)])  # previous hour, its last minute
    feed(rollups, [("a", T0, 2.0, 2.0)])  # on the hour
    feed(rollups, [("a", T0 + 59.999999, 3.0, 3.0)])  # still minute :00
    feed(rollups, [("a", T0 + 60, 4.0, 4.0)])  # minute :01
    now = clock.set(T0 + 3 * MINUTE)
    view = document(rollups.view("a"))
    assert starts(view, "minutes") == [
        "2023-11-14T21:59:00Z",
        "2023-11-14T22:00:00Z",
        "2023-11-14T22:01:00Z",
    ]
    assert starts(view, "hours") == ["2023-11-14T21:00:00Z", "2023-11-14T22:00:00Z"]
    assert view is not None
    assert [b["cpu_samples"] for b in view["minutes"]] == [1, 2, 1]
    assert [b["cpu_max"] for b in view["hours"]] == [1.0, 4.0]
    sent = [("a", T0 - 1e-6, 1.0, 1.0), ("a", T0, 2.0, 2.0)]
    sent += [("a", T0 + 59.999999, 3.0, 3.0), ("a", T0 + 60, 4.0, 4.0)]
    assert_view(view, oracle_buckets(sent, now))


def test_partial_samples_report_none_for_the_missing_metric(
    rollups: Rollups, clock: FakeClock
) -> None:
    """Buckets with only cpu (or only ram) samples show None mean/min/max and 0 for the other."""
    sent: list[RawSample] = [("c", T0 + 5, 40.0, None), ("c", T0 + 6, 60.0, None)]
    sent += [("r", T0 + 65, None, 10.0)]
    feed(rollups, sent)
    now = clock.set(T0 + 2 * MINUTE)
    cpu_only, ram_only = document(rollups.view("c")), document(rollups.view("r"))
    assert cpu_only is not None and ram_only is not None
    bucket = cpu_only["minutes"][0]
    assert (bucket["cpu"], bucket["cpu_samples"], bucket["samples"]) == (50.0, 2, 2)
    assert bucket["ram"] is None and bucket["ram_min"] is None and bucket["ram_max"] is None
    assert bucket["ram_samples"] == 0
    bucket = ram_only["hours"][0]
    assert bucket["cpu"] is None and bucket["cpu_samples"] == 0
    assert (bucket["ram"], bucket["ram_samples"], bucket["samples"]) == (10.0, 1, 1)
    assert_view(cpu_only, oracle_buckets(sent, now, fqdn="c"))
    assert_view(ram_only, oracle_buckets(sent, now, fqdn="r"))


def test_partial_samples_mixed_in_one_bucket_count_every_sample(
    rollups: Rollups, clock: FakeClock
) -> None:
    """A cpu-only and a ram-only sample in the same minute make a bucket of 2 samples, not 1."""
    sent: list[RawSample] = [("a", T0 + 5, 40.0, None), ("a", T0 + 6, None, 10.0)]
    feed(rollups, sent)
    now = clock.set(T0 + MINUTE)
    view = document(rollups.view("a"))
    assert view is not None
    bucket = view["minutes"][0]
    assert (bucket["cpu_samples"], bucket["ram_samples"]) == (1, 1)
    assert bucket["samples"] == 2
    assert view["hours"][0]["samples"] == 2
    assert_view(view, oracle_buckets(sent, now))


def test_late_samples_land_in_their_own_old_buckets(rollups: Rollups, clock: FakeClock) -> None:
    """Samples arriving out of order are added to the minute and hour they belong to."""
    now = clock.set(T0 + 5 * HOUR + 30 * MINUTE + 10)
    sent: list[RawSample] = [("a", now - 1, 10.0, 10.0)]
    feed(rollups, sent)
    late: list[RawSample] = [
        ("a", now - 10 * MINUTE, 20.0, 30.0),  # older minute, same hour
        ("a", now - 3 * HOUR, 70.0, 80.0),  # older hour, only in hours
        ("a", now - 10 * MINUTE + 1, 40.0, 50.0),  # same older minute again
    ]
    for sample in late:
        clock.advance(0.25)
        feed(rollups, [sample])
    sent += late
    view = document(rollups.view("a"))
    assert view is not None
    assert starts(view, "minutes") == ["2023-11-15T03:20:00Z", "2023-11-15T03:30:00Z"]
    assert view["minutes"][0]["cpu"] == 30.0 and view["minutes"][0]["samples"] == 2
    assert view["minutes"][1]["cpu"] == 10.0 and view["minutes"][1]["samples"] == 1
    assert starts(view, "hours") == ["2023-11-15T00:00:00Z", "2023-11-15T03:00:00Z"]
    assert view["hours"][0]["cpu"] == 70.0
    assert view["last_seen"] == iso_utc(now - 1)
    assert_view(view, oracle_buckets(sent, clock()))


def test_sample_older_than_minute_window_counts_only_in_hours(
    rollups: Rollups, clock: FakeClock
) -> None:
    """A sample in the hour window but before the 60-minute window shows in hours, not minutes."""
    now = clock.set(T0 + 2 * HOUR + 15 * MINUTE)
    current_minute = now - now % MINUTE
    sent: list[RawSample] = [
        ("a", current_minute - 60 * MINUTE, 10.0, 10.0),  # 60 minutes back: just outside
        ("a", current_minute - 59 * MINUTE, 20.0, 20.0),  # 59 minutes back: oldest shown
        ("a", now - 90 * MINUTE, 30.0, 30.0),
    ]
    feed(rollups, sent)
    view = document(rollups.view("a"))
    assert starts(view, "minutes") == [iso_utc(current_minute - 59 * MINUTE)]
    assert view is not None
    assert [b["samples"] for b in view["hours"]] == [1, 2]
    assert view["hours"][1]["cpu"] == 15.0
    assert_view(view, oracle_buckets(sent, now))


def test_sample_of_next_minute_shows_once_its_minute_is_current(
    rollups: Rollups, clock: FakeClock
) -> None:
    """A sample up to 60 s ahead is held back from minutes until its minute starts, then shown."""
    now = clock()  # T0 + 30
    ahead: RawSample = ("a", now + 60, 90.0, 80.0)  # exactly 60 s ahead: minute :01
    feed(rollups, [ahead])
    view = document(rollups.view("a"))
    assert view is not None
    assert view["minutes"] == []
    assert starts(view, "hours") == ["2023-11-14T22:00:00Z"]
    assert_view(view, oracle_buckets([ahead], now))
    clock.advance(29.999)
    assert document(rollups.view("a"))["minutes"] == []  # type: ignore[index]
    now = clock.advance(0.001)
    view = document(rollups.view("a"))
    assert starts(view, "minutes") == ["2023-11-14T22:01:00Z"]
    assert_view(view, oracle_buckets([ahead], now))


def test_sample_of_next_hour_shows_once_its_hour_is_current(
    rollups: Rollups, clock: FakeClock
) -> None:
    """A sample ahead of the clock in the next hour is invisible until that hour starts."""
    now = clock.set(T0 + HOUR - 20)
    ahead: RawSample = ("a", T0 + HOUR + 30, 55.0, None)
    assert feed(rollups, [ahead]) == ApplyResult(applied=1, expired=0)
    assert document(rollups.view("a")) is None
    assert_view(None, oracle_buckets([ahead], now))
    now = clock.set(T0 + HOUR - 0.001)
    assert document(rollups.view("a")) is None
    now = clock.set(T0 + HOUR)
    view = document(rollups.view("a"))
    assert starts(view, "minutes") == starts(view, "hours") == ["2023-11-14T23:00:00Z"]
    assert_view(view, oracle_buckets([ahead], now))


def test_minute_window_slides_past_a_minute_60_minutes_old(
    rollups: Rollups, clock: FakeClock
) -> None:
    """A minute stays while it is one of the last 60 and disappears when it is 60 minutes back."""
    sent: list[RawSample] = [("a", T0 + 5, 10.0, 20.0)]
    feed(rollups, sent)
    clock.set(T0 + 59 * MINUTE + 59.999)
    assert starts(document(rollups.view("a")), "minutes") == ["2023-11-14T22:00:00Z"]
    now = clock.set(T0 + 60 * MINUTE)
    view = document(rollups.view("a"))
    assert starts(view, "minutes") == []
    assert starts(view, "hours") == ["2023-11-14T22:00:00Z"]
    assert_view(view, oracle_buckets(sent, now))
    clock.set(T0 + 61 * MINUTE)
    assert starts(document(rollups.view("a")), "minutes") == []


def test_hour_window_slides_past_an_hour_24_hours_old(rollups: Rollups, clock: FakeClock) -> None:
    """An hour stays while it is one of the last 24 and disappears when it is 24 hours back."""
    sent: list[RawSample] = [("a", T0 + 5, 10.0, 20.0)]
    feed(rollups, sent)
    for hour in range(1, 24):  # keep the server alive with one sample an hour
        clock.set(T0 + hour * HOUR + 10)
        sample: RawSample = ("a", clock(), 50.0, 50.0)
        feed(rollups, [sample])
        sent.append(sample)
    now = clock.set(T0 + 24 * HOUR - 0.001)
    view = document(rollups.view("a"))
    assert starts(view, "hours")[0] == "2023-11-14T22:00:00Z"
    assert len(starts(view, "hours")) == 24
    assert_view(view, oracle_buckets(sent, now))
    now = clock.set(T0 + 24 * HOUR)
    view = document(rollups.view("a"))
    assert starts(view, "hours")[0] == "2023-11-14T23:00:00Z"
    assert len(starts(view, "hours")) == 23
    assert_view(view, oracle_buckets(sent, now))
    now = clock.set(T0 + 25 * HOUR)
    view = document(rollups.view("a"))
    assert starts(view, "hours")[0] == "2023-11-15T00:00:00Z"
    assert_view(view, oracle_buckets(sent, now))


def test_hour_mean_is_mean_of_raw_samples_not_of_minute_means(
    rollups: Rollups, clock: FakeClock
) -> None:
    """Three 0% samples in one minute and one 100% in the next make an hour mean of 25, not 50."""
    sent: list[RawSample] = [("a", T0 + 1, 0.0, 0.0), ("a", T0 + 2, 0.0, 0.0)]
    sent += [("a", T0 + 3, 0.0, 0.0), ("a", T0 + 61, 100.0, 100.0)]
    feed(rollups, sent)
    now = clock.set(T0 + 2 * MINUTE)
    view = document(rollups.view("a"))
    assert view is not None
    minute_means = [bucket["cpu"] for bucket in view["minutes"]]
    assert minute_means == [0.0, 100.0]
    hour = view["hours"][0]
    assert hour["cpu"] == 25.0 and hour["ram"] == 25.0
    assert hour["cpu"] != sum(minute_means) / len(minute_means)
    assert (hour["cpu_min"], hour["cpu_max"], hour["samples"]) == (0.0, 100.0, 4)
    assert_view(view, oracle_buckets(sent, now))


def test_many_servers_in_one_batch_with_repeated_keys(rollups: Rollups, clock: FakeClock) -> None:
    """One shuffled batch for 50 servers, many samples per (server, bucket), matches the oracle."""
    rng = random.Random(7)
    now = clock.set(T0 + 3 * HOUR + 7 * MINUTE + 0.5)
    names = [f"host-{i:02d}.dc1" for i in range(50)]
    batch: list[RawSample] = []
    for _ in range(3000):
        name = rng.choice(names[:10]) if rng.random() < 0.5 else rng.choice(names)
        ts = now - rng.choice([0.0, 0.25, 61.0, 125.0, 2 * HOUR, 5 * HOUR]) - rng.random()
        batch.append((name, ts, rng.uniform(0, 100), rng.uniform(0, 100)))
    batch += batch[:200]  # the very same samples twice count twice
    rng.shuffle(batch)
    assert feed(rollups, batch) == ApplyResult(applied=len(batch), expired=0)
    rollups._check()
    assert rollups.capacity >= 50
    for name in names:
        assert_view(document(rollups.view(name)), oracle_buckets(batch, now, fqdn=name), name)


# -- server lifetime and memory -----------------------------------------------------------------
def test_server_silent_for_24_hours_is_forgotten_and_its_row_reused(
    rollups: Rollups, clock: FakeClock
) -> None:
    """After 24 silent hours view() is None, the server is untracked and a newcomer gets its row."""
    feed(rollups, [("old", T0 + 10, 10.0, 10.0)])
    row = rollups.row_for("old")
    clock.set(T0 + 24 * HOUR - 1)
    assert document(rollups.view("old")) is not None
    evictions = rollups.evictions
    clock.set(T0 + 24 * HOUR)
    assert document(rollups.view("old")) is None
    assert rollups.evict_silent() == 1  # the aggregator's housekeeping, between batches
    assert rollups.evictions == evictions + 1
    assert "old" not in dict(rollups.servers())
    feed(rollups, [("new", clock(), 70.0, None)])
    assert rollups.row_for("new") == row
    view = document(rollups.view("new"))
    assert view is not None
    assert [b["cpu_samples"] for b in view["hours"]] == [1]
    assert view["hours"][0]["ram_samples"] == 0
    rollups._check()


def test_churning_servers_do_not_grow_capacity(rollups: Rollups, clock: FakeClock) -> None:
    """Generation after generation of servers that fall silent reuse rows instead of growing."""
    for generation in range(30):
        names = [f"gen{generation}-{i}" for i in range(4)]
        feed(rollups, [(name, clock(), 1.0, 2.0) for name in names])
        assert all(document(rollups.view(name)) is not None for name in names)
        clock.advance(24 * HOUR + MINUTE)
        assert all(document(rollups.view(name)) is None for name in names)
        rollups.evict_silent()
    assert rollups.capacity == 4
    assert len(rollups.name_of) == 4
    assert rollups.servers() == []
    rollups._check()


def test_rows_up_to_the_server_cap_are_set_aside_at_once_and_never_copied() -> None:
    """With ``max_servers`` the rows for that many servers are set aside at start, as memory the
    system hands out on first use: a fleet appearing at once never waits while every row is
    copied into larger arrays (seconds at 250,000 servers), and the rows not used yet are never
    written."""
    clock = FakeClock(T0 + 30.0)
    rollups = Rollups(clock, max_servers=20_000)
    arrays = [a for ring in (rollups.minutes, rollups.hours) for a in ring.fields.values()]
    rows = np.array([rollups.row_for(f"s{index:05d}") for index in range(15_000)])
    assert rollups.minutes.ready < 20_000  # the last rows are not even emptied yet
    rollups.apply(
        rows, np.full(rows.size, T0 + 29.0), np.full(rows.size, 5.0), np.full(rows.size, np.nan)
    )
    rows = np.array([rollups.row_for(f"t{index:05d}") for index in range(5_000)])
    assert rollups.row_for("one-more") == REFUSED
    rollups.apply(
        rows, np.full(rows.size, T0 + 29.5), np.full(rows.size, 7.0), np.full(rows.size, 1.0)
    )
    kept = [a for ring in (rollups.minutes, rollups.hours) for a in ring.fields.values()]
    assert all(a is b for a, b in zip(arrays, kept, strict=True))
    assert rollups.capacity == 20_000
    rollups._check()
    assert document(rollups.view("t04999"))["minutes"][0]["cpu"] == 7.0


def test_first_sample_of_new_server_is_kept_when_the_minute_rolls() -> None:
    """record() for a brand-new server keeps the sample even when that call moves the window."""
    clock = FakeClock(T0 + 30.0)
    rollups = Rollups(clock=clock, capacity=4)
    rollups.record("fresh", clock(), 12.0, 34.0)
    view = document(rollups.view("fresh"))
    assert view is not None
    assert_view(view, oracle_buckets([("fresh", T0 + 30.0, 12.0, 34.0)], clock()))
    clock.advance(MINUTE)  # same thing at a later minute, with an established server around
    rollups.record("fresh-too", clock(), 1.0, 2.0)
    assert document(rollups.view("fresh-too")) is not None


def test_server_back_after_long_silence_keeps_its_new_sample(clock: FakeClock) -> None:
    """A server silent for over 24 hours that reports again shows that new sample."""
    rollups = Rollups(clock=clock, capacity=4)
    rollups.record("back", T0 + 10, 10.0, 10.0, now=T0 + 10)
    now = clock.set(T0 + 24 * HOUR + 5 * MINUTE)
    rollups.record("back", now, 60.0, 70.0)
    assert_view(document(rollups.view("back")), oracle_buckets([("back", now, 60.0, 70.0)], now))


def test_evicted_row_does_not_leak_samples_into_the_next_server(clock: FakeClock) -> None:
    """Samples written while a row is being released never appear under another server's name."""
    rollups = Rollups(clock=clock, capacity=4)
    rollups.record("old", T0 + 10, 10.0, 10.0, now=T0 + 10)
    now = clock.set(T0 + 24 * HOUR + 5 * MINUTE)
    rollups.record("old", now, 60.0, 70.0)
    now = clock.advance(1)
    rollups.record("other", now, 20.0, 20.0)
    view = document(rollups.view("other"))
    assert view is not None
    assert view["hours"][0]["samples"] == 1
    assert_view(view, oracle_buckets([("other", now, 20.0, 20.0)], now))


def test_record_for_existing_server_counts_expired_samples(
    rollups: Rollups, clock: FakeClock
) -> None:
    """A sample whose hour left the 24-hour window is not applied and is counted as expired."""
    now = clock.set(T0 + 30 * HOUR + 30)
    feed(rollups, [("a", now, 1.0, 1.0)])
    oldest = now - now % HOUR - 23 * HOUR
    assert rollups.record("a", oldest, 5.0, 5.0) == ApplyResult(applied=1, expired=0)
    assert rollups.record("a", oldest - 1e-3, 5.0, 5.0) == ApplyResult(applied=0, expired=1)
    assert rollups.expired_total == 1
    view = document(rollups.view("a"))
    assert view is not None
    assert view["hours"][0]["start"] == iso_utc(oldest)
    assert view["hours"][0]["samples"] == 1


@pytest.mark.parametrize(
    ("offset", "verdict"),
    [
        (60.0, None),
        (60.001, "future"),
        (0.0, None),
        (-1.0, None),
    ],
)
def test_time_verdict_future_edge(offset: float, verdict: str | None) -> None:
    """A ts up to 60 s ahead of now is accepted and anything further ahead is 'future'."""
    now = T0 + 1234.5
    assert time_verdict(now + offset, now) == verdict


def test_time_verdict_too_old_edge() -> None:
    """A ts in the oldest hour of the window is accepted; a moment earlier it is 'too_old'."""
    now = T0 + 23 * HOUR + 59 * MINUTE
    assert time_verdict(T0, now) is None
    assert time_verdict(T0 - 1e-3, now) == "too_old"
    assert time_verdict(T0, now + 60) == "too_old"  # now + 60 is the next hour


def test_oracle_and_view_agree_on_iso_strings() -> None:
    """Bucket starts and last_seen are UTC ISO strings with a Z, microseconds only when present."""
    assert iso_utc(T0) == iso_z(T0) == "2023-11-14T22:00:00Z"
    assert iso_utc(T0 + 0.5) == iso_z(T0 + 0.5) == "2023-11-14T22:00:00.500000Z"
