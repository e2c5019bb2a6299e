"""Request/reply between the daemons over ZeroMQ, with a deadline on every call.

Servers use a ROUTER socket and answer each request with the envelope it came with; clients use
a REQ socket (relaxed and correlated, so a timed-out request never wedges it) that lives in one
thread only. ``IMMEDIATE`` makes a request to a peer that is not connected fail at once.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import msgpack
import zmq

log = logging.getLogger(__name__)
MAX_REQUEST_BYTES = 32 * 1024 * 1024
INTERRUPT_SLICE_MS = 50
"""How often a call that can be interrupted looks at its interrupt while it waits."""


class Unavailable(RuntimeError):
    """The peer did not answer within the deadline."""


class BindError(OSError):
    """An endpoint could not be bound (in use, or an address this host does not have)."""


def bind(sock: zmq.SyncSocket, endpoint: str) -> None:
    """``sock.bind(endpoint)``, or :class:`BindError` naming the endpoint."""
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as err:
        raise BindError(f"cannot bind {endpoint}: {err}") from None


class RpcClient:
    """A REQ socket for one thread; ``call`` sends a msgpack request and waits for the reply."""

    def __init__(
        self, context: zmq.SyncContext, endpoint: str, timeout: float, reply_timeout: float = 0.0
    ) -> None:
        self.context = context
        self.endpoint = endpoint
        self.timeout_ms = int(timeout * 1000)
        """How long to wait for a peer to take the request (an absent peer fails here)."""
        self.reply_timeout_ms = int(max(timeout, reply_timeout) * 1000)
        """How long a peer that took the request may take to answer."""
        self.socket: zmq.SyncSocket | None = None

    def _open(self) -> zmq.SyncSocket:
        sock = self.context.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.REQ_RELAXED, 1)
        sock.setsockopt(zmq.REQ_CORRELATE, 1)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.SNDTIMEO, self.timeout_ms)
        sock.connect(self.endpoint)
        return sock

    def call_raw(self, request: Any, interrupt: threading.Event | None = None) -> bytes:
        """Send ``request`` (msgpack-encoded) and return the raw reply body. ``interrupt``, when
        set while waiting, gives up at once (as a timeout does)."""
        if self.socket is None:
            self.socket = self._open()
        try:
            self.socket.send(msgpack.packb(request))
        except zmq.ZMQError as err:
            self.close()
            raise Unavailable(f"{self.endpoint} is not reachable: {err}") from err
        if interrupt is None:
            if self.socket.poll(self.reply_timeout_ms, zmq.POLLIN):
                return self.socket.recv()
        else:
            for _ in range(0, self.reply_timeout_ms, INTERRUPT_SLICE_MS):
                if self.socket.poll(INTERRUPT_SLICE_MS, zmq.POLLIN):
                    return self.socket.recv()
                if interrupt.is_set():
                    break
        self.close()
        raise Unavailable(
            f"{self.endpoint} took the request but did not answer within "
            f"{self.reply_timeout_ms} ms; it may still have been applied"
        )

    def call(self, request: Any, interrupt: threading.Event | None = None) -> Any:
        return msgpack.unpackb(self.call_raw(request, interrupt))

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close(linger=0)
            self.socket = None


class ThreadLocalClients:
    """One :class:`RpcClient` per thread for an endpoint (ZeroMQ sockets are not thread-safe)."""

    def __init__(
        self, context: zmq.SyncContext, endpoint: str, timeout: float, reply_timeout: float = 0.0
    ) -> None:
        self.context = context
        self.endpoint = endpoint
        self.timeout = timeout
        self.reply_timeout = reply_timeout
        self._local = threading.local()
        self._all: list[RpcClient] = []
        self._lock = threading.Lock()

    def get(self) -> RpcClient:
        client = getattr(self._local, "client", None)
        if client is None:
            client = RpcClient(self.context, self.endpoint, self.timeout, self.reply_timeout)
            self._local.client = client
            with self._lock:
                self._all.append(client)
        return client

    def close(self) -> None:
        with self._lock:
            for client in self._all:
                client.close()
            self._all.clear()


def bind_router(context: zmq.SyncContext, endpoint: str) -> zmq.SyncSocket:
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
    try:
        bind(sock, endpoint)
    except BindError:
        sock.close(linger=0)
        raise
    return sock


def serve_one(
    sock: zmq.SyncSocket,
    handler: Any,
    hold: Callable[[Any, list[bytes]], bool] | None = None,
) -> None:
    """Read one request from a ROUTER socket and send ``handler(request)``'s bytes back; a
    handler that returns None sends nothing (the client has given up already). ``hold``, when
    given, may keep a request to answer later with :func:`reply` (it gets the request and its
    envelope, and returns True when it kept them)."""
    frames = sock.recv_multipart()
    try:
        request = msgpack.unpackb(frames[-1])
        if hold is not None and hold(request, frames[:-1]):
            return
        answer = handler(request)
    except Exception as err:  # a bad request must never stop the daemon
        log.warning("refused request: %s", err)
        answer = msgpack.packb({"error": "bad_request", "message": str(err)})
    if answer is None:
        return
    reply(sock, frames[:-1], answer)


def reply(sock: zmq.SyncSocket, envelope: list[bytes], answer: bytes) -> None:
    """Send ``answer`` to the client ``envelope`` names (nothing if it has gone)."""
    with contextlib.suppress(zmq.Again):  # the client has gone; its REQ socket times out
        sock.send_multipart([*envelope, answer], flags=zmq.NOBLOCK)
