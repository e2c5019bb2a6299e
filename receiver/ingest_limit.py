"""A cap on the connections of the agents' ingest port, and the open-files budget it shares with
the Graphite port.

libzmq accepts every TCP connection to a bound socket by itself, in its I/O thread, and has no
option that bounds how many it holds: ``ZMQ_MAX_SOCKETS`` counts the application's sockets, not
their connections, and ``ZMQ_HANDSHAKE_IVL`` bounds only how long a connection may take to
handshake. A client that opens thousands of (handshaken) connections would take every file
descriptor the process may have, and the receiver itself could then open none (the memory figure
of each batch, a Graphite connection, the aggregator's reconnection).

So the receiver watches its ingest socket with a ZeroMQ monitor: ``ZMQ_EVENT_ACCEPTED`` and
``ZMQ_EVENT_DISCONNECTED`` carry the descriptor of the connection, libzmq sends the second before
it closes that descriptor, and events arrive in order. Beyond ``cap`` open connections, a newcomer
is cut at once with ``shutdown(2)`` on its descriptor (never ``close``: the descriptor stays
libzmq's, which sees the end of the stream and closes it itself, so the count stays bounded).
Connections already open carry on; a refused agent connects again by itself (every 0.1 s, libzmq's
reconnect interval) and gets in once a place is free.

The caps of both ports are sized so that, with ``RESERVED_FILES`` kept for everything else, they fit
in the open-files limit (raised towards what they need first, up to the hard limit).
"""

from __future__ import annotations

import logging
import socket
import struct

import zmq

from servertrack.common.limits import raise_open_files_limit
from servertrack.receiver.state import ReceiverState

log = logging.getLogger(__name__)

RESERVED_FILES = 256
"""Descriptors kept for everything but client connections: the ZeroMQ context and its sockets,
the connections of the API and the aggregator, /proc reads, the Graphite listener, logs."""
MIN_CONNECTIONS = 16
"""Fewest connections a port is given (or its cap, if lower); an open-files limit that cannot
hold them beside the reserve stops the receiver at start."""
AUTO_CEILING = 1_048_576
"""What an ingest cap left to the open-files limit asks for at most (Linux's default
``fs.nr_open``): the limit then decides."""
EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
EVENTS_PER_TURN = 4096
"""Monitor events read per wake-up before the other sockets and the clock are looked at again."""
LOG_EVERY = 60.0


class FilesTooFew(RuntimeError):
    """The open-files limit cannot hold the reserve and a few connections per port."""


def plan_connections(ingest: int | None, graphite: int | None) -> tuple[int, int | None]:
    """Caps ``(ingest, graphite)`` that fit in the open-files limit with ``RESERVED_FILES`` kept.

    ``ingest`` None takes what the limit leaves after the Graphite port; ``graphite`` None means
    the Graphite port is off. When the limit cannot hold both, the Graphite port keeps at most
    half the room (all the room the ingest cap leaves, when that is given), and a given cap that
    is lowered is logged as a warning. Raises :class:`FilesTooFew`.
    """
    wanted = RESERVED_FILES + (AUTO_CEILING if ingest is None else ingest) + (graphite or 0)
    files = raise_open_files_limit(wanted)
    room = files - RESERVED_FILES
    least_ingest = MIN_CONNECTIONS if ingest is None else min(ingest, MIN_CONNECTIONS)
    least_graphite = 0 if graphite is None else min(graphite, MIN_CONNECTIONS)
    if room < least_ingest + least_graphite:
        raise FilesTooFew(
            f"the open-files limit is {files}: the receiver needs at least "
            f"{RESERVED_FILES + least_ingest + least_graphite} ({RESERVED_FILES} for itself and "
            f"up to {MIN_CONNECTIONS} connections per port); raise it (ulimit -n, LimitNOFILE=)"
        )
    graphite_cap = None
    if graphite is not None:
        share = room // 2 if ingest is None else max(least_graphite, room - ingest)
        graphite_cap = min(graphite, share)
    ingest_room = room - (graphite_cap or 0)
    ingest_cap = ingest_room if ingest is None else min(ingest, ingest_room)
    if ingest is not None and ingest_cap < ingest:
        log.warning("open files limited to %d: at most %d ingest connections", files, ingest_cap)
    if graphite is not None and graphite_cap is not None and graphite_cap < graphite:
        log.warning(
            "open files limited to %d: at most %d Graphite connections", files, graphite_cap
        )
    return ingest_cap, graphite_cap


def cut(fd: int) -> None:
    """End the connection on descriptor ``fd`` without closing the descriptor (its owner, libzmq,
    sees the end of the stream and closes it)."""
    try:
        sock = socket.socket(fileno=fd)  # wraps the descriptor; no new one is opened
    except OSError:  # gone already (not a socket any more)
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # the peer left first
        pass
    finally:
        sock.detach()


class IngestLimit:
    """Counts the connections of one bound ZeroMQ socket and cuts those beyond ``cap`` (see the
    module docstring). Its counts live in the receiver's state, so that they travel with every
    batch: ``ingest_connections_open`` and ``ingest_connections_refused``."""

    def __init__(self, sock: zmq.SyncSocket, cap: int, state: ReceiverState) -> None:
        self.sock = sock
        self.cap = cap
        self.state = state
        self.monitor: zmq.SyncSocket | None = None
        self.open: set[int] = set()
        """Descriptors of the connections counted against the cap."""
        self.refused: set[int] = set()
        """Descriptors cut, whose end libzmq has not reported yet."""

    def start(self) -> zmq.SyncSocket:
        """Watch the socket (call before it binds, so that no connection is missed); returns the
        monitor socket, for the caller's poller."""
        self.monitor = self.sock.get_monitor_socket(EVENTS)
        self.monitor.setsockopt(zmq.LINGER, 0)
        return self.monitor

    def serve(self) -> None:
        """Read the waiting events, then cut the newcomers beyond the cap. All waiting events are
        read first, so a newcomer that already left (its descriptor closed, perhaps given to the
        next connection) is never cut. Only a descriptor libzmq closes and reuses in the
        microseconds between the last read and the cut could be cut by mistake: another of
        libzmq's connections (an agent's, or the API's), whose peer then connects again."""
        monitor = self.monitor
        if monitor is None:
            return
        newcomers: list[int] = []
        for _ in range(EVENTS_PER_TURN):
            try:
                head = monitor.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            while monitor.getsockopt(zmq.RCVMORE):  # the endpoint frame
                monitor.recv()
            event, fd = struct.unpack("=HI", head[:6])
            if event == zmq.EVENT_ACCEPTED:
                self.refused.discard(fd)
                newcomers.append(fd)
            elif event == zmq.EVENT_DISCONNECTED:
                if fd in newcomers:
                    newcomers.remove(fd)
                self.open.discard(fd)
                self.refused.discard(fd)
        for fd in newcomers:
            if len(self.open) < self.cap:
                self.open.add(fd)
            else:
                cut(fd)
                self.refused.add(fd)
                self.state.ingest_connections_refused += 1
        self.state.ingest_connections_open = len(self.open)

    def close(self) -> None:
        """Stop watching; call before closing the watched socket. libzmq sends events with a
        blocking send while it holds the lock that stopping the monitor takes, so the waiting
        events are read first (a full pipe would block both), then the monitor is stopped, then
        its socket closed (stopped first, so no event is ever sent to a closed peer)."""
        if self.monitor is None:
            return
        self.serve()
        self.sock.disable_monitor()
        self.monitor.close(linger=0)
        self.monitor = None
