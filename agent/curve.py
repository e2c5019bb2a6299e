"""CURVE for the agent's PUB socket: its key pair, the receiver's public key, and retries.

libzmq reconnects by itself after a lost connection, but gives an endpoint up for good once a
handshake fails with an authentication or protocol error: a ZAP refusal (the agent's key is not
authorized yet), a wrong server key, or a NULL/CURVE mismatch. The receiver re-reads its
authorized keys directory, so an agent refused now may be admitted a minute later without a
restart; :class:`HandshakeRetry` watches the socket's monitor events and, ``retry`` seconds after
such a failure, disconnects and connects the endpoint again.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

import zmq

from servertrack.common.curve_keys import load_pair, load_public

log = logging.getLogger(__name__)

AUTH_RETRY = 2.0
"""Seconds between two handshakes of an agent the receiver refused."""
GIVEN_UP: dict[int, str] = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "the receiver refused this agent's key",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "the handshake failed (does the receiver use CURVE?)",
}
"""Monitor events after which libzmq does not reconnect by itself."""
NO_DETAIL = "the handshake failed (is --server-key the receiver's public key?)"
"""A receiver that cannot open the agent's hello just hangs up; libzmq reconnects by itself."""


def check_flags(secret: str | None, server_key: str | None) -> bool:
    """True when CURVE is asked for; ValueError when only one of the two flags is set."""
    if (secret is None) != (server_key is None):
        raise ValueError(
            "--curve-secret and --server-key go together: give both to use CURVE, or neither"
        )
    return secret is not None


def load_keys(secret: str, server_key: str) -> tuple[bytes, bytes, bytes]:
    """``(public, secret, server public)``: the agent's pair from its secret key file and the
    receiver's public key from ``server_key``; ``KeyFileError`` (a ValueError) when unusable."""
    public, secret_key = load_pair(secret)
    return public, secret_key, load_public(server_key)


def apply_keys(sock: zmq.SyncSocket, secret: str, server_key: str) -> None:
    """Make ``sock`` a CURVE client of the receiver whose public key is in ``server_key``."""
    public, secret_key, server_public = load_keys(secret, server_key)
    sock.curve_secretkey = secret_key
    sock.curve_publickey = public
    sock.curve_serverkey = server_public


class HandshakeRetry:
    """Reconnects ``sock`` to ``endpoint`` ``retry`` seconds after a handshake libzmq gave up on.

    Call :meth:`poll` now and then (the agent does on every wake-up) and :meth:`close` before
    closing the socket.
    """

    def __init__(
        self,
        sock: zmq.SyncSocket,
        endpoint: str,
        retry: float = AUTH_RETRY,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sock = sock
        self.endpoint = endpoint
        self.retry = retry
        self.monotonic = monotonic
        self.monitor = sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
            | zmq.EVENT_HANDSHAKE_FAILED_AUTH
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
        )
        self.retry_at: float | None = None
        self.failures = 0

    def poll(self) -> None:
        """Read the waiting monitor events; reconnect if a refused handshake is due a retry."""
        # PERF: imported here, only with CURVE on: it pulls in asyncio (~6 MB of an agent's RSS).
        from zmq.utils.monitor import recv_monitor_message

        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor, zmq.NOBLOCK)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                if self.failures:
                    log.info(
                        "handshake with %s succeeded after %d refused attempts",
                        self.endpoint,
                        self.failures,
                    )
                self.failures = 0
                self.retry_at = None
            elif event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                self._failed(NO_DETAIL)
            elif event in GIVEN_UP:
                self._failed(f"{GIVEN_UP[event]}; retrying every {self.retry:.3g} s")
                self.retry_at = self.monotonic() + self.retry
        if self.retry_at is not None and self.monotonic() >= self.retry_at:
            self.retry_at = None
            with contextlib.suppress(zmq.ZMQError):  # libzmq may have dropped it already
                self.sock.disconnect(self.endpoint)
            self.sock.connect(self.endpoint)

    def _failed(self, why: str) -> None:
        """Log the first failure of a series as a warning, the repeats only at debug level."""
        self.failures += 1
        log.log(logging.WARNING if self.failures == 1 else logging.DEBUG, "%s", why)

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(linger=0)
