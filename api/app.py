"""The Falcon app: ``create_app(reads, admission, clock)`` builds it over injected dependencies."""

from __future__ import annotations

import logging
import time
from typing import Any

import falcon
import falcon.media
import zmq

from servertrack.api.admission import Admission, AdmissionGuard
from servertrack.api.alerts import AlertsResource
from servertrack.api.backend import Backend, Unavailable
from servertrack.api.errors import (
    ApiError,
    BadRequest,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    Unprocessable,
    serialize_error,
    status_reason,
)
from servertrack.api.fleet_resources import FleetResource, GridResource
from servertrack.api.headers import SecurityHeaders
from servertrack.api.intake import (
    BATCH_FIELDS,
    DRAIN_LIMIT,
    MAX_BATCH,
    MAX_BODY,
    NAME_RULE,
    Intake,
    accepted_json,
    check_name,
    decode_json,
    read_body,
    strict_loads,
)
from servertrack.api.metrics import MetricsResource, make_registry
from servertrack.api.openapi import OpenApiResource, build_document
from servertrack.api.prometheus import READ_PATH, add_prometheus_routes
from servertrack.api.read_path import ReadPath
from servertrack.api.stats import ApiStats
from servertrack.api.ui import add_pages
from servertrack.common.buckets import Clock
from servertrack.common.headers import AS_OF_HEADER
from servertrack.common.limits import out_of_files
from servertrack.common.sample import Sample, valid_fqdn
from servertrack.promapi.remote_read import DEFAULT_LIMITS, Limits
from servertrack.readmodel.errors import CorruptKey

log = logging.getLogger(__name__)

SERVERS_PAGE = 1_000
SERVERS_PAGE_MAX = 10_000
REQUEST_DEADLINE = 5.0
"""Seconds after its arrival by which a request must have been started, else it is dropped."""
JSON = falcon.MEDIA_JSON


class StrictJSONHandler(falcon.media.JSONHandler):
    """Falcon's JSON media handler over the one strict decoding of :mod:`servertrack.api.intake`
    (at most ``max_body`` bytes, no NaN or Infinity, no duplicate keys, a 400 for nesting too
    deep to decode)."""

    def __init__(self, max_body: int = MAX_BODY) -> None:
        super().__init__(loads=strict_loads)
        self.max_body = max_body

    def deserialize(self, stream: Any, content_type: str | None, content_length: int | None) -> Any:
        return decode_json(read_body(stream, content_length, self.max_body))


def _record(backend: Backend, samples: list[Sample], resp: falcon.Response) -> None:
    body = accepted_json(backend.record(samples))
    resp.status = falcon.HTTP_202
    resp.data = body
    resp.content_type = JSON


class ServerLoads:
    def __init__(self, reads: ReadPath, intake: Intake) -> None:
        self.reads = reads
        self.intake = intake

    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        sample = self.intake.single(check_name(name), req.get_media())
        _record(self.reads.backend, [sample], resp)

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        check_name(name)
        answer = self.reads.view(name, req.context.deadline)
        if isinstance(answer, CorruptKey):  # the store holds this server's data unreadably
            raise ApiError(
                falcon.HTTP_502,
                "corrupt_key",
                f"this server's data in the store cannot be read: {answer}",
            )
        if answer is None:
            raise NotFound("unknown_server", f"no data for server {name!r} in the last 24 hours")
        resp.data = answer.body
        resp.content_type = JSON
        resp.set_header(AS_OF_HEADER, answer.as_of)


class Loads:
    def __init__(self, backend: Backend, intake: Intake) -> None:
        self.backend = backend
        self.intake = intake

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        items = req.get_media()
        if not isinstance(items, list):
            raise BadRequest("not_a_list", "body must be a JSON array of loads")
        req.context.sample_count = len(items)
        if len(items) > MAX_BATCH:
            raise PayloadTooLarge(
                "too_many", f"at most {MAX_BATCH} loads per request, got {len(items)}"
            )
        samples = []
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise BadRequest("not_an_object", "each load must be a JSON object", index)
            name = item.get("server")
            if not isinstance(name, str) or not valid_fqdn(name):
                raise Unprocessable("bad_fqdn", f"server must be {NAME_RULE}", index)
            samples.append(self.intake.sample(name, item, BATCH_FIELDS, index))
        _record(self.backend, samples, resp)


def _known_params(req: falcon.Request, known: set[str]) -> None:
    unknown = sorted(set(req.params) - known)
    if unknown:
        raise BadRequest("unknown_parameter", f"unknown query parameter(s): {unknown}")


def _int_param(req: falcon.Request, name: str, default: int, low: int, high: int) -> int:
    raw = req.get_param(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise BadRequest(f"bad_{name}", f"{name} must be an integer from {low} to {high}")
    return value


class Servers:
    """``GET /servers``: tracked servers by name, a page at a time."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _known_params(req, {"limit", "cursor"})
        limit = _int_param(req, "limit", SERVERS_PAGE, 1, SERVERS_PAGE_MAX)
        cursor = req.get_param("cursor")
        if cursor is not None and not valid_fqdn(cursor):
            raise BadRequest("bad_cursor", "cursor must be a next_cursor this API gave")
        resp.data = self.backend.servers(cursor, limit, req.context.deadline)
        resp.content_type = JSON


class Stats:
    """``GET /stats``: the receiver's and aggregator's counters, plus this API process's own."""

    def __init__(self, backend: Backend, stats: ApiStats) -> None:
        self.backend = backend
        self.stats = stats

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {**self.backend.stats(req.context.deadline), "api": self.stats.snapshot()}


class Health:
    """``GET /health``: 200 ``ok``, 200 ``degraded`` (serving, but something needs attention: the
    ``problems`` say what), 503 ``unavailable`` (the receiver or the aggregator does not answer)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        parts = self.backend.ping()
        up = all(part.get("ok") for part in parts.values())
        problems = [problem for part in parts.values() for problem in part.get("problems", ())]
        status = "ok" if up and not problems else "degraded" if up else "unavailable"
        resp.status = falcon.HTTP_200 if up else falcon.HTTP_503
        resp.media = {"status": status, **parts}


def count_refusal(
    stats: ApiStats, method: str, path: str, error: falcon.HTTPError, samples: int = 1
) -> None:
    """A refused record is counted by its reason (as many samples as the batch had items); a
    refused remote read is not a record (its refusals are counted apart)."""
    if method == "POST" and path != READ_PATH and 400 <= int(str(error.status)[:3]) < 500:
        reason = getattr(error, "reason", None) or status_reason(error.status)
        stats.rejected(reason, max(1, samples))


def failure(stats: ApiStats, method: str, path: str, err: Exception) -> falcon.HTTPError:
    """The error a request gets when serving it raised ``err`` (not an ``HTTPError``): out of
    file descriptors is a 503 ``out_of_files`` that the client may retry, counted in
    ``files_exhausted``; :class:`Unavailable` is a 503 ``backend_unavailable``; anything else a
    500, logged with its traceback."""
    if out_of_files(err):
        stats.files.note(f"serving {method} {path}", err)
        return ServiceUnavailable(
            "out_of_files", "the API has reached its open-files limit; try again shortly"
        )
    if isinstance(err, Unavailable):
        return ServiceUnavailable("backend_unavailable", str(err))
    log.error("%s %s failed", method, path, exc_info=err)
    return falcon.HTTPInternalServerError()


def _count_refusals(stats: ApiStats) -> Any:
    """The handler of every ``HTTPError``: a refused record is counted (:func:`count_refusal`)
    before the error is serialized."""

    def handle(req: falcon.Request, resp: falcon.Response, error: falcon.HTTPError, _: Any) -> None:
        count_refusal(stats, req.method, req.path, error, getattr(req.context, "sample_count", 1))
        resp.status = error.status
        if error.headers:
            resp.set_headers(error.headers)
        serialize_error(req, resp, error)

    return handle


def _failed(stats: ApiStats) -> Any:
    """The handler of :class:`Unavailable`, ``OSError`` and ``zmq.ZMQError`` raised while serving
    a request: the error :func:`failure` makes of it."""

    def handle(req: falcon.Request, resp: falcon.Response, err: Exception, _: Any) -> None:
        error = failure(stats, req.method, req.path, err)
        resp.status = error.status
        serialize_error(req, resp, error)

    return handle


def _unrouted_server_path(req: falcon.Request, resp: falcon.Response, **params: Any) -> None:
    """Paths under /servers/ that match no route: a name with ``/`` in it, or a wrong suffix."""
    if req.path.endswith("/loads"):
        raise BadRequest("bad_fqdn", "server names cannot contain '/'")
    raise NotFound("not_found", f"no such resource: {req.path}")


def create_app(
    reads: ReadPath,
    admission: Admission,
    clock: Clock = time.time,
    stats: ApiStats | None = None,
    read_limits: Limits = DEFAULT_LIMITS,
) -> falcon.App[falcon.Request, falcon.Response]:
    """The WSGI app over the read path (its backend takes the rest); ``clock`` decides the
    default ts and the time window. ``admission`` says which requests may be worked on (tokens,
    deadline, a client gone); ``stats`` receives the API's own counts; ``read_limits`` caps a
    Prometheus remote read."""
    stats = stats or ApiStats()
    backend = reads.backend
    app = falcon.App(middleware=(SecurityHeaders(), AdmissionGuard(admission, stats)))
    handler = StrictJSONHandler()
    app.req_options.media_handlers = falcon.media.Handlers({JSON: handler, "*/*": handler})
    app.req_options.default_media_type = JSON
    intake = Intake(clock)
    resources: dict[str, Any] = {
        "/servers/{name}/loads": ServerLoads(reads, intake),
        "/loads": Loads(backend, intake),
        "/servers": Servers(backend),
        "/stats": Stats(backend, stats),
        "/health": Health(backend),
        "/metrics": MetricsResource(make_registry(backend, stats)),
        "/fleet": FleetResource(backend),
        "/fleet/grid": GridResource(backend),
        "/alerts": AlertsResource(backend),
        "/openapi.json": OpenApiResource(
            build_document(
                max_batch=MAX_BATCH,
                max_body=MAX_BODY,
                record_auth=admission.record_token is not None,
                read_auth=admission.read_token is not None,
            )
        ),
    }
    for path, resource in resources.items():
        if hasattr(resource, "on_get") and not hasattr(resource, "on_head"):
            resource.on_head = resource.on_get
        app.add_route(path, resource)
    add_prometheus_routes(app, backend, clock, stats, read_limits)
    add_pages(app)
    app.add_sink(_unrouted_server_path, r"^/servers/.+")
    app.set_error_serializer(serialize_error)
    app.add_error_handler(falcon.HTTPError, _count_refusals(stats))
    app.add_error_handler((Unavailable, OSError, zmq.ZMQError), _failed(stats))
    return app


__all__ = ["DRAIN_LIMIT", "MAX_BATCH", "MAX_BODY", "ApiError", "create_app"]
