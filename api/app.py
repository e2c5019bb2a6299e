"""The Falcon app: ``create_app(reads, admission, clock)`` builds it over injected dependencies."""

from __future__ import annotations

import json
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
    error_body,
    serialize_error,
    status_reason,
)
from servertrack.api.fleet_resources import FleetResource, GridResource
from servertrack.api.headers import SecurityHeaders
from servertrack.api.metrics import MetricsResource, make_registry
from servertrack.api.openapi import OpenApiResource, build_document
from servertrack.api.prometheus import READ_PATH, add_prometheus_routes
from servertrack.api.read_path import ReadPath
from servertrack.api.stats import ApiStats
from servertrack.api.ui import add_pages
from servertrack.common.buckets import HOUR_WINDOW, MAX_FUTURE_SECONDS, Clock, time_verdict
from servertrack.common.headers import AS_OF_HEADER
from servertrack.common.limits import out_of_files
from servertrack.common.sample import InvalidSample, Sample, make_sample, valid_fqdn
from servertrack.promapi.remote_read import DEFAULT_LIMITS, Limits
from servertrack.readmodel.errors import CorruptKey

log = logging.getLogger(__name__)

MAX_BATCH = 10_000
MAX_BODY = 4 * 1024 * 1024
"""A full 10,000-item batch is about 0.8 MB of JSON."""
DRAIN_LIMIT = 5 * 1024 * 1024
"""A body announced over ``MAX_BODY`` but up to this is read (and dropped) before the 413."""
SERVERS_PAGE = 1_000
SERVERS_PAGE_MAX = 10_000
REQUEST_DEADLINE = 5.0
"""Seconds after its arrival by which a request must have been started, else it is dropped."""
SINGLE_FIELDS = frozenset({"cpu", "ram", "ts"})
BATCH_FIELDS = SINGLE_FIELDS | {"server"}
JSON = falcon.MEDIA_JSON
NAME_RULE = "1-253 characters from letters, digits, '.', '-', '_'"
WINDOW_MESSAGES = {
    "future": f"ts is more than {MAX_FUTURE_SECONDS:g} s ahead of the server clock",
    "too_old": f"ts is older than the {HOUR_WINDOW}-hour window",
}


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        raise ValueError("duplicate keys in a JSON object")
    return data


class StrictJSONHandler(falcon.media.JSONHandler):
    """Falcon's JSON media handler with the strict options: at most ``max_body`` bytes, no NaN or
    Infinity, no duplicate keys, and a clear 400 (not a 500) for nesting too deep to decode."""

    def __init__(self, max_body: int = MAX_BODY) -> None:
        super().__init__(
            loads=lambda text: json.loads(
                text, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys
            )
        )
        self.max_body = max_body

    def deserialize(self, stream: Any, content_type: str | None, content_length: int | None) -> Any:
        if content_length is not None and content_length > self.max_body:
            if content_length <= DRAIN_LIMIT:
                # Read it before answering (waitress has it already): a server that reads
                # bodies lazily (granian) would otherwise close the connection under a client
                # still sending, which then sees a broken pipe instead of the 413.
                stream.read(content_length)
            raise PayloadTooLarge("too_large", f"body exceeds {self.max_body} bytes")
        raw = stream.read(self.max_body + 1)
        if len(raw) > self.max_body:
            raise PayloadTooLarge("too_large", f"body exceeds {self.max_body} bytes")
        if not raw:
            raise BadRequest("bad_json", "the body is empty; a JSON document is needed")
        try:
            return self._loads(raw.decode())
        except RecursionError:
            raise BadRequest("bad_json", "malformed JSON: nested too deeply") from None
        except (ValueError, UnicodeDecodeError) as err:
            raise BadRequest("bad_json", f"malformed JSON: {err}") from err


def check_name(name: str) -> str:
    if not valid_fqdn(name):
        raise BadRequest("bad_fqdn", f"server name must be {NAME_RULE}")
    return name


class Intake:
    """Turns JSON items into validated samples, applying the time window at ``clock()``."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def sample(self, name: str, item: Any, fields: frozenset[str], index: int | None) -> Sample:
        if not isinstance(item, dict):
            raise BadRequest("not_an_object", "each load must be a JSON object", index)
        unknown = sorted(set(item) - fields)
        if unknown:
            raise BadRequest("unknown_field", f"unknown field(s): {', '.join(unknown)}", index)
        now = self.clock()
        ts = item.get("ts", now)
        try:
            sample = make_sample(name, ts, item.get("cpu"), item.get("ram"))
        except InvalidSample as err:
            raise Unprocessable(err.reason, err.message, index) from err
        verdict = time_verdict(sample.ts, now)
        if verdict is not None:
            raise Unprocessable(verdict, WINDOW_MESSAGES[verdict], index)
        return sample


def _record(backend: Backend, samples: list[Sample], resp: falcon.Response) -> None:
    reply = backend.record(samples)
    if "error" in reply:
        raise Unprocessable(
            reply["error"],
            reply.get("message", f"refused by the receiver: {reply['error']}"),
            reply.get("index"),
        )
    resp.status = falcon.HTTP_202
    resp.media = {"accepted": reply["accepted"], "duplicates": reply.get("duplicates", 0)}


class ServerLoads:
    def __init__(self, reads: ReadPath, intake: Intake) -> None:
        self.reads = reads
        self.intake = intake

    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        check_name(name)
        sample = self.intake.sample(name, req.get_media(), SINGLE_FIELDS, None)
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


def _count_refusals(stats: ApiStats) -> Any:
    """The handler of every ``HTTPError``: a refused record is counted by its reason (as many
    samples as the batch had items) before the error is serialized."""

    def handle(req: falcon.Request, resp: falcon.Response, error: falcon.HTTPError, _: Any) -> None:
        if (
            req.method == "POST"
            and req.path != READ_PATH
            and 400 <= int(str(error.status)[:3]) < 500
        ):
            reason = getattr(error, "reason", None) or status_reason(error.status)
            stats.rejected(reason, max(1, getattr(req.context, "sample_count", 1)))
        resp.status = error.status
        if error.headers:
            resp.set_headers(error.headers)
        serialize_error(req, resp, error)

    return handle


def _unavailable(stats: ApiStats) -> Any:
    """The handler of :class:`Unavailable`: 503 ``backend_unavailable``, or ``out_of_files``
    (counted) when this process could not open the socket the trip needed."""

    def handle(req: falcon.Request, resp: falcon.Response, err: Unavailable, _: Any) -> None:
        if out_of_files(err):
            _out_of_files_answer(stats, req, resp, err)
            return
        error = ServiceUnavailable("backend_unavailable", str(err))
        resp.status = error.status
        resp.media = error_body(req, error)

    return handle


def _system_error(stats: ApiStats) -> Any:
    """The handler of ``OSError`` and ``zmq.ZMQError`` raised while serving a request: out of
    file descriptors is a 503 that the client may retry, counted in ``files_exhausted``; any
    other is what Falcon makes of an unexpected error (a 500, logged with its traceback)."""

    def handle(req: falcon.Request, resp: falcon.Response, err: Exception, _: Any) -> None:
        if not out_of_files(err):
            log.error("%s %s failed", req.method, req.path, exc_info=err)
            raise falcon.HTTPInternalServerError()
        _out_of_files_answer(stats, req, resp, err)

    return handle


def _out_of_files_answer(
    stats: ApiStats, req: falcon.Request, resp: falcon.Response, err: BaseException
) -> None:
    stats.files.note(f"serving {req.method} {req.path}", err)
    error = ServiceUnavailable(
        "out_of_files", "the API has reached its open-files limit; try again shortly"
    )
    resp.status = error.status
    resp.media = error_body(req, error)


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
    app.add_error_handler(Unavailable, _unavailable(stats))
    app.add_error_handler((OSError, zmq.ZMQError), _system_error(stats))
    return app


__all__ = ["MAX_BATCH", "MAX_BODY", "ApiError", "create_app"]
