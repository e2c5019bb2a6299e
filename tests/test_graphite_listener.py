"""Graphite plaintext through a real host: ``servertrack run --graphite-port`` and real TCP clients
on loopback. Lines cut across writes, half lines, over-long lines, clamped values and
duplicates, a client over the line rate, hundreds of idle connections, the connection cap, the
idle timeout, and one-second batches under a Graphite load. Limits the tests lower are set with
the ``SERVERTRACK_RECEIVER_GRAPHITE_*`` variables, which ``servertrack run`` hands down."""

from __future__ import annotations

import contextlib
import math
import random
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq

from servertrack.common.batch import Batch
from servertrack.common.lifecycle import EXIT_CONFIG
from servertrack.testing.hosts import (
    ChildProcess,
    HostUnderTest,
    free_port,
    servertrack_argv,
    wait_until,
)
from tests.support import wait_for

pytestmark = pytest.mark.e2e
DEADLINE = 10.0


class GraphiteHost:
    """A host with its Graphite port, and the client sockets a test opened (all closed after)."""

    def __init__(self, host: HostUnderTest, port: int, sockets: list[socket.socket]) -> None:
        self.host = host
        self.port = port
        self.sockets = sockets

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=DEADLINE)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sockets.append(sock)
        return sock

    def receiver(self) -> dict[str, Any]:
        status, stats = self.host.get("/stats")
        assert status == 200, stats
        return stats["receiver"]

    def wait_receiver(self, predicate: Callable[[dict[str, Any]], bool], what: str) -> dict:
        """The receiver's stats once ``predicate`` holds for them (they follow each batch)."""

        def check() -> dict[str, Any] | None:
            stats = self.receiver()
            return stats if stats and predicate(stats) else None

        return wait_for(check, DEADLINE, what)

    def loads(self, server: str) -> dict[str, Any]:
        status, body = self.host.get(f"/servers/{server}/loads")
        assert status == 200, body
        return body


@pytest.fixture
def graphite_host(
    start_host: Callable[..., HostUnderTest], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., GraphiteHost]]:
    sockets: list[socket.socket] = []

    def start(**limits: str) -> GraphiteHost:
        for name, value in limits.items():
            monkeypatch.setenv(f"SERVERTRACK_RECEIVER_GRAPHITE_{name.upper()}", value)
        port = free_port()
        host = start_host("--no-agent", "--graphite-port", str(port))
        return GraphiteHost(host, port, sockets)

    yield start
    for sock in sockets:
        sock.close()


def rejected(stats: dict[str, Any], reason: str) -> int:
    return int(stats["rejected"].get("graphite", {}).get(reason, 0))


def closed(stats: dict[str, Any], reason: str) -> int:
    return int(stats["graphite_connections_closed"].get(reason, 0))


def peer_closed(sock: socket.socket) -> bool:
    """Whether the receiver closed its end (EOF or a reset), waiting at most the deadline."""
    sock.settimeout(DEADLINE)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def peer_closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the receiver closes its end within ``seconds`` (data it sent is read and dropped;
    a Graphite receiver sends nothing)."""
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def minute_totals(view: dict[str, Any], metric: str) -> tuple[float, int]:
    buckets = view["minutes"]
    return (
        math.fsum(b[f"{metric}_sum"] or 0.0 for b in buckets),
        sum(b[f"{metric}_samples"] for b in buckets),
    )


# -- what the lines become ----------------------------------------------------------------------
def test_the_port_is_off_unless_asked_for_and_on_loopback(
    start_host: Callable[..., HostUnderTest],
) -> None:
    """Without ``--graphite-port`` the receiver listens on its ingest port only; with it, on
    the Graphite port as well, both on 127.0.0.1."""

    def listening(host: HostUnderTest) -> set[tuple[str, int]]:
        connections = host.child("receiver").net_connections(kind="tcp")
        return {c.laddr[:2] for c in connections if c.status == psutil.CONN_LISTEN}

    plain = start_host("--no-agent")
    assert listening(plain) == {("127.0.0.1", plain.ingest_port)}
    port = free_port()
    fed = start_host("--no-agent", "--graphite-port", str(port))
    assert listening(fed) == {("127.0.0.1", fed.ingest_port), ("127.0.0.1", port)}


def test_lines_cut_across_writes_and_a_half_line_at_disconnect(
    graphite_host: Callable[..., GraphiteHost],
) -> None:
    """Lines written a few bytes at a time arrive whole, with CRLF or LF endings; the half line
    left at disconnect is counted ``partial_line``; the servers' minute sums are the sums of
    the values sent."""
    gh = graphite_host()
    rng = random.Random(7)
    now = int(time.time())
    sent: dict[str, list[float]] = {"split-0": [], "split-1": []}
    lines = []
    for index in range(40):
        server = f"split-{index % 2}"
        value = round(rng.uniform(0, 100), 3)
        sent[server].append(value)
        ending = b"\r\n" if index % 3 else b"\n"
        lines.append(b"servertrack.%s.cpu %r %d" % (server.encode(), value, now - index) + ending)
    data = b"".join(lines) + b"servertrack.split-0.ram 5 " + str(now).encode()
    sock = gh.connect()
    for offset in range(0, len(data), 7):
        sock.sendall(data[offset : offset + 7])
        if offset % 70 == 0:
            time.sleep(0.002)
    sock.close()
    stats = gh.wait_receiver(
        lambda s: closed(s, "client") == 1 and s["accepted"]["graphite"] == 40, "all 40 lines"
    )
    assert rejected(stats, "partial_line") == 1
    assert stats["received"]["graphite"] == 41
    for server, values in sent.items():
        total, count = minute_totals(gh.loads(server), "cpu")
        assert count == len(values)
        assert math.isclose(total, math.fsum(values), rel_tol=1e-12)
        assert minute_totals(gh.loads(server), "ram") == (0.0, 0)


def test_over_long_lines_clamped_values_and_duplicates(
    graphite_host: Callable[..., GraphiteHost],
) -> None:
    """An over-long line is dropped (``line_too_long``) and the next line is taken; 100.5 from
    collectd's jiffies mode is stored as 100 and counted; the same (server, ts, metric) twice is
    one duplicate, while cpu and ram of one ts are two points."""
    gh = graphite_host()
    now = int(time.time())
    sock = gh.connect()
    sock.sendall(b"servertrack.long.cpu 1 " + b"9" * 5000 + b"\r\n")
    sock.sendall(b"collectd.clamp.cpu.percent-active 100.5 %d\r\n" % now)
    sock.sendall(b"collectd.clamp.cpu.percent-active 100.5 %d\r\n" % now)
    sock.sendall(b"collectd.clamp.memory.percent-used 40.25 %d\r\n" % now)
    sock.sendall(b"collectd.clamp.load.load.shortterm 0.5 %d\r\n" % now)
    stats = gh.wait_receiver(lambda s: s["accepted"]["graphite"] == 2, "the two points")
    assert rejected(stats, "line_too_long") == 1
    assert rejected(stats, "unmapped") == 1
    assert stats["duplicates"] == 1
    assert stats["graphite_clamped"] == 2  # both copies were clamped before the repeat was seen
    minute = gh.loads("clamp")["minutes"][-1]
    assert (minute["cpu_max"], minute["cpu_samples"]) == (100.0, 1)
    assert (minute["ram"], minute["ram_samples"]) == (40.25, 1)
    assert "long" not in {s["server"] for s in gh.host.get("/servers")[1]["servers"]}


# -- limits -------------------------------------------------------------------------------------
def test_a_client_over_the_line_rate_is_cut_and_others_carry_on(
    graphite_host: Callable[..., GraphiteHost],
) -> None:
    """With ``--graphite-rate 2000``, a client writing 30,000 lines at once is closed: what the
    bucket allowed is taken, the lines read beyond it are ``rate_limited``, and a new connection
    is served."""
    gh = graphite_host(rate="2000")
    now = int(time.time())
    payload = b"".join(b"servertrack.flood.cpu 1 %d\n" % (now - i % 3000) for i in range(30_000))
    began = time.monotonic()
    flood = gh.connect()
    with contextlib.suppress(OSError):  # the receiver closes while we write
        flood.sendall(payload)
    assert peer_closed(flood)
    elapsed = time.monotonic() - began
    stats = gh.wait_receiver(lambda s: closed(s, "rate_limited") == 1, "the flood cut")
    assert 0 < rejected(stats, "rate_limited") < 30_000
    taken = stats["accepted"]["graphite"] + stats["duplicates"]
    assert 0 < taken <= 2000 * (1 + elapsed)  # a full bucket, plus its refill meanwhile
    polite = gh.connect()
    polite.sendall(b"servertrack.polite.ram 12 %d\n" % now)
    gh.wait_receiver(lambda s: s["accepted"]["graphite"] > stats["accepted"]["graphite"], "more")
    assert gh.loads("polite")["minutes"][-1]["ram"] == 12.0


def test_hundreds_of_idle_connections_do_not_lock_out_a_new_client(
    graphite_host: Callable[..., GraphiteHost],
) -> None:
    """300 connections that send nothing are held open; a new client is still served within a
    second or two, and the API stays healthy."""
    gh = graphite_host()
    idle = [gh.connect() for _ in range(300)]
    gh.wait_receiver(lambda s: s["graphite_connections_open"] == 300, "300 open connections")
    began = time.monotonic()
    late = gh.connect()
    late.sendall(b"servertrack.late.cpu 33 -1\n")
    gh.wait_receiver(lambda s: s["accepted"]["graphite"] == 1, "the new client's line")
    assert time.monotonic() - began < 3.0
    assert gh.host.get("/health")[0] == 200
    assert gh.loads("late")["minutes"][-1]["cpu"] == 33.0
    assert len(idle) == 300


def test_beyond_the_connection_cap_newcomers_are_refused_and_counted(
    graphite_host: Callable[..., GraphiteHost],
) -> None:
    """With ``--graphite-max-connections 20``, the 21st connection is closed at once and
    counted; once one of the 20 leaves, a newcomer is served again."""
    gh = graphite_host(max_connections="20")
    held = [gh.connect() for _ in range(20)]
    gh.wait_receiver(lambda s: s["graphite_connections_open"] == 20, "20 open connections")
    try:
        extra = gh.connect()
    except ConnectionResetError:  # the refusal can beat the end of the handshake
        pass
    else:
        assert peer_closed(extra)
    gh.wait_receiver(lambda s: s["graphite_connections_refused"] == 1, "the refusal counted")
    held[0].close()
    gh.wait_receiver(lambda s: closed(s, "client") == 1, "one connection closed")
    newcomer = gh.connect()
    newcomer.sendall(b"servertrack.newcomer.ram 50 -1\n")
    stats = gh.wait_receiver(lambda s: s["accepted"]["graphite"] == 1, "the newcomer's line")
    assert stats["graphite_connections_refused"] == 1
    assert stats["graphite_connections"] == 21


def test_a_silent_connection_is_closed_after_the_idle_timeout(
    graphite_host: Callable[..., GraphiteHost],
) -> None:
    """With ``--graphite-idle-timeout 1``, a client that wrote a line and then a half line and
    went quiet is closed within a few seconds: its line taken, its half line counted."""
    gh = graphite_host(idle_timeout="1")
    sock = gh.connect()
    sock.sendall(b"servertrack.quiet.cpu 3 -1\nservertrack.quiet.cpu 4")
    assert peer_closed(sock)
    stats = gh.wait_receiver(lambda s: closed(s, "idle") == 1, "the idle close counted")
    assert stats["accepted"]["graphite"] == 1
    assert rejected(stats, "partial_line") == 1


class Trickler:
    """Sends one byte at a time to each of its sockets, each on its own period, from a thread,
    until the receiver closes the socket, ``stop()`` is called, or ``TRICKLE_LIMIT`` passes."""

    def __init__(self) -> None:
        self.plans: list[tuple[socket.socket, bytes, float]] = []
        self.closed: set[socket.socket] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trickler")

    def add(self, sock: socket.socket, data: bytes, period: float) -> None:
        self.plans.append((sock, data, period))

    def start(self) -> Trickler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=DEADLINE)

    def _run(self) -> None:
        began = time.monotonic()
        sent = [0] * len(self.plans)
        while not self._stop.wait(0.05) and time.monotonic() - began < TRICKLE_LIMIT:
            elapsed = time.monotonic() - began
            for index, (sock, data, period) in enumerate(self.plans):
                if sock in self.closed or elapsed < sent[index] * period:
                    continue
                position = sent[index] % len(data)
                try:
                    sock.send(data[position : position + 1])
                except OSError:
                    self.closed.add(sock)
                sent[index] += 1


TRICKLE_LIMIT = 20.0


def test_trickling_connections_are_closed_so_a_real_client_gets_in(
    graphite_host: Callable[..., GraphiteHost],
) -> None:
    """Seven places, all taken: three clients trickle a byte of a line every 0.4 s (never idle,
    never a whole line), three send a bare newline every 0.5 s (whole lines, 2 bytes a second),
    one writes a real line every 0.5 s. With a 1 s line deadline and 4 bytes a second asked over
    each 2 s window, the first three are closed as ``slow_line`` (their half lines counted
    ``partial_line``), the next three as ``slow_rate``, the real writer stays, and a newcomer
    refused at first gets in within seconds."""
    gh = graphite_host(max_connections="7", idle_timeout="2", line_timeout="1", min_rate="4")
    trickler = Trickler()
    half = [gh.connect() for _ in range(3)]
    bare = [gh.connect() for _ in range(3)]
    writer = gh.connect()
    for sock in half:
        trickler.add(sock, b"servertrack.trickle.cpu 5 -1", 0.4)
    for sock in bare:
        trickler.add(sock, b"\n", 0.5)
    trickler.start()
    try:
        gh.wait_receiver(lambda s: s["graphite_connections_open"] == 7, "seven open connections")
        with contextlib.suppress(OSError):  # the refusal can beat the end of the handshake
            first = gh.connect()
            first.sendall(b"servertrack.newcomer.ram 50 -1\n")
        gh.wait_receiver(lambda s: s["graphite_connections_refused"] >= 1, "a refusal")
        began = time.monotonic()
        newcomer = None
        while newcomer is None:
            assert time.monotonic() - began < DEADLINE, "the newcomer never got in"
            writer.sendall(b"servertrack.writer.cpu 7 -1\n")
            try:
                candidate = gh.connect()
                candidate.sendall(b"servertrack.newcomer.ram 50 -1\n")
                if not peer_closed_within(candidate, 0.5):
                    newcomer = candidate
            except OSError:
                pass
        waited = time.monotonic() - began
        stats = gh.wait_receiver(
            lambda s: closed(s, "slow_line") == 3 and closed(s, "slow_rate") == 3,
            "the six tricklers closed",
        )
        accepted = stats["accepted"]["graphite"]
    finally:
        trickler.stop()
    assert waited < 6.0
    assert trickler.closed >= set(half + bare)
    assert rejected(stats, "partial_line") == 3
    assert closed(stats, "idle") == 0
    assert not peer_closed_within(writer, 0.1)  # the real writer is still served
    assert accepted >= 2 and gh.loads("newcomer")["minutes"][-1]["ram"] == 50.0


# -- cadence ------------------------------------------------------------------------------------
def cadence_under_load(gh: GraphiteHost, servers: int, seconds: int, rate: int) -> None:
    """A client sends ``rate`` lines a second for ``seconds`` s (``servers`` servers, cpu and
    ram): every line is accepted, the receiver cuts a batch every second meanwhile, and each
    is applied in well under a second."""
    start = int(time.time()) - 10  # distinct (server, ts, metric) for every line, none ahead
    ticks = [
        b"".join(
            b"servertrack.load-%d.%s %d.5 %.3f\n" % (n, metric, (n + t) % 100, start + t / 16)
            for n in range(servers)
            for metric in (b"cpu", b"ram")
        )
        for t in range(seconds * rate // (2 * servers))
    ]
    sock = gh.connect()
    errors: list[BaseException] = []

    def send() -> None:
        try:
            began = time.monotonic()
            for index, payload in enumerate(ticks):
                time.sleep(max(0.0, began + index * 2 * servers / rate - time.monotonic()))
                sock.sendall(payload)
        except BaseException as err:
            errors.append(err)

    before = gh.wait_receiver(lambda s: "batches" in s, "a first batch")["batches"]
    began = time.monotonic()
    sender = threading.Thread(target=send)
    sender.start()
    sender.join(timeout=seconds + 30)
    assert not sender.is_alive() and not errors, errors
    total = len(ticks) * 2 * servers
    stats = gh.wait_receiver(lambda s: s["accepted"]["graphite"] == total, "every line")
    elapsed = time.monotonic() - began
    assert stats["received"]["graphite"] == total
    assert stats["batches"] - before >= int(elapsed) - 1
    aggregator = gh.host.get("/stats")[1]["aggregator"]
    assert max(aggregator["flush_lag_recent_seconds"]) < 1.0


def test_batches_keep_their_cadence_under_a_graphite_load(
    graphite_host: Callable[..., GraphiteHost],
) -> None:
    """10,000 lines a second for 3 s (500 servers): every line is accepted, a batch is cut
    every second meanwhile, and each is applied in well under a second."""
    cadence_under_load(graphite_host(), servers=500, seconds=3, rate=10_000)


@pytest.mark.faults
def test_batches_keep_their_cadence_under_a_full_graphite_load(
    graphite_host: Callable[..., GraphiteHost],
) -> None:
    """The same at 30,000 lines a second for 6 s (1,000 servers)."""
    cadence_under_load(graphite_host(), servers=1000, seconds=6, rate=30_000)


# -- configuration ------------------------------------------------------------------------------
def test_a_graphite_port_in_use_or_a_bad_rule_file_stops_the_receiver(tmp_path: Path) -> None:
    """A standalone receiver leaves with exit code 78 and a message naming the endpoint, or the
    rule file and its line; ``servertrack run`` refuses a Graphite port equal to another port
    or in use, before it starts anything."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]

    def receiver(*extra: str) -> subprocess.CompletedProcess[str]:
        argv = servertrack_argv(
            "receiver",
            "--bind",
            f"tcp://127.0.0.1:{free_port()}",
            "--control",
            f"ipc://{tmp_path}/control",
            "--aggregator-query",
            "",
            *extra,
        )
        return subprocess.run(argv, capture_output=True, text=True, timeout=30)

    try:
        result = receiver("--graphite", f"tcp://127.0.0.1:{port}")
    finally:
        taken.close()
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert f"cannot bind tcp://127.0.0.1:{port}" in result.stderr
    rules = tmp_path / "graphite.map"
    rules.write_text("servers.{server}.cpu cpu\nservers.{server}.ram memory\n")
    result = receiver("--graphite", f"tcp://127.0.0.1:{free_port()}", "--graphite-map", str(rules))
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert f"{rules}:2: metric must be cpu or ram" in result.stderr
    assert "Traceback" not in result.stderr

    def host(api: int, graphite: int) -> subprocess.CompletedProcess[str]:
        argv = servertrack_argv(
            "run", "--no-agent", "--api-port", str(api), "--ingest-port", str(free_port()),
            "--graphite-port", str(graphite), "--data-dir", "",
            "--runtime-dir", str(tmp_path / "rt"),
        )  # fmt: skip
        return subprocess.run(argv, capture_output=True, text=True, timeout=30)

    api = free_port()
    run = host(api, api)
    assert run.returncode == EXIT_CONFIG, run.stderr
    assert f"--api-port and --graphite-port are both {api}" in run.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = host(free_port(), port)
    assert run.returncode == EXIT_CONFIG, run.stderr
    assert f"--graphite-port {port} on 127.0.0.1 is not available" in run.stderr
    assert not (tmp_path / "rt").exists() or not any((tmp_path / "rt").iterdir())


def test_a_standalone_receiver_takes_graphite_with_a_rule_file(
    tmp_path: Path, zmq_context: zmq.Context
) -> None:
    """``servertrack receiver --graphite ... --graphite-map FILE`` maps with the file's rules
    first (an idle percentage turned into cpu), pushes the point in its next batch, and stops
    cleanly on SIGTERM with a client still connected."""
    rules = tmp_path / "graphite.map"
    rules.write_text("hosts.{server}.cpu.idle cpu inverted\n")
    batches = zmq_context.socket(zmq.PULL)
    batches.setsockopt(zmq.LINGER, 0)
    batches.bind(f"ipc://{tmp_path}/batches")
    port = free_port()
    argv = servertrack_argv(
        "receiver",
        "--bind",
        f"tcp://127.0.0.1:{free_port()}",
        "--control",
        f"ipc://{tmp_path}/control",
        "--aggregator",
        f"ipc://{tmp_path}/batches",
        "--aggregator-query",
        "",
        "--graphite",
        f"tcp://127.0.0.1:{port}",
        "--graphite-map",
        str(rules),
    )
    receiver = ChildProcess(argv, tmp_path / "receiver.log").start()
    try:
        wait_until(lambda: "receiver listening" in receiver.log(), 20, "the receiver")
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
            sock.sendall(b"hosts.db-1.cpu.idle 75 -1\nhosts.db-1.ram.idle 75 -1\n")
            found: list[tuple[str, float]] = []
            end = time.monotonic() + DEADLINE
            while not found and time.monotonic() < end:
                if batches.poll(500):
                    batch = Batch.decode(batches.recv_multipart())
                    names = dict(batch.names)
                    found += [
                        (names[int(i)], float(c)) for i, c in zip(batch.ids, batch.cpu, strict=True)
                    ]
            assert found == [("db-1", 25.0)]
            assert batch.counters["rejected"]["graphite"] == {"unmapped": 1}
            assert receiver.stop() < 5.0
    finally:
        batches.close()
        if receiver.process is not None and receiver.process.poll() is None:
            receiver.kill_group()
    assert "Graphite plaintext on" in receiver.log()
    assert "Traceback" not in receiver.log()
