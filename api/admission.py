"""Whether a request may be worked on: the one admission guard of the fast paths and Falcon.

A request is refused, before anything is done for it:

- ``503 abandoned`` when its client has gone (waitress tells) or it waited longer than
  ``--request-deadline`` seconds since it arrived. Waitress stamps each request's arrival as it
  reads it (:mod:`servertrack.api.server`). Granian gives the app no arrival time: there the
  deadline counts from when an app thread took the request, so a request that waited in
  granian's own queue is not refused for that wait (its queue is bounded by
  ``--connection-limit`` instead);
- ``401`` when the scope it belongs to needs a bearer token and it has not the right one
  (reads: GET, HEAD and OPTIONS, and Prometheus' remote read, ``POST /api/v1/read``;
  records: every other method). ``/health``, ``/openapi.json``
  and the dashboard's pages are always open.

The fast paths (:mod:`servertrack.api.fastpath`) ask :meth:`Admission.refusal` and hand every
refused request to the app, whose :class:`AdmissionGuard` asks the same question and answers it:
one rule, one place.
"""

from __future__ import annotations

import hmac
import time
from typing import Any

import falcon

from servertrack.api.errors import ServiceUnavailable
from servertrack.api.stats import ApiStats
from servertrack.common.buckets import Clock

OPEN_PATHS = frozenset({"/health", "/openapi.json"})
"""Never need a token: health checks and schema discovery."""
OPEN_PAGES = ("/ui/",)
"""Read without a token: the dashboard's pages and files (``/`` and under ``/ui/``), since a
browser cannot send a bearer header when it navigates. They hold no data: the data they fetch
(``/fleet``, ``/servers/{name}/loads``) needs the read token as every read does."""
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
"""Methods under the read token; every other method is under the record token..."""
READ_POSTS = frozenset({"/api/v1/read"})
"""...except these POSTs, which only read: Prometheus' remote read sends its query as a body."""
REALM = "servertrack"
ARRIVED = "servertrack.arrived"
"""The WSGI environ key under which a server stamps a request's arrival (wall clock)."""
ABANDONED = "abandoned"


def _matches(presented: str, token: bytes) -> bool:
    # WSGI hands headers over as latin-1 text: that gives back the bytes the client sent.
    try:
        raw = presented.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(raw, token)


def bearer_ok(header: str | None, token: bytes) -> bool:
    """Whether an ``Authorization`` header value carries ``token`` as a bearer token."""
    if not header:
        return False
    scheme, _, presented = header.strip().partition(" ")
    return scheme.lower() == "bearer" and _matches(presented.strip(), token)


def _unauthorized(description: str, extra: str | None = None) -> falcon.HTTPUnauthorized:
    challenge = f'Bearer realm="{REALM}"' + (f", {extra}" if extra else "")
    return falcon.HTTPUnauthorized(
        title="Unauthorized", description=description, challenges=[challenge]
    )


class Admission:
    """The admission rule (see the module docstring) over one API's tokens and deadline."""

    def __init__(
        self,
        record_token: str | None,
        read_token: str | None,
        request_deadline: float,
        wall: Clock = time.time,
    ) -> None:
        self.record_token = record_token.encode() if record_token else None
        self.read_token = read_token.encode() if read_token else None
        self.request_deadline = request_deadline
        self.wall = wall

    def deadline(self, environ: dict[str, Any], now: float) -> float:
        """The wall-clock time by which the request must have been answered."""
        arrived = environ.get(ARRIVED) or now
        return float(arrived) + self.request_deadline

    def refusal(self, environ: dict[str, Any], now: float | None = None) -> falcon.HTTPError | None:
        """The error a request gets instead of being worked on, or None to admit it."""
        now = self.wall() if now is None else now
        gone = environ.get("waitress.client_disconnected")
        if (gone is not None and gone()) or now > self.deadline(environ, now):
            return ServiceUnavailable(
                ABANDONED, "the request waited too long or its client went away"
            )
        return self._token_refusal(environ)

    def _token_refusal(self, environ: dict[str, Any]) -> falcon.HTTPError | None:
        method = environ.get("REQUEST_METHOD", "")
        path = environ.get("PATH_INFO", "")
        reads = method in READ_METHODS or (method == "POST" and path in READ_POSTS)
        if path in OPEN_PATHS or (reads and (path == "/" or path.startswith(OPEN_PAGES))):
            return None
        token = self.read_token if reads else self.record_token
        if token is None:
            return None
        scope = "read" if reads else "record"
        header = environ.get("HTTP_AUTHORIZATION")
        if not header:
            return _unauthorized(f"this {scope} request needs 'Authorization: Bearer <token>'")
        if not bearer_ok(header, token):
            return _unauthorized(
                f"the bearer token is not valid for {scope} requests", 'error="invalid_token"'
            )
        return None


class AdmissionGuard:
    """Falcon middleware: every request gets its ``deadline`` (wall clock, which travels with
    its backend calls); a refused one gets its error (an abandoned one is counted)."""

    def __init__(self, admission: Admission, stats: ApiStats) -> None:
        self.admission = admission
        self.stats = stats

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        now = self.admission.wall()
        req.context.deadline = self.admission.deadline(req.env, now)
        error = self.admission.refusal(req.env, now)
        if error is not None:
            if getattr(error, "reason", None) == ABANDONED:
                self.stats.abandoned()
            raise error
