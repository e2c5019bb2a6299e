"""Fault injection with real processes: kills, stops and restarts under traffic."""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq

from servertrack.agent.publisher import Agent, AgentConfig
from servertrack.common.buckets import oldest_accepted_ts
from servertrack.common.oracle import RawSample, oracle_buckets
from servertrack.testing.hosts import HostUnderTest as Host
from servertrack.testing.hosts import view_at_stable_minute
from tests.support import assert_matches_oracle, wait_for

pytestmark = pytest.mark.faults


class FixedProbe:
    def cpu(self) -> float:
        return 25.0

    def ram(self) -> float:
        return 50.0


def post_history(host: Host, rng: random.Random, names: list[str], count: int) -> list[RawSample]:
    """POST ``count`` samples spread over the 24-hour window; returns what was sent."""
    now = time.time()
    sent: list[RawSample] = []
    items = []
    for index in range(count):
        name = names[index % len(names)]
        ts = rng.uniform(oldest_accepted_ts(now), now)
        cpu, ram = round(rng.uniform(0, 100), 2), round(rng.uniform(0, 100), 2)
        sent.append((name, ts, cpu, ram))
        items.append({"server": name, "ts": ts, "cpu": cpu, "ram": ram})
    status, body = host.post("/loads", items)
    assert (status, body["accepted"]) == (202, count), body
    return sent


def applied(host: Host) -> int:
    status, stats = host.get("/stats")
    return stats["aggregator"].get("applied", 0) if status == 200 else -1


def assert_all_match(host: Host, sent: list[RawSample], names: list[str]) -> None:
    for name in names:
        view, at = view_at_stable_minute(host, name)
        assert_matches_oracle(view, oracle_buckets(sent, at, name))


def replaced(host: Host, name: str, old_pid: int) -> bool:
    """A new process now runs daemon ``name``."""
    try:
        return host.child(name).pid != old_pid
    except LookupError:
        return False


def restart_child(host: Host, name: str, how: signal.Signals) -> None:
    """Signal one daemon of the host and wait until the host has started it again."""
    child = host.child(name)
    child.send_signal(how)
    child.wait(timeout=15)
    wait_for(lambda: replaced(host, name, child.pid), 15, f"{name} to be restarted")
    wait_for(lambda: host.get("/health")[0] == 200, 20, "the host to be healthy again")


def test_aggregator_sigterm_writes_a_snapshot_and_restores_every_bucket(
    start_host: Callable[..., Host], tmp_path: Path
) -> None:
    """After SIGTERM and a restart, every minute and hour bucket is exactly as before."""
    host = start_host("--no-agent", "--snapshot-interval", "3600", "--retention", "7200")
    names = [f"snap-{i}.example" for i in range(5)]
    sent = post_history(host, random.Random(3), names, 2000)
    wait_for(lambda: applied(host) >= len(sent), 10, "the history to be applied")
    before = {name: host.get(f"/servers/{name}/loads")[1]["hours"] for name in names}
    restart_child(host, "aggregator", signal.SIGTERM)
    assert list(tmp_path.glob("host0-data/aggregator.npz"))
    after = {name: host.get(f"/servers/{name}/loads")[1]["hours"] for name in names}
    assert after == before
    assert_all_match(host, sent, names)


def test_aggregator_killed_loses_nothing(start_host: Callable[..., Host]) -> None:
    """kill -9 of the aggregator under traffic: the last snapshot plus the receiver's re-sent
    batches give back every sample, each applied once."""
    host = start_host("--no-agent", "--snapshot-interval", "1", "--retention", "120")
    names = [f"crash-{i}.example" for i in range(4)]
    rng = random.Random(5)
    sent = post_history(host, rng, names, 500)
    wait_for(lambda: applied(host) >= len(sent), 10, "the first samples to be applied")
    snapshot = Path(host.flag("--data-dir")) / "aggregator.npz"
    written = time.time_ns()
    for _ in range(2):  # the second snapshot begun after they were applied holds them
        written = wait_for(
            lambda w=written: (
                snapshot.exists()
                and snapshot.stat().st_mtime_ns > w
                and (snapshot.stat().st_mtime_ns)
            ),
            10,
            "a snapshot",
        )
    sent += post_history(host, rng, names, 500)
    # flushed to the aggregator, maybe not in a snapshot yet
    wait_for(lambda: applied(host) >= len(sent), 10, "the next samples to be applied")
    victim = host.child("aggregator")
    victim.kill()
    victim.wait(timeout=10)
    sent += post_history(host, rng, names, 500)  # the receiver keeps taking samples
    wait_for(lambda: host.get("/health")[0] == 200, 30, "the aggregator to be back")
    wait_for(lambda: applied(host) >= len(sent), 20, "every sample to be applied")
    stats = host.get("/stats")[1]["aggregator"]
    assert stats["applied"] == len(sent)
    assert_all_match(host, sent, names)


def test_api_answers_503_while_aggregator_is_stopped_and_recovers(
    start_host: Callable[..., Host], http_server: str
) -> None:
    """A stopped (not dead) aggregator: every read is answered within a second, the read cache
    serves the last answer for at most a second, then reads are 503; it answers again after."""
    host = start_host("--no-agent", "--http", http_server)
    host.post("/servers/pause.example/loads", {"cpu": 1.0})
    wait_for(lambda: host.get("/servers/pause.example/loads")[0] == 200, 5, "the sample")
    aggregator = host.child("aggregator")
    aggregator.suspend()
    try:
        stopped = time.monotonic()
        while True:
            began = time.monotonic()
            status, body = host.get("/servers/pause.example/loads")
            assert time.monotonic() - began < 1.0
            if status != 200:
                break
            assert time.monotonic() - stopped < 1.5, "cached answers served too long"
        assert (status, body["reason"]) == (503, "backend_unavailable")
    finally:
        aggregator.resume()
    wait_for(lambda: host.get("/servers/pause.example/loads")[0] == 200, 10, "recovery")


def test_slow_aggregator_keeps_receiver_memory_bounded_and_replays(
    start_host: Callable[..., Host],
) -> None:
    """While the aggregator is stopped the receiver's memory stays bounded, what it cannot
    hand over is counted, and after the aggregator resumes the retained batches are re-sent."""
    host = start_host("--no-agent", "--retention", "120", "--snapshot-interval", "60")
    receiver = host.child("receiver")
    aggregator = host.child("aggregator")
    names = [f"slow-{i}.example" for i in range(3)]
    rng = random.Random(9)
    sent = post_history(host, rng, names, 300)
    wait_for(lambda: applied(host) >= len(sent), 10, "the first samples")
    rss_before = receiver.memory_info().rss
    aggregator.suspend()
    try:
        for _ in range(25):  # 25 batches of ~60 KB: more than the queues and socket buffers hold
            sent += post_history(host, rng, names, 2000)
            time.sleep(1.0)
        rss_during = receiver.memory_info().rss
    finally:
        aggregator.resume()
    assert rss_during - rss_before < 64 * 2**20
    wait_for(lambda: applied(host) >= len(sent), 30, "the re-sent batches to be applied")
    stats = host.get("/stats")[1]
    assert stats["receiver"]["forward_dropped"] > 0
    assert stats["aggregator"]["applied"] == len(sent)
    assert_all_match(host, sent, names)


def test_agents_resume_by_themselves_after_the_receiver_is_killed(
    start_host: Callable[..., Host],
) -> None:
    """kill -9 of the receiver: running agents reconnect on their own and their data flows."""
    host = start_host("--no-agent")
    context = zmq.Context()
    agents = [
        Agent(AgentConfig(host.ingest, 0.1, f"resume-{i}.example"), FixedProbe(), context)
        for i in range(3)
    ]
    import threading

    threads = [threading.Thread(target=agent.run) for agent in agents]
    for thread in threads:
        thread.start()
    try:
        for agent in agents:
            wait_for(lambda a=agent: host.get(f"/servers/{a.name}/loads")[0] == 200, 10, "data")
        receiver = host.child("receiver")
        receiver.kill()
        receiver.wait(timeout=10)
        wait_for(lambda: replaced(host, "receiver", receiver.pid), 15, "a new receiver")
        marks = {agent.name: agent.seq for agent in agents}
        wait_for(
            lambda: all(agent.seq > marks[agent.name] for agent in agents),
            15,
            "every agent to publish again",
        )

        def fresh_samples() -> bool:
            status, stats = host.get("/stats")
            return status == 200 and stats["receiver"].get("accepted", {}).get("zmq", 0) > 10

        wait_for(fresh_samples, 15, "samples through the new receiver")
        assert all(agent.seq > marks[agent.name] for agent in agents)
    finally:
        for agent in agents:
            agent.stop.set()
        for thread in threads:
            thread.join(timeout=5)
        context.destroy(linger=0)


def test_agent_clock_skew_is_measured_and_future_samples_counted(
    start_host: Callable[..., Host],
) -> None:
    """An agent 5 minutes behind is accepted with its skew shown; one 5 minutes ahead is
    refused and counted as future."""
    host = start_host("--no-agent")
    context = zmq.Context()
    behind = Agent(
        AgentConfig(host.ingest, 0.1, "behind.example"),
        FixedProbe(),
        context,
        clock=lambda: time.time() - 300,
    )
    ahead = Agent(
        AgentConfig(host.ingest, 0.1, "ahead.example"),
        FixedProbe(),
        context,
        clock=lambda: time.time() + 300,
    )
    import threading

    threads = [threading.Thread(target=a.run) for a in (behind, ahead)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: host.get("/servers/behind.example/loads")[0] == 200, 10, "behind")

        def counted() -> dict[str, Any] | None:
            stats = host.get("/stats")[1]
            return stats if stats["receiver"]["rejected"]["zmq"].get("future", 0) >= 3 else None

        wait_for(counted, 10, "future samples to be counted")
        health = host.get("/servers/behind.example/loads")[1]["health"]
        assert 299 < health["skew_seconds"] < 310
        assert host.get("/servers/ahead.example/loads")[0] == 404
    finally:
        for agent in (behind, ahead):
            agent.stop.set()
        for thread in threads:
            thread.join(timeout=5)
        context.destroy(linger=0)


def test_no_process_is_left_behind(start_host: Callable[..., Host]) -> None:
    """Stopping the host reaps every child."""
    host = start_host("--agent-interval", "0.5")
    children = psutil.Process(host.process.pid).children(recursive=True)
    host.process.stop(deadline=10)
    _gone, alive = psutil.wait_procs(children, timeout=5)
    assert alive == []


def test_samples_sent_while_the_receiver_is_down_are_counted_as_lost(
    start_host: Callable[..., Host],
) -> None:
    """kill -9 of the receiver: the samples each agent published while no receiver ran show
    up as lost for that server (the new receiver resumes the seq numbers from the aggregator),
    in the server's GET answer and in /stats."""
    import threading

    host = start_host("--no-agent")
    context = zmq.Context()
    agent = Agent(AgentConfig(host.ingest, 0.05, "lossy.example"), FixedProbe(), context)
    thread = threading.Thread(target=agent.run)
    thread.start()
    try:
        wait_for(lambda: host.get("/servers/lossy.example/loads")[0] == 200, 10, "first data")
        time.sleep(1.5)  # the aggregator has applied recent seqs
        receiver = host.child("receiver")
        receiver.kill()
        receiver.wait(timeout=10)
        down_from = agent.seq
        wait_for(lambda: replaced(host, "receiver", receiver.pid), 15, "a new receiver")

        def lost() -> int:
            status, view = host.get("/servers/lossy.example/loads")
            return view["health"]["lost"] if status == 200 else 0

        wait_for(lambda: lost() > 0, 15, "the loss to be counted")
        missed = agent.seq - down_from  # an upper bound: samples sent since the kill
        assert 0 < lost() <= missed + 25  # + what the dead receiver held unflushed (< 1 s)
        assert host.get("/stats")[1]["receiver"]["lost"] == lost()
    finally:
        agent.stop.set()
        thread.join(timeout=5)
        context.destroy(linger=0)
