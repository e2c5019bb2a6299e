"""Daemons that reach their open-files limit carry on: the shortage is counted
(``files_exhausted`` in /stats and /metrics) and logged, never a crash. Real daemons run as child
processes under a low ``RLIMIT_NOFILE``, and a client takes their descriptors with real
connections (the receiver's own case is in ``test_ingest_limit.py``)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from servertrack.common import rpc
from servertrack.testing.hosts import (
    ChildProcess,
    HostUnderTest,
    free_port,
    http_json,
    servertrack_argv,
    wait_until,
)

pytestmark = pytest.mark.e2e
DEADLINE = 20.0
SHORTAGE = "out of file descriptors"


@pytest.fixture
def hoard() -> Iterator[list[socket.socket]]:
    """A client's connections, all closed afterwards."""
    sockets: list[socket.socket] = []
    yield sockets
    for sock in sockets:
        sock.close()


def take_descriptors(port: int, count: int, hoard: list[socket.socket]) -> None:
    """Open ``count`` connections to ``port``: the daemon accepts until it is out of files (the
    rest wait in its listen backlog)."""
    for _ in range(count):
        hoard.append(socket.create_connection(("127.0.0.1", port), timeout=DEADLINE))


def test_the_aggregator_carries_on_out_of_file_descriptors(
    tmp_path: Path, zmq_context: zmq.Context, hoard: list[socket.socket]
) -> None:
    """An aggregator limited to 48 open files, its query port taken by 48 idle connections
    (libzmq accepts them until none is left): its snapshots (a pipe and a file) and its memory
    figure cannot be taken, which it counts and logs while it keeps running; once the
    connections go it answers, writes its snapshot again and stops cleanly."""
    query_port = free_port()
    snapshot = tmp_path / "aggregator.npz"
    argv = servertrack_argv(
        "aggregator",
        "--batches", f"ipc://{tmp_path}/batches",
        "--query", f"tcp://127.0.0.1:{query_port}",
        "--receiver-control", f"ipc://{tmp_path}/control",
        "--snapshot", str(snapshot),
        "--snapshot-interval", "0.2",
    )  # fmt: skip
    aggregator = ChildProcess(argv, tmp_path / "aggregator.log", open_files=48).start()
    client = rpc.RpcClient(zmq_context, f"tcp://127.0.0.1:{query_port}", 1.0)
    try:
        wait_until(lambda: "aggregator ready" in aggregator.log(), DEADLINE, "the aggregator")
        take_descriptors(query_port, 48, hoard)
        assert aggregator.process is not None
        wait_until(
            lambda: aggregator.process.poll() is not None or SHORTAGE in aggregator.log(),
            DEADLINE,
            "the shortage",
        )
        assert aggregator.process.poll() is None, aggregator.log()[-2000:]
        for sock in hoard:
            sock.close()
        hoard.clear()

        def recovered() -> dict[str, Any] | None:
            try:
                reply = client.call({"op": "stats"})
            except rpc.Unavailable:  # still taking back its descriptors
                return None
            stats: dict[str, Any] = reply["stats"]["aggregator"]
            age = stats["snapshot_age_seconds"]
            written = age is not None and age < 0.5  # a snapshot since the shortage
            return stats if stats["snapshot_errors"] >= 1 and written else None

        stats = wait_until(recovered, DEADLINE, "a snapshot written again")
        assert stats["files_exhausted"] >= 1
        assert aggregator.stop() < 5.0
    finally:
        client.close()
        if aggregator.process is not None and aggregator.process.poll() is None:
            aggregator.kill_group()
    assert snapshot.exists()
    assert "Traceback" not in aggregator.log()


def test_the_api_counts_connections_it_had_no_descriptor_for(
    start_host: Callable[..., HostUnderTest], tmp_path: Path, hoard: list[socket.socket]
) -> None:
    """A second API for a host, limited to 32 open files (its connection limit falls to its
    floor of 16, more than the descriptors it has left): 40 idle connections take the rest.
    Accepting stops for a moment each time instead of spinning, the shortage is counted, and
    once they go the API serves again and shows the count in /stats and /metrics."""
    host = start_host("--no-agent")
    runtime = tmp_path / "host0-rt"
    port = free_port()
    argv = servertrack_argv(
        "api", "--port", str(port), "--threads", "4",
        "--receiver-control", f"ipc://{runtime}/receiver-control",
        "--aggregator-query", f"ipc://{runtime}/query",
    )  # fmt: skip
    api = ChildProcess(argv, tmp_path / "api.log", open_files=32).start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_json("GET", base + "/health")[0] == 200, DEADLINE, "the api")
        take_descriptors(port, 40, hoard)
        assert api.process is not None
        wait_until(
            lambda: api.process.poll() is not None or "Too many open files" in api.log(),
            DEADLINE,
            "the shortage",
        )
        assert api.process.poll() is None, api.log()[-2000:]
        for sock in hoard:
            sock.close()
        hoard.clear()
        stats = wait_until(
            lambda: (answer := http_json("GET", base + "/stats"))[0] == 200 and answer[1],
            DEADLINE,
            "the api serving again",
        )
        assert stats["api"].get("files_exhausted", 0) >= 1, api.log()[-2000:]
        status, text = http_json("GET", base + "/health")
        assert status == 200, text
        assert api.stop() < 5.0
    finally:
        if api.process is not None and api.process.poll() is None:
            api.kill_group()
    assert "server accept() threw an exception" not in api.log()
    assert host.get("/health")[0] == 200
