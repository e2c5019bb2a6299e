"""Prometheus' two ways in: ``GET /metrics/servers`` (every server's last complete minute, to
scrape) and ``POST /api/v1/read`` (the remote-read protocol over the last hour by minute and the
last day by hour), over the backend's typed values.

The protocol itself is :mod:`servertrack.promapi`; here are only the HTTP parts: the read token
applies to both (:mod:`servertrack.api.admission` counts ``POST /api/v1/read`` as a read), a
client's mistake is a 400 with ServerTrack's JSON error body and is counted by its reason
(``PROMETHEUS_REJECT_REASONS``, the ``prometheus_rejected`` counter of ``/stats`` and
``/metrics``), and the exposition is streamed as the writer makes it, never built whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import falcon

from servertrack.api.backend import Backend
from servertrack.api.stats import ApiStats
from servertrack.common.buckets import Clock
from servertrack.promapi import exposition, remote_read
from servertrack.promapi.columns import series_history, server_minutes
from servertrack.promapi.errors import BadPromRequest
from servertrack.promapi.remote_read import Limits, SeriesHistory

SCRAPE_PATH = "/metrics/servers"
READ_PATH = "/api/v1/read"
DRAIN_LIMIT = 5 * 1024 * 1024
"""A remote-read body announced over the cap but up to this is read (and dropped) before the
400, so a server that reads bodies lazily (granian) does not close under a client still
sending it."""


class ServersExposition:
    """``GET /metrics/servers``: the text format or OpenMetrics (``Accept``), gzip when
    ``Accept-Encoding`` takes it, ``match[]`` and ``server=`` choosing the series."""

    def __init__(self, backend: Backend, clock: Clock) -> None:
        self.backend = backend
        self.clock = clock

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        scrape = exposition.parse_scrape_params(req.params)
        fmt = exposition.negotiate(req.get_header("Accept"))
        last = self.backend.last_minute(req.context.deadline)
        chunks = exposition.exposition(server_minutes(last, self.clock()), scrape, fmt)
        if exposition.accepts_gzip(req.get_header("Accept-Encoding")):
            chunks = exposition.gzipped(chunks)
            resp.set_header("Content-Encoding", "gzip")
        resp.content_type = fmt.content_type
        resp.vary = ("Accept", "Accept-Encoding")
        resp.stream = chunks

    on_head = on_get
    """The same headers; the servers drop a HEAD's body."""


def _body(req: falcon.Request, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of the body (one more than allowed shows it is too large);
    a body announced larger is read and dropped first, up to :data:`DRAIN_LIMIT`."""
    announced = req.content_length
    if announced is not None and announced > limit:
        if announced <= DRAIN_LIMIT:
            req.bounded_stream.read(announced)
        raise BadPromRequest("too_large", f"the body is {announced} bytes, over {limit}")
    return bytes(req.bounded_stream.read(limit + 1))


class RemoteRead:
    """``POST /api/v1/read``: a snappy ``ReadRequest`` in, a snappy ``ReadResponse`` out (the
    sampled response type), over the servers the backend tracks."""

    def __init__(self, backend: Backend, limits: Limits) -> None:
        self.backend = backend
        self.limits = limits

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = _body(req, self.limits.max_body_bytes)
        request = remote_read.decode_request(
            body, req.get_header("Content-Encoding"), req.content_type, self.limits
        )
        deadline = req.context.deadline
        names = self.backend.last_minute(deadline).names

        def history(wanted: Sequence[str]) -> SeriesHistory:
            return series_history(self.backend.histories(wanted, deadline))

        answer = remote_read.answer(request, names, history, self.limits)
        resp.data = remote_read.encode_response(answer)
        resp.content_type = remote_read.CONTENT_TYPE
        for name, value in remote_read.RESPONSE_HEADERS.items():
            resp.set_header(name, value)


def refuse(stats: ApiStats) -> Any:
    """The handler of :class:`BadPromRequest`: a 400 with the JSON error body, counted."""

    def handle(req: falcon.Request, resp: falcon.Response, err: BadPromRequest, _: Any) -> None:
        stats.prometheus_rejected(err.reason)
        resp.status = falcon.HTTP_400
        resp.content_type = falcon.MEDIA_JSON
        resp.media = err.body()

    return handle


def add_prometheus_routes(
    app: falcon.App[falcon.Request, falcon.Response],
    backend: Backend,
    clock: Clock,
    stats: ApiStats,
    limits: Limits,
) -> None:
    """Both routes and their error handler."""
    scrape = ServersExposition(backend, clock)
    app.add_route(SCRAPE_PATH, scrape)
    app.add_route(READ_PATH, RemoteRead(backend, limits))
    app.add_error_handler(BadPromRequest, refuse(stats))
