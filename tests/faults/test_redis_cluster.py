"""The Redis store on a real 3-master, 3-replica Redis Cluster on loopback: merges and the oracle
through the cluster, slots that move (MOVED, ASK), and a master killed with SIGKILL while
merges run with ``wait_replicas=1``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from servertrack.common.batch import ServerHealth
from servertrack.readmodel.errors import StoreUnavailable
from servertrack.store.keys import server_keys, slot_of
from servertrack.store.reader import RedisReader
from servertrack.store.redis_store import RedisStore
from servertrack.testing.hosts import FakeClock, wait_until
from servertrack.testing.redis import RedisClusterUnderTest
from tests.store_support import HOUR, T0, Fleet, assert_matches, one_each, sample_count
from tests.support import document

pytestmark = [pytest.mark.faults, pytest.mark.e2e]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisClusterUnderTest]:
    started = RedisClusterUnderTest(tmp_path / "cluster", masters=3, replicas=1).start()
    yield started
    started.stop()


def node_id(cluster: RedisClusterUnderTest, port: int) -> str:
    node = next(n for n in cluster.nodes if n.port == port)
    return node.client().execute_command("CLUSTER", "MYID").decode()


def test_merges_through_the_cluster_match_the_oracle(cluster: RedisClusterUnderTest) -> None:
    """Servers spread over three masters: views, pages, counts and summary rows are the same as
    on one redis-server, every master holds some, and the library is on every master."""
    clock = FakeClock(T0 + 30.0)
    fleet = Fleet([f"c-{k}.example.com" for k in range(60)], seed=17)
    with RedisStore(cluster.url, clock=clock) as store:
        assert store.library_loads == 3
        while clock.now < T0 + 6 * HOUR:
            store.merge("w", [fleet.batch("w", clock.now)], fleet.names, None, clock.now)
            clock.advance(173.0)
        assert assert_matches(store, fleet, clock.now) == len(fleet.names)
        rows, total, cursor = RedisReader(store).servers(clock.now, limit=25)
        assert (len(rows), total) == (25, 60) and cursor == sorted(fleet.names)[24]
        assert RedisReader(store).fleet_rows(clock.now).names == sorted(fleet.names)
    owners = {master.port: master.client().dbsize() for master in cluster.master_nodes()}
    assert len(owners) == 3 and all(size > 0 for size in owners.values()), owners


def same_slot_name(name: str) -> str:
    """Another server name whose keys hash to the slot of ``name``'s."""
    slot = slot_of(server_keys(name)[0])
    k = 0
    while slot_of(server_keys(f"twin-{k}")[0]) != slot:
        k += 1
    return f"twin-{k}"


def test_moved_and_asked_slots_are_followed(cluster: RedisClusterUnderTest) -> None:
    """While a slot migrates, a server whose keys were moved already is read and merged through
    ASK; a new server in that slot gets TRYAGAIN (StoreUnavailable: the caller tries later);
    once the slot has moved, MOVED updates the map. Nothing is lost or applied twice."""
    clock = FakeClock(T0 + 30.0)
    name = "migrating.example.com"
    twin = same_slot_name(name)
    names = [name, twin]
    slot = slot_of(server_keys(name)[0])
    with RedisStore(cluster.url, clock=clock, timeout=1.0) as store:
        health = {name: ServerHealth(lost=1)}
        store.merge("w", [one_each(0, [0], clock.now)], names, health, clock.now)
        source = store.topology.node_for_slot(slot)
        target = next(n for n in store.topology.masters() if n.key != source.key)
        source_id, target_id = node_id(cluster, source.key[1]), node_id(cluster, target.key[1])
        target.client.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.client.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        source.client.execute_command(
            "MIGRATE", *target.key, "", 0, 5000, "KEYS", *server_keys(name)
        )
        assert (
            document(RedisReader(store).view(name, clock.now))["hours"][0]["samples"] == 1
        )  # read through ASK
        result = store.merge("w", [one_each(1, [0], clock.now)], names, None, clock.now)
        assert (result.applied, result.redirects) == (1, 1)
        with pytest.raises(StoreUnavailable, match="not merged"):
            store.merge("w", [one_each(2, [1], clock.now)], names, None, clock.now)
        for master in cluster.master_nodes():
            master.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        late = [one_each(2, [1], clock.now), one_each(3, [0, 1], clock.now + 1)]
        result = store.merge("w", late, names, None, clock.now + 1)
        assert result.applied == 3 and result.redirects >= 1
        assert store.topology.node_for_slot(slot).key == target.key
        assert target.client.exists(server_keys(twin)[1]) == 1
        counts = {
            n: document(RedisReader(store).view(n, clock.now + 1))["hours"][0]["samples"]
            for n in names
        }
        assert counts == {name: 3, twin: 2}


def test_a_killed_master_loses_nothing_acknowledged(cluster: RedisClusterUnderTest) -> None:
    """With ``wait_replicas=1``, a master killed with SIGKILL mid-stream: merges fail (the
    caller holds its batches) until its replica is promoted and the old master is back as a
    replica; then every batch merges, and the views hold each exactly once."""
    clock = FakeClock(time.time())
    fleet = Fleet([f"f-{k}.example.com" for k in range(48)], seed=23)
    victim = cluster.master_nodes()[0]
    replica = cluster.replicas_of(victim)[0]
    acknowledged = 0
    failures = 0
    held = []
    with RedisStore(cluster.url, clock=clock, wait_replicas=1, timeout=1.0) as store:
        began = time.monotonic()
        killed = revived = False
        while time.monotonic() - began < 60:
            held.append(fleet.batch("w", clock.now))
            try:
                result = store.merge("w", held, fleet.names, None, clock.now)
            except StoreUnavailable:
                failures += 1
                time.sleep(0.2)
            else:
                assert result.applied + result.already_applied + result.expired == sample_count(
                    held
                )
                acknowledged += len(held)
                held = []
            clock.advance(1.0)
            if not killed and acknowledged >= 10:
                victim.kill()
                killed = True
            if killed and not revived and cluster.role(replica) == "master":
                victim.start()  # comes back as a replica of the promoted one
                revived = True
            if revived and not held and acknowledged >= 40 and cluster.settled():
                break
        assert killed and revived and not held, (killed, revived, len(held))
        assert failures > 0
        wait_until(cluster.settled, 30, "the cluster to settle")
        assert assert_matches(store, fleet, clock.now) == len(fleet.names)
    assert cluster.role(replica) == "master"
