"""The hot read served before Falcon: ``GET /servers/{name}/loads`` whose answer the read cache
holds for the current generation.

PERF: Falcon's request and response objects, middleware and routing cost more than the rest of
a cached read (on waitress, a cached GET through Falcon reached 0.61 of bare waitress; see
``bench/results``). This WSGI wrapper answers the plain case itself with the aggregator's bytes
and exactly the headers Falcon sends, and hands everything else to the app unchanged: a query
string, a name Falcon would refuse, a missing or wrong read token, a request that waited past
its deadline or whose client has gone, a server not in the cache. So every check, refusal and
counter stays where it was; this path only ever answers 200 with the bytes (and the
``ServerTrack-As-Of`` header) Falcon would send.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from servertrack.api.auth import bearer_ok
from servertrack.api.cache import CachedReads
from servertrack.api.headers import NOSNIFF
from servertrack.common.views import AS_OF_HEADER

PREFIX = "/servers/"
SUFFIX = "/loads"
AS_OF = AS_OF_HEADER.lower()


class FastReads:
    """WSGI middleware in front of the Falcon app (see the module docstring)."""

    def __init__(
        self,
        app: Callable[..., Iterable[bytes]],
        cache: CachedReads,
        read_token: str | None,
        request_deadline: float,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self.cache = cache
        self.read_token = read_token.encode() if read_token else None
        self.request_deadline = request_deadline
        self.wall = wall

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if (
            environ.get("REQUEST_METHOD") == "GET"
            and path.startswith(PREFIX)
            and path.endswith(SUFFIX)
            and not environ.get("QUERY_STRING")
        ):
            reply = self._cached(environ, path[len(PREFIX) : -len(SUFFIX)])
            if reply is not None:
                body = reply["body"]
                headers = [("content-type", "application/json")]
                as_of = reply.get("as_of")
                if isinstance(as_of, str):
                    headers.append((AS_OF, as_of))
                headers.append(NOSNIFF)
                headers.append(("content-length", str(len(body))))
                start_response("200 OK", headers)  # the very list Falcon sends, in its order
                return [body]
        return self.app(environ, start_response)

    def _cached(self, environ: dict[str, Any], name: str) -> dict[str, Any] | None:
        # No name check: the cache holds only names the app has checked (PERF: the check was
        # 9 % of a cached read on granian), so any other name misses and goes to the app.
        if self.read_token is not None and not bearer_ok(
            environ.get("HTTP_AUTHORIZATION"), self.read_token
        ):
            return None
        arrived = environ.get("servertrack.arrived")
        if arrived is not None and self.wall() > arrived + self.request_deadline:
            return None
        gone = environ.get("waitress.client_disconnected")
        if gone is not None and gone():
            return None
        reply = self.cache.peek(name)
        if reply is None or reply.get("status") != 200:
            return None
        return reply if isinstance(reply.get("body"), bytes) else None
