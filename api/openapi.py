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

from servertrack.anomaly import STANDARD_THRESHOLD
from servertrack.api.ui import STATIC_FOLDERS, STATIC_PREFIX, load_assets
from servertrack.api.ui import static_names as served_names
from servertrack.common.counters import (
    COUNTERS,
    PROMETHEUS_REJECT_REASONS,
    REJECT_REASONS,
    STATS_ONLY,
)
from servertrack.common.fleet_query import (
    DEFAULT_LIMIT,
    DEFAULT_ORDER,
    DOWN_AFTER,
    HOTTEST,
    MAX_CURSOR_DIGITS,
    MAX_FILTER,
    MAX_LIMIT,
    MAX_NAMES_VERSION,
    SORT_COLUMNS,
    SPARKLINE_MINUTES,
    STALE_AFTER,
    STATUSES,
)
from servertrack.common.headers import AS_OF_HEADER
from servertrack.common.sample import FQDN_RE
from servertrack.promapi.exposition import MAX_SELECTORS
from servertrack.promapi.remote_read import CONTENT_TYPE as REMOTE_READ_MEDIA_TYPE
from servertrack.promapi.remote_read import DEFAULT_LIMITS

FQDN_PATTERN = f"^{FQDN_RE.pattern}$"
METRICS_MEDIA_TYPE = "text/plain"
"""Prometheus text exposition; the served Content-Type adds ``version`` and ``charset``."""
OPENMETRICS_MEDIA_TYPE = "application/openmetrics-text"
BINARY: Schema = {"type": "string", "format": "binary"}
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

OTHER_REASONS = (
    "unknown_server",
    "unauthorized",
    "backend_unavailable",
    "out_of_files",
    "abandoned",
    "bad_limit",
    "bad_cursor",
    "unknown_parameter",
    "bad_sort",
    "bad_order",
    "bad_q",
    "bad_names",
)


def _stat_schema(kind: str, labels: tuple[str, ...], help_text: str) -> Schema:
    number: Schema = COUNT if kind == "counter" else NULLABLE_NUMBER
    for label in reversed(labels):
        number = {"type": "object", "additionalProperties": number, "description": f"By {label}."}
    return {**number, "description": help_text}


def stats_schema() -> Schema:
    """``GET /stats``, derived from the counter declarations."""
    sections: dict[str, Schema] = {}
    for counter in COUNTERS:
        section = sections.setdefault(counter.section, {"type": "object", "properties": {}})
        section["properties"][counter.key] = _stat_schema(
            counter.kind, counter.labels, counter.help
        )
    for (section_name, key), (schema, help_text) in STATS_ONLY.items():
        sections[section_name]["properties"][key] = {**schema, "description": help_text}
    sections["receiver"]["description"] = "Empty until the receiver's first batch arrived."
    return {
        "type": "object",
        "required": list(sections),
        "properties": sections,
        "description": "Counters since each process started (see the README's counter list).",
    }


SCHEMAS: dict[str, Schema] = {
    "Error": {
        "type": "object",
        "required": ["title", "reason", "description"],
        "additionalProperties": False,
        "properties": {
            "title": {"type": "string", "description": "The HTTP status text."},
            "reason": {
                "type": "string",
                "description": "Short machine-readable cause: "
                + ", ".join([*REJECT_REASONS, *OTHER_REASONS])
                + ", or the status text in snake case for the framework's own errors "
                "(not_found, method_not_allowed, ...).",
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
            "minutes": {"type": "array", "maxItems": 60, "items": _ref("MinuteBucket")},
            "hours": {"type": "array", "maxItems": 24, "items": _ref("Bucket")},
            "last_seen": {"type": "string"},
            "health": {
                "type": "object",
                "required": [
                    "ip",
                    "lost",
                    "duplicates",
                    "rejected",
                    "seq_resets",
                    "skew_seconds",
                    "name_conflict",
                ],
                "additionalProperties": False,
                "properties": {
                    "ip": {"type": "array", "items": {"type": "string"}},
                    "lost": COUNT,
                    "duplicates": COUNT,
                    "rejected": COUNT,
                    "seq_resets": COUNT,
                    "skew_seconds": NULLABLE_NUMBER,
                    "name_conflict": {"type": "boolean"},
                },
            },
        },
    },
    "Servers": {
        "type": "object",
        "required": ["servers", "total", "next_cursor"],
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
            },
            "total": {**COUNT, "description": "Servers tracked in all."},
            "next_cursor": {
                "type": ["string", "null"],
                "description": "Pass as `cursor` for the next page; null on the last page.",
            },
        },
    },
    "Stats": stats_schema(),
    "Alerts": {
        "type": "object",
        "required": ["status", "data"],
        "additionalProperties": False,
        "description": "The shape of Prometheus' GET /api/v1/alerts.",
        "properties": {
            "status": {"const": "success"},
            "data": {
                "type": "object",
                "required": ["alerts"],
                "additionalProperties": False,
                "properties": {
                    "alerts": {"type": "array", "items": {"$ref": "#/components/schemas/Alert"}}
                },
            },
        },
    },
    "Alert": {
        "type": "object",
        "required": ["labels", "annotations", "state", "activeAt", "value"],
        "additionalProperties": False,
        "properties": {
            "labels": {
                "type": "object",
                "required": ["alertname", "server"],
                "additionalProperties": {"type": "string"},
                "description": "alertname (the rule's alert), server, and the rule's labels.",
            },
            "annotations": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "The rule's annotations, {{ server }} and {{ value }} replaced.",
            },
            "state": {
                "enum": ["pending", "firing"],
                "description": "pending: the condition holds, not yet for the rule's for.",
            },
            "activeAt": {
                "type": "string",
                "format": "date-time",
                "description": "When the condition began to hold (ISO 8601 UTC).",
            },
            "value": {
                "type": "string",
                "description": "The value that met the condition, as Prometheus writes it "
                "(9.64e+01): a minute mean, an anomaly score, or a silence in seconds.",
            },
            "keepFiringSince": {
                "type": "string",
                "format": "date-time",
                "description": "Since when a firing alert is only kept firing (keep_firing_for).",
            },
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "receiver", "aggregator"],
        "properties": {
            "status": {
                "enum": ["ok", "degraded", "unavailable"],
                "description": "ok; degraded: serving, but `problems` need attention; "
                "unavailable: the receiver or the aggregator does not answer (503).",
            },
            "receiver": _ref("Part"),
            "aggregator": _ref("Part"),
        },
    },
    "Part": {
        "type": "object",
        "required": ["ok"],
        "properties": {
            "ok": {"type": "boolean"},
            "error": {"type": "string"},
            "problems": {"type": "array", "items": {"type": "string"}},
        },
    },
}
ANOMALY: Schema = {
    "type": ["number", "null"],
    "minimum": 0,
    "maximum": 1,
    "description": "The anomaly score of this minute's mean, 0 to 1: how far the server has just "
    f"gone beyond what it did before; {STANDARD_THRESHOLD:.4f} or more is an anomaly (the "
    "threshold chosen for NAB's standard profile). null while the detector warms up (its first "
    "100 minutes with samples), before the minute is scored, or without a sample of the metric.",
}
SCHEMAS["MinuteBucket"] = {
    **SCHEMAS["Bucket"],
    "required": [*SCHEMAS["Bucket"]["required"], "cpu_anomaly", "ram_anomaly"],
    "properties": {
        **SCHEMAS["Bucket"]["properties"],
        "cpu_anomaly": ANOMALY,
        "ram_anomaly": ANOMALY,
    },
    "description": SCHEMAS["Bucket"]["description"] + " Minute buckets also carry the anomaly "
    "scores of their cpu and ram means (hour buckets carry none).",
}
LATEST_ANOMALY: Schema = {
    **ANOMALY,
    "description": "The server's newest anomaly score of this metric (of the newest minute "
    "scored: the last complete one once it is scored, a few seconds after it ends); null "
    "without one. Sort by it to see the most anomalous servers first.",
}
STATUS_TEXT = (
    f"`live`: last sample less than {STALE_AFTER:.0f} s ago; `stale`: {STALE_AFTER:.0f} s to "
    f"{DOWN_AFTER:.0f} s; `down`: {DOWN_AFTER:.0f} s or more (listed until the server has had "
    "no data for 24 hours). Ages are taken from the aggregator's clock."
)
CURRENT_TEXT = (
    "The mean of the server's newest minute bucket (of the last 60) holding this metric; "
    "null when none does."
)
SCHEMAS["FleetRow"] = {
    "type": "object",
    "required": [
        "server",
        "cpu",
        "ram",
        "last_seen",
        "age_seconds",
        "status",
        "cpu_anomaly",
        "ram_anomaly",
        "sparkline",
    ],
    "additionalProperties": False,
    "properties": {
        "server": {"type": "string"},
        "cpu": {**NULLABLE_NUMBER, "description": CURRENT_TEXT},
        "ram": {**NULLABLE_NUMBER, "description": CURRENT_TEXT},
        "last_seen": {"type": "string", "description": "Newest sample's ts, ISO 8601 UTC."},
        "age_seconds": {"type": "number", "minimum": 0},
        "status": {"enum": list(STATUSES), "description": STATUS_TEXT},
        "cpu_anomaly": LATEST_ANOMALY,
        "ram_anomaly": LATEST_ANOMALY,
        "sparkline": {
            "type": "array",
            "minItems": SPARKLINE_MINUTES,
            "maxItems": SPARKLINE_MINUTES,
            "items": NULLABLE_NUMBER,
            "description": "cpu mean of each of the last 60 minutes, oldest first (the first "
            "starts at `sparkline_start`), rounded to 0.1; null where a minute has no cpu sample.",
        },
    },
}
SCHEMAS["FleetPage"] = {
    "type": "object",
    "required": [
        "now",
        "summary",
        "sparkline_start",
        "sort",
        "order",
        "q",
        "limit",
        "total",
        "next_cursor",
        "rows",
    ],
    "additionalProperties": False,
    "properties": {
        "now": {"type": "string", "description": "The aggregator's clock when answering."},
        "summary": {
            "type": "object",
            "required": ["servers", "live", "stale", "down", "minute", "hottest"],
            "additionalProperties": False,
            "properties": {
                "servers": COUNT,
                "live": COUNT,
                "stale": COUNT,
                "down": COUNT,
                "minute": {
                    "type": "object",
                    "description": "The fleet's mean over the raw samples of every server in the "
                    "minute bucket holding now (sum of sums / sum of counts), or in the previous "
                    "minute while the current one has no sample yet (`current` says which).",
                    "required": [
                        "start",
                        "current",
                        "samples",
                        "cpu_samples",
                        "ram_samples",
                        "cpu",
                        "ram",
                    ],
                    "additionalProperties": False,
                    "properties": {
                        "start": {"type": "string"},
                        "current": {"type": "boolean"},
                        "samples": COUNT,
                        "cpu_samples": COUNT,
                        "ram_samples": COUNT,
                        "cpu": NULLABLE_NUMBER,
                        "ram": NULLABLE_NUMBER,
                    },
                },
                "hottest": {
                    "type": "array",
                    "maxItems": HOTTEST,
                    "description": f"The {HOTTEST} live servers with the highest current cpu.",
                    "items": {
                        "type": "object",
                        "required": ["server", "cpu"],
                        "additionalProperties": False,
                        "properties": {"server": {"type": "string"}, "cpu": {"type": "number"}},
                    },
                },
            },
        },
        "sparkline_start": {
            "type": "string",
            "description": "Start of the sparklines' first minute.",
        },
        "sort": {"enum": list(SORT_COLUMNS)},
        "order": {"enum": ["asc", "desc"]},
        "q": {"type": "string"},
        "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
        "total": {**COUNT, "description": "Servers matching the filter."},
        "next_cursor": {
            "type": ["string", "null"],
            "description": "Pass as `cursor` for the next page; null on the last page.",
        },
        "rows": {"type": "array", "maxItems": MAX_LIMIT, "items": _ref("FleetRow")},
    },
}
SCHEMAS["FleetGrid"] = {
    "type": "object",
    "required": ["now", "count", "names_version", "cpu", "status"],
    "additionalProperties": False,
    "description": "Every tracked server, in name order, compact: for `count` servers, `cpu` "
    "and `status` hold one entry each, and `servers` their names, sent only when the request's "
    "`names` is not the current `names_version` (keep the names and the version, and send it "
    "back: the names then travel only when a server comes or goes).",
    "properties": {
        "now": {"type": "string"},
        "count": COUNT,
        "names_version": {
            "type": "string",
            "pattern": f"^[0-9a-z-]{{1,{MAX_NAMES_VERSION}}}$",
            "description": "Changes whenever the list of names does; opaque.",
        },
        "servers": {"type": "array", "items": {"type": "string"}},
        "cpu": {
            "type": "string",
            "contentEncoding": "base64",
            "description": "Base64 of `count` little-endian uint16: each server's current cpu "
            "(see FleetRow.cpu) in tenths of a percent, 0 to 1000; 65535 when it has none.",
        },
        "status": {
            "type": "string",
            "pattern": "^[dsl]*$",
            "description": "One letter per server: d (down), s (stale), l (live). " + STATUS_TEXT,
        },
    },
}
HTML: Schema = {"text/html": {"schema": {"type": "string"}}}


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
    *,
    max_batch: int,
    max_body: int,
    record_auth: bool = False,
    read_auth: bool = False,
    servers_page: int = 1000,
    servers_max: int = 10_000,
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
    document: Schema = {
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
                        "200": {
                            **_json(_ref("ServerLoads"), "The server's rollups."),
                            "headers": {
                                AS_OF_HEADER: {
                                    "description": "When this answer was read from the store, "
                                    "ISO 8601 UTC: every sample applied by then is in it. An "
                                    "answer served from the read cache keeps its time.",
                                    "schema": {"type": "string"},
                                }
                            },
                        },
                        "400": _error("Bad server name."),
                        "404": _error("No data for this server in the last 24 hours."),
                        "502": _error(
                            "Redis store only: this server's keys in Redis are corrupt (a key "
                            "of the wrong type, a field of the wrong size), so its data cannot "
                            "be read; the description names the key (reason corrupt_key)."
                        ),
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
                    "Servers tracked, by name, a page at a time, with their last-seen time",
                    {
                        "200": _json(_ref("Servers"), "Servers with data in the last 24 hours."),
                        "400": _error("Bad limit or cursor, or an unknown parameter."),
                    },
                    read,
                    parameters=[
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": servers_max,
                                "default": servers_page,
                            },
                        },
                        {
                            "name": "cursor",
                            "in": "query",
                            "required": False,
                            "schema": {**NAME, "description": "The `next_cursor` of a page."},
                        },
                    ],
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
            **prometheus_paths(read),
            "/fleet": {
                "get": _operation(
                    "One page of the fleet overview, sorted and filtered, with the summary",
                    {
                        "200": _json(_ref("FleetPage"), "The page and the fleet's summary."),
                        "400": _error(
                            "A bad parameter: reason bad_sort, bad_order, bad_q, bad_limit, "
                            "bad_cursor or unknown_parameter."
                        ),
                    },
                    read,
                    parameters=FLEET_PARAMETERS,
                )
            },
            "/fleet/grid": {
                "get": _operation(
                    "Every server's current cpu and status, compact, for the heat grid",
                    {
                        "200": _json(_ref("FleetGrid"), "All servers, in name order."),
                        "400": _error("A bad parameter: reason bad_names or unknown_parameter."),
                    },
                    read,
                    parameters=[
                        {
                            "name": "names",
                            "in": "query",
                            "schema": {
                                "type": "string",
                                "pattern": f"^[0-9a-z-]{{1,{MAX_NAMES_VERSION}}}$",
                            },
                            "description": "The `names_version` of the names the caller holds: "
                            "the answer leaves `servers` out while it is still current.",
                        }
                    ],
                )
            },
            "/alerts": {
                "get": _operation(
                    "The pending and firing alerts, as Prometheus' GET /api/v1/alerts lists them",
                    {
                        "200": _json(_ref("Alerts"), "Every pending and firing alert."),
                        "400": _error("A query parameter (none is taken): unknown_parameter."),
                    },
                    read,
                )
            },
            "/": {
                method: _operation(
                    "The fleet overview page (HTML; no token needed, its data is read from "
                    "/fleet and /fleet/grid)",
                    {"200": {"description": "The page.", "content": HTML}},
                    None,
                    backend=False,
                )
                for method in ("get", "head")
            },
            "/ui/servers/{name}": {
                method: _operation(
                    "One server's page with its 60-minute and 24-hour charts (HTML; no token "
                    "needed, its data is read from /servers/{name}/loads)",
                    {
                        "200": {"description": "The page.", "content": HTML},
                        "400": _error("Bad server name."),
                        "404": _error("A name with '/' in it."),
                    },
                    None,
                    parameters=[name_param],
                    backend=False,
                )
                for method in ("get", "head")
            },
            **static_paths(),
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
    for item in document["paths"].values():
        if "get" in item:
            item["head"] = _head_of(item["get"])
    return document


def prometheus_paths(read: str | None) -> dict[str, Schema]:
    """``GET /metrics/servers`` and ``POST /api/v1/read`` (both under the read token)."""
    reasons = ", ".join(PROMETHEUS_REJECT_REASONS)
    refused = _error(f"A request Prometheus' side got wrong; reason one of {reasons}.")
    scrape = _operation(
        "Every server's last complete minute for Prometheus to scrape (text format, or "
        "OpenMetrics 1.0 when Accept asks for it; gzip when Accept-Encoding allows)",
        {
            "200": {
                "description": "The exposition, streamed: families servertrack_server_*, label "
                "server, each minute's figures stamped with the minute's start.",
                "content": {
                    METRICS_MEDIA_TYPE: {"schema": {"type": "string"}},
                    OPENMETRICS_MEDIA_TYPE: {"schema": {"type": "string"}},
                },
            },
            "400": refused,
        },
        read,
        parameters=[
            {
                "name": "match[]",
                "in": "query",
                "required": False,
                "style": "form",
                "explode": True,
                "schema": {"type": "array", "maxItems": MAX_SELECTORS, "items": {"type": "string"}},
                "description": "PromQL series selectors, as Prometheus' /federate takes them "
                "(a series is written when any one selects it).",
            },
            {
                "name": "server",
                "in": "query",
                "required": False,
                "style": "form",
                "explode": True,
                "schema": {"type": "array", "items": {"type": "string"}},
                "description": "Exact server names (only their series are written).",
            },
        ],
    )
    read_operation = _operation(
        "Prometheus remote read: the cpu and ram families over the last 60 minutes by minute "
        "and the 24 hours by hour (the sampled response type)",
        {
            "200": {
                "description": "A ReadResponse, protobuf in one snappy block.",
                "content": {REMOTE_READ_MEDIA_TYPE: {"schema": BINARY}},
                "headers": {"Content-Encoding": {"schema": {"const": "snappy"}, "required": True}},
            },
            "400": refused,
        },
        read,
        parameters=[
            {
                "name": "Content-Encoding",
                "in": "header",
                "required": True,
                "schema": {"const": "snappy"},
                "description": "The body is one snappy block (the block format, not framed).",
            }
        ],
    )
    read_operation["requestBody"] = {
        "required": True,
        "description": f"A prometheus.ReadRequest message (Prometheus' remote-read protocol), "
        f"protobuf, in one snappy block; at most {DEFAULT_LIMITS.max_body_bytes} bytes, "
        f"compressed and decompressed, {DEFAULT_LIMITS.max_queries} queries, "
        f"{DEFAULT_LIMITS.max_series} series and {DEFAULT_LIMITS.max_samples} samples a query.",
        "content": {REMOTE_READ_MEDIA_TYPE: {}},
    }
    return {"/metrics/servers": {"get": scrape}, "/api/v1/read": {"post": read_operation}}


def _head_of(get: Schema) -> Schema:
    """The HEAD twin of a GET operation: the same answers, without bodies."""
    responses = {
        status: {key: value for key, value in answer.items() if key != "content"}
        for status, answer in get["responses"].items()
    }
    return {**get, "summary": f"{get['summary']} (headers only)", "responses": responses}


def static_paths() -> dict[str, Schema]:
    """The dashboard's static files, one path per served folder, file names enumerated."""
    assets = load_assets()
    paths: dict[str, Schema] = {}
    for folder in STATIC_FOLDERS:
        names = served_names(assets, folder)
        types = sorted({assets[folder + name].content_type.split(";")[0] for name in names})
        content = {kind: {"schema": {"type": "string"}} for kind in types}
        parameter = {"name": "name", "in": "path", "required": True, "schema": {"enum": names}}
        paths[f"{STATIC_PREFIX}{folder}{{name}}"] = {
            method: _operation(
                "A file of the dashboard (no token needed): strong ETag, If-None-Match gives "
                "304; ?v= with the current version makes it cacheable for a year",
                {
                    "200": {"description": "The file.", "content": content},
                    "304": {"description": "The client's copy (If-None-Match) is current."},
                    "404": _error("No such file."),
                },
                None,
                parameters=[parameter],
                backend=False,
            )
            for method in ("get", "head")
        }
    return paths


FLEET_PARAMETERS: list[Schema] = [
    {
        "name": "sort",
        "in": "query",
        "schema": {"enum": list(SORT_COLUMNS), "default": "status"},
        "description": "Column to sort by. `status` sorts down, stale, live (ascending), then "
        "by cpu, highest first. `cpu_anomaly` and `ram_anomaly` sort by the newest anomaly "
        "score. Ties are in name order; servers without a value come last.",
    },
    {
        "name": "order",
        "in": "query",
        "schema": {"enum": ["asc", "desc"]},
        "description": "Default: "
        + ", ".join(f"{column} {order}" for column, order in DEFAULT_ORDER.items())
        + ".",
    },
    {
        "name": "q",
        "in": "query",
        "schema": {"type": "string", "maxLength": MAX_FILTER},
        "description": "Case-insensitive substring of the server name.",
    },
    {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
    },
    {
        "name": "cursor",
        "in": "query",
        "schema": {"type": "string", "pattern": f"^[0-9]{{1,{MAX_CURSOR_DIGITS}}}$"},
        "description": "The `next_cursor` of the previous page.",
    },
]


class OpenApiResource:
    """``GET /openapi.json``: the document, serialised once when the app is built."""

    def __init__(self, document: Schema) -> None:
        self.body = json.dumps(document, separators=(",", ":")).encode()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.data = self.body
        resp.content_type = falcon.MEDIA_JSON
