"""The Falcon app: ``create_app(backend, clock)`` builds it over injected dependencies."""

from __future__ import annotations

import json
import time
from typing import Any

import falcon

from servertrack.api.auth import TokenAuth
from servertrack.api.backend import Backend, Unavailable
from servertrack.api.errors import BadRequest
from servertrack.api.fleet import FleetResource, GridResource
from servertrack.api.metrics import MetricsResource, make_registry
from servertrack.api.openapi import OpenApiResource, build_document
from servertrack.api.ui import add_pages
from servertrack.common.buckets import Clock, time_verdict
from servertrack.common.sample import InvalidSample, Sample, make_sample, valid_fqdn

MAX_BATCH = 10_000
MAX_BODY = 4 * 1024 * 1024
"""A full 10,000-item batch is about 0.8 MB of JSON."""
SINGLE_FIELDS = frozenset({"cpu", "ram", "ts"})
BATCH_FIELDS = SINGLE_FIELDS | {"server"}
JSON = falcon.MEDIA_JSON


class BadInput(Exception):
    """A client mistake: rendered as a 4xx JSON body naming what is wrong."""

    def __init__(self, status: str, reason: str, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.index = index


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        raise ValueError("duplicate keys in a JSON object")
    return data


def read_json(req: falcon.Request) -> Any:
    """The request body as JSON; strict about size, NaN/Infinity and duplicate keys."""
    if req.content_length is not None and req.content_length > MAX_BODY:
        raise BadInput("413 Payload Too Large", "too_large", f"body exceeds {MAX_BODY} bytes")
    raw = req.bounded_stream.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise BadInput("413 Payload Too Large", "too_large", f"body exceeds {MAX_BODY} bytes")
    try:
        return json.loads(raw, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
    except (ValueError, UnicodeDecodeError) as err:
        raise BadInput("400 Bad Request", "bad_json", f"malformed JSON: {err}") from err


def check_name(name: str) -> str:
    if not valid_fqdn(name):
        raise BadInput(
            "400 Bad Request",
            "bad_fqdn",
            "server name must be 1-253 characters from letters, digits, '.', '-', '_'",
        )
    return name


class Intake:
    """Turns JSON items into validated samples, applying the time window at ``clock()``."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def sample(self, name: str, item: Any, fields: frozenset[str], index: int | None) -> Sample:
        if not isinstance(item, dict):
            raise BadInput(
                "400 Bad Request", "not_an_object", "each load must be a JSON object", index
            )
        unknown = sorted(set(item) - fields)
        if unknown:
            raise BadInput(
                "400 Bad Request", "unknown_field", f"unknown field(s): {', '.join(unknown)}", index
            )
        now = self.clock()
        ts = item.get("ts", now)
        try:
            sample = make_sample(name, ts, item.get("cpu"), item.get("ram"))
        except InvalidSample as err:
            raise BadInput("422 Unprocessable Entity", err.reason, err.message, index) from err
        verdict = time_verdict(sample.ts, now)
        if verdict == "future":
            raise BadInput(
                "422 Unprocessable Entity",
                verdict,
                "ts is more than 60 s ahead of the server clock",
                index,
            )
        if verdict == "too_old":
            raise BadInput(
                "422 Unprocessable Entity", verdict, "ts is older than the 24-hour window", index
            )
        return sample


def _record(backend: Backend, samples: list[Sample], resp: falcon.Response) -> None:
    reply = backend.record(samples)
    if "error" in reply:
        index = reply.get("index")
        raise BadInput(
            "422 Unprocessable Entity",
            reply["error"],
            reply.get("message", f"refused by the receiver: {reply['error']}"),
            index,
        )
    resp.status = falcon.HTTP_202
    resp.media = {"accepted": reply["accepted"], "duplicates": reply.get("duplicates", 0)}


class ServerLoads:
    def __init__(self, backend: Backend, intake: Intake) -> None:
        self.backend = backend
        self.intake = intake

    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        check_name(name)
        sample = self.intake.sample(name, read_json(req), SINGLE_FIELDS, None)
        _record(self.backend, [sample], resp)

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        check_name(name)
        reply = self.backend.query({"op": "view", "name": name})
        if reply.get("status") != 200:
            raise BadInput(
                "404 Not Found",
                "unknown_server",
                f"no data for server {name!r} in the last 24 hours",
            )
        resp.data = reply["body"]
        resp.content_type = JSON


class Loads:
    def __init__(self, backend: Backend, intake: Intake) -> None:
        self.backend = backend
        self.intake = intake

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        items = read_json(req)
        if not isinstance(items, list):
            raise BadInput("400 Bad Request", "not_a_list", "body must be a JSON array of loads")
        if len(items) > MAX_BATCH:
            raise BadInput(
                "413 Payload Too Large",
                "too_many",
                f"at most {MAX_BATCH} loads per request, got {len(items)}",
            )
        samples = []
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise BadInput(
                    "400 Bad Request", "not_an_object", "each load must be a JSON object", index
                )
            name = item.get("server")
            if not isinstance(name, str) or not valid_fqdn(name):
                raise BadInput(
                    "422 Unprocessable Entity",
                    "bad_fqdn",
                    "server must be 1-253 characters from letters, digits, '.', '-', '_'",
                    index,
                )
            samples.append(self.intake.sample(name, item, BATCH_FIELDS, index))
        _record(self.backend, samples, resp)


class Passthrough:
    """A read answered as JSON by the aggregator (``/servers``, ``/stats``)."""

    def __init__(self, backend: Backend, op: str) -> None:
        self.backend = backend
        self.op = op

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        reply = self.backend.query({"op": self.op})
        resp.data = reply["body"]
        resp.content_type = JSON


class Health:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        parts = self.backend.ping()
        healthy = all(part.get("ok") for part in parts.values())
        resp.status = falcon.HTTP_200 if healthy else falcon.HTTP_503
        resp.media = {"status": "ok" if healthy else "degraded", **parts}


def _bad_input(
    req: falcon.Request, resp: falcon.Response, err: BadInput | BadRequest, params: Any
) -> None:
    resp.status = err.status
    body: dict[str, Any] = {
        "title": err.status[4:],
        "reason": err.reason,
        "description": err.message,
    }
    if err.index is not None:
        body["index"] = err.index
    resp.media = body


def _unavailable(req: falcon.Request, resp: falcon.Response, err: Unavailable, params: Any) -> None:
    resp.status = falcon.HTTP_503
    resp.media = {
        "title": "Service Unavailable",
        "reason": "backend_unavailable",
        "description": str(err),
    }


def _unrouted_server_path(req: falcon.Request, resp: falcon.Response, **params: Any) -> None:
    """Paths under /servers/ that match no route: a name with ``/`` in it, or a wrong suffix."""
    if req.path.endswith("/loads"):
        raise BadInput("400 Bad Request", "bad_fqdn", "server names cannot contain '/'")
    raise falcon.HTTPNotFound(description=f"no such resource: {req.path}")


def _http_error(
    req: falcon.Request, resp: falcon.Response, err: falcon.HTTPError, params: Any
) -> None:
    """Falcon's own errors (unknown route, wrong method, ...) in the same JSON shape."""
    resp.status = err.status
    resp.media = {
        "title": err.title,
        "reason": err.title.lower().replace(" ", "_"),
        "description": err.description or f"{req.method} {req.path}: {err.title}",
    }
    if err.headers:
        resp.set_headers(err.headers)


def create_app(
    backend: Backend,
    clock: Clock = time.time,
    record_token: str | None = None,
    read_token: str | None = None,
) -> falcon.App:
    """The WSGI app over ``backend``; ``clock`` decides the default ts and the time window.

    ``record_token`` / ``read_token``, when given, are the bearer tokens POST and GET requests
    need (``/health`` and ``/openapi.json`` stay open).
    """
    app = falcon.App()
    if record_token or read_token:
        app.add_middleware(TokenAuth(record_token, read_token))
    intake = Intake(clock)
    app.add_route("/servers/{name}/loads", ServerLoads(backend, intake))
    app.add_route("/loads", Loads(backend, intake))
    app.add_route("/servers", Passthrough(backend, "servers"))
    app.add_route("/stats", Passthrough(backend, "stats"))
    app.add_route("/health", Health(backend))
    app.add_route("/metrics", MetricsResource(make_registry(backend)))
    app.add_route("/fleet", FleetResource(backend))
    app.add_route("/fleet/grid", GridResource(backend))
    add_pages(app)
    document = build_document(
        max_batch=MAX_BATCH,
        max_body=MAX_BODY,
        record_auth=bool(record_token),
        read_auth=bool(read_token),
    )
    app.add_route("/openapi.json", OpenApiResource(document))
    app.add_sink(_unrouted_server_path, r"^/servers/.+")
    app.add_error_handler(falcon.HTTPError, _http_error)
    app.add_error_handler(BadInput, _bad_input)
    app.add_error_handler(BadRequest, _bad_input)
    app.add_error_handler(Unavailable, _unavailable)
    return app
