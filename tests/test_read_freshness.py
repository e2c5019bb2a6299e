"""The read cache's freshness rule on real hosts: however often a server is read, out of phase
with the one-second batches, no answer is older than the newest applied batch for longer than
the cache's grace plus the moment an API takes to hear of the batch.

Memory and Redis stores, waitress and granian. A writer records a sample every 0.2 s; a watcher
reads the store itself every 20 ms, behind every cache, and notes when each new sample count
first shows there; each reader has an API (so a read cache) to itself, since a reader of another
server would keep the cache turning over. Each answer's count is then checked against what the
store held ``GRACE + heard within`` before the read began.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zmq

from servertrack.api.cache import GRACE
from servertrack.api.store_generation import POLL
from servertrack.common import rpc
from servertrack.common.redis_testing import RedisServer
from servertrack.common.testing import (
    STOP_DEADLINE,
    ChildProcess,
    HostUnderTest,
    free_port,
    http_json,
    servertrack_argv,
)
from servertrack.store.redis_nodes import StoreUnavailable
from servertrack.store.redis_store import RedisStore
from tests.support import wait_for

pytestmark = pytest.mark.e2e
SERVER = "fresh.example"
WRITE_EVERY = 0.2
WATCH_EVERY = 0.02
HEARD_WITHIN = {"memory": 0.1, "redis": POLL + 0.1}
"""Seconds an API may take to hear of a change the watcher saw: the aggregator's long poll answers
within milliseconds and Redis mode polls the change counter every 50 ms; the rest is room for a
busy 2-core machine."""
QUICK_PERIODS = (0.37, 1.3, 2.37)
QUICK_READING = 8.0
LONG_PERIODS = (0.37, 1.3, 7.37)
LONG_READING = 112.0
"""15 reads at 7.37 s, as in the report this test was written for."""


def samples_in(view: dict[str, Any]) -> int:
    return sum(bucket["samples"] for bucket in view["hours"])


class Watcher:
    """A thread that reads the store's count for ``SERVER`` every ``WATCH_EVERY`` s and notes
    when each new count was first seen (monotonic)."""

    def __init__(self, count: Callable[[], int]) -> None:
        self.count = count
        self.seen: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="watcher", daemon=True)

    def __enter__(self) -> Watcher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)

    def _run(self) -> None:
        while not self.stop.wait(WATCH_EVERY):
            try:
                count = self.count()
            except (rpc.Unavailable, StoreUnavailable):
                continue
            if not self.seen or count != self.seen[-1][1]:
                self.seen.append((time.monotonic(), count))

    def held_at(self, moment: float) -> int:
        """The newest count seen by ``moment`` (the store held at least that much then)."""
        return max((count for at, count in self.seen if at <= moment), default=0)

    def first_seen(self, count: int) -> float:
        return min(at for at, seen in self.seen if seen >= count)


class Writer:
    """A thread that records a sample of ``SERVER`` every ``WRITE_EVERY`` s through ``host``."""

    def __init__(self, host: HostUnderTest) -> None:
        self.host = host
        self.accepted = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="writer", daemon=True)

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)

    def _run(self) -> None:
        due = time.monotonic()
        while not self.stop.is_set():
            body = {"ts": time.time(), "cpu": float(self.accepted % 100)}
            if self.host.post(f"/servers/{SERVER}/loads", body)[0] == 202:
                self.accepted += 1
            due += WRITE_EVERY
            self.stop.wait(max(0.0, due - time.monotonic()))


@dataclass(frozen=True)
class Read:
    period: float
    began: float
    shows: int


def read_every(base: str, period: float, until: float) -> list[Read]:
    """GET ``SERVER`` every ``period`` s until ``until`` (monotonic)."""
    reads = []
    due = time.monotonic()
    while due < until:
        time.sleep(max(0.0, due - time.monotonic()))  # the read rate under test
        began = time.monotonic()
        status, view = http_json("GET", f"{base}/servers/{SERVER}/loads")
        assert status == 200, view
        reads.append(Read(period, began, samples_in(view)))
        due += period
    return reads


@pytest.fixture(params=["memory", "redis"])
def store_mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def redis_url(store_mode: str, tmp_path: Path) -> Iterator[str | None]:
    if store_mode == "memory":
        yield None
        return
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def apis(tmp_path: Path) -> Iterator[Callable[..., list[str]]]:
    """Start ``servertrack api`` processes, each with ``flags``; all are stopped afterwards."""
    started: list[ChildProcess] = []

    def start(count: int, *flags: str) -> list[str]:
        bases = []
        for _ in range(count):
            port = free_port()
            argv = servertrack_argv("api", "--port", str(port), *flags)
            started.append(ChildProcess(argv, tmp_path / f"api{len(started)}.log").start())
            bases.append(f"http://127.0.0.1:{port}")
        for base in bases:
            wait_for(lambda b=base: http_json("GET", b + "/health")[0] == 200, 30, base)
        return bases

    yield start
    for process in started:  # all at once: each takes about a second to stop
        assert process.process is not None
        if process.process.poll() is None:
            process.process.terminate()
    for process in started:
        process.stop(STOP_DEADLINE)


def store_count(
    host: HostUnderTest, redis_url: str | None, context: zmq.Context
) -> tuple[Callable[[], int], Callable[[], None]]:
    """How many samples of ``SERVER`` the store holds, asked behind every cache; and a closer."""
    if redis_url is not None:
        store = RedisStore(redis_url)
        store.open()

        def from_redis() -> int:
            view = store.view(SERVER)
            return 0 if view is None else samples_in(view)

        return from_redis, store.close
    client = rpc.RpcClient(context, f"ipc://{host.runtime_dir}/query", 1.0)

    def from_aggregator() -> int:
        reply = client.call({"op": "view", "name": SERVER})
        return samples_in(json.loads(reply["body"])) if reply.get("status") == 200 else 0

    return from_aggregator, client.close


def check_freshness(
    start_host: Callable[..., HostUnderTest],
    apis: Callable[..., list[str]],
    redis_url: str | None,
    http_server: str,
    zmq_context: zmq.Context,
    periods: tuple[float, ...],
    reading: float,
) -> None:
    store = ("--store", redis_url) if redis_url else ()
    host = start_host("--no-agent", "--http", http_server, *store)
    if redis_url:
        flags: tuple[str, ...] = ("--store", redis_url)
    else:
        runtime = host.runtime_dir
        flags = (
            "--receiver-control",
            f"ipc://{runtime}/receiver-control",
            "--aggregator-query",
            f"ipc://{runtime}/query",
        )
    bases = [host.api, *apis(len(periods) - 1, "--http", http_server, *flags)]
    count, close = store_count(host, redis_url, zmq_context)
    try:
        with Watcher(count) as watcher, Writer(host) as writer:
            for base in bases:
                wait_for(
                    lambda b=base: http_json("GET", f"{b}/servers/{SERVER}/loads")[0] == 200,
                    10,
                    f"{SERVER} on {base}",
                )
            until = time.monotonic() + reading
            with ThreadPoolExecutor(len(periods)) as pool:
                futures = [
                    pool.submit(read_every, base, period, until)
                    for base, period in zip(bases, periods, strict=True)
                ]
                reads = [read for future in futures for read in future.result(timeout=300)]
    finally:
        close()
    assert writer.accepted >= reading / WRITE_EVERY * 0.8
    allowed = GRACE + HEARD_WITHIN["redis" if redis_url else "memory"]
    stale = []
    for read in reads:
        due = watcher.held_at(read.began - allowed)
        if read.shows < due:
            late = read.began - watcher.first_seen(read.shows + 1)
            stale.append(f"every {read.period} s: {read.shows} < {due} samples, {late:.2f} s old")
    assert not stale, f"{len(stale)} of {len(reads)} answers too old: {stale}"
    cache = http_json("GET", bases[0] + "/stats")[1]["api"]["read_cache"]
    assert cache["hit"] > 0, cache  # the answers did come from the cache


def test_no_answer_is_older_than_the_grace_at_any_read_rate(
    start_host: Callable[..., HostUnderTest],
    apis: Callable[..., list[str]],
    redis_url: str | None,
    http_server: str,
    zmq_context: zmq.Context,
) -> None:
    """Readers every 0.37, 1.3 and 2.37 s for 8 s, a sample every 0.2 s: every answer shows
    all the store held GRACE (plus the hearing) before the read began."""
    check_freshness(
        start_host, apis, redis_url, http_server, zmq_context, QUICK_PERIODS, QUICK_READING
    )


@pytest.mark.faults
def test_no_answer_is_older_than_the_grace_over_two_minutes(
    start_host: Callable[..., HostUnderTest],
    apis: Callable[..., list[str]],
    redis_url: str | None,
    http_server: str,
    zmq_context: zmq.Context,
) -> None:
    """As above with a reader every 7.37 s among them, for 15 of its reads."""
    check_freshness(
        start_host, apis, redis_url, http_server, zmq_context, LONG_PERIODS, LONG_READING
    )
