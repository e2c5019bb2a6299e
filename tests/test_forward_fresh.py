"""The forwarder against a real host: every window it sends equals the brute-force mean of the
raw samples (``common/oracle.py``), also when its read comes right after a batch that followed a
spell in which nobody read, where the read cache once served the answers read one window before.
"""

from __future__ import annotations

import json
import math
import random
import re
import threading
import time
from collections.abc import Callable

import pytest
import zmq

from servertrack.common import rpc
from servertrack.common.oracle import RawSample, forwarded_points
from servertrack.forward.daemon import ForwardConfig, Forwarder
from servertrack.forward.source import ApiSource
from servertrack.readmodel.answers import Answer, decode_answer
from servertrack.testing.hosts import FakeClock, HostUnderTest
from tests.support import wait_for
from tests.test_forward_sink import Listener, flush_until, listening, make_sink

pytestmark = pytest.mark.e2e
SERVERS = ("fwd-1.example", "fwd-2.example", "fwd-3.example")
OTHER = "other.example"
"""A server the forwarder leaves out (``--servers fwd-*``): its samples only make batches."""
PREFIX = "e2e"
INTERVAL = 60
GRACE = 5
LINE = re.compile(rb"^(\S+) (\S+) (\d+)$")


def record(host: HostUnderTest, samples: list[RawSample]) -> None:
    items = [{"server": name, "ts": ts, "cpu": cpu, "ram": ram} for name, ts, cpu, ram in samples]
    status, body = host.post("/loads", items)
    assert status == 202 and body["accepted"] == len(samples), body


def held(aggregator: rpc.RpcClient, name: str) -> int:
    """Samples of ``name`` the aggregator holds, asked on its query socket (no cache between)."""
    answer = decode_answer(aggregator.call({"op": "view", "name": name})["answer"])
    if not isinstance(answer, Answer):
        return 0
    return sum(bucket["samples"] for bucket in json.loads(answer.body)["hours"])


def record_batch(
    host: HostUnderTest, aggregator: rpc.RpcClient, samples: list[RawSample], sent: list[RawSample]
) -> None:
    """Record ``samples`` and wait until the aggregator applied them (one batch of its own)."""
    want = {name: sum(1 for s in sent + samples if s[0] == name) for name, *_ in samples}
    record(host, samples)
    sent += samples
    wait_for(
        lambda: all(held(aggregator, name) == count for name, count in want.items()),
        10,
        "the batch applied",
        step=0.01,
    )


def cache_holds(host: HostUnderTest, names: tuple[str, ...]) -> bool:
    """Whether a read of each of ``names`` now is served from the API's read cache."""
    hits = host.get("/stats")[1]["api"]["read_cache"]["hit"]
    for name in names:
        assert host.get(f"/servers/{name}/loads")[0] == 200
    return bool(host.get("/stats")[1]["api"]["read_cache"]["hit"] - hits == len(names))


def window_samples(rng: random.Random, t: int, each: int) -> list[RawSample]:
    return [
        (name, t + rng.uniform(0, INTERVAL - 0.001), rng.uniform(0, 100), rng.uniform(0, 100))
        for name in SERVERS
        for _ in range(each)
    ]


def received(listener: Listener) -> dict[int, dict[str, float]]:
    """The points the sink got, by window start, then by name."""
    windows: dict[int, dict[str, float]] = {}
    for line in b"".join(listener.received).splitlines():
        match = LINE.match(line)
        assert match, line
        name, value, ts = match.groups()
        windows.setdefault(int(ts), {})[name.decode()] = float(value)
    return windows


def whole_lines(listener: Listener) -> int:
    """Lines the listener has received whole so far."""
    return b"".join(listener.received).count(b"\n")


def forwarded(sent: list[RawSample], t: int) -> dict[str, float]:
    """The points the oracle says window ``t`` holds for the forwarded servers."""
    return forwarded_points([s for s in sent if s[0] in SERVERS], t, INTERVAL, PREFIX)


def assert_as_oracle(got: dict[str, float], sent: list[RawSample], t: int) -> None:
    want = forwarded(sent, t)
    assert want, f"window {t} has no samples: the test sent none there"
    assert sorted(got) == sorted(want), f"window {t}"
    for name, value in want.items():
        assert math.isclose(got[name], value, rel_tol=1e-12), (t, name, got[name], value)


def test_each_window_is_sent_from_answers_read_after_its_samples(
    start_host: Callable[..., HostUnderTest], zmq_context: zmq.Context, http_server: str
) -> None:
    """The forwarder (in this process, its wall clock injected) sends one window, and the API's
    cache holds every server's answer; the next window's samples come in three batches nobody
    reads; then, right after one more batch, the forwarder reads again: both windows equal the
    oracle, and no answer had to be read again."""
    host = start_host("--no-agent", "--http", http_server)
    rng = random.Random(11)
    minute = int(time.time() // INTERVAL) * INTERVAL
    first, second = minute - 3 * INTERVAL, minute - 2 * INTERVAL
    sent: list[RawSample] = []
    aggregator = rpc.RpcClient(zmq_context, f"ipc://{host.runtime_dir}/query", 2.0)
    wall = FakeClock(first + INTERVAL + GRACE)  # the first window is due
    config = ForwardConfig(
        interval=INTERVAL, grace=GRACE, backfill=INTERVAL + GRACE, prefix=PREFIX, servers="fwd-*"
    )
    try:
        with listening() as listener:
            sink = make_sink(listener.port)
            forwarder = Forwarder(config, ApiSource(host.api), sink, clock=wall)
            try:
                record_batch(host, aggregator, window_samples(rng, first, 4), sent)
                forwarder.step()
                wait_for(lambda: cache_holds(host, SERVERS), 10, "the answers in the cache")
                for _ in range(3):
                    record_batch(host, aggregator, window_samples(rng, second, 3), sent)
                record_batch(host, aggregator, [(OTHER, time.time(), 1.0, 1.0)], [])
                wall.set(second + INTERVAL + GRACE)
                forwarder.step()  # within the cache's grace of that last batch
                flush_until(sink, lambda: not sink.queue.size, "every point written")
                expected = sum(len(forwarded(sent, t)) for t in (first, second))
                wait_for(  # written is not yet read: the listener's thread may lag behind
                    lambda: whole_lines(listener) >= expected, 10, "every point received"
                )
            finally:
                forwarder.shutdown()
            got = received(listener)
    finally:
        aggregator.close()
    assert sorted(got) == [first, second]
    for t in (first, second):
        assert_as_oracle(got[t], sent, t)
    counters = forwarder.snapshot()
    assert counters["answers_reread"] == 0 and counters["api_errors"] == {}
    assert counters["windows_sent"] == 2


class Writer:
    """A thread recording a sample of each server every 0.2 s (``ts``: now) through ``host``."""

    def __init__(self, host: HostUnderTest, rng: random.Random) -> None:
        self.host = host
        self.rng = rng
        self.sent: list[RawSample] = []
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
            now = time.time()
            samples = [
                (name, now, self.rng.uniform(0, 100), self.rng.uniform(0, 100)) for name in SERVERS
            ]
            record(self.host, samples)
            self.sent += samples
            due += 0.2
            self.stop.wait(max(0.0, due - time.monotonic()))


def batch_phase(aggregator: rpc.RpcClient, changes: int = 8) -> float:
    """The fraction of a second at which the aggregator's generation moves (its batches land,
    on the receiver's one-second cadence), as a circular mean of ``changes`` moves."""
    gen = aggregator.call({"op": "watch", "after": None})["gen"]
    angles = []
    for _ in range(20 * changes):  # the aggregator answers a watch at least every 0.25 s
        reply = aggregator.call({"op": "watch", "after": gen})
        if reply["gen"] != gen:
            gen = reply["gen"]
            angles.append(2 * math.pi * (time.time() % 1.0))
            if len(angles) == changes:
                mean = math.atan2(sum(map(math.sin, angles)), sum(map(math.cos, angles)))
                return (mean / (2 * math.pi)) % 1.0
    raise AssertionError("the generation did not move with the writer's batches")


@pytest.mark.faults
@pytest.mark.timeout(420)
def test_three_live_windows_of_a_sample_every_fifth_of_a_second_are_exact(
    start_host: Callable[..., HostUnderTest], zmq_context: zmq.Context
) -> None:
    """The reported case: three servers with a sample every 0.2 s, windows of 60 s with a grace
    of 5 s, on the real clock shifted by under a second so that each read comes 0.1 s after a
    batch (where the cache serves its previous answers). Each of three windows (nine
    server-windows) equals the oracle, and no answer was older than its window's end."""
    host = start_host("--no-agent")
    aggregator = rpc.RpcClient(zmq_context, f"ipc://{host.runtime_dir}/query", 2.0)
    config = ForwardConfig(
        interval=INTERVAL, grace=GRACE, backfill=2 * INTERVAL, prefix=PREFIX, servers="fwd-*"
    )
    try:
        with listening() as listener, Writer(host, random.Random(5)) as writer:
            lag = (batch_phase(aggregator) + 0.1) % 1.0
            began = time.time()
            source = ApiSource(host.api)
            forwarder = Forwarder(
                config, source, make_sink(listener.port), clock=lambda: time.time() - lag
            )
            thread = threading.Thread(target=forwarder.run, name="forwarder", daemon=True)
            thread.start()

            def three_windows() -> bool:
                return len([t for t in received(listener) if t >= began - INTERVAL]) >= 3

            try:
                wait_for(three_windows, 5 * INTERVAL, "three windows sent")
            finally:
                forwarder.stop.set()
                thread.join(timeout=30)
            assert not thread.is_alive()
            got = received(listener)
    finally:
        aggregator.close()
    windows = sorted(t for t in got if t >= began - INTERVAL)
    for t in windows:
        assert_as_oracle(got[t], writer.sent, t)
    counters = forwarder.snapshot()
    assert counters["answers_reread"] == 0 and counters["api_errors"] == {}, counters
