"""``GET /alerts``: the pending and firing alerts the aggregator evaluates, in the shape of
Prometheus' ``GET /api/v1/alerts`` (``{"status": "success", "data": {"alerts": [...]}}``), so a
tool that reads Prometheus' alert list reads ServerTrack's."""

from __future__ import annotations

import falcon

from servertrack.api.backend import Backend
from servertrack.api.errors import BadRequest


class AlertsResource:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.params:
            raise BadRequest(
                "unknown_parameter", f"unknown query parameter(s): {sorted(req.params)}"
            )
        resp.data = self.backend.alerts(req.context.deadline)
        resp.content_type = falcon.MEDIA_JSON
