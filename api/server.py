"""Waitress as ServerTrack runs it: no client can starve the others.

Waitress reads requests on one asyncore thread and hands complete ones to a pool of worker
threads, so a slow client costs a socket, not a thread. What it does not bound by itself is how
long a client may take to send a request (a slow-loris client trickling one header byte every
few seconds looks busy forever) and who gets a connection once ``connection_limit`` is reached
(it stops accepting, so a few hundred idle keep-alive clients lock everyone else out). Here:

- a request must arrive whole within ``request_timeout`` seconds of its first byte;
- a connection with no request for ``idle_timeout`` seconds is closed;
- at ``connection_limit`` the connection idle (or trickling) the longest is closed at once to let
  the new client in; a connection whose request is being served is never cut;
- every request is stamped with its arrival time (``servertrack.arrived`` in the WSGI environ),
  so the app can drop requests that waited too long, and ``waitress.client_disconnected`` is on
  (``channel_request_lookahead``), so it can drop those whose client has gone;
- the answers waitress gives itself (a body over ``MAX_REQUEST_BODY``, chunked or announced, a
  request it cannot parse) are the app's JSON error shape, not waitress' plain text.

Each closed connection is counted by reason in the API's ``connections_closed``.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, cast

from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask, WSGITask
from waitress.utilities import Error

from servertrack.api.app import MAX_BODY
from servertrack.api.errors import status_reason, status_text
from servertrack.api.headers import NOSNIFF
from servertrack.api.stats import ApiStats
from servertrack.common.limits import out_of_files, raise_open_files_limit

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 10.0
IDLE_TIMEOUT = 15.0
CONNECTION_LIMIT = 1000
ACCEPT_PAUSE = 0.5
"""Seconds the listening socket rests after an accept failed for want of file descriptors."""
MAX_REQUEST_BODY = 5 * 1024 * 1024
"""Waitress answers 413 itself beyond this (the app's own limit is 4 MiB)."""


class StampedTask(WSGITask):
    """Puts the request's arrival time into the WSGI environ."""

    def get_environment(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environment()
        environ["servertrack.arrived"] = getattr(self.request, "arrived", None)
        return environ


class JsonErrorTask(ErrorTask):
    """Waitress' own refusals in the app's JSON error shape (``title``, ``reason``,
    ``description``), counted like the app's own when they refuse a record."""

    def execute(self) -> None:
        # types-waitress types the task's request as an Error; it is the request's parser, and
        # waitress makes an error task only for a parser whose error is set.
        error = cast(Error, cast(HTTPRequestParser, self.request).error)
        code = int(error.code)
        if code == 413:
            reason, description = "too_large", f"body exceeds {MAX_BODY} bytes"
        else:
            reason, description = status_reason(code), str(error.body)
        body = {"title": status_text(code), "reason": reason, "description": description}
        if 400 <= code < 500 and getattr(self.request, "command", None) == "POST":
            cast("GuardedServer", self.channel.server).stats.rejected(reason)
        payload = json.dumps(body).encode()
        self.status = f"{code} {status_text(code)}"
        self.response_headers = [
            *self.response_headers,
            ("Content-Type", "application/json"),
            NOSNIFF,
        ]
        self.set_close_on_finish()
        self.content_length = len(payload)
        self.write(payload)


class GuardedChannel(HTTPChannel):
    """Notes when the request being read began, and when each complete request arrived."""

    task_class = StampedTask
    error_task_class = JsonErrorTask
    request_started: float | None = None

    def received(self, data: bytes) -> bool:
        if self.request is None and data and self.request_started is None:
            self.request_started = time.monotonic()
        handled: bool = super().received(data)
        now = time.time()
        for request in list(self.requests):
            if getattr(request, "arrived", None) is None:
                request.arrived = now  # type: ignore[attr-defined]  # our stamp on waitress' parser
        if self.request is None:
            self.request_started = None
        return handled

    def waiting(self) -> bool:
        """Nothing of this connection is being served or sent: closing it cuts no answer."""
        return not self.requests and not self.total_outbufs_len and not self.will_close


class GuardedServer(TcpWSGIServer):
    """Waitress' TCP server with the limits described in the module docstring."""

    channel_class = GuardedChannel
    effective_port: int
    """Set by waitress once bound (types-waitress leaves it out)."""
    next_channel_cleanup: float  # type: ignore[assignment]  # a float in waitress; the stub: int

    def __init__(
        self,
        application: Any,
        adj: Adjustments,
        stats: ApiStats,
        request_timeout: float = REQUEST_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.stats = stats
        self.request_timeout = request_timeout
        self.idle_timeout = idle_timeout
        self.accept_paused_until = 0.0
        """Monotonic time before which the listening socket is not polled (out of files)."""
        super().__init__(application, adj=adj)

    @property
    def channels(self) -> dict[int, GuardedChannel]:
        """The open connections by file descriptor (waitress' ``active_channels``, which
        types-waitress types as one channel)."""
        return cast("dict[int, GuardedChannel]", self.active_channels)

    def maintenance(self, now: float) -> None:
        """Run every ``cleanup_interval`` seconds from the asyncore thread."""
        monotonic = time.monotonic()
        for channel in list(self.channels.values()):
            if not channel.waiting():
                continue
            if channel.request_started is not None:
                if monotonic - channel.request_started > self.request_timeout:
                    self._close(channel, "slow_request")
            elif now - channel.last_activity > self.idle_timeout:
                self._close(channel, "idle")

    def readable(self) -> bool:
        """Always accept (after waitress' periodic maintenance): :meth:`handle_accept` makes room.

        Nothing is closed here: this runs while asyncore builds its poll list, and closing a
        socket then would let a new connection take the old descriptor and its pending events.
        """
        now = time.time()
        if now >= self.next_channel_cleanup:
            self.next_channel_cleanup = now + self.adj.cleanup_interval
            self.maintenance(now)
        return bool(self.accepting) and time.monotonic() >= self.accept_paused_until

    def accept(self) -> tuple[Any, Any] | None:
        """Waitress' accept; out of file descriptors, the newcomer waits in the backlog and the
        listening socket is left alone for ``ACCEPT_PAUSE`` (else it wakes the loop at once, again
        and again, each time with a traceback in the log), and the shortage is counted."""
        try:
            accepted: tuple[Any, Any] | None = super().accept()
        except OSError as err:
            if not out_of_files(err):
                raise
            self.stats.files.note("accepting a connection", err)
            self.accept_paused_until = time.monotonic() + ACCEPT_PAUSE
            return None
        return accepted

    def handle_accept(self) -> None:
        super().handle_accept()
        if len(self.channels) > self.adj.connection_limit:
            self._evict_one()

    def _evict_one(self) -> None:
        """Close the connection that has waited (idle or trickling) the longest."""
        candidates = [c for c in self.channels.values() if c.waiting()]
        if candidates:
            oldest = min(candidates, key=lambda channel: channel.last_activity)
            self._close(oldest, "evicted", at_once=True)

    def stop(self, timeout: float) -> None:
        """Stop accepting, let the requests in flight finish (``timeout`` seconds at most), then
        close. Closing first would close the trigger that a finishing request wakes the loop
        with, and waitress would log a traceback for each such request."""
        self.accepting = False
        self.task_dispatcher.shutdown(timeout=timeout)  # type: ignore[arg-type]  # takes a float
        self.close()

    def _close(self, channel: GuardedChannel, reason: str, at_once: bool = False) -> None:
        self.stats.connection_closed(reason)
        if at_once:
            channel.handle_close()
        else:
            channel.will_close = True


def make_waitress(
    app: Any,
    host: str,
    port: int,
    threads: int,
    stats: ApiStats,
    idle_timeout: float = IDLE_TIMEOUT,
    request_timeout: float = REQUEST_TIMEOUT,
    connection_limit: int = CONNECTION_LIMIT,
) -> GuardedServer:
    """The API's waitress server (bound, not yet running: call ``run()``)."""
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # one warning per queued request
    files = raise_open_files_limit(connection_limit + threads + 256)
    limit = max(16, min(connection_limit, files - threads - 128))
    if limit < connection_limit:
        log.warning("open files limited to %d: connection limit lowered to %d", files, limit)
    adj = Adjustments(
        host=host,
        port=port,
        threads=threads,
        channel_timeout=max(1, int(idle_timeout)),
        cleanup_interval=1,
        connection_limit=limit,
        asyncore_use_poll=True,
        channel_request_lookahead=1,
        max_request_body_size=MAX_REQUEST_BODY,
        ident="servertrack",
    )
    return GuardedServer(app, adj, stats, request_timeout, idle_timeout)
