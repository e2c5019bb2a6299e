"""Everything a hostile or broken agent can send, through a real receiver: it never goes down.

A real ``servertrack run`` takes a stream of malformed, oversized, overflowing and conflicting
messages over ZeroMQ while an HTTP client keeps recording. The receiver's process id never changes,
every sample answered 202 is applied, oversized frames are counted and the valid message right
after one is still taken.
"""

from __future__ import annotations

import gzip
import pickle
import random
import time
from collections.abc import Callable, Iterator

import msgpack
import pytest
import zmq

from servertrack.common import wire
from servertrack.common.sample import MAX_SEQ, Sample
from servertrack.testing.hosts import HostUnderTest, settled_stats, warm_up
from tests.support import wait_for

pytestmark = pytest.mark.e2e


def packed(data: object) -> list[bytes]:
    return [wire.MSGPACK, msgpack.packb(data)]


def hostile_corpus(rng: random.Random, now: float) -> Iterator[list[bytes]]:
    """One of every kind of bad message this project knows, then random bytes and maps."""
    good = {"fqdn": "evil.example", "ts": now, "cpu": 1.0, "ram": 1.0, "seq": 0}
    yield [b"msgpack"]
    yield [b"msgpack", b"\x81", b"third"]
    yield [b"msgpack"] * 10
    yield [b"json", b"{}"]
    yield [b"msgpack", b"\xc1"]
    yield [b"msgpack", b"\x91" * 5000 + b"\xc0"]  # deep nesting
    yield [b"msgpack", msgpack.packb(good)[:-3]]
    yield packed([1, 2, 3])
    yield packed({**good, "extra": 1})
    yield packed({**good, "ts": float("nan")})
    yield packed({**good, "cpu": 1e308})
    yield packed({**good, "fqdn": "a" * 300})
    yield packed({**good, "seq": -1})
    yield packed({**good, "ip": ["x" * 100] * 40})
    yield packed({**good, "fqdn": "../../etc"})
    yield [wire.PICKLE_GZ, gzip.compress(pickle.dumps(good))]
    yield [wire.PICKLE_GZ, gzip.compress(b"cos\nsystem\n(S'echo pwned'\ntR.")]
    yield [wire.PICKLE_GZ, gzip.compress(b"\x00" * 10_000_000)]  # a gzip bomb
    for seq in (0, MAX_SEQ, MAX_SEQ, MAX_SEQ, 2**62, 0, 2**62 + 1):
        yield packed({**good, "fqdn": "overflow.example", "seq": seq, "ts": now})
    for _ in range(300):
        kind = rng.randrange(3)
        if kind == 0:
            yield [rng.randbytes(rng.randrange(0, 40)) for _ in range(rng.randrange(1, 5))]
        elif kind == 1:
            yield [wire.MSGPACK, rng.randbytes(rng.randrange(0, 200))]
        else:
            data = {
                **good,
                "seq": rng.choice([0, 1, 2**40, MAX_SEQ]),
                "ts": now + rng.uniform(-9e4, 120),
            }
            yield packed(data)


@pytest.fixture
def publisher(zmq_context: zmq.Context) -> Callable[[HostUnderTest], zmq.Socket]:
    sockets: list[zmq.Socket] = []

    def open_for(host: HostUnderTest) -> zmq.Socket:
        pub = zmq_context.socket(zmq.PUB)
        pub.setsockopt(zmq.LINGER, 0)
        pub.setsockopt(zmq.SNDHWM, 100_000)
        pub.connect(host.ingest)
        sockets.append(pub)
        warm_up(pub, host)
        return pub

    yield open_for
    for pub in sockets:
        pub.close(linger=0)


def receiver_counters(host: HostUnderTest) -> dict:
    status, stats = host.get("/stats")
    assert status == 200
    return stats["receiver"]


def test_hostile_messages_never_take_the_receiver_down(
    start_host: Callable[..., HostUnderTest], publisher: Callable
) -> None:
    host = start_host("--no-agent", "--accept-pickle")
    pid = host.child("receiver").pid
    pub = publisher(host)
    rng = random.Random(5)
    recorded = []
    for round_number in range(3):  # repeated, as an attacker would every second
        now = time.time()
        for frames in hostile_corpus(rng, now):
            pub.send_multipart(frames)
        name = f"acked-{round_number}"
        status, body = host.post(f"/servers/{name}/loads", {"cpu": 10.0 + round_number})
        assert status == 202, body
        recorded.append(name)
        # The round's batch is in once the record shows: the next round goes into a new one.
        wait_for(lambda n=name: host.get(f"/servers/{n}/loads")[0] == 200, 10, f"{name} applied")
        assert host.child("receiver").pid == pid
    for name in recorded:  # nothing answered 202 was lost
        assert host.get(f"/servers/{name}/loads")[0] == 200
    counters = receiver_counters(host)
    assert counters["lost"] < 10**6, counters["lost"]
    assert counters["seq_resets"] >= 1
    assert host.child("receiver").pid == pid
    assert host.get("/health")[0] == 200


def test_two_agents_under_one_name_show_a_conflict_and_no_loss(
    shared_host: Callable[..., HostUnderTest], publisher: Callable
) -> None:
    host = shared_host("--no-agent")
    first, second = publisher(host), publisher(host)
    conflicts = settled_stats(host)["receiver"].get("name_conflicts", 0)
    for step in range(37):
        now = time.time()
        first.send_multipart(wire.encode(Sample("twin.example", now, 1.0, 1.0, 100 + step)))
        second.send_multipart(wire.encode(Sample("twin.example", now + 0.3, 2.0, 2.0, step)))
        time.sleep(0.02)

    def conflict_shown() -> dict | None:
        status, view = host.get("/servers/twin.example/loads")
        return view if status == 200 and view["health"]["name_conflict"] else None

    def all_in(view: dict) -> bool:
        return sum(bucket["samples"] for bucket in view["minutes"]) >= 2 * 37 - 1

    wait_for(conflict_shown, 10, "the conflict in the server's health")
    # The conflict shows with the first batch that has both; the last samples may come later.
    view = wait_for(lambda: (v := conflict_shown()) and all_in(v) and v, 10, "every sample")
    assert view["health"]["lost"] == 0
    assert receiver_counters(host)["name_conflicts"] == conflicts + 1


def test_a_message_of_too_many_frames_is_one_refusal_and_its_tail_is_no_message(
    shared_host: Callable[..., HostUnderTest], publisher: Callable
) -> None:
    """Frames past the eighth are read and dropped with their message: the last two frames of a
    ten-frame message, a valid sample on their own, are not taken as a message of their own."""
    host = shared_host("--no-agent")
    pub = publisher(host)
    before = settled_stats(host)["receiver"]["rejected"].get("zmq", {}).get("frames", 0)
    now = time.time()
    tail = wire.encode(Sample("tail-of-ten.example", now, 5.0, 5.0, 0))
    pub.send_multipart([b"padding"] * 8 + tail)
    pub.send_multipart(wire.encode(Sample("after-ten.example", now, 5.0, 5.0, 0)))
    wait_for(
        lambda: host.get("/servers/after-ten.example/loads")[0] == 200,
        10,
        "the valid message sent after the ten-frame one",
    )
    assert host.get("/servers/tail-of-ten.example/loads")[0] == 404
    assert receiver_counters(host)["rejected"]["zmq"].get("frames", 0) == before + 1


@pytest.mark.parametrize("size", [17 * 1024, 48 * 1024, 900 * 1024])
def test_an_oversized_frame_is_counted_and_the_next_message_still_arrives(
    shared_host: Callable[..., HostUnderTest], publisher: Callable, size: int
) -> None:
    host = shared_host("--no-agent")
    pub = publisher(host)
    before = settled_stats(host)["receiver"]["rejected"].get("zmq", {}).get("too_large", 0)
    name = f"after-big-{size}.example"
    pub.send_multipart([wire.MSGPACK, b"\x00" * size])
    pub.send_multipart(wire.encode(Sample(name, time.time(), 5.0, 5.0, 0)))
    wait_for(
        lambda: host.get(f"/servers/{name}/loads")[0] == 200,
        10,
        "the valid message sent after the oversized one",
    )
    counted = receiver_counters(host)["rejected"]["zmq"].get("too_large", 0)
    assert counted == before + 1
