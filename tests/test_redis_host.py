"""Monitoring hosts and API replicas on one real redis-server (``--store redis://...``); what
they do when Redis or a daemon fails is in ``test_redis_host_failures.py``.

Everything here is real: ``servertrack run`` hosts and ``servertrack api`` replicas as child
processes, a ``redis-server`` started on a free loopback port, HTTP and ZeroMQ on loopback.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from servertrack.api import main as api_main
from servertrack.common import wire
from servertrack.common.oracle import RawSample, iso_z, oracle_buckets
from servertrack.common.sample import Sample
from servertrack.testing.hosts import (
    ChildProcess,
    HostUnderTest,
    free_port,
    http_json,
    random_history,
    servertrack_argv,
    view_at_stable_minute,
    wait_until,
    warm_up,
)
from servertrack.testing.redis import RedisServer
from tests.redis_host_support import VISIBLE, loads, shown
from tests.support import assert_fatal, assert_matches_oracle, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """``servertrack api --store URL`` processes (read replicas); stopped afterwards."""
    started: list[ChildProcess] = []

    def start(store: str, *extra: str) -> str:
        port = free_port()
        process = ChildProcess(
            servertrack_argv("api", "--port", str(port), "--store", store, *extra),
            tmp_path / f"replica{len(started)}.log",
        ).start()
        started.append(process)
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_json("GET", base + "/health")[0] == 200, 30, "the replica")
        return base

    yield start
    for process in started:
        process.stop()


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server for the module's shared hosts (never emptied: their tests use server
    names of their own)."""
    server = RedisServer(tmp_path_factory.mktemp("shared-store")).start()
    yield server
    server.stop()


@pytest.fixture
def writers(
    shared_host: Callable[..., HostUnderTest], shared_store: RedisServer
) -> tuple[HostUnderTest, HostUnderTest]:
    """Two hosts on ``shared_store``, shared by the tests that take them."""
    first = shared_host("--no-agent", "--store", shared_store.url, "--store-flush", "1")
    second = shared_host("--no-agent", "--store", shared_store.url)
    return first, second


def test_views_in_redis_mode_match_the_oracle(
    writers: tuple[HostUnderTest, HostUnderTest], zmq_context: zmq.Context
) -> None:
    """Random history over the whole 24-hour window (HTTP) and live samples (ZeroMQ): every
    bucket read back from Redis equals the oracle's."""
    host = writers[0]
    rng = random.Random(9)
    now = time.time()
    sent: list[RawSample] = []
    for name in ("alpha.example", "beta.example"):
        history = random_history(rng, name, now, 400)
        items = [
            {"server": s[0], "ts": s[1], **({"cpu": s[2]} if s[2] is not None else {}),
             **({"ram": s[3]} if s[3] is not None else {})}
            for s in history
        ]  # fmt: skip
        assert host.post("/loads", items)[0] == 202
        sent += history
    pub = zmq_context.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.connect(host.ingest)
    warm_up(pub, host)
    for seq in range(20):
        sample = Sample("gamma.example", time.time(), rng.uniform(0, 100), rng.uniform(0, 100), seq)
        pub.send_multipart(wire.encode(sample))
        sent.append((sample.fqdn, sample.ts, sample.cpu, sample.ram))
    pub.close()
    for name, count in (("alpha.example", 400), ("beta.example", 400), ("gamma.example", 20)):
        wait_for(lambda n=name, c=count: shown(host.api, n, c), VISIBLE, f"{name} in Redis")
        view, at = view_at_stable_minute(host, name)
        assert_matches_oracle(view, oracle_buckets(sent, at, name))


def test_two_hosts_and_replicas_answer_alike_for_every_server(
    start_host: Callable[..., HostUnderTest],
    redis_server: RedisServer,
    replicas: Callable[..., str],
    http_server: str,
) -> None:
    """Two hosts write one Redis: each API (and a read replica) answers for the other's servers,
    and a server recorded through both hosts adds up exactly. The second host and the replica
    run on each HTTP server."""
    first = start_host("--no-agent", "--store", redis_server.url)
    second = start_host("--no-agent", "--store", redis_server.url, "--http", http_server)
    replica = replicas(redis_server.url, "--http", http_server)
    now = time.time()
    assert first.post("/loads", [{"server": "only-a", "ts": now - 5, "cpu": 10.0}])[0] == 202
    assert second.post("/loads", [{"server": "only-b", "ts": now - 5, "cpu": 20.0}])[0] == 202
    shared = [("both", now - 3, 30.0, None), ("both", now - 2, 60.0, 50.0)]
    assert first.post("/servers/both/loads", {"ts": now - 3, "cpu": 30.0})[0] == 202
    assert second.post("/servers/both/loads", {"ts": now - 2, "cpu": 60.0, "ram": 50.0})[0] == 202
    bases = (first.api, second.api, replica)
    for base in bases:
        for name, count in (("only-a", 1), ("only-b", 1), ("both", 2)):
            wait_for(lambda b=base, n=name, c=count: shown(b, n, c), VISIBLE, f"{name} on {base}")
    views = [loads(base, "both")[1] for base in bases]
    assert views[0]["minutes"] == views[1]["minutes"] == views[2]["minutes"]
    assert views[0]["hours"][-1]["cpu"] == 45.0 and views[0]["hours"][-1]["ram_samples"] == 1
    pages = [http_json("GET", base + "/servers")[1] for base in bases]
    assert all(page["total"] == 3 for page in pages)
    assert pages[0]["servers"] == pages[1]["servers"] == pages[2]["servers"]
    expected = oracle_buckets(shared, time.time(), "both")
    assert views[2]["hours"][-1]["samples"] == expected["hours"][-1]["samples"]
    fleet = http_json("GET", replica + "/fleet")[1]
    assert fleet["total"] == 3 and fleet["summary"]["live"] == 3


def test_cached_answers_follow_every_hosts_writes(
    writers: tuple[HostUnderTest, HostUnderTest],
    shared_store: RedisServer,
    replicas: Callable[..., str],
    http_server: str,
) -> None:
    """An API serves repeated reads of a server from its cache, and a sample recorded through
    another host still shows there within the flush and a batch (plus a second for a busy
    machine): every writer raises the store's change counter, which the API follows."""
    first, second = writers
    replica = replicas(shared_store.url, "--http", http_server)
    name = f"cached-{http_server}"
    assert first.post(f"/servers/{name}/loads", {"ts": time.time(), "cpu": 10.0})[0] == 202
    wait_for(lambda: shown(replica, name, 1), VISIBLE, "the first sample")
    before = http_json("GET", replica + "/stats")[1]["api"]["read_cache"]
    for _ in range(20):
        assert shown(replica, name, 1)
    after = http_json("GET", replica + "/stats")[1]["api"]["read_cache"]
    assert after["hit"] - before["hit"] >= 15, (before, after)
    for step in range(3):
        began = time.monotonic()
        status, _ = second.post(f"/servers/{name}/loads", {"ts": time.time(), "cpu": 20.0})
        assert status == 202
        wait_for(lambda s=step: shown(replica, name, s + 2), VISIBLE, "the other host's")
        assert time.monotonic() - began < 1.0 + 1.0 + 1.0
    view = shown(replica, name, 4)
    assert view is not None and view["hours"][-1]["cpu_sum"] == 70.0


def test_a_read_replica_refuses_records_and_checks_only_the_store(
    redis_server: RedisServer, replicas: Callable[..., str], http_server: str
) -> None:
    replica = replicas(redis_server.url, "--http", http_server)
    status, body = http_json("POST", replica + "/servers/x/loads", {"cpu": 1.0})
    assert (status, body["reason"]) == (503, "backend_unavailable")
    health = http_json("GET", replica + "/health")[1]
    assert health == {"status": "ok", "store": {"ok": True}}


def test_a_replica_given_a_receiver_records_through_it(
    writers: tuple[HostUnderTest, HostUnderTest],
    shared_store: RedisServer,
    replicas: Callable[..., str],
) -> None:
    """``servertrack api --store URL --receiver-control ...`` records through that receiver and
    reads Redis; its /health checks the receiver and the store, its /stats has no aggregator."""
    host = writers[0]
    control = f"ipc://{host.runtime_dir}/receiver-control"
    replica = replicas(shared_store.url, "--receiver-control", control)
    assert http_json("POST", replica + "/servers/via-replica/loads", {"cpu": 4.0})[0] == 202
    wait_for(lambda: shown(replica, "via-replica", 1), VISIBLE, "the sample on the replica")
    assert shown(host.api, "via-replica", 1)
    status, health = http_json("GET", replica + "/health")
    assert status == 200 and health["store"] == {"ok": True} and health["receiver"]["ok"]
    assert "aggregator" not in health
    status, stats = http_json("GET", replica + "/stats")
    assert status == 200 and stats["aggregator"] == {}


def test_an_aggregator_without_a_receiver_is_refused(
    redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--store", redis_server.url, "--aggregator-query", "tcp://127.0.0.1:1", "--port", "1"]
    assert_fatal(capsys, lambda: api_main.main(argv), "--aggregator-query needs --receiver-control")


def test_every_key_of_a_host_has_a_ttl(
    start_host: Callable[..., HostUnderTest], redis_server: RedisServer
) -> None:
    host = start_host("--no-agent", "--store", redis_server.url)
    assert host.post("/loads", [{"server": f"t{i}", "cpu": 1.0} for i in range(20)])[0] == 202
    wait_for(lambda: http_json("GET", host.api + "/servers")[1]["total"] == 20, VISIBLE, "20")
    client = redis_server.client()
    keys = list(client.scan_iter(count=1000))
    assert len(keys) > 20
    assert all(client.pttl(key) > 0 for key in keys), [k for k in keys if client.pttl(k) <= 0]


def test_the_fleets_minute_mean_in_redis_mode_is_over_raw_samples(
    start_host: Callable[..., HostUnderTest], redis_server: RedisServer
) -> None:
    """Two hosts, servers with different sample counts in one minute: the overview's minute
    mean is the sum of every sample over their number, not a mean of the servers' means."""
    first = start_host("--no-agent", "--store", redis_server.url)
    second = start_host("--no-agent", "--store", redis_server.url)
    # Six samples a second apart from the minute's start, none ahead of now: the current minute
    # once it is 6 s old, the previous one before. The summary shows that minute until the
    # minute after it ends (as the previous one while the current one has no sample): at
    # least 54 s for the reads.
    minute = time.time() // 60 * 60
    if time.time() - minute < 6:
        minute -= 60
    sent = [("busy", minute + k, 90.0 - k) for k in range(6)] + [("idle", minute + 1, 10.0)]
    for host, (name, ts, cpu) in zip([first, second] * 4, sent, strict=False):
        assert host.post(f"/servers/{name}/loads", {"ts": ts, "cpu": cpu})[0] == 202
    exact = math.fsum(cpu for _, _, cpu in sent) / len(sent)

    def summary() -> dict[str, Any] | None:
        status, body = http_json("GET", second.api + "/fleet")
        if status != 200:
            return None
        minute_mean: dict[str, Any] = body["summary"]["minute"]
        return minute_mean if minute_mean["samples"] == 7 else None

    mean = wait_for(summary, 20, "the minute's 7 samples in the summary")
    assert mean["start"] == iso_z(minute) and mean["cpu_samples"] == 7
    assert math.isclose(mean["cpu"], exact, rel_tol=1e-12)
    assert not math.isclose(mean["cpu"], (sum(90.0 - k for k in range(6)) / 6 + 10.0) / 2)


def test_a_record_shows_within_the_flush_and_a_batch(
    writers: tuple[HostUnderTest, HostUnderTest],
) -> None:
    """A sample answered 202 is read back from Redis within --store-flush (1 s) plus the
    receiver's one-second batch; one more second is allowed for a busy machine."""
    host = writers[0]  # started with --store-flush 1
    delays = []
    for index in range(5):
        began = time.monotonic()
        assert host.post(f"/servers/fresh-{index}/loads", {"ts": time.time(), "cpu": 3.0})[0] == 202
        wait_for(lambda index=index: shown(host.api, f"fresh-{index}", 1), VISIBLE, "the sample")
        delays.append(time.monotonic() - began)
    assert max(delays) < 1.0 + 1.0 + 1.0, delays
