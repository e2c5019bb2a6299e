"""The Graphite TCP client against real loopback listeners: stalled writes, closed peers,
reconnection with backoff, and the bounded queue."""

from __future__ import annotations

import contextlib
import itertools
import random
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from servertrack.common.testing import free_port, wait_until
from servertrack.forward.sink import Backoff, GraphiteSink, PointQueue, SinkConnection

LOOPBACK = "127.0.0.1"
DEADLINE = 10.0


def lines_of(count: int, tag: int = 0) -> list[bytes]:
    """Lines of 47 bytes each: a prime, so no socket buffer size ends on a line boundary."""
    return [
        f"st.server.cpu {i:019d}.5 {1_800_000_000 + tag * 300}\n".encode() for i in range(count)
    ]


@dataclass
class Listener:
    """A loopback listener whose accepted connections are read by a thread, each to EOF, one
    after the other. A connection in ``held`` is left unread until :meth:`release`."""

    sock: socket.socket
    held: set[int] = field(default_factory=set)
    received: list[bytes] = field(default_factory=list)
    accepted: int = 0
    released: threading.Event = field(default_factory=threading.Event)
    close_after: dict[int, int] = field(default_factory=dict)
    """Connection number → bytes after which this side closes it (a peer that goes away)."""
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def serve(self) -> Listener:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            number = self.accepted
            self.accepted += 1
            self.received.append(b"")
            with conn:
                if number in self.held:
                    self.released.wait(DEADLINE)
                conn.settimeout(0.1)
                while not self.stop.is_set():
                    try:
                        data = conn.recv(65536)
                    except TimeoutError:
                        continue
                    if not data:
                        break
                    self.received[number] += data
                    limit = self.close_after.get(number)
                    if limit is not None and len(self.received[number]) >= limit:
                        break

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.stop.set()
        self.released.set()
        if self.thread is not None:
            self.thread.join(DEADLINE)
            assert not self.thread.is_alive()
        self.sock.close()


@contextlib.contextmanager
def listening(port: int = 0, rcvbuf: int | None = None, **options: object) -> Iterator[Listener]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((LOOPBACK, port))
    sock.listen(8)
    listener = Listener(sock, **options).serve()  # type: ignore[arg-type]
    try:
        yield listener
    finally:
        listener.close()


def make_sink(port: int, limit: int = 100_000, **options: object) -> GraphiteSink:
    options.setdefault("backoff", Backoff(0.05, 0.4, random.Random(1).random))
    return GraphiteSink(LOOPBACK, port, PointQueue(limit), **options)  # type: ignore[arg-type]


def flush_until(sink: GraphiteSink, predicate: object, what: str) -> None:
    def step() -> bool:
        sink.flush(0.5)
        return bool(predicate())  # type: ignore[operator]

    wait_until(step, DEADLINE, what, step=0.01)


def test_lines_arrive_in_order_on_a_keepalive_connection() -> None:
    """Three windows' lines arrive whole and in order; the socket has TCP keepalive on."""
    with listening() as listener:
        sink = make_sink(listener.port)
        sent = []
        for tag in range(3):
            batch = lines_of(50, tag)
            sink.queue.put(tag, batch)
            sent += batch
        flush_until(sink, lambda: not sink.queue.size, "the queue to empty")
        assert sink.connection is not None
        sock = sink.connection.sock
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 60
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) > 0
        sink.disconnect()
        wait_until(
            lambda: listener.received and listener.received[0].count(b"\n") == 150,
            DEADLINE,
            "every line",
        )
        assert listener.received[0] == b"".join(sent)
        finished = sink.queue.take_finished()
        assert [(b.tag, b.written, b.dropped) for b in finished] == [
            (0, 50, 0),
            (1, 50, 0),
            (2, 50, 0),
        ]


def test_a_write_the_peer_does_not_take_in_time_fails_and_the_rest_goes_on_a_new_connection() -> (
    None
):
    """A peer that stops reading: the chunk the socket cannot take within the write timeout is
    a failure; the connection is closed, the lines wholly written count as sent, and the rest
    (a line cut in the middle included) is written again on the next connection. The peer sees
    every line exactly once, whole."""
    with listening(rcvbuf=4096, held={0}) as listener:

        def small_buffers(host: str, port: int, timeout: float) -> SinkConnection:
            connection = SinkConnection.open(host, port, timeout)
            connection.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            return connection

        sink = make_sink(listener.port, opener=small_buffers, write_timeout=0.3)
        sent = lines_of(40_000)
        sink.queue.put(0, sent)
        began = time.monotonic()
        sink.flush(5.0)
        assert time.monotonic() - began < 3.0
        assert sink.counters.write_failures == 1 and sink.connection is None
        kept = sink.queue.size
        assert 0 < kept < len(sent)
        listener.release()
        flush_until(sink, lambda: not sink.queue.size, "the rest to be written")
        sink.disconnect()
        wait_until(
            lambda: len(listener.received) == 2 and listener.received[1].endswith(sent[-1]),
            DEADLINE,
            "the second connection's lines",
        )
        first, second = listener.received
        whole, _, cut = first.rpartition(b"\n")
        whole += b"\n"
        assert whole + second == b"".join(sent)  # nothing lost, nothing twice, in order
        assert cut and second.startswith(cut)  # a cut line is sent again whole
        assert whole.count(b"\n") == len(sent) - kept
        assert sink.counters.reconnects == 1


def test_a_peer_that_closed_its_end_is_seen_before_writing() -> None:
    """The sink closes the connection after the first window; the next window is not written
    into the dead socket (the EOF probe sees the close) but on a new connection."""
    first, second = lines_of(10, 0), lines_of(10, 1)
    size = len(b"".join(first))
    with listening(close_after={0: size}) as listener:
        sink = make_sink(listener.port)
        sink.queue.put(0, first)
        flush_until(sink, lambda: not sink.queue.size, "the first window")
        wait_until(
            lambda: listener.accepted == 1 and len(listener.received[0]) == size,
            DEADLINE,
            "the first window to arrive",
        )
        assert sink.connection is not None
        wait_until(
            lambda: sink.connection is not None and sink.connection.peer_closed(),
            DEADLINE,
            "the close to reach the client",
        )
        sink.queue.put(1, second)
        flush_until(sink, lambda: not sink.queue.size, "the second window")
        sink.disconnect()
        wait_until(
            lambda: len(listener.received) == 2 and listener.received[1].count(b"\n") == 10,
            DEADLINE,
            "the second window on a new connection",
        )
        assert listener.received == [b"".join(first), b"".join(second)]
        assert sink.counters.peer_closed == 1 and sink.counters.write_failures == 0
        assert sink.counters.reconnects == 1


def test_connection_attempts_back_off_until_the_sink_listens() -> None:
    """Nothing listens: attempts are spaced by growing, capped, jittered delays; once a
    listener appears the queued lines are delivered."""
    port = free_port()
    attempts: list[float] = []

    def recording(host: str, port: int, timeout: float) -> SinkConnection:
        attempts.append(time.monotonic())
        return SinkConnection.open(host, port, timeout)

    sink = make_sink(port, opener=recording, backoff=Backoff(0.05, 0.4, random.Random(2).random))
    batch = lines_of(5)
    sink.queue.put(0, batch)
    flush_until(sink, lambda: sink.counters.connect_failures >= 6, "six refused attempts")
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    for n, gap in enumerate(gaps):
        ceiling = min(0.4, 0.05 * 2**n)
        assert gap >= ceiling / 2 - 0.005, (n, gaps)
    assert max(gaps) < 0.4 + 0.3 and gaps[-1] > gaps[0]
    with listening(port) as listener:
        flush_until(sink, lambda: not sink.queue.size, "the lines to go out")
        sink.disconnect()
        wait_until(
            lambda: listener.received and listener.received[0] == b"".join(batch),
            DEADLINE,
            "the lines",
        )
    assert sink.counters.connects == 1 and sink.backoff.failures == 0


def test_a_full_queue_drops_the_oldest_lines_and_counts_them() -> None:
    """With the sink down, ten windows of ten lines into a queue of 35: the 65 oldest lines are
    dropped and counted, window by window; the 35 newest arrive, in order."""
    port = free_port()
    sink = make_sink(port, limit=35)
    every = []
    for tag in range(10):
        batch = lines_of(10, tag)
        every += batch
        sink.queue.put(tag, batch)
        sink.flush(0.1)
    assert sink.queue.dropped_full == 65 and sink.queue.size == 35
    with listening(port) as listener:
        sink.next_attempt = 0.0
        flush_until(sink, lambda: not sink.queue.size, "the queue to empty")
        sink.disconnect()
        wait_until(
            lambda: listener.received and listener.received[0].count(b"\n") == 35,
            DEADLINE,
            "the newest lines",
        )
        assert listener.received[0] == b"".join(every[-35:])
    finished = sink.queue.take_finished()
    assert [b.tag for b in finished] == list(range(10))
    assert [(b.written, b.dropped_full) for b in finished] == [(0, 10)] * 6 + [(5, 5)] + [
        (10, 0)
    ] * 3


@pytest.mark.parametrize("up", [True, False])
def test_at_exit_the_sink_gets_a_short_drain_and_the_rest_is_counted(up: bool) -> None:
    """At exit what the sink takes within the drain is written; with the sink down every
    queued line is counted as dropped at exit."""
    port = free_port()
    sink = make_sink(port, backoff=Backoff(30.0, 60.0, random.Random(3).random))
    sink.queue.put(0, lines_of(20))
    sink.flush(0.1)  # refused: the next attempt is 15-30 s away
    assert sink.counters.connect_failures == 1
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(listening(port)) if up else None
        began = time.monotonic()
        dropped = sink.drain(1.0)
        assert time.monotonic() - began < 1.5
        if listener is not None:
            assert dropped == 0
            wait_until(
                lambda: listener.received and listener.received[0].count(b"\n") == 20,
                DEADLINE,
                "the drained lines",
            )
        else:
            assert dropped == 20 == sink.queue.dropped_exit
    assert sink.connection is None and sink.queue.size == 0
