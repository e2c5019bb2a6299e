"""The OpenAPI 3.1 document served at ``GET /openapi.json``.

It is built from the same constants the validation uses (name pattern, batch and body limits), so
the two cannot drift apart, and once per app: an operation lists 401 and its bearer scheme only
when that app was given the token for it.
"""

from __future__ import annotations

import json
from importlib import metadata
from typing import Any

import falcon

from servertrack.common.sample import FQDN_RE

FQDN_PATTERN = f"^{FQDN_RE.pattern}$"
METRICS_MEDIA_TYPE = "text/plain"
"""Prometheus text exposition; the served Content-Type adds ``version`` and ``charset``."""
Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> Schema:
    return _json(_ref("Error"), description)


PERCENT: Schema = {
    "type": ["number", "null"],
    "minimum": 0,
    "maximum": 100,
    "description": "Percent, 0 to 100 inclusive; null or absent means not measured.",
}
TS: Schema = {
    "type": "number",
    "description": "Epoch seconds (UTC). Default: the API's clock. At most 60 s ahead of the "
    "API's clock and inside the 24-hour window, else 422 `future` / `too_old`.",
}
NAME: Schema = {
    "type": "string",
    "minLength": 1,
    "maxLength": 253,
    "pattern": FQDN_PATTERN,
    "description": "1-253 letters, digits, '.', '-', '_', at least one letter or digit.",
}
AT_LEAST_ONE_METRIC: list[Schema] = [
    {"required": ["cpu"], "properties": {"cpu": {"type": "number"}}},
    {"required": ["ram"], "properties": {"ram": {"type": "number"}}},
]
NULLABLE_NUMBER: Schema = {"type": ["number", "null"]}
COUNT: Schema = {"type": "integer", "minimum": 0}
COUNTS_BY_KEY: Schema = {"type": "object", "additionalProperties": COUNT}

SCHEMAS: dict[str, Schema] = {
    "Error": {
        "type": "object",
        "required": ["title", "reason", "description"],
        "additionalProperties": False,
        "properties": {
            "title": {"type": "string", "description": "The HTTP status text."},
            "reason": {
                "type": "string",
                "description": "Short machine-readable cause: bad_json, not_an_object, "
                "not_a_list, unknown_field, bad_fqdn, too_large, too_many, bad_cpu, bad_ram, "
                "bad_ts, no_metrics, future, too_old, unknown_server, unauthorized, not_found, "
                "backend_unavailable, ...",
            },
            "description": {"type": "string"},
            "index": {**COUNT, "description": "The refused item of a batch."},
        },
    },
    "Load": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"cpu": PERCENT, "ram": PERCENT, "ts": TS},
        "anyOf": AT_LEAST_ONE_METRIC,
        "description": "cpu, ram or both (not neither).",
    },
    "BatchLoad": {
        "type": "object",
        "additionalProperties": False,
        "required": ["server"],
        "properties": {"server": NAME, "cpu": PERCENT, "ram": PERCENT, "ts": TS},
        "anyOf": AT_LEAST_ONE_METRIC,
    },
    "Recorded": {
        "type": "object",
        "required": ["accepted", "duplicates"],
        "additionalProperties": False,
        "properties": {"accepted": COUNT, "duplicates": COUNT},
    },
    "Bucket": {
        "type": "object",
        "required": [
            "start",
            "samples",
            *(f"{m}{s}" for m in ("cpu", "ram") for s in ("", "_sum", "_min", "_max", "_samples")),
        ],
        "additionalProperties": False,
        "properties": {
            "start": {"type": "string", "description": "Bucket start, ISO 8601 UTC with Z."},
            "samples": COUNT,
            **{f"{m}{s}": NULLABLE_NUMBER for m in ("cpu", "ram") for s in ("", "_min", "_max")},
            **{
                f"{m}_sum": {
                    **NULLABLE_NUMBER,
                    "description": f"Float64 sum of the raw {m} values (null with no samples), "
                    "so means over several buckets can be computed exactly.",
                }
                for m in ("cpu", "ram")
            },
            "cpu_samples": COUNT,
            "ram_samples": COUNT,
        },
        "description": "Means over raw samples (mean = sum / samples); a metric with no "
        "samples is null.",
    },
    "ServerLoads": {
        "type": "object",
        "required": ["server", "minutes", "hours", "last_seen", "health"],
        "additionalProperties": False,
        "properties": {
            "server": {"type": "string"},
            "minutes": {"type": "array", "maxItems": 60, "items": _ref("Bucket")},
            "hours": {"type": "array", "maxItems": 24, "items": _ref("Bucket")},
            "last_seen": {"type": "string"},
            "health": {
                "type": "object",
                "required": ["ip", "lost", "duplicates", "rejected", "skew_seconds"],
                "additionalProperties": False,
                "properties": {
                    "ip": {"type": "array", "items": {"type": "string"}},
                    "lost": COUNT,
                    "duplicates": COUNT,
                    "rejected": COUNT,
                    "skew_seconds": NULLABLE_NUMBER,
                },
            },
        },
    },
    "Servers": {
        "type": "object",
        "required": ["servers"],
        "additionalProperties": False,
        "properties": {
            "servers": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["server", "last_seen"],
                    "additionalProperties": False,
                    "properties": {"server": {"type": "string"}, "last_seen": {"type": "string"}},
                },
            }
        },
    },
    "Stats": {
        "type": "object",
        "required": ["receiver", "aggregator"],
        "properties": {
            "receiver": {
                "type": "object",
                "description": "Empty until the receiver's first batch reached the aggregator.",
                "properties": {
                    "received": {**COUNTS_BY_KEY, "description": "Samples by source."},
                    "accepted": {**COUNTS_BY_KEY, "description": "Samples by source."},
                    "rejected": {**COUNTS_BY_KEY, "description": "Samples by reason."},
                    "duplicates": COUNT,
                    "lost": COUNT,
                    "servers_seen": COUNT,
                    "batches": COUNT,
                    "forward_dropped": COUNT,
                    "rss_bytes": COUNT,
                },
            },
            "aggregator": {
                "type": "object",
                "properties": {
                    "applied": COUNT,
                    "expired": COUNT,
                    "batches": COUNT,
                    "servers_tracked": COUNT,
                    "flush_lag_seconds": {"type": "number"},
                    "flush_lag_p50_seconds": NULLABLE_NUMBER,
                    "flush_lag_p99_seconds": NULLABLE_NUMBER,
                    "flush_lag_max_seconds": NULLABLE_NUMBER,
                    "flush_lag_recent_seconds": {"type": "array", "items": {"type": "number"}},
                    "batch_size_last": COUNT,
                    "batch_size_max": COUNT,
                    "last_batch_age_seconds": NULLABLE_NUMBER,
                    "snapshot_age_seconds": NULLABLE_NUMBER,
                    "applied_upto_batch": {"type": "integer"},
                    "batches_lost": COUNT,
                    "rss_bytes": COUNT,
                },
            },
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "receiver", "aggregator"],
        "properties": {
            "status": {"enum": ["ok", "degraded"]},
            "receiver": _ref("Part"),
            "aggregator": _ref("Part"),
        },
    },
    "Part": {
        "type": "object",
        "required": ["ok"],
        "properties": {"ok": {"type": "boolean"}, "error": {"type": "string"}},
    },
}


def _operation(
    summary: str,
    responses: dict[str, Schema],
    scheme: str | None,
    *,
    body: Schema | None = None,
    parameters: list[Schema] | None = None,
    backend: bool = True,
) -> Schema:
    """One operation; adds the 401 (with its scheme) and the 503 that apply to it."""
    operation: Schema = {"summary": summary, "responses": dict(responses)}
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
        }
    if scheme is not None:
        operation["security"] = [{scheme: []}]
        operation["responses"]["401"] = {
            **_error("Missing or wrong bearer token."),
            "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
        }
    else:
        operation["security"] = []
    if backend:
        operation["responses"].setdefault(
            "503", _error("The receiver or aggregator did not answer in time.")
        )
    return operation


def _version() -> str:
    try:
        return metadata.version("servertrack")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a bare checkout
        return "0"


def build_document(
    *, max_batch: int, max_body: int, record_auth: bool = False, read_auth: bool = False
) -> Schema:
    """The OpenAPI document of an app with these limits and (or without) its two tokens."""
    batch = {
        "type": "array",
        "maxItems": max_batch,
        "items": _ref("BatchLoad"),
        "description": f"Up to {max_batch} loads, applied all or nothing; "
        f"the body is at most {max_body} bytes.",
    }
    record = "recordToken" if record_auth else None
    read = "readToken" if read_auth else None
    name_param = {"name": "name", "in": "path", "required": True, "schema": NAME}
    bad_body = _error(
        "Malformed JSON (also NaN, Infinity, duplicate keys), unknown field, bad server name "
        "or an item that is not an object."
    )
    too_large = _error(f"Body over {max_body} bytes or more than {max_batch} items.")
    invalid = _error(
        "Wrong type or out-of-range value, no metric, or ts `future` / `too_old`; "
        "nothing was applied."
    )
    recorded = _json(_ref("Recorded"), "Taken: how many were new and how many duplicates.")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ServerTrack",
            "version": _version(),
            "description": "Fleet CPU/RAM loads: record samples, read per-minute and per-hour "
            "rollups. Every error is JSON with `title`, `reason` and `description`.",
        },
        "paths": {
            "/servers/{name}/loads": {
                "post": _operation(
                    "Record one load of a server",
                    {"202": recorded, "400": bad_body, "413": too_large, "422": invalid},
                    record,
                    body=_ref("Load"),
                    parameters=[name_param],
                ),
                "get": _operation(
                    "A server's minute and hour buckets",
                    {
                        "200": _json(_ref("ServerLoads"), "The server's rollups."),
                        "400": _error("Bad server name."),
                        "404": _error("No data for this server in the last 24 hours."),
                    },
                    read,
                    parameters=[name_param],
                ),
            },
            "/loads": {
                "post": _operation(
                    "Record a batch of loads of any servers, all or nothing",
                    {"202": recorded, "400": bad_body, "413": too_large, "422": invalid},
                    record,
                    body=_ref("Batch"),
                )
            },
            "/servers": {
                "get": _operation(
                    "Servers tracked, with their last-seen time",
                    {"200": _json(_ref("Servers"), "Servers with data in the last 24 hours.")},
                    read,
                )
            },
            "/stats": {
                "get": _operation(
                    "Receiver and aggregator counters",
                    {"200": _json(_ref("Stats"), "Counters since the daemons started.")},
                    read,
                )
            },
            "/metrics": {
                "get": _operation(
                    "The counters in Prometheus text format",
                    {
                        "200": {
                            "description": "Prometheus text exposition.",
                            "content": {METRICS_MEDIA_TYPE: {"schema": {"type": "string"}}},
                        }
                    },
                    read,
                )
            },
            "/health": {
                "get": _operation(
                    "Whether the receiver and the aggregator answer (no token needed)",
                    {
                        "200": _json(_ref("Health"), "Both answer."),
                        "503": _json(
                            {"anyOf": [_ref("Health"), _ref("Error")]},
                            "One of them does not answer.",
                        ),
                    },
                    None,
                )
            },
            "/openapi.json": {
                "get": _operation(
                    "This document (no token needed)",
                    {"200": _json({"type": "object"}, "The OpenAPI document.")},
                    None,
                    backend=False,
                )
            },
        },
        "components": {
            "schemas": {**SCHEMAS, "Batch": batch},
            "securitySchemes": {
                "recordToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The token of `--token-file`, for POST requests.",
                },
                "readToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The token of `--read-token-file`, for GET requests.",
                },
            },
        },
    }


class OpenApiResource:
    """``GET /openapi.json``: the document, serialised once when the app is built."""

    def __init__(self, document: Schema) -> None:
        self.body = json.dumps(document, separators=(",", ":")).encode()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.data = self.body
        resp.content_type = falcon.MEDIA_JSON
