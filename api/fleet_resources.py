"""``GET /fleet`` and ``GET /fleet/grid``: the overview's data (:mod:`servertrack.readmodel.fleet`).

Parameters are checked here first, so a bad one is answered without a round trip; the
aggregator checks them again when it makes the page next to the data (memory mode).
"""

from __future__ import annotations

import falcon

from servertrack.api.backend import Backend
from servertrack.api.errors import BadRequest
from servertrack.common.fleet_query import BadFleetQuery, parse_fleet_query, parse_grid_query


class FleetResource:
    """One page of the fleet table with the summary (``sort``, ``order``, ``q``, ``limit``,
    ``cursor``)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            query = parse_fleet_query(req.params)
            resp.data = self.backend.fleet(query, req.context.deadline)
        except BadFleetQuery as err:
            raise BadRequest(err.reason, err.message) from err
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
        resp.data = self.backend.grid(names, req.context.deadline)
        resp.content_type = falcon.MEDIA_JSON
        resp.cache_control = ["no-store"]
