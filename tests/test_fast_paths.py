"""The per-request fast paths: records taken one verdict per item by the receiver, the
aggregator's generation and its long-poll ``watch``, the API's read cache and group commit."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Sequence
from typing import Any

import msgpack
import pytest
import zmq
from falcon import testing

from servertrack.aggregator.daemon import AggregatorConfig, AggregatorDaemon
from servertrack.aggregator.rollups import Rollups
from servertrack.aggregator.state import AggregatorState
from servertrack.api import group as group_module
from servertrack.api.admission import Admission
from servertrack.api.assembly import assemble
from servertrack.api.backend import Kept
from servertrack.api.cache import GRACE, CachedReads
from servertrack.api.generation import Current, GenerationWatch
from servertrack.api.group import GroupCommit
from servertrack.api.stats import ApiStats
from servertrack.common.batch import Batch
from servertrack.common.oracle import iso_z
from servertrack.common.rpc import Unavailable
from servertrack.common.sample import Sample
from servertrack.readmodel.answers import Answer
from servertrack.readmodel.errors import CorruptKey
from servertrack.receiver.state import ReceiverState
from servertrack.testing.hosts import FakeClock, wait_until
from tests.support import Clock, InProcessBackend

NOW = 1_800_000_030.0
READ_TOKEN = "read-0123456789"


# -- the receiver: one verdict per record ---------------------------------------------------------
def test_record_each_gives_each_item_its_own_verdict() -> None:
    """Good, duplicate, invalid and out-of-window rows side by side: each gets its verdict, the
    good ones are in the next batch, the others are counted by reason, nothing else refused."""
    state = ReceiverState(FakeClock(NOW))
    state.record([["known", NOW - 9, 1.0, None]], NOW)  # registers "known"
    rows: list[Any] = [
        ["known", NOW - 1, 10.0, 20.0],  # fast path: known server, plain values
        ["known", NOW - 1, 10.0, 20.0],  # the same (server, ts): duplicate
        ["new-one", NOW - 2, None, 30.0],  # full path: a new name
        ["known", NOW - 3, 101.0, None],  # bad_cpu
        ["bad name!", NOW, 1.0, None],  # bad_fqdn
        ["known", NOW + 3600, 1.0, None],  # future
        ["known", NOW - 4, None, None],  # no_metrics
        "not a row",  # bad_request
        ["known", float("nan"), 1.0, None],  # bad_ts (a NaN takes the full path)
    ]
    reply = state.record_each(rows, NOW)
    assert reply["verdicts"] == [
        None,
        "duplicate",
        None,
        "bad_cpu",
        "bad_fqdn",
        "future",
        "no_metrics",
        "bad_request",
        "bad_ts",
    ]
    batch = state.flush(NOW)
    names = dict(batch.names)
    taken = sorted((names[int(i)], float(ts)) for i, ts in zip(batch.ids, batch.ts, strict=True))
    assert taken == sorted([("known", NOW - 9), ("known", NOW - 1), ("new-one", NOW - 2)])
    counters = state.counters()
    assert counters["received"]["http"] == 1 + len(rows)
    assert counters["accepted"]["http"] == 3
    assert counters["duplicates"] == 1
    assert dict(counters["rejected"]["http"]) == {
        "bad_cpu": 1,
        "bad_fqdn": 1,
        "future": 1,
        "no_metrics": 1,
        "bad_request": 1,
        "bad_ts": 1,
    }


def test_record_each_agrees_with_record_one_at_a_time() -> None:
    """Random rows taken by ``record_each`` leave the same batch and counters as the same rows
    sent one by one through the all-or-nothing ``record``."""
    rng = random.Random(5)
    values: list[Any] = [None, 0.0, 50.5, 100.0, 100.5, -1.0, 7, "3", True]
    rows = [
        [
            rng.choice(["a", "b", "c", "", "d d"]),
            NOW - rng.choice([0.0, 1.0, 1.0, 90_000.0, -120.0]),
            rng.choice(values),
            rng.choice(values),
        ]
        for _ in range(400)
    ]
    each, single = ReceiverState(FakeClock(NOW)), ReceiverState(FakeClock(NOW))
    verdicts = each.record_each(rows, NOW)["verdicts"]
    for row, verdict in zip(rows, verdicts, strict=True):
        reply = single.record([row], NOW)
        expected = reply.get("error") or (None if reply["accepted"] else "duplicate")
        assert verdict == expected, row
    one, other = each.flush(NOW), single.flush(NOW)
    assert one.ts.tolist() == other.ts.tolist()
    assert one.ids.tolist() == other.ids.tolist()
    assert one.counters == other.counters


def test_record_each_refuses_a_request_that_is_not_a_list() -> None:
    state = ReceiverState(FakeClock(NOW))
    assert state.record_each({"a": 1}, NOW)["error"] == "bad_request"
    assert state.counters()["rejected"]["http"] == {"bad_request": 1}


# -- the aggregator: generation and watch ---------------------------------------------------------
def batch_of(receiver: ReceiverState, rows: list[list[Any]], now: float) -> Batch:
    receiver.record(rows, now)
    return Batch.decode(receiver.flush(now).encode())


def test_generation_changes_with_every_batch_minute_and_restore() -> None:
    """Answers carry the generation; it moves when a batch is applied, when the minute turns
    (housekeeping), when a snapshot is restored, and not otherwise."""
    clock = FakeClock(NOW)
    state = AggregatorState(Rollups(clock), clock)
    receiver = ReceiverState(clock)
    state.housekeeping(NOW)
    start = state.generation
    reply = msgpack.unpackb(state.answer({"op": "view", "name": "x"}, NOW))
    assert reply == {"answer": None, "gen": start}
    state.apply(batch_of(receiver, [["x", NOW - 1, 5.0, None]], NOW), NOW)
    assert state.generation == start + 1
    reply = msgpack.unpackb(state.answer({"op": "view", "name": "x"}, NOW))
    assert reply["answer"] is not None and reply["gen"] == start + 1
    state.housekeeping(NOW + 10)  # same minute (NOW is :30), nothing released
    assert state.generation == start + 1
    state.housekeeping(NOW + 31)  # the next minute
    assert state.generation == start + 2
    assert msgpack.unpackb(state.answer({"op": "watch"}, NOW + 31)) == {"gen": start + 2}
    other = AggregatorState(Rollups(clock), clock)
    before = other.generation
    other.restore(state.store.snapshot(), state.snapshot_meta(NOW + 31))
    assert other.generation != before and other.generation != state.generation


def test_two_aggregators_start_at_different_generations() -> None:
    clock = FakeClock(NOW)
    assert AggregatorState(Rollups(clock), clock).generation != (
        AggregatorState(Rollups(clock), clock).generation
    )


@pytest.fixture
def aggregator(tmp_path: Any, zmq_context: zmq.Context) -> Any:
    """A real aggregator daemon in a thread on ipc sockets (no receiver: it is not needed)."""
    config = AggregatorConfig(
        batches=f"ipc://{tmp_path}/batches",
        query=f"ipc://{tmp_path}/query",
        receiver_control=f"ipc://{tmp_path}/control",
        receiver_timeout=0.1,
    )
    daemon = AggregatorDaemon(config, context=zmq_context)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    yield daemon
    daemon.stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_watch_is_answered_on_a_new_batch_and_heartbeats(
    aggregator: AggregatorDaemon, zmq_context: zmq.Context
) -> None:
    """The API's watch hears a new generation within milliseconds of a batch, hears from an
    idle aggregator before what it heard goes stale, and says None once the aggregator is
    gone."""
    ticks = FakeClock(1000.0)  # the watch's own clock, moved by hand past its freshness
    watch = GenerationWatch(zmq_context, aggregator.config.query, fresh_for=1.5, monotonic=ticks)
    watch.start()
    try:
        first = wait_until(watch.current, 5, "a first generation")
        push = zmq_context.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.connect(aggregator.config.batches)
        try:
            receiver = ReceiverState(Clock(time.time()))
            now = time.time()
            push.send_multipart(batch_of(receiver, [["w", now - 1, 1.0, None]], now).encode())
            sent = time.monotonic()
            new = wait_until(
                lambda: (watch.current() or first)[0] != first[0] and watch.current(),
                5,
                "the new generation",
                0.001,
            )
            assert time.monotonic() - sent < 0.5
        finally:
            push.close(linger=0)
        # No batch: past the freshness on the watch's clock, only a heartbeat makes it fresh.
        ticks.advance(2.0)
        heard = wait_until(watch.current, 2, "a heartbeat", 0.01)
        assert heard == new  # the same generation, first heard at the same time
        aggregator.stop.set()
        wait_until(lambda: watch.current() is None, 5, "the generation to go stale")
    finally:
        watch.close()


# -- the API's read cache -------------------------------------------------------------------------
class FixedGeneration:
    """A generation source set by hand; ``since`` is when the value was set (``ticks``) and
    ``before`` the value set before it (None after None: nothing was heard in between)."""

    def __init__(self, value: int | None, ticks: FakeClock | None = None) -> None:
        self.ticks = ticks or FakeClock(0.0)
        self.since = self.ticks()
        self.before: int | None = None
        self._value = value

    @property
    def value(self) -> int | None:
        return self._value

    @value.setter
    def value(self, value: int | None) -> None:
        if value != self._value:
            self.before = self._value
        self._value, self.since = value, self.ticks()

    def current(self) -> Current | None:
        return None if self._value is None else Current(self._value, self.since, self.before)


class CacheBackend(InProcessBackend):
    """The in-process backend with a generation set by hand (:class:`FixedGeneration`), noting
    its reads; calls run one at a time (the in-process aggregator is not made for threads), and
    ``views`` (the cache's refresh) waits while ``refresh`` is clear."""

    def __init__(self, clock: Clock, ticks: FakeClock | None = None) -> None:
        super().__init__(clock)
        self.source = FixedGeneration(self.aggregator.generation, ticks)
        self.asked: list[str] = []
        self.refresh = threading.Event()
        self.refresh.set()
        self.lock = threading.Lock()

    def announce(self) -> None:
        """The aggregator's current generation is heard (as its long poll would hear it)."""
        self.source.value = self.aggregator.generation

    def generation(self) -> Current | None:
        return self.source.current()

    def direct(self, name: str) -> Answer | CorruptKey | None:
        """The aggregator's own answer of now, not noted."""
        with self.lock:
            return super().view(name)[1]

    def record(self, samples: list[Sample]) -> dict[str, Any]:
        with self.lock:
            return super().record(samples)

    def view(self, name: str, deadline: float | None = None) -> Kept:
        with self.lock:
            self.asked.append("view")
            return super().view(name, deadline)

    def views(self, names: Sequence[str]) -> tuple[int | None, list[Answer | CorruptKey | None]]:
        self.refresh.wait(timeout=5)
        with self.lock:
            self.asked.append("views")
            return super().views(names)


def test_the_cache_serves_only_the_current_generation() -> None:
    """A view is asked once per generation; a new generation, or none known (the aggregator not
    heard from), goes to the backend again."""
    backend = CacheBackend(Clock(NOW))
    backend.record([Sample("web", NOW - 1, 3.0, None)])
    backend.announce()
    cache = CachedReads(backend, grace=0.0)
    direct = backend.direct("web")
    for _ in range(5):
        assert cache.view("web") == direct
    assert backend.asked == ["view"]
    backend.record([Sample("web", NOW - 2, 4.0, None)])  # a batch: a new generation
    assert cache.view("web") == direct  # not yet announced
    backend.announce()
    fresh = cache.view("web")
    assert fresh != direct and fresh == backend.direct("web")
    backend.source.value = None
    cache.view("web")
    cache.view("web")
    assert backend.asked == ["view"] * 4


def test_after_a_new_generation_the_previous_answer_serves_until_the_refresh_is_in() -> None:
    """Right after a batch, reads get the previous answer (for at most the grace) while one
    background ``views`` call asks again for every server read before; then the new answers
    serve, and past the grace without them a read asks the backend itself."""
    ticks = FakeClock(100.0)
    backend = CacheBackend(Clock(NOW), ticks)
    backend.record([Sample(name, NOW - 1, 3.0, None) for name in ("a", "b", "c")])
    backend.announce()
    backend.refresh.clear()
    cache = CachedReads(backend, grace=0.5, monotonic=ticks)
    cache.start()
    try:
        before = {name: cache.view(name) for name in ("a", "b")}
        backend.record([Sample("a", NOW - 2, 9.0, None)])  # a new generation
        backend.announce()
        assert cache.view("a") == before["a"]  # the previous answer
        assert cache.peek("b") == before["b"]
        backend.refresh.set()
        wait_until(lambda: cache.peek("a") not in (None, before["a"]), 5, "the refreshed answer")
        assert cache.peek("a") == backend.direct("a")
        assert backend.asked == ["view", "view", "views"]  # c was never read: not asked for
        backend.record([Sample("b", NOW - 3, 9.0, None)])
        backend.refresh.clear()  # hold the refresh: only the grace decides
        backend.announce()
        ticks.advance(0.6)  # heard 0.6 s ago, read only now: the grace is over all the same
        assert cache.peek("b") is None
        assert cache.view("c") == backend.direct("c")
    finally:
        backend.refresh.set()
        cache.close()


def test_a_thread_late_with_the_generation_does_not_turn_the_cache_back() -> None:
    """A thread that read the generation just before another thread moved the cache on to a
    newer one leaves the cache on the newer one (no answer older than it is kept as current)."""
    ticks = FakeClock(100.0)
    backend = CacheBackend(Clock(NOW), ticks)
    backend.record([Sample("a", NOW - 1, 3.0, None)])
    backend.announce()
    cache = CachedReads(backend, grace=0.0, monotonic=ticks)
    old = backend.generation()
    assert old is not None
    cache.view("a")
    ticks.advance(0.1)
    backend.record([Sample("a", NOW - 2, 9.0, None)])
    backend.announce()
    newer = cache.view("a")  # moves the cache on
    assert cache._gen == backend.source.value
    cache._lookup("a", *old)  # the late thread
    assert cache.peek("a") == newer


def samples_shown(answer: Answer | CorruptKey | None) -> int:
    assert isinstance(answer, Answer)
    return sum(bucket["samples"] for bucket in json.loads(answer.body)["hours"])


def test_answers_say_when_they_were_read_and_a_kept_one_keeps_its_time() -> None:
    """Every answer carries ``ServerTrack-As-Of``, the aggregator's clock when it read its
    store, beside the aggregator's bytes; a kept answer keeps the time it was read (through
    Falcon and before it alike), and the next generation's answer has its own."""
    clock = Clock(NOW)
    backend = CacheBackend(clock)
    backend.record([Sample("web", NOW - 1, 3.0, None)])
    backend.announce()
    fast, _, _ = assemble(backend, Admission(None, None, 2), clock)
    app = fast.app

    def as_of(wsgi: Any) -> str:
        return str(testing.simulate_get(wsgi, "/servers/web/loads").headers["ServerTrack-As-Of"])

    assert as_of(app) == iso_z(NOW)
    clock.now += 5
    assert as_of(app) == as_of(fast) == iso_z(NOW)
    backend.record([Sample("web", NOW + 4, 3.0, None)])
    backend.announce()
    assert as_of(fast) == as_of(app) == iso_z(NOW + 5)


def test_after_a_quiet_spell_an_answer_kept_generations_ago_is_never_served() -> None:
    """Read in one generation, then not while two more were heard a second apart: a read 0.1 s
    after the newest was heard gets the backend's answer of now. The kept answer is two
    generations old, so it is not "the previous answer", grace or not."""
    ticks = FakeClock(100.0)
    backend = CacheBackend(Clock(NOW), ticks)
    backend.record([Sample("a", NOW - 30, 1.0, None)])
    backend.announce()
    backend.refresh.clear()  # no background refresh: only the rule decides
    cache = CachedReads(backend, grace=0.5, monotonic=ticks)
    cache.start()
    try:
        kept = cache.view("a")
        for second in (1, 2):  # two batches nobody reads in between
            ticks.advance(1.0)
            backend.record([Sample("a", NOW - 30 + second, 2.0, None)])
            backend.announce()
        ticks.advance(0.1)
        assert cache.peek("a") is None
        now = cache.view("a")
        assert now == backend.direct("a") and samples_shown(now) == samples_shown(kept) + 2
        assert cache.counts()["stale"] == 0
    finally:
        backend.refresh.set()
        cache.close()


def test_the_answer_of_the_generation_just_before_serves_for_the_grace_only() -> None:
    """Read, a quiet spell with no change, then one batch: the answer kept is exactly one
    generation old, and serves for the grace after the new generation was heard, not after."""
    ticks = FakeClock(100.0)
    backend = CacheBackend(Clock(NOW), ticks)
    backend.record([Sample("a", NOW - 30, 1.0, None)])
    backend.announce()
    backend.refresh.clear()
    cache = CachedReads(backend, grace=0.5, monotonic=ticks)
    cache.start()
    try:
        kept = cache.view("a")
        ticks.advance(7.0)
        backend.record([Sample("a", NOW - 29, 2.0, None)])
        backend.announce()
        ticks.advance(0.49)
        assert cache.peek("a") == kept
        ticks.advance(0.01)
        assert cache.peek("a") is None
    finally:
        backend.refresh.set()
        cache.close()


@pytest.mark.parametrize("period", [0.37, 1.3, 7.37])
def test_no_answer_is_older_than_the_grace_at_any_read_rate(period: float) -> None:
    """A batch every second, heard at once; a read every ``period`` s, out of phase with the
    batches, for 100 s of an injected clock, the background refresh racing the reads for real:
    every answer shows every sample applied more than the grace before it was read."""
    ticks = FakeClock(100.0)
    backend = CacheBackend(Clock(NOW), ticks)
    backend.record([Sample("a", NOW - 3000, 1.0, None)])
    backend.announce()
    cache = CachedReads(backend, grace=GRACE, monotonic=ticks)
    cache.start()
    applied = [(float("-inf"), 1)]
    batches = [(100.55 + k, "batch") for k in range(100)]
    reads = [(100.0 + j * period, "read") for j in range(int(100 / period))]
    stale = []
    try:
        for at, kind in sorted(batches + reads):
            ticks.set(at)
            if kind == "batch":
                backend.record([Sample("a", NOW - 3000 + at, 2.0, None)])
                backend.announce()
                applied.append((at, applied[-1][1] + 1))
            else:
                shows = samples_shown(cache.view("a"))
                due = max(count for when, count in applied if when <= at - GRACE)
                if shows < due:
                    stale.append(f"at {at - 100:.2f} s: {shows} < {due}")
    finally:
        cache.close()
    assert not stale, stale
    if period < 1:  # more reads than batches: some are served from the cache
        assert cache.hits + cache.stale > 0


# -- the API's group commit -----------------------------------------------------------------------
class ReceiverOverRpc:
    """An ``RpcClient`` stand-in that calls a real ``ReceiverState`` and notes each trip."""

    endpoint = "inproc://receiver"

    def __init__(self, state: ReceiverState, delay: float = 0.0, down: bool = False) -> None:
        self.state = state
        self.delay = delay
        self.down = down
        self.trips: list[int] = []
        self.closed = False

    def call(self, request: dict[str, Any]) -> Any:
        if self.down:
            raise Unavailable("receiver is not reachable")
        time.sleep(self.delay)
        self.trips.append(len(request["samples"]))
        return msgpack.unpackb(
            msgpack.packb(self.state.record_each(request["samples"], self.state.clock()))
        )

    def close(self) -> None:
        self.closed = True


def test_group_commit_groups_concurrent_records_and_keeps_each_verdict() -> None:
    """Records posted by 40 threads at once travel in fewer trips than records, and each thread
    gets its own record's verdict."""
    state = ReceiverState(FakeClock(NOW))
    client = ReceiverOverRpc(state, delay=0.01)
    group = GroupCommit(client, wait=5.0)  # type: ignore[arg-type]
    group.start()
    samples = [
        Sample(f"s{n % 7}", NOW - n // 2, 101.0 if n % 5 == 0 else 1.0, None) for n in range(40)
    ]
    results: list[dict[str, Any] | None] = [None] * len(samples)
    barrier = threading.Barrier(len(samples))

    def post(index: int) -> None:
        barrier.wait(timeout=5)
        results[index] = group.record(samples[index])

    threads = [threading.Thread(target=post, args=(n,)) for n in range(len(samples))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    group.close()
    assert client.closed
    assert sum(client.trips) == len(samples) and len(client.trips) < len(samples)
    seen: set[tuple[str, float]] = set()
    for sample, result in zip(samples, results, strict=True):
        if sample.cpu == 101.0:
            assert result == {"error": "bad_cpu", "index": None}
        elif (sample.fqdn, sample.ts) in seen:
            assert result == {"accepted": 0, "duplicates": 1}
        else:
            seen.add((sample.fqdn, sample.ts))
            assert result == {"accepted": 1, "duplicates": 0}


class HeldReceiver(ReceiverOverRpc):
    """A receiver whose first trip waits until the test lets it go."""

    def __init__(self, state: ReceiverState) -> None:
        super().__init__(state)
        self.go = threading.Event()

    def call(self, request: dict[str, Any]) -> Any:
        reply = super().call(request)
        if len(self.trips) == 1:
            self.go.wait(timeout=5)
        return reply


def test_group_commit_answers_every_gathered_record_across_close_and_splits_large_groups(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Records gathered during a slow trip travel together (in trips of at most ``MAX_GROUP``),
    each gets its verdict even when ``close`` comes while they wait, and a record after
    ``close`` is refused at once."""
    monkeypatch.setattr(group_module, "MAX_GROUP", 4)
    client = HeldReceiver(ReceiverState(FakeClock(NOW)))
    group = GroupCommit(client, wait=5.0)  # type: ignore[arg-type]
    group.start()
    results: list[dict[str, Any] | None] = [None] * 11

    def post(index: int) -> None:
        results[index] = group.record(Sample(f"c{index}", NOW - 1, 1.0, None))

    first = threading.Thread(target=post, args=(0,))
    first.start()
    wait_until(lambda: client.trips or None, 5, "the first trip", step=0.005)
    others = [threading.Thread(target=post, args=(n,)) for n in range(1, 11)]
    for thread in others:
        thread.start()
    wait_until(lambda: len(group._gathering.rows) == 10 or None, 5, "ten gathered", step=0.005)
    closer = threading.Thread(target=group.close)
    closer.start()
    wait_until(lambda: group._closed or None, 5, "close to begin", step=0.005)
    client.go.set()
    closer.join(timeout=10)
    for thread in [first, *others]:
        thread.join(timeout=10)
    assert results == [{"accepted": 1, "duplicates": 0}] * 11
    assert client.trips == [1, 4, 4, 2] and client.closed
    with pytest.raises(Unavailable, match="not started, or closed"):
        group.record(Sample("late", NOW - 1, 1.0, None))


def test_group_commit_turns_an_unreachable_receiver_into_unavailable() -> None:
    group = GroupCommit(ReceiverOverRpc(ReceiverState(FakeClock(NOW)), down=True), wait=5.0)  # type: ignore[arg-type]
    group.start()
    try:
        with pytest.raises(Unavailable, match="not reachable"):
            group.record(Sample("a", NOW, 1.0, None))
    finally:
        group.close()


def test_group_commit_gives_up_after_its_wait() -> None:
    """A receiver slower than the wait: the request gets Unavailable (503) after the wait."""
    client = ReceiverOverRpc(ReceiverState(FakeClock(NOW)), delay=1.0)
    group = GroupCommit(client, wait=0.2)  # type: ignore[arg-type]
    group.start()
    began = time.monotonic()
    try:
        with pytest.raises(Unavailable, match="may still have been applied"):
            group.record(Sample("a", NOW, 1.0, None))
        assert time.monotonic() - began < 0.9
    finally:
        group.close()


# -- the read served before Falcon ----------------------------------------------------------------
def test_fast_reads_answer_exactly_as_falcon_and_defer_everything_else() -> None:
    """A cached GET gets the very status, headers and bytes the Falcon app sends; a request
    that needs a refusal or a check (no token, a query string, past its deadline, client gone,
    an unknown server) is left to the app, which answers as before."""
    clock = Clock(NOW)
    backend = CacheBackend(clock)
    backend.record([Sample("web", NOW - 1, 3.0, None)])
    backend.announce()
    stats = ApiStats()
    fast, reads, _ = assemble(backend, Admission(None, READ_TOKEN, 2), clock, stats)
    app, cache = fast.app, reads.cache
    auth = {"Authorization": f"Bearer {READ_TOKEN}"}
    slow = testing.simulate_get(app, "/servers/web/loads", headers=auth)  # fills the cache
    hits = cache.hits
    quick = testing.simulate_get(fast, "/servers/web/loads", headers=auth)
    assert cache.hits == hits + 1  # served from the cache by the fast path
    assert (quick.status, quick.headers, quick.content) == (slow.status, slow.headers, slow.content)
    assert testing.simulate_get(fast, "/servers/web/loads").status_code == 401
    assert testing.simulate_get(fast, "/servers/nope/loads", headers=auth).status_code == 404
    query = testing.simulate_get(fast, "/servers/web/loads", headers=auth, params={"x": "1"})
    same = testing.simulate_get(app, "/servers/web/loads", headers=auth, params={"x": "1"})
    assert (query.status, query.content) == (same.status, same.content)
    stale = {"servertrack.arrived": time.time() - 10}
    late = testing.simulate_get(fast, "/servers/web/loads", headers=auth, extras=stale)
    assert late.status_code == 503
    gone = {"waitress.client_disconnected": lambda: True}
    assert (
        testing.simulate_get(fast, "/servers/web/loads", headers=auth, extras=gone).status_code
        == 503
    )
    assert stats.snapshot()["requests_abandoned"] == 2
    backend.source.value = None  # aggregator not heard from: no cached answer is served
    hits = cache.hits
    testing.simulate_get(fast, "/servers/web/loads", headers=auth)
    assert cache.hits == hits


def test_fast_reads_leave_names_the_app_refuses_to_the_app() -> None:
    """A name the app refuses (400) is never answered by the fast path, even while the cache
    holds answers: only names the app checked are ever kept."""
    clock = Clock(NOW)
    backend = CacheBackend(clock)
    backend.record([Sample("web", NOW - 1, 3.0, None)])
    backend.announce()
    fast, reads, _ = assemble(backend, Admission(None, None, 2), clock)
    assert testing.simulate_get(fast, "/servers/web/loads").status_code == 200
    for name in ("we b", "..", "a" * 300):
        assert testing.simulate_get(fast, f"/servers/{name}/loads").status_code == 400
    assert set(reads.cache._entries) == {"web"}
