"""``GET /fleet`` and ``GET /fleet/grid``: the overview's data, computed by the aggregator.

Parameters are checked here first, so a bad one is answered without a round trip; the
aggregator checks them again and does the sorting, filtering and paging next to the data.
"""

from __future__ import annotations

from typing import Any

import falcon

from servertrack.api.backend import Backend
from servertrack.api.errors import BadRequest
from servertrack.common.fleet import BadFleetQuery, parse_fleet_query, parse_grid_query


def _reply_body(reply: dict[str, Any]) -> bytes:
    if reply.get("status") == 200:
        return reply["body"]
    raise BadRequest(
        str(reply.get("reason", "bad_request")),
        str(reply.get("message", "refused by the aggregator")),
    )


class FleetResource:
    """One page of the fleet table with the summary (``sort``, ``order``, ``q``, ``limit``,
    ``cursor``)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            query = parse_fleet_query(req.params)
        except BadFleetQuery as err:
            raise BadRequest(err.reason, err.message) from err
        reply = self.backend.query({"op": "fleet", **query.to_request()}, req.context.deadline)
        resp.data = _reply_body(reply)
        resp.content_type = falcon.MEDIA_JSON
        resp.cache_control = ["no-store"]


class GridResource:
    """Every server's current cpu and status for the heat grid, compact, with the names when
    they changed since the caller's ``names`` version."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            names = parse_grid_query(req.params)
        except BadFleetQuery as err:
            raise BadRequest(err.reason, err.message) from err
        request: dict[str, Any] = {"op": "grid"}
        if names is not None:
            request["names"] = names
        resp.data = _reply_body(self.backend.query(request, req.context.deadline))
        resp.content_type = falcon.MEDIA_JSON
        resp.cache_control = ["no-store"]
