"""Graphite plaintext over TCP, served by the receiver's own thread.

The listening socket and every connection are non-blocking, and their file descriptors are
registered in the receiver's ``zmq.Poller`` beside its ZeroMQ sockets, so one thread owns
everything and nothing needs a lock. Parsing and mapping are :mod:`receiver.graphite`'s.

- Work per wake-up is bounded (:meth:`GraphiteListener.serve` stops at a deadline the daemon
  gives it, and reads at most ``READS_PER_TURN`` chunks from one connection), so batches keep
  their one-second cadence under any Graphite load; the connections served first take turns.
- At most ``max_connections`` are open: a newcomer beyond it is closed at once (counted
  ``graphite_connections_refused``). A connection is closed when it holds a place without using
  it: silent for ``idle_timeout`` seconds (``idle``), a line not whole ``line_timeout`` seconds
  after its first byte (``slow_line``), or fewer than ``min_rate`` bytes a second over a window of
  ``idle_timeout`` seconds (``slow_rate``). Trickling a byte now and then keeps a connection from
  being idle, never from the other two.
- Out of file descriptors, accepting stops until the next sweep (the listening socket would
  otherwise wake the loop at once, again and again) and the shortage is counted.
- Each closed connection is counted by reason in ``graphite_connections_closed``; the half line
  it leaves, if any, in ``rejected["graphite"]["partial_line"]``.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
import time
from collections.abc import Callable, Mapping
from typing import Any

import zmq

from servertrack.common.buckets import Clock
from servertrack.common.config import ENDPOINT_RE
from servertrack.common.limits import FileShortage, out_of_files
from servertrack.common.rpc import BindError
from servertrack.receiver.graphite import GraphiteIntake, Stream

log = logging.getLogger(__name__)

READ_SIZE = 64 * 1024
READS_PER_TURN = 4
"""Chunks read from one connection per wake-up before the next one's turn (256 KiB, about
3,000 lines, some 15 ms of work)."""
ACCEPTS_PER_TURN = 64
BACKLOG = 128
DEFAULT_MAX_CONNECTIONS = 1000
DEFAULT_IDLE_TIMEOUT = 120.0
DEFAULT_LINE_TIMEOUT = 10.0
"""Seconds a line may take from its first byte to its newline. A writer sends a line whole (TCP
may split it, and the rest follows within milliseconds); only a client that trickles takes
longer."""
DEFAULT_MIN_RATE = 0.5
"""Bytes a second a connection must send, on average over each ``idle_timeout`` window: 60 bytes
in two minutes. One line a minute with a timestamp (30 bytes or more) is enough; a client that
trickles a byte every few seconds to hold a place is not."""
LOG_EVERY = 60.0
"""Seconds between two warnings about refused or cut connections."""


def tcp_address(endpoint: str) -> tuple[str, int]:
    """``tcp://HOST:PORT`` → ``(HOST, PORT)``; ``[::1]`` loses its brackets, ``*`` is every
    IPv4 address."""
    match = ENDPOINT_RE.fullmatch(endpoint)
    if match is None or match["host"] is None or match["port"] in (None, "*"):
        raise ValueError(f"must be tcp://HOST:PORT, got {endpoint!r}")
    host = match["host"].strip("[]")
    return ("0.0.0.0" if host == "*" else host), int(match["port"])


class Connection:
    __slots__ = ("fd", "last", "peer", "sock", "stream", "window_bytes", "window_start")

    def __init__(self, sock: socket.socket, peer: Any, stream: Stream, now: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.stream = stream
        self.last = now
        """Monotonic time of the last byte read."""
        self.window_start = now
        self.window_bytes = 0
        """Bytes read since ``window_start`` (for the minimum rate)."""


class GraphiteListener:
    """The Graphite TCP port of one receiver (see the module docstring)."""

    def __init__(
        self,
        endpoint: str,
        intake: GraphiteIntake,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        clock: Clock = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        line_timeout: float = DEFAULT_LINE_TIMEOUT,
        min_rate: float = DEFAULT_MIN_RATE,
        files: FileShortage | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.intake = intake
        self.state = intake.state
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.line_timeout = line_timeout
        self.min_rate = min_rate
        self.clock = clock
        self.monotonic = monotonic
        self.files = files or FileShortage("receiver")
        self.sock: socket.socket | None = None
        self.fd = -1
        self.poller: zmq.Poller | None = None
        self.connections: dict[int, Connection] = {}
        self.accepting = False
        """Whether the listening socket is in the poller (not while out of descriptors)."""
        self._turn = 0
        self._logged = float("-inf")

    # -- lifecycle ----------------------------------------------------------------------------
    def open(self, poller: zmq.Poller) -> None:
        """Bind and listen, and register with ``poller``; :class:`BindError` names the endpoint.
        ``max_connections`` must fit in the open-files limit (``ingest_limit.plan_connections``
        sizes it)."""
        host, port = tcp_address(self.endpoint)
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            sock = socket.socket(family, kind, proto)
        except OSError as err:
            raise BindError(f"cannot bind {self.endpoint}: {err}") from None
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
        except OSError as err:
            sock.close()
            raise BindError(f"cannot bind {self.endpoint}: {err.strerror or err}") from None
        self.sock = sock
        self.fd = sock.fileno()
        self.poller = poller
        poller.register(self.fd, zmq.POLLIN)
        self.accepting = True
        log.info("Graphite plaintext on %s", self.endpoint)

    def close(self) -> None:
        """Close every connection (counted ``stopping``) and the listening socket."""
        for connection in list(self.connections.values()):
            self._drop(connection, "stopping")
        if self.sock is not None:
            if self.poller is not None and self.accepting:
                self.poller.unregister(self.fd)
            self.accepting = False
            self.sock.close()
            self.sock = None

    # -- the receiver's loop ------------------------------------------------------------------
    def serve(self, ready: Mapping[Any, int], deadline: float) -> None:
        """Accept newcomers and read the connections ``ready`` (from the poller) holds, until
        all are served or the monotonic clock passes ``deadline``."""
        if self.fd in ready:
            self._accept()
        connections = self.connections
        turn = [connections[fd] for fd in ready if fd in connections]
        if not turn:
            return
        self._turn = (self._turn + 1) % len(turn)
        turn = turn[self._turn :] + turn[: self._turn]
        now = self.clock()
        for connection in turn:
            self._read(connection, now)
            if self.monotonic() >= deadline:
                return

    def sweep(self) -> None:
        """Close the connections that hold a place without using it (see the module docstring),
        and accept again after a shortage of descriptors; call about once a second."""
        now = self.monotonic()
        for connection in list(self.connections.values()):
            reason = self._slack(connection, now)
            if reason is not None:
                log.debug("closing the Graphite connection from %s: %s", connection.peer, reason)
                self._drop(connection, reason)
        if not self.accepting and self.sock is not None and self.poller is not None:
            self.poller.register(self.fd, zmq.POLLIN)
            self.accepting = True

    def _slack(self, connection: Connection, now: float) -> str | None:
        """Why ``connection`` should be closed now, if it should."""
        if now - connection.last > self.idle_timeout:
            return "idle"
        began = connection.stream.began
        if began is not None and now - began > self.line_timeout:
            return "slow_line"
        elapsed = now - connection.window_start
        if elapsed >= self.idle_timeout:
            if connection.window_bytes < self.min_rate * elapsed:
                return "slow_rate"
            connection.window_start, connection.window_bytes = now, 0
        return None

    # -- connections --------------------------------------------------------------------------
    def _accept(self) -> None:
        assert self.sock is not None and self.poller is not None
        state = self.state
        for _ in range(ACCEPTS_PER_TURN):
            try:
                sock, peer = self.sock.accept()
            except BlockingIOError:
                return
            except OSError as err:
                if out_of_files(err):  # accept again at the next sweep, not at once
                    self.files.note("accepting a Graphite connection", err)
                    self.poller.unregister(self.fd)
                    self.accepting = False
                    return
                if err.errno not in (errno.ECONNABORTED, errno.EPROTO):
                    self._warn(f"cannot accept a Graphite connection: {err}")
                    return
                continue  # the peer gave up
            if len(self.connections) >= self.max_connections:
                # RST at once (linger 0), so the client does not write into a dead socket.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
                state.graphite_connections_refused += 1
                self._warn(f"{self.max_connections} Graphite connections open: refused {peer}")
                continue
            sock.setblocking(False)
            now = self.monotonic()
            connection = Connection(sock, peer, self.intake.open(now), now)
            self.connections[connection.fd] = connection
            self.poller.register(connection.fd, zmq.POLLIN)
            state.graphite_connections += 1
            state.graphite_connections_open = len(self.connections)

    def _read(self, connection: Connection, now: float) -> None:
        recv = connection.sock.recv
        for _ in range(READS_PER_TURN):
            try:
                data = recv(READ_SIZE)
            except BlockingIOError:
                return
            except OSError as err:
                log.debug("Graphite connection from %s failed: %s", connection.peer, err)
                self._drop(connection, "error")
                return
            if not data:
                self._drop(connection, "client")
                return
            mono = self.monotonic()
            connection.last = mono
            connection.window_bytes += len(data)
            if not self.intake.feed(connection.stream, data, now, mono):
                self._warn(
                    f"closed the Graphite connection from {connection.peer}: over "
                    f"{self.intake.rate:.0f} lines/s"
                )
                self._drop(connection, "rate_limited")
                return
            if len(data) < READ_SIZE:
                return

    def _drop(self, connection: Connection, reason: str) -> None:
        if self.connections.pop(connection.fd, None) is None:
            return
        if self.poller is not None:
            self.poller.unregister(connection.fd)
        connection.sock.close()
        self.intake.close(connection.stream)
        self.state.graphite_connections_closed[reason] += 1
        self.state.graphite_connections_open = len(self.connections)

    def _warn(self, message: str) -> None:
        """Log a warning, at most one a minute (a client can cause them at will)."""
        now = self.monotonic()
        if now - self._logged >= LOG_EVERY:
            self._logged = now
            log.warning("%s (logged at most once a minute; the counters have them all)", message)
