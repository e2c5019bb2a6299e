"""Headers every answer of the API carries, whichever server and path produced it."""

from __future__ import annotations

import falcon

NOSNIFF = ("X-Content-Type-Options", "nosniff")
"""Browsers must take each answer as the type it is declared as (JSON stays JSON)."""


class SecurityHeaders:
    """Falcon middleware: sets :data:`NOSNIFF` on every answer of the app, errors included
    (Falcon calls ``process_response`` even when an earlier middleware or the route raised)."""

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        resp.set_header(*NOSNIFF)
