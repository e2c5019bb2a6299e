"""Monitoring hosts on a real redis-server when things go wrong: Redis stopped, full or holding a
corrupt key, the aggregator killed, hosts with different limits on one store.

Everything here is real: ``servertrack run`` hosts as child processes, a ``redis-server``
started on a free loopback port, HTTP on loopback.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from servertrack.common.oracle import RawSample, oracle_buckets
from servertrack.store.keys import server_keys
from servertrack.testing.hosts import (
    HostUnderTest,
    http_json,
    settled_stats,
    view_at_stable_minute,
)
from servertrack.testing.redis import RedisServer
from tests.redis_host_support import VISIBLE, loads, pid_of, shown
from tests.support import assert_matches_oracle, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own that keeps its data across a restart (AOF)."""
    server = RedisServer(tmp_path / "redis", options=("--appendonly", "yes", "--save", ""))
    server.start()
    yield server
    server.stop()


def test_redis_stopped_for_ten_seconds_loses_nothing_acknowledged(
    start_host: Callable[..., HostUnderTest], aof_redis: RedisServer
) -> None:
    """While Redis is down, records are still taken (202) and reads answer 503 within a
    second (the cache may answer until then); when it is back, the aggregator's held batches
    are merged: nothing is lost."""
    redis_server = aof_redis
    host = start_host("--no-agent", "--store", redis_server.url, "--store-timeout", "0.5")
    assert host.post("/servers/before/loads", {"cpu": 1.0})[0] == 202
    wait_for(lambda: shown(host.api, "before", 1), VISIBLE, "the first sample")
    redis_server.stop()
    began = time.monotonic()
    while (answer := loads(host.api, "before"))[0] == 200:  # the cache, while it may serve
        assert time.monotonic() - began < 1.0, "a cached answer served a second into the outage"
        time.sleep(0.02)
    assert time.monotonic() - began < 1.0
    assert (answer[0], answer[1]["reason"]) == (503, "backend_unavailable")
    acked = 0
    outage_end = time.monotonic() + 10
    while time.monotonic() < outage_end:
        status, _ = host.post("/servers/during/loads", {"ts": time.time(), "cpu": 2.0})
        acked += status == 202
        time.sleep(0.5)
    assert acked >= 15
    redis_server.start()
    wait_for(lambda: shown(host.api, "during", acked), 30, "every sample of the outage")
    assert shown(host.api, "before", 1)
    stats = http_json("GET", host.api + "/stats")[1]["aggregator"]
    assert stats["store_errors"] > 0 and stats["store_dropped"] == 0


def test_aggregator_killed_loses_nothing_and_doubles_nothing(
    start_host: Callable[..., HostUnderTest], redis_server: RedisServer
) -> None:
    """kill -9 of the aggregator: the receiver sends its retained batches again, the Redis
    guards apply each exactly once, so every sample shows once."""
    host = start_host("--no-agent", "--store", redis_server.url)
    for index in range(10):
        assert host.post("/servers/steady/loads", {"ts": time.time() - index, "cpu": 5.0})[0] == 202
    wait_for(lambda: shown(host.api, "steady", 10), VISIBLE, "ten samples")
    aggregator = host.child("aggregator")
    aggregator.send_signal(signal.SIGKILL)
    assert host.post("/servers/steady/loads", {"ts": time.time(), "cpu": 5.0})[0] == 202
    wait_for(lambda: pid_of(host, "aggregator") not in (None, aggregator.pid), 30, "a new one")
    wait_for(lambda: shown(host.api, "steady", 11), 30, "eleven samples, each once")
    wait_for(lambda: aggregator_stats(host)["batches_replayed"] > 0, 30, "the batches re-sent")
    settled_stats(host)  # two batches after the replay: every re-sent batch is in
    assert shown(host.api, "steady", 11)


# -- faults: Redis refusing merges, a corrupt key, hosts with different limits -------------------
class Recorder:
    """Records one sample of each of ``names`` per round through ``host`` (``POST /loads``),
    remembering those answered 202, for the oracle."""

    def __init__(self, host: HostUnderTest, names: list[str], seed: int) -> None:
        self.host = host
        self.names = names
        self.rng = random.Random(seed)
        self.sent: list[RawSample] = []

    def round(self) -> int:
        now = time.time()
        samples = [
            (name, now, round(self.rng.uniform(0, 100), 2), round(self.rng.uniform(0, 100), 2))
            for name in self.names
        ]
        items = [{"server": s[0], "ts": s[1], "cpu": s[2], "ram": s[3]} for s in samples]
        status, _ = self.host.post("/loads", items)
        if status == 202:
            self.sent += samples
        return status

    def count(self, name: str) -> int:
        return sum(1 for sample in self.sent if sample[0] == name)

    def all_shown(self, names: list[str] | None = None) -> bool:
        return all(shown(self.host.api, n, self.count(n)) for n in names or self.names)

    def assert_matches_oracle(self, names: list[str]) -> None:
        for name in names:
            view, at = view_at_stable_minute(self.host, name)
            assert_matches_oracle(view, oracle_buckets(self.sent, at, name))


def aggregator_stats(host: HostUnderTest) -> dict[str, Any]:
    stats: dict[str, Any] = host.get("/stats")[1]["aggregator"]
    return stats


def health_problems(host: HostUnderTest) -> tuple[str, list[str]]:
    status, health = host.get("/health")
    assert status == 200, health
    return health["status"], health["aggregator"]["problems"]


def test_a_full_redis_holds_batches_then_stores_every_acknowledged_sample_once(
    start_host: Callable[..., HostUnderTest], redis_server: RedisServer
) -> None:
    """``maxmemory 1`` for a couple of seconds under 40 recording servers: records are taken
    (202), merges fail and are counted, /health says degraded with the reason; once Redis has
    room the host says the store answers again, and every sample answered 202 is in Redis
    exactly once (the oracle agrees, applied counts each, nothing was dropped)."""
    host = start_host("--no-agent", "--store", redis_server.url, "--store-timeout", "0.5")
    recorder = Recorder(host, [f"oom-{k:03d}" for k in range(100)], seed=31)
    assert recorder.round() == 202
    wait_for(recorder.all_shown, VISIBLE, "the first round")
    client = redis_server.client()
    client.config_set("maxmemory", 1)
    try:
        fault_end = time.monotonic() + 2.0
        while time.monotonic() < fault_end:
            assert recorder.round() == 202
            time.sleep(0.2)
        wait_for(lambda: aggregator_stats(host)["store_errors"] > 0, 10, "a refused merge")
        during = health_problems(host)
    finally:
        client.config_set("maxmemory", 0)
    assert recorder.round() == 202
    wait_for(recorder.all_shown, 20, "every sample answered 202")
    recorder.assert_matches_oracle(recorder.names)
    stats = aggregator_stats(host)
    assert stats["applied"] == len(recorder.sent)
    assert stats["store_dropped"] == 0 and stats["store_pending"] == 0
    assert "the store answers again" in host.process.log()
    assert during[0] == "degraded" and any("maxmemory" in p for p in during[1]), during
    wait_for(lambda: health_problems(host) == ("ok", []), 10, "/health ok again")


def test_a_corrupt_key_costs_only_its_server_and_is_reported(
    start_host: Callable[..., HostUnderTest], redis_server: RedisServer
) -> None:
    """One server's hour key replaced by a string without a TTL: every other server goes on
    being stored (the oracle agrees) and read; the victim's read answers 502 naming the key,
    the server list leaves it out, its samples are counted as corrupt_key (the key logged
    once), nothing is held back, and /health says degraded with the key."""
    host = start_host("--no-agent", "--store", redis_server.url)
    recorder = Recorder(host, ["victim"] + [f"fine-{k:02d}" for k in range(20)], seed=5)
    assert recorder.round() == 202
    wait_for(recorder.all_shown, VISIBLE, "the first round")
    key = server_keys("victim")[1]
    client = redis_server.client()
    client.delete(key)
    client.set(key, "not a hash")
    for _ in range(3):
        assert recorder.round() == 202
        time.sleep(0.3)
    fine = recorder.names[1:]
    wait_for(lambda: recorder.all_shown(fine), VISIBLE, "the rest of the fleet")
    recorder.assert_matches_oracle(fine)
    wait_for(lambda: aggregator_stats(host)["dropped"]["corrupt_key"] == 3, VISIBLE, "3 dropped")
    status, body = host.get("/servers/victim/loads")
    assert (status, body["reason"]) == (502, "corrupt_key") and key.decode() in body["description"]
    status, page = host.get("/servers")
    assert status == 200 and [row["server"] for row in page["servers"]] == fine
    status, problems = health_problems(host)
    assert status == "degraded" and any(key.decode() in p for p in problems), problems
    stats = aggregator_stats(host)
    assert stats["store_pending"] == 0 and stats["store_dropped"] == stats["store_errors"] == 0
    assert host.process.log().count(key.decode()) == 1


def test_a_host_refuses_servers_beyond_its_own_limit_and_drops_none_it_took(
    start_host: Callable[..., HostUnderTest], redis_server: RedisServer
) -> None:
    """Two hosts on one Redis, ``--max-servers`` 50 and 3, the store already holding six
    servers: the small host takes three new servers (202) and every one of them is stored; its
    fourth new server is refused before any answer says accepted (422 server_limit)."""
    big = start_host("--no-agent", "--store", redis_server.url, "--max-servers", "50")
    small = start_host("--no-agent", "--store", redis_server.url, "--max-servers", "3")
    assert big.post("/loads", [{"server": f"big-{k}", "cpu": 1.0} for k in range(6)])[0] == 202
    wait_for(lambda: big.get("/servers")[1]["total"] == 6, VISIBLE, "six servers in Redis")
    for k in range(3):
        assert small.post(f"/servers/small-{k}/loads", {"cpu": 2.0})[0] == 202
    status, body = small.post("/servers/small-3/loads", {"cpu": 2.0})
    assert (status, body["reason"]) == (422, "server_limit")
    for k in range(3):
        wait_for(lambda k=k: shown(big.api, f"small-{k}", 1), VISIBLE, f"small-{k} stored")
    assert shown(big.api, "small-3", 1) is None
    assert aggregator_stats(small)["dropped"]["server_limit"] == 0
