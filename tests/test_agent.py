"""The agent over real ZeroMQ on loopback, its probe and its address discovery."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import psutil
import pytest
import zmq

from servertrack.agent import probe as probe_module
from servertrack.agent.probe import PsutilProbe, node_addresses, node_name
from servertrack.agent.publisher import Agent, AgentConfig
from servertrack.common import wire
from servertrack.common.sample import IP_RE, MAX_IPS, Sample, sample_from_mapping
from servertrack.testing.hosts import FakeClock, free_port

INTERVAL = 0.05
WAIT = 10.0
"""Upper bound of every wait for messages (generous: loopback delivers in milliseconds)."""
NAME = "agent-under-test.example"
T_FAKE = 1_234_567_890.25
"""A clock value far from the real time, so a ts taken from the wall clock would show."""

pytestmark = pytest.mark.timeout(60)


class FixedProbe:
    """A probe that always measures the same load."""

    def __init__(self, cpu: float = 12.5, ram: float = 67.25) -> None:
        self._cpu = cpu
        self._ram = ram

    def cpu(self) -> float:
        return self._cpu

    def ram(self) -> float:
        return self._ram


class Harness:
    """Owns the test's SUB sockets and agent threads, and releases them all at teardown."""

    def __init__(self, context: zmq.Context) -> None:
        self.context = context
        self.sockets: list[zmq.Socket] = []
        self.running: list[tuple[Agent, threading.Thread]] = []

    def bind_sub(self, endpoint: str = "tcp://127.0.0.1:0") -> tuple[zmq.Socket, str]:
        """A SUB socket bound to ``endpoint``, subscribed to everything, and its real address."""
        sub = self.context.socket(zmq.SUB)
        self.sockets.append(sub)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.bind(endpoint)
        return sub, sub.getsockopt_string(zmq.LAST_ENDPOINT)

    def agent(self, endpoint: str, fmt: str = "msgpack", clock: Any = None) -> Agent:
        config = AgentConfig(connect=endpoint, interval=INTERVAL, name=NAME, format=fmt)
        return Agent(config, FixedProbe(), context=self.context, clock=clock or FakeClock(T_FAKE))

    def start(self, agent: Agent) -> threading.Thread:
        thread = threading.Thread(target=agent.run, name="agent-under-test", daemon=True)
        self.running.append((agent, thread))
        thread.start()
        return thread

    def close(self) -> None:
        for agent, _ in self.running:
            agent.stop.set()
        stuck = []
        for agent, thread in self.running:
            thread.join(timeout=5.0)
            if thread.is_alive():
                stuck.append(agent.name)
        for sub in self.sockets:
            sub.close(linger=0)
        self.sockets.clear()
        assert not stuck, f"agent threads did not stop: {stuck}"


@pytest.fixture
def context() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def harness(context: zmq.Context) -> Iterator[Harness]:
    owner = Harness(context)
    yield owner
    owner.close()


def receive(sub: zmq.Socket, count: int, timeout: float = WAIT) -> list[tuple[bytes, Sample]]:
    """The next ``count`` messages as (format frame, validated sample); fails after ``timeout``."""
    got: list[tuple[bytes, Sample]] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not sub.poll(int(remaining * 1000) + 1):
            pytest.fail(f"received {len(got)} of {count} messages within {timeout} s")
        frames = sub.recv_multipart()
        data = wire.decode(frames, accept_pickle=True)
        got.append((frames[0], sample_from_mapping(data)))
    return got


def assert_consecutive(seqs: list[int | None]) -> None:
    assert seqs[0] is not None
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs


# -- samples over the wire ----------------------------------------------------------------------
def test_sample_numbers_start_at_zero(context: zmq.Context) -> None:
    """An agent's samples are numbered 0, 1, 2, ... with its configured name and the clock's ts."""
    clock = FakeClock(T_FAKE)
    agent = Agent(AgentConfig(name=NAME), FixedProbe(3.0, 4.0), context=context, clock=clock)
    first = agent.sample()
    clock.advance(1.5)
    second = agent.sample()
    third = agent.sample()
    assert [s.seq for s in (first, second, third)] == [0, 1, 2]
    assert [s.ts for s in (first, second, third)] == [T_FAKE, T_FAKE + 1.5, T_FAKE + 1.5]
    assert {(s.fqdn, s.cpu, s.ram) for s in (first, second, third)} == {(NAME, 3.0, 4.0)}


@pytest.mark.parametrize("fmt", ["msgpack", "pickle.gz"])
def test_samples_arrive_decodable_with_consecutive_seq(harness: Harness, fmt: str) -> None:
    """Published samples decode in the configured format with consecutive seqs, name and values."""
    sub, endpoint = harness.bind_sub()
    agent = harness.agent(endpoint, fmt)
    harness.start(agent)

    got = receive(sub, 8)

    assert {frame for frame, _ in got} == {wire.FORMATS[fmt]}
    samples = [sample for _, sample in got]
    assert_consecutive([s.seq for s in samples])
    assert samples[0].seq is not None and samples[0].seq < 40  # at most ~2 s of slow joining
    assert {s.fqdn for s in samples} == {NAME}
    assert {s.ts for s in samples} == {T_FAKE}
    assert {(s.cpu, s.ram) for s in samples} == {(12.5, 67.25)}
    assert agent.seq > samples[-1].seq  # the agent's own counter is ahead of what arrived


def test_sample_ts_follows_injected_clock(harness: Harness) -> None:
    """Each sample's ts is what the injected clock says at that moment, not the wall clock."""
    sub, endpoint = harness.bind_sub()
    clock = FakeClock(T_FAKE)
    harness.start(harness.agent(endpoint, clock=clock))
    assert {s.ts for _, s in receive(sub, 3)} == {T_FAKE}

    clock.set(T_FAKE + 3600.5)
    seen: list[float] = []
    deadline = time.monotonic() + WAIT
    while (not seen or seen[-1] != T_FAKE + 3600.5) and time.monotonic() < deadline:
        seen.extend(s.ts for _, s in receive(sub, 1))
    assert seen[-1] == T_FAKE + 3600.5
    assert set(seen) <= {T_FAKE, T_FAKE + 3600.5}
    later = [s.ts for _, s in receive(sub, 3)]
    assert later == [T_FAKE + 3600.5] * 3


# -- stopping -----------------------------------------------------------------------------------
def test_stop_makes_run_return_within_one_interval(harness: Harness) -> None:
    """Setting ``stop`` ends ``run()`` within one interval (bounded generously)."""
    sub, endpoint = harness.bind_sub()
    agent = harness.agent(endpoint)
    thread = harness.start(agent)
    receive(sub, 2)  # it is in its loop

    stopped_at = time.monotonic()
    agent.stop.set()
    thread.join(timeout=5.0)
    elapsed = time.monotonic() - stopped_at

    assert not thread.is_alive()
    assert elapsed < INTERVAL + 0.5


def test_stop_interrupts_a_long_interval(harness: Harness) -> None:
    """With a long interval, ``stop`` ends the wait at once instead of sleeping out the interval."""
    sub, endpoint = harness.bind_sub()
    config = AgentConfig(connect=endpoint, interval=5.0, name=NAME)
    agent = Agent(config, FixedProbe(), context=harness.context, clock=FakeClock(T_FAKE))
    thread = harness.start(agent)
    assert sub.poll(2000)  # the first sample arrived: the agent now waits out the interval
    assert thread.is_alive()

    stopped_at = time.monotonic()
    agent.stop.set()
    thread.join(timeout=5.0)
    elapsed = time.monotonic() - stopped_at

    assert not thread.is_alive()
    assert elapsed < config.interval / 2
    assert agent.seq == 1  # the first sample leaves at once; the next one was never due


def test_the_first_sample_leaves_as_soon_as_the_receiver_listens(harness: Harness) -> None:
    """No interval of silence at start: the first sample reaches a listening receiver at once
    (``make bench`` measures it from process start), not lost to a connection being set up."""
    sub, endpoint = harness.bind_sub()
    config = AgentConfig(connect=endpoint, interval=5.0, name=NAME)
    agent = Agent(config, FixedProbe(), context=harness.context)
    began = time.monotonic()
    harness.start(agent)
    assert sub.poll(2000)
    arrived = time.monotonic() - began
    assert sample_from_mapping(wire.decode(sub.recv_multipart())).seq == 0
    assert arrived < 1.0  # the interval is 5 s: a first sample due only then would fail


def test_stop_before_run_returns_immediately(harness: Harness) -> None:
    """An agent whose ``stop`` is already set returns from ``run()`` without publishing."""
    _, endpoint = harness.bind_sub()
    agent = harness.agent(endpoint)
    agent.stop.set()
    started = time.monotonic()
    agent.run()
    assert time.monotonic() - started < INTERVAL + 0.5
    assert agent.seq == 0


# -- receiver down ------------------------------------------------------------------------------
def test_agent_keeps_running_without_receiver_and_resumes_when_one_binds(harness: Harness) -> None:
    """With nobody bound the agent keeps sampling; a SUB bound later on the port gets samples."""
    # A plain socket finds the port: a ZeroMQ placeholder socket closes asynchronously, so the
    # agent could still reach it, get subscribed and queue samples for the later receiver.
    endpoint = f"tcp://127.0.0.1:{free_port()}"

    agent = harness.agent(endpoint)
    thread = harness.start(agent)
    deadline = time.monotonic() + WAIT
    while agent.seq < 8 and time.monotonic() < deadline:
        time.sleep(INTERVAL)
    assert thread.is_alive()
    assert agent.seq >= 8  # sampling went on with nobody listening

    sub, rebound = harness.bind_sub(endpoint)
    assert rebound == endpoint
    samples = [sample for _, sample in receive(sub, 6)]

    assert thread.is_alive()
    assert_consecutive([s.seq for s in samples])
    assert samples[0].seq is not None and samples[0].seq >= 6  # same run, not a restart
    assert {s.fqdn for s in samples} == {NAME}


def test_agent_survives_receiver_restart_on_same_port(harness: Harness) -> None:
    """When the receiver closes and binds again, the same agent run goes on with later seqs."""
    sub, endpoint = harness.bind_sub()
    agent = harness.agent(endpoint)
    thread = harness.start(agent)
    before = [sample.seq for _, sample in receive(sub, 3)]
    harness.sockets.remove(sub)
    sub.close(linger=0)
    time.sleep(5 * INTERVAL)

    sub, _ = harness.bind_sub(endpoint)
    after = [sample.seq for _, sample in receive(sub, 4)]

    assert thread.is_alive()
    assert_consecutive(before)
    assert_consecutive(after)
    assert after[0] is not None and before[-1] is not None and after[0] > before[-1]


# -- probe and addresses ------------------------------------------------------------------------
def test_psutil_probe_returns_percent_floats() -> None:
    """The real probe reports cpu and ram as floats from 0 to 100."""
    probe = PsutilProbe()
    readings = []
    for _ in range(3):
        deadline = time.monotonic() + 0.05
        while time.monotonic() < deadline:  # a little load between two cpu readings
            pass
        readings.append((probe.cpu(), probe.ram()))
    for cpu, ram in readings:
        assert type(cpu) is float and type(ram) is float
        assert 0.0 <= cpu <= 100.0
        assert 0.0 < ram <= 100.0


def test_node_addresses_have_no_loopback() -> None:
    """The node's own addresses are every non-loopback address of its interfaces, without scope
    suffix, and fit a sample (this machine has some, so the list cannot be empty)."""
    expected = {
        entry.address.split("%", 1)[0]
        for entries in psutil.net_if_addrs().values()
        for entry in entries
        if entry.family in (socket.AF_INET, socket.AF_INET6)
        and not ipaddress.ip_address(entry.address.split("%", 1)[0]).is_loopback
    }
    assert expected, "this test needs a machine with an address besides loopback"
    addresses = node_addresses()
    assert addresses and set(addresses) <= expected
    assert len(addresses) == min(len(expected), MAX_IPS) == len(set(addresses))
    for address in addresses:
        assert "%" not in address
        assert not ipaddress.ip_address(address).is_loopback, address
        assert IP_RE.fullmatch(address), address


class FakeAddr(NamedTuple):
    family: int
    address: str


def test_node_addresses_filters_loopback_link_layer_and_scope(monkeypatch: Any) -> None:
    """Given known interfaces, loopback and non-IP entries are dropped and scope ids stripped."""
    interfaces = {
        "lo": [
            FakeAddr(socket.AF_INET, "127.0.0.1"),
            FakeAddr(socket.AF_INET6, "::1"),
            FakeAddr(psutil.AF_LINK, "00:00:00:00:00:00"),
        ],
        "eth0": [
            FakeAddr(socket.AF_INET, "10.1.2.3"),
            FakeAddr(socket.AF_INET6, "fe80::1%eth0"),
            FakeAddr(psutil.AF_LINK, "aa:bb:cc:dd:ee:ff"),
        ],
        "eth1": [
            FakeAddr(socket.AF_INET, "10.1.2.3"),
            FakeAddr(socket.AF_INET, "127.0.1.1"),
            FakeAddr(socket.AF_INET6, "2001:db8::5"),
        ],
    }
    monkeypatch.setattr(probe_module.psutil, "net_if_addrs", lambda: interfaces)
    assert node_addresses() == ["10.1.2.3", "fe80::1", "2001:db8::5"]


@pytest.mark.parametrize(
    ("fqdn", "expected"),
    [
        ("web-1.example.com", "web-1.example.com"),
        ("localhost", "web-1"),
        ("LOCALHOST", "web-1"),
        ("localhost.localdomain", "web-1"),
        ("ip6-localhost", "web-1"),
        ("", "web-1"),
    ],
)
def test_the_node_name_is_never_a_name_of_the_loopback(fqdn: str, expected: str) -> None:
    """A node whose FQDN resolves to ``localhost`` reports its host name, so two such nodes are
    never merged under ``localhost``."""
    assert node_name(lambda: fqdn, lambda: "web-1") == expected


def test_this_node_reports_under_a_name_of_its_own() -> None:
    """On this machine too (its host name is listed after localhost on 127.0.0.1 here)."""
    name = node_name()
    assert name and name.lower() != "localhost"
    assert name in (socket.getfqdn(), socket.gethostname())
