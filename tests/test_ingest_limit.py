"""The agents' ingest port against a client that hoards connections: a real host under a low
open-files limit takes more ZeroMQ-handshaken TCP connections than that limit. The receiver keeps
running (one process id throughout), cuts and counts the connections beyond its cap, keeps
descriptors for its own work (batches, the Graphite port), and a well-behaved agent's samples
keep arriving, every one of them."""

from __future__ import annotations

import contextlib
import itertools
import re
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

from servertrack.common import wire
from servertrack.common.limits import raise_open_files_limit
from servertrack.common.sample import Sample
from servertrack.receiver.ingest_limit import MIN_CONNECTIONS, RESERVED_FILES
from servertrack.testing.hosts import (
    HostUnderTest,
    free_port,
    open_zmtp_connection,
    warm_up,
)
from tests.support import wait_for

pytestmark = pytest.mark.e2e
OPEN_FILES = RESERVED_FILES + 256
"""The host's open-files limit: room for 128 ingest and 128 Graphite connections."""
INGEST_CAP = (OPEN_FILES - RESERVED_FILES) // 2
HOARD = OPEN_FILES + 128
"""Connections the hoarding client opens: more than the receiver may have files."""
DEADLINE = 20.0


@pytest.fixture
def hoard() -> Iterator[list[socket.socket]]:
    """The hoarding client's sockets, all closed afterwards."""
    raise_open_files_limit(HOARD + 1024)  # this process holds them all
    sockets: list[socket.socket] = []
    yield sockets
    for sock in sockets:
        sock.close()


def still_open(sock: socket.socket) -> bool:
    """Whether the receiver has left this connection open (what it sent is read and dropped)."""
    sock.setblocking(False)
    try:
        while sock.recv(4096):
            pass
    except BlockingIOError:
        return True
    except OSError:  # reset
        return False
    return False  # end of stream


def receiver_stats(host: HostUnderTest) -> dict[str, Any]:
    status, stats = host.get("/stats")
    assert status == 200, stats
    return stats["receiver"]


def metric(host: HostUnderTest, name: str) -> float:
    with urllib.request.urlopen(f"{host.api}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    assert found is not None, f"{name} not in /metrics"
    return float(found[1])


def test_a_connection_hoarder_is_capped_and_counted_and_the_receiver_stays_up(
    start_host: Callable[..., HostUnderTest],
    zmq_context: zmq.Context,
    hoard: list[socket.socket],
) -> None:
    """With 512 open files, 640 handshaken connections to the ingest port: at most 128 are kept
    (the cap the limit leaves beside the Graphite port's), the rest are cut and counted in
    /stats and /metrics; the receiver never restarts, the agent connected before goes on with no
    sample lost, a Graphite client is still served meanwhile, and once the hoarder leaves a new
    agent gets in."""
    graphite_port = free_port()
    host = start_host("--no-agent", "--graphite-port", str(graphite_port), open_files=OPEN_FILES)
    receiver_pid = host.child("receiver").pid
    agent = zmq_context.socket(zmq.PUB)
    agent.setsockopt(zmq.LINGER, 0)
    agent.connect(host.ingest)
    warm_up(agent, host)
    seq = itertools.count()

    def publish(name: str, pub: zmq.Socket = agent) -> None:
        pub.send_multipart(wire.encode(Sample(name, time.time(), 10.0, 20.0, next(seq))))

    sent = 0
    for index in range(HOARD):
        with contextlib.suppress(OSError):  # refused mid-handshake: counted by the receiver
            sock = open_zmtp_connection(host.ingest_port)
            if sock is not None:
                hoard.append(sock)
        if index % 32 == 0:
            publish("steady")
            sent += 1

    # the hoarder holds its places: batches, the agent and Graphite go on beside it
    for _ in range(2 * 5):  # two seconds: two batches, each with its memory figure
        publish("steady")
        sent += 1
        time.sleep(0.2)
    assert host.child("receiver").pid == receiver_pid, "the receiver restarted"
    with socket.create_connection(("127.0.0.1", graphite_port), timeout=DEADLINE) as graphite:
        graphite.sendall(b"servertrack.beside.cpu 42 -1\n")
        wait_for(
            lambda: host.get("/servers/beside/loads")[0] == 200, DEADLINE, "the Graphite point"
        )
    steady = wait_for(
        lambda: (
            (view := host.get("/servers/steady/loads"))[0] == 200
            and sum(b["samples"] for b in view[1]["minutes"]) == sent
            and view[1]
        ),
        DEADLINE,
        f"all {sent} samples of the agent",
    )
    assert steady["health"]["lost"] == 0
    stats = wait_for(
        lambda: (
            (r := receiver_stats(host)).get("ingest_connections_refused", 0) >= HOARD - INGEST_CAP
            and r
        ),
        DEADLINE,
        "the connections beyond the cap refused",
    )
    assert stats["ingest_connections_open"] <= INGEST_CAP
    kept = sum(still_open(sock) for sock in hoard)
    assert MIN_CONNECTIONS <= kept < INGEST_CAP  # the agent holds one place
    assert metric(host, "servertrack_ingest_connections_refused_total") >= HOARD - INGEST_CAP

    # the hoarder leaves: its places are free again, and a new agent gets in
    for sock in hoard:
        sock.close()
    wait_for(
        lambda: receiver_stats(host)["ingest_connections_open"] <= 2,
        DEADLINE,
        "the hoarder's connections gone",
    )
    newcomer = zmq_context.socket(zmq.PUB)
    newcomer.setsockopt(zmq.LINGER, 0)
    newcomer.connect(host.ingest)
    try:
        end = time.monotonic() + DEADLINE
        while host.get("/servers/newcomer/loads")[0] != 200:
            assert time.monotonic() < end, "the new agent's samples never arrived"
            publish("newcomer", newcomer)
            time.sleep(0.1)
    finally:
        newcomer.close(linger=0)
        agent.close(linger=0)
    final = receiver_stats(host)
    assert host.child("receiver").pid == receiver_pid
    assert final["files_exhausted"] == 0  # the cap kept the limit out of reach
