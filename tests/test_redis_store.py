"""The Redis store against a real redis-server on a free loopback port, checked with the oracle.

Every test starts its own ``redis-server --save '' --appendonly no`` in a scratch directory
(:mod:`servertrack.testing.redis`) and drives the store with a fake clock.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from servertrack.common.batch import ServerHealth
from servertrack.common.oracle import RawSample, bucket_differences, iso_z, oracle_buckets
from servertrack.store.cells import BatchColumns
from servertrack.store.keys import server_keys
from servertrack.store.reader import RedisReader
from servertrack.store.redis_nodes import CorruptKey, NodeWork, Topology, pack, run_pipelines
from servertrack.store.redis_store import (
    LIBRARY_VERSION,
    MergeResult,
    RedisStore,
    StoreUnavailable,
)
from servertrack.store.redis_url import parse_store_url
from servertrack.testing.hosts import FakeClock
from servertrack.testing.redis import RedisServer
from tests.store_support import HOUR, MINUTE, T0, Fleet, assert_matches, one_each, sample_count
from tests.support import document

pytestmark = pytest.mark.e2e


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0 + 30.0)


@pytest.fixture
def open_store(clock: FakeClock) -> Iterator[Callable[..., RedisStore]]:
    """Open stores (with the fake clock unless told otherwise); all closed afterwards."""
    stores: list[RedisStore] = []

    def make(url: str, **options: Any) -> RedisStore:
        options.setdefault("clock", clock)
        store = RedisStore(url, **options)
        store.open()
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


# -- exactness ----------------------------------------------------------------------------------
def test_views_match_the_oracle_over_25_hours(
    redis_server: RedisServer, open_store: Callable[..., RedisStore], clock: FakeClock
) -> None:
    """Random batches (late, early, missing metrics, too old) over 25 simulated hours: every
    view equals the brute-force oracle, and every sample is counted once."""
    store = open_store(redis_server.url)
    fleet = Fleet([f"web-{k}.example.com" for k in range(6)], seed=7)
    totals = MergeResult()
    checks = 0
    rng = random.Random(3)
    end = clock.now + 25 * HOUR
    next_check = clock.now + 2 * HOUR
    silent = fleet.names[-1]
    while clock.now < end:
        # the last server falls silent after 2 hours: it must vanish after 24 more
        talking = [n for n in fleet.names if n != silent or clock.now < T0 + 2 * HOUR]
        batches = [fleet.batch("w1", clock.now, talking) for _ in range(rng.choice((1, 1, 2)))]
        result = store.merge("w1", batches, fleet.names, None, clock.now)
        assert result.applied + result.expired == sample_count(batches)
        for field in ("applied", "expired", "invalid", "already_applied", "refused"):
            setattr(totals, field, getattr(totals, field) + getattr(result, field))
        if clock.now >= next_check:
            assert assert_matches(store, fleet, clock.now) >= 1
            next_check += 2 * HOUR + rng.uniform(0, 600)
            checks += 1
        clock.advance(rng.uniform(40, 200))
    assert checks >= 11
    assert assert_matches(store, fleet, clock.now) == len(fleet.names) - 1
    assert document(RedisReader(store).view(silent, clock.now)) is None
    assert totals.expired == fleet.expired
    assert totals.applied == len(fleet.kept)
    assert totals.invalid == totals.already_applied == totals.refused == 0


def test_minute_and_hour_edges_follow_the_bucket_rules(
    redis_server: RedisServer, open_store: Callable[..., RedisStore]
) -> None:
    """A sample at exactly a minute start is in that minute; one 59 s ahead shows once its
    minute is current; one older than the minute window counts in its hour only; a metric with
    no sample is null, not 0."""
    store = open_store(redis_server.url)
    now = T0 + 10 * MINUTE + 30
    raw: list[RawSample] = [
        ("edge", T0 + 10 * MINUTE, 10.0, None),
        ("edge", now + 59, 20.0, 50.0),
        ("edge", now - 70 * MINUTE, 30.0, 60.0),
    ]
    batch = BatchColumns(
        0,
        np.zeros(3, np.int64),
        np.array([s[1] for s in raw]),
        np.array([10.0, 20.0, 30.0]),
        np.array([np.nan, 50.0, 60.0]),
    )
    store.merge("w", [batch], ["edge"], None, now)
    view = document(RedisReader(store).view("edge", now))
    assert view is not None
    assert bucket_differences(view, oracle_buckets(raw, now)) == []
    assert [b["start"] for b in view["minutes"]] == [iso_z(T0 + 10 * MINUTE)]
    assert view["minutes"][0]["ram"] is None and view["minutes"][0]["ram_samples"] == 0
    later = now + 60
    assert (
        bucket_differences(
            document(RedisReader(store).view("edge", later)), oracle_buckets(raw, later)
        )
        == []
    )
    assert len(document(RedisReader(store).view("edge", later))["minutes"]) == 2


# -- exactly once -------------------------------------------------------------------------------
def test_resent_and_overlapping_batches_are_applied_exactly_once(
    redis_server: RedisServer, open_store: Callable[..., RedisStore], clock: FakeClock
) -> None:
    """Batches given again, alone or overlapping newer ones, and then all of them again by a new
    store (a restarted aggregator re-folding what the receiver re-sends), count once."""
    fleet = Fleet([f"db-{k}" for k in range(5)], seed=11)
    batches = []
    for _ in range(12):
        batches.append(fleet.batch("run-1", clock.now, rate=1.5))
        clock.advance(1.0)
    now = clock.now
    first = open_store(redis_server.url)
    applied = 0
    for group in (batches[0:3], batches[2:6], batches[0:6], batches[4:8], batches[5:7]):
        result = first.merge("run-1", group, fleet.names, None, now)
        assert result.applied + result.already_applied + result.expired == sample_count(group)
        applied += result.applied
    assert assert_matches(first, fleet_until(fleet, batches[:8]), now) == len(fleet.names)

    second = open_store(redis_server.url)  # a new aggregator: it knows nothing
    result = second.merge("run-1", batches[3:12], fleet.names, None, now)
    applied += result.applied
    assert result.refolded > 0 and result.already_applied > 0
    assert result.applied + result.already_applied + result.expired == sample_count(batches[3:12])
    again = second.merge("run-1", batches, fleet.names, None, now)
    assert again.applied == 0
    assert again.already_applied + again.expired == sample_count(batches)
    assert applied == len(fleet.kept)
    assert assert_matches(second, fleet, now) == len(fleet.names)


def fleet_until(fleet: Fleet, batches: list[BatchColumns]) -> Fleet:
    """A copy of ``fleet`` holding only the samples of ``batches`` (given in order)."""
    count = sample_count(batches)
    partial = Fleet(fleet.names)
    partial.raw = fleet.raw[:count]
    partial.kept = [s for s in partial.raw if s in fleet.kept]
    return partial


def test_two_writers_on_one_server_add_up(
    redis_server: RedisServer, open_store: Callable[..., RedisStore], clock: FakeClock
) -> None:
    """Two receiver runs (two writers) feeding the same servers, each re-sending some batches,
    add up exactly; the health view sums their counters and shows the newest writer's ip."""
    fleet = Fleet(["shared-1", "shared-2"], seed=5)
    store = open_store(redis_server.url)
    other = open_store(redis_server.url)
    sent: dict[str, list[BatchColumns]] = {"old": [], "new": []}
    for step in range(20):
        for writer, target in (("old", store), ("new", other)):
            batch = fleet.batch(writer, clock.now)
            sent[writer].append(batch)
            health = {
                "shared-1": ServerHealth(
                    ips=(f"192.0.2.{1 if writer == 'old' else 2}",),
                    lost=step,
                    duplicates=1,
                    rejected=2,
                    skew=0.25,
                    seq_resets=1 if writer == "new" else 0,
                    name_conflict=writer == "old" and step == 3,
                )
            }
            target.merge(writer, sent[writer][-3:], fleet.names, health, clock.now)
            clock.advance(0.5)
    assert assert_matches(store, fleet, clock.now) == 2
    view = document(RedisReader(other).view("shared-1", clock.now))
    assert view is not None
    assert view["health"] == {
        "ip": ["192.0.2.2"],
        "lost": 19 + 19,
        "duplicates": 2,
        "rejected": 4,
        "skew_seconds": 0.25,
        "seq_resets": 1,
        "name_conflict": False,
    }
    assert document(RedisReader(store).view("shared-2", clock.now))["health"]["lost"] == 0


def test_health_of_a_server_without_samples_is_kept_only_if_it_has_data(
    redis_server: RedisServer, open_store: Callable[..., RedisStore], clock: FakeClock
) -> None:
    """A health change for a server that sent nothing in the batch is stored when the server
    has data, never creates one, and an older batch's health does not overwrite a newer one."""
    store = open_store(redis_server.url)
    fleet = Fleet(["known"], seed=2)
    store.merge("w", [fleet.batch("w", clock.now, rate=0)], fleet.names, None, clock.now)
    empty = BatchColumns(5, np.empty(0, np.int64), np.empty(0), np.empty(0), np.empty(0))
    result = store.merge(
        "w",
        [empty],
        [],
        {"known": ServerHealth(lost=4), "ghost": ServerHealth(lost=9)},
        clock.now,
    )
    assert result.health == 1
    assert document(RedisReader(store).view("known", clock.now))["health"]["lost"] == 4
    assert document(RedisReader(store).view("ghost", clock.now)) is None
    assert redis_server.client().exists(*server_keys("ghost")) == 0
    older = BatchColumns(3, np.empty(0, np.int64), np.empty(0), np.empty(0), np.empty(0))
    store.merge("w", [older], [], {"known": ServerHealth(lost=1)}, clock.now)
    assert document(RedisReader(store).view("known", clock.now))["health"]["lost"] == 4


def test_sequences_keep_each_servers_newest_seq(
    redis_server: RedisServer, open_store: Callable[..., RedisStore], clock: FakeClock
) -> None:
    """The newest seq (last in arrival order) and its ts are kept per server, also across an
    agent restart (seq back to 0 with a later ts) and a re-sent older batch."""
    store = open_store(redis_server.url)
    names = ["s-1", "s-2", "unnumbered"]

    def batch(number: int, rows: list[int], seqs: list[int], ts: list[float]) -> BatchColumns:
        return BatchColumns(
            number,
            np.asarray(rows, np.int64),
            np.asarray(ts),
            np.full(len(rows), 5.0),
            np.full(len(rows), 6.0),
            np.asarray(seqs, np.int64),
        )

    now = clock.now
    first = batch(0, [0, 0, 1, 2], [7, 8, 40, -1], [now - 3, now - 2, now - 2, now - 1])
    second = batch(1, [0, 1], [0, 41], [now - 0.5, now - 0.5])
    store.merge("w", [first], names, None, now)
    store.merge("w", [second], names, None, now)
    store.merge("w", [first], names, None, now)  # a re-send changes nothing
    older = batch(0, [0], [99], [now - 10])  # another writer, flushing an older sample late
    store.merge("w2", [older], names, None, now)
    got, seqs, stamps = RedisReader(store).sequences()
    assert got == ["s-1", "s-2"]
    assert seqs.tolist() == [0, 41]
    assert stamps.tolist() == [now - 0.5, now - 0.5]
    # batches given out of order are folded in batch order: the newest seq is batch 1's
    store.merge("w3", [batch(1, [1], [51], [now]), batch(0, [1], [50], [now])], names, None, now)
    assert RedisReader(store).sequences()[1].tolist() == [0, 51]


# -- keys, TTL and the index ----------------------------------------------------------------------
def expiry_of(client: Any, key: bytes) -> float:
    """Seconds until ``key`` expires, on the server's clock."""
    pexpire_at = client.execute_command("PEXPIRETIME", key)
    seconds, micros = client.time()
    return pexpire_at / 1000 - (seconds + micros / 1e6)


def test_every_key_has_a_ttl_that_follows_the_newest_bucket(
    redis_server: RedisServer, open_store: Callable[..., RedisStore], clock: FakeClock
) -> None:
    """After merges, health and index updates every key has a TTL; a server's minute key lives
    about 61 minutes and its hour and health keys about 25 hours after their newest bucket, and
    the TTL moves with it."""
    store = open_store(redis_server.url)
    fleet = Fleet([f"ttl-{k}" for k in range(40)], seed=4)
    health = {"ttl-0": ServerHealth(ips=("192.0.2.9",))}
    for _ in range(3):
        store.merge("w", [fleet.batch("w", clock.now)], fleet.names, health, clock.now)
        clock.advance(20)
    client = redis_server.client()
    keys = list(client.scan_iter(count=1000))
    assert len(keys) > 3 * len(fleet.names) // 2
    assert all(client.pttl(key) > 0 for key in keys), [k for k in keys if client.pttl(k) < 0]

    assert all(client.pttl(key) <= 26 * HOUR * 1000 for key in keys)

    # A late sample sets the TTLs from its own buckets; a fresh one moves them forward.
    late = clock.now - 5 * HOUR - 30 * MINUTE
    for number, ts in ((100, late), (101, clock.now)):
        batch = BatchColumns(number, np.array([0]), np.array([ts]), np.ones(1), np.ones(1))
        store.merge("w", [batch], ["ttl-late"], {"ttl-late": ServerHealth()}, clock.now)
        keys = server_keys("ttl-late")
        minute_end = (ts - ts % MINUTE) + 61 * MINUTE
        hour_end = (ts - ts % HOUR) + 25 * HOUR
        if ts == late:  # older than the minute window: hours only
            assert client.exists(keys[0]) == 0
        else:
            assert expiry_of(client, keys[0]) == pytest.approx(minute_end - clock.now, abs=3)
        assert expiry_of(client, keys[1]) == pytest.approx(hour_end - clock.now, abs=3)
        assert expiry_of(client, keys[2]) == pytest.approx(hour_end - clock.now, abs=3)
    recent = clock.now - 30 * MINUTE
    batch = BatchColumns(0, np.array([0]), np.array([recent]), np.ones(1), np.ones(1))
    store.merge("w", [batch], ["ttl-recent"], None, clock.now)
    minute_key = server_keys("ttl-recent")[0]
    minute_end = (recent - recent % MINUTE) + 61 * MINUTE
    assert expiry_of(client, minute_key) == pytest.approx(minute_end - clock.now, abs=3)
    batch = BatchColumns(1, np.array([0]), np.array([clock.now]), np.ones(1), np.ones(1))
    store.merge("w", [batch], ["ttl-recent"], None, clock.now)
    minute_end = (clock.now - clock.now % MINUTE) + 61 * MINUTE
    assert expiry_of(client, minute_key) == pytest.approx(minute_end - clock.now, abs=3)

    # Once every hour slot is used, a new hour reuses one: the TTL still moves with it.
    start = clock.now
    hours = np.array([start - k * HOUR for k in range(24)])
    full = BatchColumns(0, np.zeros(24, np.int64), hours, np.ones(24), np.ones(24))
    store.merge("w", [full], ["ttl-full"], None, start)
    hour_key = server_keys("ttl-full")[1]
    for number, (step, age) in enumerate(((HOUR, 0.0), (2 * HOUR, 50 * MINUTE)), start=1):
        clock.advance(step)  # the second sample lands one hour on, in a slot already used
        ts = clock.now - age
        batch = BatchColumns(number, np.array([0]), np.array([ts]), np.ones(1), np.ones(1))
        store.merge("w", [batch], ["ttl-full"], None, clock.now)
        hour_end = (ts - ts % HOUR) + 25 * HOUR
        assert expiry_of(client, hour_key) == pytest.approx(hour_end - clock.now, abs=3)
    assert client.hlen(hour_key) >= 25


def test_the_change_counter_moves_after_every_merge_and_views_read_alike(
    redis_server: RedisServer, open_store: Callable[..., RedisStore], clock: FakeClock
) -> None:
    """Readers' caches follow the change counter: every writer raises it after each merge that
    sent anything (a merge whose batches were all applied before included), not after an empty
    one; it has a TTL. ``views`` reads many servers as ``view`` reads one."""
    first = open_store(redis_server.url)
    second = open_store(redis_server.url)
    assert first.changes() == 0
    written = [f"cache-{k}" for k in range(8)]
    batch = one_each(0, list(range(8)), clock.now)
    first.merge("a", [batch], written, None, clock.now)
    assert second.changes() == 1
    second.merge("b", [one_each(0, [1, 2], clock.now - 90)], written, None, clock.now)
    first.merge("a", [batch], written, None, clock.now)  # a re-send: still counted
    assert first.changes() == 3
    empty = BatchColumns(1, np.zeros(0, np.int64), np.zeros(0), np.zeros(0), np.zeros(0))
    first.merge("a", [empty], written, None, clock.now)
    assert first.changes() == 3
    assert 0 < redis_server.client().pttl("st:{#changes}:n") <= 26 * HOUR * 1000
    names = [*written, "never-written"]
    views = [document(v) for v in RedisReader(second).views(names, clock.now)]
    assert views == [document(RedisReader(first).view(name, clock.now)) for name in names]
    assert views[-1] is None and all(view is not None for view in views[:-1])


def test_a_writer_behind_cannot_overwrite_newer_buckets(
    redis_server: RedisServer, open_store: Callable[..., RedisStore], clock: FakeClock
) -> None:
    """A hour slot holding a newer hour keeps it: the samples of a writer whose clock is a day
    behind are counted as expired, not mixed in; a minute slot holding a newer minute keeps it
    too, and the sample still counts in its hour."""
    store = open_store(redis_server.url)
    ahead, behind = clock.now + 25 * HOUR, clock.now
    store.merge("ahead", [one_each(0, [0], ahead)], ["skew"], None, ahead)
    result = store.merge("behind", [one_each(0, [0], behind)], ["skew"], None, behind)
    assert (result.applied, result.expired) == (0, 1)
    view = document(RedisReader(store).view("skew", ahead))
    assert [b["samples"] for b in view["hours"]] == [1]
    assert bucket_differences(view, oracle_buckets([("skew", ahead, 10.0, 20.0)], ahead)) == []
    # 61 minutes apart: the same minute slot, the same hour when within one hour
    base = clock.now - clock.now % HOUR
    store.merge("late", [one_each(0, [0], base + 61 * MINUTE)], ["min"], None, base + 62 * MINUTE)
    result = store.merge("early", [one_each(0, [0], base)], ["min"], None, base + 30)
    assert (result.applied, result.expired) == (1, 0)
    view = document(RedisReader(store).view("min", base + 62 * MINUTE))
    assert [b["samples"] for b in view["minutes"]] == [1]
    assert [b["samples"] for b in view["hours"]] == [1, 1]


def test_servers_vanish_after_the_window_and_the_index_is_pruned(
    redis_server: RedisServer, open_store: Callable[..., RedisStore], clock: FakeClock
) -> None:
    """A server silent for 24 hours answers None, leaves the server list and, once pruned, the
    index and the summary; one still talking stays."""
    store = open_store(redis_server.url)
    names = ["quiet", "chatty"]
    store.merge("w", [one_each(0, [0, 1], clock.now)], names, None, clock.now)
    clock.advance(61 * MINUTE)
    assert document(RedisReader(store).view("quiet", clock.now))["minutes"] == []
    for number in range(1, 26):
        clock.advance(HOUR)
        store.merge("w", [one_each(number, [1], clock.now)], names, None, clock.now)
    assert document(RedisReader(store).view("quiet", clock.now)) is None
    rows, _, _ = RedisReader(store).servers(clock.now)
    assert [name for name, _ in rows] == ["chatty"]
    store.prune(clock.now)
    assert store.server_count() == 1
    assert [name for name in RedisReader(store).fleet_rows(clock.now).names] == ["chatty"]


def test_servers_are_paged_by_name(
    redis_server: RedisServer, open_store: Callable[..., RedisStore], clock: FakeClock
) -> None:
    """Pages of ``servers()`` follow one another by name, cover every server exactly once, and
    carry each server's last-seen time; the total is the server count."""
    store = open_store(redis_server.url)
    names = [f"node-{random.Random(k).randrange(10**9):09d}-{k}" for k in range(2500)]
    store.merge("w", [one_each(0, list(range(2500)), clock.now - 1)], names, None, clock.now)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        rows, total, cursor = RedisReader(store).servers(clock.now, limit=1000, cursor=cursor)
        assert total == 2500
        assert all(last_seen == clock.now - 1 for _, last_seen in rows)
        seen.extend(name for name, _ in rows)
        pages += 1
        if cursor is None:
            break
    assert pages == 3
    assert seen == sorted(names)
    small, _, cursor = RedisReader(store).servers(clock.now, limit=7, cursor=sorted(names)[100])
    assert [name for name, _ in small] == sorted(names)[101:108]
    assert cursor == sorted(names)[107]
    last, _, cursor = RedisReader(store).servers(clock.now, limit=7, cursor=sorted(names)[-3])
    assert [name for name, _ in last] == sorted(names)[-2:] and cursor is None


def test_new_servers_beyond_max_servers_are_refused(
    redis_server: RedisServer, open_store: Callable[..., RedisStore], clock: FakeClock
) -> None:
    """With ``max_servers=5`` the sixth new server is refused and counted; known servers keep
    being written, also by a new store instance."""
    store = open_store(redis_server.url, max_servers=5)
    names = [f"m-{k}" for k in range(8)]
    result = store.merge("w", [one_each(0, list(range(8)), clock.now)], names, None, clock.now)
    assert (result.applied, result.refused, result.refused_servers) == (5, 3, 3)
    assert store.server_count() == 5
    again = open_store(redis_server.url, max_servers=5)
    result = again.merge("w", [one_each(1, list(range(8)), clock.now)], names, None, clock.now)
    assert (result.applied, result.refused) == (5, 3)
    admitted = {name for name, _ in RedisReader(again).servers(clock.now)[0]}
    assert len(admitted) == 5
    assert {
        n for n in names if document(RedisReader(again).view(n, clock.now)) is not None
    } == admitted


# -- failures -----------------------------------------------------------------------------------
def test_a_stopped_redis_is_reported_within_the_timeout_and_nothing_held_is_lost(
    own_redis: RedisServer, open_store: Callable[..., RedisStore], clock: FakeClock
) -> None:
    """While Redis is stopped (SIGSTOP) merges and reads raise StoreUnavailable within the
    timeout; the batches the caller held are merged once it is back, exactly once."""
    redis_server = own_redis
    store = open_store(redis_server.url, timeout=0.5)
    fleet = Fleet([f"held-{k}" for k in range(4)], seed=9)
    held: list[BatchColumns] = []
    redis_server.pause()
    try:
        for _ in range(3):
            held.append(fleet.batch("w", clock.now))
            began = time.monotonic()
            with pytest.raises(StoreUnavailable):
                store.merge("w", held, fleet.names, None, clock.now)
            assert time.monotonic() - began < 0.5 + 0.5
            began = time.monotonic()
            with pytest.raises(StoreUnavailable):
                document(RedisReader(store).view("held-0", clock.now))
            assert time.monotonic() - began < 0.5 + 0.5
            clock.advance(1.0)
    finally:
        redis_server.resume()
    held.append(fleet.batch("w", clock.now))
    result = store.merge("w", held, fleet.names, None, clock.now)
    assert result.applied + result.already_applied + result.expired == sample_count(held)
    assert assert_matches(store, fleet, clock.now) == len(fleet.names)


def test_a_redis_that_is_down_fails_fast_and_recovers(
    tmp_path: Path, open_store: Callable[..., RedisStore], clock: FakeClock
) -> None:
    """A Redis that is not running refuses connections at once; the same store works again
    when it is back on the same port, with nothing it held lost."""
    server = RedisServer(tmp_path / "r").start()
    try:
        store = open_store(server.url)
        fleet = Fleet(["a", "b"], seed=3)
        store.merge("w", [fleet.batch("w", clock.now)], fleet.names, None, clock.now)
        server.stop()
        held = [fleet.batch("w", clock.now)]
        began = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.merge("w", held, fleet.names, None, clock.now)
        assert time.monotonic() - began < 1.0
        server.start()
        store.merge("w", held, fleet.names, None, clock.now)
        # the first batch died with the server (no persistence): only the held one is there
        fleet.raw = [s for s in fleet.raw[-sample_count(held) :]]
        fleet.kept = [s for s in fleet.kept if s in fleet.raw]
        assert assert_matches(store, fleet, clock.now) >= 1
    finally:
        server.stop()


def test_a_redis_restart_with_aof_loses_nothing_merged(
    tmp_path: Path, open_store: Callable[..., RedisStore], clock: FakeClock
) -> None:
    """With ``--appendonly yes --appendfsync always``, a Redis killed with SIGKILL and started
    again holds every merge that returned, and the guards too (a re-send is skipped)."""
    server = RedisServer(
        tmp_path / "aof", options=("--save", "", "--appendonly", "yes", "--appendfsync", "always")
    ).start()
    try:
        store = open_store(server.url)
        fleet = Fleet([f"aof-{k}" for k in range(5)], seed=13)
        batches = []
        for _ in range(6):
            batches.append(fleet.batch("w", clock.now))
            store.merge("w", batches[-1:], fleet.names, None, clock.now)
            clock.advance(1.0)
        server.kill()
        server.start()
        assert assert_matches(store, fleet, clock.now) == len(fleet.names)
        result = store.merge("w", batches, fleet.names, None, clock.now)
        assert result.applied == 0
        assert assert_matches(store, fleet, clock.now) == len(fleet.names)
    finally:
        server.stop()


def test_the_function_library_is_replaced_when_its_version_differs(
    redis_server: RedisServer, open_store: Callable[..., RedisStore], clock: FakeClock
) -> None:
    """An older library in Redis is replaced at open; the same version is left alone; a library
    that vanished (FUNCTION FLUSH) is loaded again by the next merge."""
    client = redis_server.client()
    client.function_load(
        "#!lua name=servertrack\n"
        "redis.register_function{function_name='st_version', callback=function() return '0' end,"
        " flags={'no-writes'}}\n"
    )
    first = open_store(redis_server.url)
    assert first.library_loads == 1
    assert first.library_version() == LIBRARY_VERSION
    second = open_store(redis_server.url)
    assert second.library_loads == 0
    client.function_flush()
    fleet = Fleet(["f-1"], seed=1)
    result = second.merge("w", [fleet.batch("w", clock.now, rate=0)], fleet.names, None, clock.now)
    assert result.applied == 1 and second.library_loads == 1
    assert second.library_version() == LIBRARY_VERSION


def test_bad_input_gets_a_clear_error_or_is_counted(
    redis_server: RedisServer, open_store: Callable[..., RedisStore], clock: FakeClock
) -> None:
    """Columns of different lengths or rows without a name raise ValueError before anything is
    written; non-finite timestamps and infinite values are counted as invalid."""
    store = open_store(redis_server.url)
    now = clock.now
    with pytest.raises(ValueError, match="column cpu"):
        store.merge(
            "w",
            [BatchColumns(0, np.array([0]), np.array([now]), np.zeros(2), np.zeros(1))],
            ["x"],
            None,
            now,
        )
    with pytest.raises(ValueError, match="outside"):
        store.merge("w", [one_each(0, [3], now)], ["x"], None, now)
    with pytest.raises(ValueError, match="writer"):
        store.merge("", [one_each(0, [0], now)], ["x"], None, now)
    assert redis_server.client().dbsize() == 0
    batch = BatchColumns(
        0,
        np.zeros(4, np.int64),
        np.array([now, math.nan, math.inf, now]),
        np.array([1.0, 2.0, 3.0, math.inf]),
        np.array([1.0, 2.0, 3.0, 4.0]),
    )
    result = store.merge("w", [batch], ["x"], None, now)
    assert (result.applied, result.invalid) == (1, 3)


# -- Redis refusing calls, and corrupt keys ----------------------------------------------------
FOREIGN_LIBRARY = """#!lua name=servertrack
redis.register_function('st_merge', function() return %s end)
redis.register_function{function_name='st_version', callback=function() return '%s' end,
  flags={'no-writes'}}
"""


def with_data(fleet: Fleet) -> int:
    """Servers of ``fleet`` with a sample inside the window."""
    return len({sample[0] for sample in fleet.kept})


def test_a_pipeline_cut_short_while_reading_drops_its_connection(
    redis_server: RedisServer,
) -> None:
    """Anything raised while a pipeline reads (here by the reply callback, at the first of 50
    replies) drops the writer's connection: the next pipeline on that node reads its own
    replies, never the ones left in flight."""
    topology = Topology(parse_store_url(redis_server.url), 1.0)
    try:
        topology.open()
        (node,) = topology.masters()

        def fail(work: NodeWork, k: int, reply: Any) -> None:
            raise RuntimeError("a callback that fails")

        cut = NodeWork(node, [pack("ECHO", f"old-{k}") for k in range(50)])
        with pytest.raises(RuntimeError):
            run_pipelines([cut], chunk=8, on_reply=fail)
        fresh = NodeWork(node, [pack("ECHO", f"new-{k}") for k in range(3)])
        run_pipelines([fresh])
        assert fresh.replies == [b"new-0", b"new-1", b"new-2"]
    finally:
        topology.close()


def test_a_full_redis_fails_whole_merges_and_the_writer_recovers_exactly_once(
    redis_server: RedisServer, open_store: Callable[..., RedisStore], clock: FakeClock
) -> None:
    """``maxmemory 1``: Redis refuses every Function call of a merge (seven per merge here).
    Each merge raises StoreUnavailable, saying why, having read every reply; so once Redis has
    room again the next merge on the same connection gets its own replies, and the held batches
    land exactly once (the oracle agrees)."""
    store = open_store(redis_server.url)
    fleet = Fleet([f"full-{k:03d}" for k in range(100)], seed=21)
    store.merge("w", [fleet.batch("w", clock.now)], fleet.names, None, clock.now)
    client = redis_server.client()
    held: list[BatchColumns] = []
    failures = []
    client.config_set("maxmemory", 1)
    try:
        for _ in range(3):
            clock.advance(1.0)
            held.append(fleet.batch("w", clock.now))
            with pytest.raises(StoreUnavailable) as refused:
                store.merge("w", held, fleet.names, None, clock.now)
            failures.append(refused.value)
    finally:
        client.config_set("maxmemory", 0)
    for _ in range(3):
        clock.advance(1.0)
        held.append(fleet.batch("w", clock.now))
        result = store.merge("w", held, fleet.names, None, clock.now)
        assert result.applied + result.expired == sample_count(held)
        assert result.already_applied == 0
        held = []
    assert assert_matches(store, fleet, clock.now) == with_data(fleet)
    assert all("maxmemory" in str(failure) for failure in failures), failures
    assert [failure.applied for failure in failures] == [0, 0, 0]


def test_redis_filling_up_mid_merge_keeps_what_it_applied_and_takes_the_rest_later(
    redis_server: RedisServer, open_store: Callable[..., RedisStore], clock: FakeClock
) -> None:
    """Redis runs out of memory in the middle of a merge of 1,500 new servers: the calls sent
    before are applied, the rest refused. The merge raises StoreUnavailable with the number of
    samples applied; given the same batch once Redis has room, those are found applied and the
    rest are merged: every sample once."""
    store = open_store(redis_server.url)
    fleet = Fleet([f"fill-{k:04d}" for k in range(1500)], seed=5)
    batch = fleet.batch("w", clock.now, rate=0)
    kept = sample_count([batch]) - fleet.expired
    client = redis_server.client()
    client.config_set("maxmemory", int(client.info("memory")["used_memory"]) + 1_000_000)
    try:
        with pytest.raises(StoreUnavailable, match="maxmemory") as refused:
            store.merge("w", [batch], fleet.names, None, clock.now)
    finally:
        client.config_set("maxmemory", 0)
    applied = refused.value.applied
    assert 0 < applied < kept
    result = store.merge("w", [batch], fleet.names, None, clock.now)
    assert (result.already_applied, result.applied) == (applied, kept - applied)
    assert assert_matches(store, fleet, clock.now) == kept


def test_a_foreign_library_fails_merges_until_it_is_flushed_then_all_lands_once(
    redis_server: RedisServer, open_store: Callable[..., RedisStore], clock: FakeClock
) -> None:
    """A library named servertrack, claiming this version, whose st_merge refuses every call:
    merges raise StoreUnavailable (never another error) and the writer keeps its replies in
    step; after FUNCTION FLUSH the next merge loads this library, and every held sample lands
    once."""
    store = open_store(redis_server.url)
    fleet = Fleet([f"lib-{k:02d}" for k in range(40)], seed=4)
    store.merge("w", [fleet.batch("w", clock.now)], fleet.names, None, clock.now)
    client = redis_server.client()
    client.function_load(
        FOREIGN_LIBRARY % ("redis.error_reply('ERR not this library')", LIBRARY_VERSION),
        replace=True,
    )
    held: list[BatchColumns] = []
    failures = []
    for _ in range(3):
        clock.advance(1.0)
        held.append(fleet.batch("w", clock.now))
        with pytest.raises(StoreUnavailable) as refused:
            store.merge("w", held, fleet.names, None, clock.now)
        failures.append(str(refused.value))
    client.function_flush()
    clock.advance(1.0)
    held.append(fleet.batch("w", clock.now))
    result = store.merge("w", held, fleet.names, None, clock.now)
    assert result.applied + result.expired == sample_count(held)
    assert result.already_applied == 0
    assert store.library_version() == LIBRARY_VERSION
    assert assert_matches(store, fleet, clock.now) == with_data(fleet)
    assert all("not this library" in failure for failure in failures), failures


def test_a_library_of_another_version_met_by_a_merge_is_replaced_and_nothing_is_lost(
    redis_server: RedisServer, open_store: Callable[..., RedisStore], clock: FakeClock
) -> None:
    """A library of another version loaded behind the writer's back answers st_merge with what
    this one never answers (one number for a whole call): the merge does not take it for
    "applied before", replaces the library and sends the calls again."""
    store = open_store(redis_server.url)
    fleet = Fleet([f"old-{k:02d}" for k in range(40)], seed=8)
    redis_server.client().function_load(FOREIGN_LIBRARY % ("1", "0"), replace=True)
    batches = [fleet.batch("w", clock.now) for _ in range(2)]
    result = store.merge("w", batches, fleet.names, None, clock.now)
    assert result.applied + result.expired == sample_count(batches)
    assert store.library_loads == 2 and store.library_version() == LIBRARY_VERSION
    assert assert_matches(store, fleet, clock.now) == with_data(fleet)


def test_a_corrupt_key_costs_only_its_servers_samples(
    redis_server: RedisServer,
    open_store: Callable[..., RedisStore],
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One server's hour key replaced by a string without a TTL, another's meta cut short, a
    third's minute ring turned into a hash, a fourth's health key into a list: every merge
    writes the rest of the fleet (the oracle agrees), counts those servers' samples as
    ``corrupt`` and logs each key once; reading one of them raises CorruptKey naming the key,
    reading many answers it in its place; a repaired server is merged again."""
    store = open_store(redis_server.url)
    victims = ["string-hour", "short-meta", "hash-ring", "list-health"]
    fleet = Fleet(victims + [f"fine-{k:02d}" for k in range(36)], seed=17)
    store.merge("w", [one_each(0, [0, 1, 2, 3], clock.now)], fleet.names, None, clock.now)
    fleet.numbers["w"] = 1  # the fleet's batches follow that one
    store.merge("w", [fleet.batch("w", clock.now, rate=0)], fleet.names, None, clock.now)
    client = redis_server.client()
    keys = {name: [key.decode() for key in server_keys(name)] for name in victims}
    untouched = {  # what must not change: nothing of a refused server is written
        name: (client.hget(keys[name][1], "w:w"), client.get(keys[name][0]))
        for name in ("short-meta", "list-health")
    }
    client.delete(keys["string-hour"][1])
    client.set(keys["string-hour"][1], "not a hash")
    client.hset(keys["short-meta"][1], "s", client.hget(keys["short-meta"][1], "s")[:5])
    client.delete(keys["hash-ring"][0])
    client.hset(keys["hash-ring"][0], "x", "y")
    client.delete(keys["list-health"][2])
    client.rpush(keys["list-health"][2], "x")
    bad = {
        "string-hour": keys["string-hour"][1],
        "short-meta": keys["short-meta"][1],
        "hash-ring": keys["hash-ring"][0],
        "list-health": keys["list-health"][2],
    }
    health = {"list-health": ServerHealth(lost=3), "fine-00": ServerHealth(lost=2)}
    for _ in range(3):
        clock.advance(5.0)
        start = len(fleet.raw)
        batch = fleet.batch("w", clock.now, rate=0)
        result = store.merge("w", [batch], fleet.names, health, clock.now)
        lost = sum(1 for sample in fleet.raw[start:] if sample[0] in victims)
        assert result.corrupt == lost == 4
        assert result.applied + result.expired + result.corrupt == len(batch)
    assert {name: what.split(": ")[0] for name, (what, _) in store.corrupt_servers().items()} == bad
    for name, (guard, ring) in untouched.items():
        assert guard is not None and ring is not None
        assert (client.hget(keys[name][1], "w:w"), client.get(keys[name][0])) == (guard, ring)
    for key in bad.values():
        assert len([r for r in caplog.records if key in r.getMessage()]) == 1, key
    # the health of a victim without samples in the merge: refused for it alone
    empty = BatchColumns(9, np.empty(0, np.int64), np.empty(0), np.empty(0), np.empty(0))
    assert (
        store.merge("w", [empty], [], {"list-health": ServerHealth(lost=5)}, clock.now).health == 0
    )
    fine = fleet.names[len(victims) :]
    fleet.raw = [s for s in fleet.raw if s[0] not in victims]
    fleet.kept = [s for s in fleet.kept if s[0] not in victims]
    assert assert_matches(store, fleet, clock.now, fine) == len(fine)
    assert document(RedisReader(store).view("fine-00", clock.now))["health"]["lost"] == 2
    for name, key in bad.items():
        with pytest.raises(CorruptKey, match=re.escape(key)):
            document(RedisReader(store).view(name, clock.now))
    answers = [document(v) for v in RedisReader(store).views(fleet.names, clock.now)]
    assert [isinstance(a, CorruptKey) for a in answers] == [n in victims for n in fleet.names]
    assert answers[4:] == [document(RedisReader(store).view(name, clock.now)) for name in fine]
    listed = {name for name, _ in RedisReader(store).servers(clock.now)[0]}
    assert listed == set(fleet.names) - {"string-hour", "short-meta"}
    assert set(RedisReader(store).sequences()[0]) & {"string-hour", "short-meta"} == set()
    assert set(RedisReader(store).sequences()[0]) >= set(fine)
    client.delete(keys["string-hour"][1])  # repaired: the server is written again
    clock.advance(5.0)
    batch = fleet.batch("w", clock.now, servers=["string-hour"], rate=0)
    assert store.merge("w", [batch], fleet.names, None, clock.now).corrupt == 0
    assert "string-hour" not in store.corrupt_servers()
    assert (
        sum(
            b["samples"]
            for b in document(RedisReader(store).view("string-hour", clock.now))["hours"]
        )
        == 1
    )


# -- the dashboard summary ------------------------------------------------------------------------
def test_fleet_rows_show_current_means_and_a_sparkline(
    redis_server: RedisServer, open_store: Callable[..., RedisStore], clock: FakeClock
) -> None:
    """The summary rows give each server its last-seen time, the means of its newest minute
    holding cpu and ram, and 60 minute cpu means, equal to the views' (to 0.01 %), also for a
    store that did not write them (a reader) and after the writer restarted."""
    names = [f"dash-{k}" for k in range(30)]
    fleet = Fleet(names, seed=21)
    writer = open_store(redis_server.url, summary_interval=0.0)
    for _ in range(90):
        writer.merge("w", [fleet.batch("w", clock.now)], names, None, clock.now)
        clock.advance(47)
    restarted = open_store(redis_server.url, summary_interval=0.0)
    restarted.merge("w2", [fleet.batch("w2", clock.now)], names, None, clock.now)
    reader = open_store(redis_server.url)
    rows = RedisReader(reader).fleet_rows(clock.now)
    assert rows.names == sorted(names)
    minute = int(clock.now // MINUTE)
    for k, name in enumerate(rows.names):
        view = document(RedisReader(reader).view(name, clock.now))
        assert view is not None
        assert iso_z(float(rows.last_seen[k])) == view["last_seen"]
        for metric, minutes, current in (
            ("cpu", rows.cpu_minutes, rows.cpu),
            ("ram", rows.ram_minutes, rows.ram),
        ):
            means = {b["start"]: b[metric] for b in view["minutes"]}
            for column in range(60):
                start = iso_z((minute - 59 + column) * MINUTE)
                want, got = means.get(start), minutes[k, column]
                if want is None:
                    assert math.isnan(got), (name, metric, start)
                else:
                    assert got == pytest.approx(want, abs=0.0051), (name, metric, start)
            newest = [b[metric] for b in view["minutes"] if b[metric] is not None]
            if newest:
                assert current[k] == pytest.approx(newest[-1], abs=0.0051)
            else:
                assert math.isnan(current[k])
    first = rows.as_dicts()[0]
    assert first["server"] == sorted(names)[0] and len(first["spark"]) == 60


def test_a_full_server_stays_compact(
    redis_server: RedisServer, open_store: Callable[..., RedisStore], clock: FakeClock
) -> None:
    """With all 60 minute and 24 hour buckets full and a health record, a server's keys plus its
    share of the index and summary take under 8 KB, and its hour hash stays a listpack (every
    value fits ``hash-max-listpack-value``)."""
    store = open_store(redis_server.url)
    servers = 300
    names = [f"full-{k:04d}.example.com" for k in range(servers)]
    stamps = [clock.now - m * MINUTE for m in range(60)]
    stamps += [clock.now - h * HOUR for h in range(1, 24)]
    ts = np.repeat(np.asarray(stamps), servers)
    batch = BatchColumns(
        0,
        np.tile(np.arange(servers), len(stamps)),
        ts,
        np.full(ts.size, 1.5),
        np.full(ts.size, 2.5),
    )
    health = {name: ServerHealth(ips=("192.0.2.1", "2001:db8::1"), lost=1) for name in names}
    store.merge("w", [batch], names, health, clock.now)
    view = document(RedisReader(store).view(names[0], clock.now))
    assert view is not None and (len(view["minutes"]), len(view["hours"])) == (60, 24)
    client = redis_server.client()
    total = sum(int(client.memory_usage(key, samples=0)) for key in client.scan_iter(count=1000))
    assert total / servers < 8192
    assert client.object("encoding", server_keys(names[0])[1]) == b"listpack"
