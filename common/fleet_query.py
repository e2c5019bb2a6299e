"""The fleet overview's definitions and its query parameters, shared by the API and the aggregator.

A server is ``live`` while its last sample is less than ``STALE_AFTER`` seconds old, ``stale``
from then until ``DOWN_AFTER`` seconds, and ``down`` after that; it stays listed until the
rollups forget it (24 hours of silence). Ages are taken from the aggregator's clock.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

STALE_AFTER = 120.0
DOWN_AFTER = 600.0
STATUSES = ("down", "stale", "live")
"""Status names by rank: sorting by status ascending puts down servers first."""
SORT_COLUMNS = ("status", "name", "cpu", "ram", "last_seen", "cpu_anomaly", "ram_anomaly")
DEFAULT_ORDER = {
    "status": "asc",
    "name": "asc",
    "cpu": "desc",
    "ram": "desc",
    "last_seen": "asc",
    "cpu_anomaly": "desc",
    "ram_anomaly": "desc",
}
"""The order a column sorts in when none is given: the servers needing a look come first (down
before live, hot before cool, the longest silent before the recent, the most anomalous before
the usual)."""
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_FILTER = 253
"""A filter longer than the longest server name cannot match anything."""
HOTTEST = 10
SPARKLINE_MINUTES = 60
PARAMETERS = frozenset({"sort", "order", "q", "limit", "cursor"})
MAX_CURSOR_DIGITS = 9
MAX_NAMES_VERSION = 64
NAMES_VERSION = re.compile(f"[0-9a-z-]{{1,{MAX_NAMES_VERSION}}}")
"""What a grid answer's ``names_version`` looks like (opaque to clients)."""


class BadFleetQuery(ValueError):
    """A fleet query parameter that cannot be used; ``reason`` is the short machine cause."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class FleetQuery:
    sort: str = "status"
    order: str = "asc"
    q: str = ""
    limit: int = DEFAULT_LIMIT
    offset: int = 0

    def to_request(self) -> dict[str, Any]:
        return {
            "sort": self.sort,
            "order": self.order,
            "q": self.q,
            "limit": self.limit,
            "offset": self.offset,
        }


def status_of(age: float) -> str:
    """The status of a server whose last sample is ``age`` seconds old."""
    if age < STALE_AFTER:
        return "live"
    if age < DOWN_AFTER:
        return "stale"
    return "down"


def encode_cursor(offset: int) -> str:
    """The cursor of the page starting at row ``offset`` (an offset, opaque to clients)."""
    return str(offset)


def _single(params: Mapping[str, Any], key: str) -> str | None:
    value = params.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadFleetQuery(f"bad_{key}", f"{key} may be given once")
    return value


def parse_fleet_query(params: Mapping[str, Any]) -> FleetQuery:
    """A :class:`FleetQuery` from URL query parameters (strings), or :class:`BadFleetQuery`."""
    unknown = sorted(set(params) - PARAMETERS)
    if unknown:
        raise BadFleetQuery(
            "unknown_parameter",
            f"unknown parameter(s): {', '.join(unknown)}; known: {', '.join(sorted(PARAMETERS))}",
        )
    sort = _single(params, "sort")
    sort = "status" if sort is None else sort
    if sort not in SORT_COLUMNS:
        raise BadFleetQuery(
            "bad_sort", f"sort must be one of {', '.join(SORT_COLUMNS)}, got {sort!r}"
        )
    order = _single(params, "order")
    order = DEFAULT_ORDER[sort] if order is None else order
    if order not in ("asc", "desc"):
        raise BadFleetQuery("bad_order", f"order must be asc or desc, got {order!r}")
    q = _single(params, "q") or ""
    if len(q) > MAX_FILTER:
        raise BadFleetQuery("bad_q", f"q is at most {MAX_FILTER} characters")
    raw_limit = _single(params, "limit")
    limit = DEFAULT_LIMIT
    if raw_limit is not None:
        if not raw_limit.isascii() or not raw_limit.isdigit() or len(raw_limit) > 4:
            raise BadFleetQuery("bad_limit", f"limit must be an integer, got {raw_limit!r}")
        limit = int(raw_limit)
        if not 1 <= limit <= MAX_LIMIT:
            raise BadFleetQuery("bad_limit", f"limit must be 1 to {MAX_LIMIT}, got {limit}")
    cursor = _single(params, "cursor")
    offset = 0
    if cursor is not None:
        if not cursor.isascii() or not cursor.isdigit() or len(cursor) > MAX_CURSOR_DIGITS:
            raise BadFleetQuery(
                "bad_cursor", "cursor must be a next_cursor value from an earlier answer"
            )
        offset = int(cursor)
    return FleetQuery(sort=sort, order=order, q=q, limit=limit, offset=offset)


def parse_grid_query(params: Mapping[str, Any]) -> str | None:
    """The ``names`` parameter of ``/fleet/grid`` (the ``names_version`` of the names the
    caller holds), or None; :class:`BadFleetQuery` for anything else."""
    unknown = sorted(set(params) - {"names"})
    if unknown:
        raise BadFleetQuery(
            "unknown_parameter", f"/fleet/grid takes only names, got {', '.join(unknown)}"
        )
    names = _single(params, "names")
    if names is not None and not NAMES_VERSION.fullmatch(names):
        raise BadFleetQuery(
            "bad_names", "names must be the names_version of an earlier /fleet/grid answer"
        )
    return names


def query_from_request(request: Mapping[str, Any]) -> FleetQuery:
    """The :class:`FleetQuery` an aggregator request carries (as built by ``to_request``),
    checked again: the aggregator trusts no peer."""
    try:
        params = {key: str(request[key]) for key in ("sort", "order", "q") if key in request}
        params["limit"] = str(int(request.get("limit", DEFAULT_LIMIT)))
        params["cursor"] = str(int(request.get("offset", 0)))
    except (TypeError, ValueError) as err:
        raise BadFleetQuery("bad_request", f"malformed fleet request: {err}") from err
    return parse_fleet_query(params)
