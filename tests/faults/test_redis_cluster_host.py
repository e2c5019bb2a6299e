"""A whole monitoring host on a real 3-master, 3-replica Redis Cluster (``--store
redis+cluster://...``): the fleet check passes through it, and a master killed with SIGKILL while
records stream in loses nothing acknowledged when merges wait for a replica."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from servertrack.testing.hosts import HostUnderTest, http_json, servertrack_argv, wait_until
from servertrack.testing.redis import RedisClusterUnderTest
from tests.support import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.e2e]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisClusterUnderTest]:
    started = RedisClusterUnderTest(tmp_path / "cluster", masters=3, replicas=1).start()
    yield started
    started.stop()


def test_the_fleet_check_passes_through_a_cluster(
    start_host: Callable[..., HostUnderTest], cluster: RedisClusterUnderTest
) -> None:
    host = start_host("--no-agent", "--store", cluster.url)
    result = subprocess.run(
        servertrack_argv(
            "loadgen",
            "--servers",
            "3000",
            "--duration",
            "10",
            "--check",
            "300",
            "--api",
            host.api,
            "--ingest",
            host.ingest,
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("PASSED"), result.stdout


def samples_of(host: HostUnderTest, name: str) -> int | None:
    status, view = http_json("GET", f"{host.api}/servers/{name}/loads", timeout=5)
    return sum(b["samples"] for b in view["hours"]) if status == 200 else None


def test_a_killed_master_loses_nothing_acknowledged(
    start_host: Callable[..., HostUnderTest], cluster: RedisClusterUnderTest
) -> None:
    """Records answered 202 while a master dies and its replica takes over: with
    --store-wait-replicas 1, every one of them shows, exactly once."""
    host = start_host("--no-agent", "--store", cluster.url, "--store-wait-replicas", "1")
    names = [f"kill-{k}.example.com" for k in range(30)]
    acknowledged = dict.fromkeys(names, 0)
    victim = cluster.master_nodes()[0]
    replica = cluster.replicas_of(victim)[0]
    killed = revived = False
    began = time.monotonic()
    step = 0
    while time.monotonic() - began < 45:
        ts = time.time()
        items = [{"server": name, "ts": ts, "cpu": float(step % 100)} for name in names]
        status, _ = http_json("POST", host.api + "/loads", items, timeout=10)
        if status == 202:
            for name in names:
                acknowledged[name] += 1
        step += 1
        time.sleep(0.2)
        if not killed and step == 20:
            victim.kill()
            killed = True
        if killed and not revived and cluster.role(replica) == "master":
            victim.start()
            revived = True
        if revived and step > 100 and cluster.settled():
            break
    assert killed and revived
    wait_until(cluster.settled, 60, "the cluster to settle")
    for name in names:
        wait_for(
            lambda n=name: samples_of(host, n) == acknowledged[n],
            60,
            f"{name}: every acknowledged sample, once",
        )
    stats = http_json("GET", host.api + "/stats")[1]["aggregator"]
    assert stats["store_errors"] > 0 and stats["store_dropped"] == 0
