"""The Graphite plaintext client: a bounded ordered queue, and a TCP connection that is checked
before every write and replaced with capped, jittered exponential backoff.

- :class:`PointQueue` (no I/O) keeps the lines not written yet, window by window, in order. Over
  its limit it drops the oldest lines and counts them.
- :class:`SinkConnection` is one TCP connection: keepalive on (and ``TCP_USER_TIMEOUT``, so data the
  peer never acknowledges fails the connection), an EOF probe before writing (a sink that closed
  its end is seen before lines are written into it), and writes bounded by a timeout.
- :class:`GraphiteSink` writes the queue in chunks of whole lines. A chunk the socket did not take
  entirely within the write timeout is a failure: the connection is closed, the lines wholly
  written count as sent, and the rest, including a line cut in the middle, stays queued and is
  written again on the next connection. A receiver only takes lines ended by a newline, so a cut
  line is never stored twice.

Lines written to the socket count as sent: the plaintext protocol has no acknowledgement.
"""

from __future__ import annotations

import contextlib
import logging
import random
import select
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024
CONNECT_TIMEOUT = 3.0
WRITE_TIMEOUT = 10.0
BACKOFF_BASE = 1.0
BACKOFF_CAP = 60.0
KEEPALIVE_IDLE = 60
KEEPALIVE_INTERVAL = 10
KEEPALIVE_COUNT = 6
USER_TIMEOUT_MS = 120_000


# -- the queue ------------------------------------------------------------------------------------
@dataclass(slots=True)
class LineBatch:
    """The lines of one window (``tag`` is its start), with what became of them so far."""

    tag: int
    lines: list[bytes]
    done: int = 0
    """Lines from the start of ``lines`` that were written or dropped."""
    written: int = 0
    dropped_full: int = 0
    dropped_exit: int = 0

    @property
    def dropped(self) -> int:
        return self.dropped_full + self.dropped_exit


class PointQueue:
    """Lines waiting to be written, oldest first, at most ``limit`` of them.

    Finished batches (every line written or dropped) are handed over by :meth:`take_finished`.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the queue limit must be at least 1, got {limit}")
        self.limit = limit
        self.batches: deque[LineBatch] = deque()
        self.size = 0
        self.dropped_full = 0
        self.dropped_exit = 0
        self.finished: list[LineBatch] = []

    def __len__(self) -> int:
        return self.size

    def put(self, tag: int, lines: list[bytes]) -> None:
        """Queue a window's lines; drops the oldest lines queued if the limit is passed."""
        batch = LineBatch(tag, lines)
        self.batches.append(batch)
        self.size += len(lines)
        if not lines:
            self._settle()
        excess = self.size - self.limit
        if excess > 0:
            self.dropped_full += self._drop(excess, full=True)

    def _drop(self, count: int, full: bool) -> int:
        dropped = 0
        while count > dropped and self.batches:
            head = self.batches[0]
            take = min(count - dropped, len(head.lines) - head.done)
            head.done += take
            if full:
                head.dropped_full += take
            else:
                head.dropped_exit += take
            dropped += take
            self.size -= take
            self._settle()
        return dropped

    def drop_all(self) -> int:
        """Drop everything still queued (at exit); returns how many lines."""
        dropped = self._drop(self.size, full=False)
        self.dropped_exit += dropped
        return dropped

    def chunk(self, max_bytes: int = CHUNK_BYTES) -> list[bytes]:
        """The next lines to write, whole lines, about ``max_bytes`` (at least one line)."""
        out: list[bytes] = []
        size = 0
        for batch in self.batches:
            for index in range(batch.done, len(batch.lines)):
                out.append(batch.lines[index])
                size += len(batch.lines[index])
                if size >= max_bytes:
                    return out
        return out

    def written(self, count: int) -> None:
        """The first ``count`` queued lines were written."""
        while count and self.batches:
            head = self.batches[0]
            take = min(count, len(head.lines) - head.done)
            head.done += take
            head.written += take
            self.size -= take
            count -= take
            self._settle()

    def _settle(self) -> None:
        while self.batches and self.batches[0].done == len(self.batches[0].lines):
            self.finished.append(self.batches.popleft())

    def take_finished(self) -> list[LineBatch]:
        finished, self.finished = self.finished, []
        return finished


# -- backoff ------------------------------------------------------------------------------------
class Backoff:
    """Capped exponential delays with jitter: the n-th failure in a row waits a random time
    between half and all of ``min(cap, base * 2**n)``."""

    def __init__(
        self,
        base: float = BACKOFF_BASE,
        cap: float = BACKOFF_CAP,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.base = base
        self.cap = cap
        self.rng = rng
        self.failures = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * 2.0 ** min(self.failures, 32))
        self.failures += 1
        return ceiling / 2 + self.rng() * ceiling / 2

    def reset(self) -> None:
        self.failures = 0


# -- one TCP connection -------------------------------------------------------------------------
class WriteFailed(OSError):
    """A write that failed after ``sent`` bytes were taken by the socket."""

    def __init__(self, sent: int, reason: str) -> None:
        super().__init__(reason)
        self.sent = sent
        self.reason = reason


def _set_keepalive(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT),
        ("TCP_USER_TIMEOUT", USER_TIMEOUT_MS),
    ):
        option = getattr(socket, name, None)
        if option is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, option, value)


class SinkConnection:
    """A connected, non-blocking TCP socket to the sink."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(False)

    @classmethod
    def open(cls, host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> SinkConnection:
        sock = socket.create_connection((host, port), timeout=timeout)
        try:
            _set_keepalive(sock)
        except OSError:
            sock.close()
            raise
        return cls(sock)

    def peer_closed(self) -> bool:
        """True if the peer closed its end (EOF) or reset the connection. Anything the peer
        sent (a plaintext receiver sends nothing) is read and discarded."""
        try:
            while True:
                if not self.sock.recv(4096):
                    return True
        except BlockingIOError:
            return False
        except OSError:
            return True

    def send(self, data: bytes, timeout: float) -> int:
        """Write ``data``; returns the bytes written, all of them unless ``timeout`` passed with
        the socket full. Raises :class:`WriteFailed` on a socket error."""
        view = memoryview(data)
        sent = 0
        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(self.sock, select.POLLOUT)
        while sent < len(view):
            try:
                sent += self.sock.send(view[sent:])
                continue
            except BlockingIOError:
                pass
            except OSError as err:
                raise WriteFailed(sent, f"{type(err).__name__}: {err}") from None
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                return sent
        return sent

    def close(self) -> None:
        self.sock.close()


Opener = Callable[[str, int, float], "SinkConnection"]


# -- the sink -----------------------------------------------------------------------------------
@dataclass(slots=True)
class SinkCounters:
    connects: int = 0
    reconnects: int = 0
    """Connections made after the first one (after a failure or a closed peer)."""
    connect_failures: int = 0
    write_failures: int = 0
    peer_closed: int = 0


class GraphiteSink:
    """Writes a :class:`PointQueue` to ``host:port``; call :meth:`flush` from the daemon's loop."""

    def __init__(
        self,
        host: str,
        port: int,
        queue: PointQueue,
        monotonic: Callable[[], float] = time.monotonic,
        backoff: Backoff | None = None,
        opener: Opener = SinkConnection.open,
        connect_timeout: float = CONNECT_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        self.host = host
        self.port = port
        self.queue = queue
        self.monotonic = monotonic
        self.backoff = backoff or Backoff()
        self.opener = opener
        self.connect_timeout = connect_timeout
        self.write_timeout = write_timeout
        self.chunk_bytes = chunk_bytes
        self.connection: SinkConnection | None = None
        self.next_attempt = float("-inf")
        self.counters = SinkCounters()

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def wakeup(self) -> float | None:
        """Monotonic time when :meth:`flush` has work to do; None while the queue is empty."""
        if not self.queue.size:
            return None
        return self.next_attempt if self.connection is None else self.monotonic()

    def flush(self, budget: float) -> None:
        """Write queued lines for up to about ``budget`` seconds (whole chunks; a stalled chunk
        may take up to the write timeout), connecting first if it is time to try again."""
        if not self.queue.size:
            return
        end = self.monotonic() + budget
        if self.connection is None and not self._connect():
            return
        assert self.connection is not None
        if self.connection.peer_closed():
            self.counters.peer_closed += 1
            self._fail(f"{self.target} closed the connection")
            return
        while self.queue.size and self.connection is not None:
            lines = self.queue.chunk(self.chunk_bytes)
            data = b"".join(lines)
            try:
                sent = self.connection.send(data, self.write_timeout)
                error = None
            except WriteFailed as err:
                sent, error = err.sent, err.reason
            if sent == len(data):
                self.queue.written(len(lines))
                self.backoff.reset()
            else:
                self.queue.written(_whole_lines(lines, sent))
                self.counters.write_failures += 1
                self._fail(error or f"{self.target} took {sent} of {len(data)} bytes in time")
                return
            if self.monotonic() >= end:
                return

    def _connect(self) -> bool:
        now = self.monotonic()
        if now < self.next_attempt:
            return False
        try:
            self.connection = self.opener(self.host, self.port, self.connect_timeout)
        except OSError as err:
            self.counters.connect_failures += 1
            delay = self.backoff.next_delay()
            self.next_attempt = now + delay
            log.warning("cannot connect to %s (%s); next try in %.1f s", self.target, err, delay)
            return False
        if self.counters.connects:
            self.counters.reconnects += 1
        self.counters.connects += 1
        log.info("connected to %s (%d lines queued)", self.target, self.queue.size)
        return True

    def _fail(self, reason: str) -> None:
        self.disconnect()
        delay = self.backoff.next_delay()
        self.next_attempt = self.monotonic() + delay
        log.warning(
            "%s; %d lines kept for the next connection, in %.1f s", reason, self.queue.size, delay
        )

    def disconnect(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def drain(self, budget: float) -> int:
        """At exit: write what the sink takes within ``budget`` seconds (with one fresh
        connection at most, whatever the backoff says), then drop the rest and count it.
        Returns the lines dropped."""
        end = self.monotonic() + budget
        self.write_timeout = min(self.write_timeout, budget)
        fresh = False
        while self.queue.size and self.monotonic() < end:
            if self.connection is None:
                if fresh:
                    break
                fresh = True
                self.next_attempt = self.monotonic()
            self.flush(end - self.monotonic())
        self.disconnect()
        return self.queue.drop_all()


def _whole_lines(lines: list[bytes], sent: int) -> int:
    """How many of ``lines`` lie entirely within the first ``sent`` bytes."""
    count = 0
    for one in lines:
        if sent < len(one):
            break
        sent -= len(one)
        count += 1
    return count
