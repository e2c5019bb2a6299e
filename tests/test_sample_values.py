"""One rule for a cpu or ram value on every path into a real host: agents over ZeroMQ (msgpack),
HTTP records (single and batch) and Graphite lines. Negative zero is zero, stored as ``0.0``; a
string, and a Graphite number written with digit separators (``5_0``), is refused and counted.
Each path is tried for a new server (the full validation) and a known one (the fast path)."""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import zmq

from servertrack.common import wire
from servertrack.common.oracle import iso_z
from servertrack.testing.hosts import HostUnderTest, free_port, launch_host, warm_up
from tests.support import wait_for

pytestmark = pytest.mark.e2e
DEADLINE = 10.0


class Paths:
    """A host with its Graphite port, an agent's PUB socket and a Graphite connection."""

    def __init__(self, host: HostUnderTest, graphite_port: int, context: zmq.Context) -> None:
        self.host = host
        self.pub = context.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.connect(host.ingest)
        warm_up(self.pub, host)
        self.graphite = socket.create_connection(("127.0.0.1", graphite_port), timeout=DEADLINE)

    def agent(self, **fields: Any) -> None:
        self.pub.send_multipart([wire.MSGPACK, msgpack.packb(fields)])

    def line(self, text: str) -> None:
        self.graphite.sendall(text.encode() + b"\n")

    def receiver(self) -> dict[str, Any]:
        status, stats = self.host.get("/stats")
        assert status == 200, stats
        return stats["receiver"]

    def minute(self, server: str, samples: int, at: float) -> dict[str, Any]:
        """The server's minute bucket holding ``at`` once it holds ``samples`` samples."""
        start = iso_z(at // 60 * 60)

        def check() -> dict[str, Any] | None:
            status, view = self.host.get(f"/servers/{server}/loads")
            if status != 200:
                return None
            held = [bucket for bucket in view["minutes"] if bucket["start"] == start]
            return held[0] if held and held[0]["samples"] >= samples else None

        found: dict[str, Any] = wait_for(check, DEADLINE, f"{samples} samples of {server}")
        return found

    def close(self) -> None:
        self.graphite.close()
        self.pub.close(linger=0)


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Paths]:
    graphite_port = free_port()
    host = launch_host(
        tmp_path_factory.mktemp("values"), "--no-agent", "--graphite-port", str(graphite_port)
    )
    context = zmq.Context()
    try:
        opened = Paths(host, graphite_port, context)
        try:
            yield opened
        finally:
            opened.close()
    finally:
        context.destroy(linger=0)
        host.process.stop()


def one_minute_now(span: float) -> float:
    """Now, or the end of the previous minute while fewer than ``span`` s of this one have
    passed: samples from ``span`` s before it up to it fall in one minute bucket."""
    now = time.time()
    return now if now % 60 > span + 0.5 else now // 60 * 60 - 0.5


def is_positive_zero(value: Any) -> bool:
    return value == 0.0 and math.copysign(1.0, value) == 1.0


def test_negative_zero_is_stored_as_zero_on_every_path(paths: Paths) -> None:
    """-0.0 from an agent, an HTTP record (single and batch) and a Graphite line is a valid zero,
    stored as 0.0: a minute's min, max and sum show 0.0, never -0.0."""
    now = one_minute_now(3)
    for seq, ts in enumerate((now - 2, now - 1)):  # a new server, then a known one
        paths.agent(fqdn="zero-agent", ts=ts, cpu=-0.0, ram=-0.0, seq=seq)
        status, body = paths.host.post("/servers/zero-http/loads", {"cpu": -0.0, "ts": ts})
        assert status == 202, body
        paths.line(f"servertrack.zero-graphite.cpu -0.0 {ts}")
    status, body = paths.host.post(
        "/loads", [{"server": "zero-batch", "cpu": -0.0, "ram": -0.0, "ts": now - 3}]
    )
    assert status == 202, body
    for server, count in (("zero-agent", 2), ("zero-http", 2), ("zero-graphite", 2)):
        minute = paths.minute(server, count, now)
        for field in ("cpu_min", "cpu_max", "cpu_sum", "cpu"):
            assert is_positive_zero(minute[field]), (server, field, minute[field])
    batch = paths.minute("zero-batch", 1, now)
    assert is_positive_zero(batch["cpu_min"]) and is_positive_zero(batch["ram_max"])


def test_strings_and_digit_separators_are_refused_on_every_path(paths: Paths) -> None:
    """``"50"`` and ``"5_0"`` as an agent's cpu are ``bad_cpu``; as an HTTP record's cpu, 422
    ``bad_cpu``; ``5_0`` as a Graphite value (or ``1_700_000_000`` as its timestamp) is
    ``bad_line``. A known server's fast path refuses them as the full validation does, and
    nothing of them is stored."""
    now = one_minute_now(5)
    before = paths.receiver()
    paths.agent(fqdn="strings", ts=now - 5, cpu=10.0, seq=0)  # known from here on
    paths.line(f"servertrack.strings.cpu 10 {now - 5}")
    for seq, text in enumerate(("50", "5_0"), 1):
        paths.agent(fqdn="strings", ts=now - 5 + seq, cpu=text, seq=seq)
        paths.agent(fqdn=f"strings-new-{seq}", ts=now, ram=text, seq=0)
        status, body = paths.host.post("/servers/strings/loads", {"cpu": text, "ts": now})
        assert (status, body["reason"]) == (422, "bad_cpu"), body
    paths.line(f"servertrack.strings.cpu 5_0 {now - 2}")
    paths.line(f"servertrack.strings.ram 5_0 {now - 2}")
    paths.line(f"servertrack.strings-new.cpu 5_0 {now - 2}")
    paths.line("servertrack.strings.cpu 50 1_700_000_000")
    paths.line(f"servertrack.strings.cpu 20 {now - 1}")  # the last line, taken

    def refused(stats: dict[str, Any], source: str, reason: str) -> int:
        was = before["rejected"].get(source, {}).get(reason, 0)
        return int(stats["rejected"].get(source, {}).get(reason, 0) - was)

    stats = wait_for(
        lambda: (
            (s := paths.receiver())["accepted"]["graphite"] == before["accepted"]["graphite"] + 2
            and refused(s, "zmq", "bad_cpu") + refused(s, "zmq", "bad_ram") == 4
            and s
        ),
        DEADLINE,
        "the refusals counted",
    )
    assert refused(stats, "graphite", "bad_line") == 4
    assert (refused(stats, "zmq", "bad_cpu"), refused(stats, "zmq", "bad_ram")) == (2, 2)
    minute = paths.minute("strings", 3, now)
    assert minute["cpu_samples"] == 3  # 10 from the agent, 10 and 20 from Graphite
    assert minute["cpu_max"] == 20.0
    status, api = paths.host.get("/stats")
    assert api["api"]["rejected"]["bad_cpu"] >= 2
    servers = {s["server"] for s in paths.host.get("/servers")[1]["servers"]}
    assert not servers & {"strings-new-1", "strings-new-2", "strings-new"}
