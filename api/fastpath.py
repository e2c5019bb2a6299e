"""The hot read served before Falcon: ``GET /servers/{name}/loads`` whose answer the read cache
holds for the current generation.

PERF: Falcon's request and response objects, middleware and routing cost more than the rest of
a cached read (on waitress, a cached GET through Falcon reached 0.61 of bare waitress; see
``bench/results``). This WSGI entrance answers the plain case itself with the store's bytes
and exactly the headers Falcon sends, and hands everything else to the app unchanged: a query
string, a name Falcon would refuse, a request :class:`~servertrack.api.admission.Admission`
refuses (a missing or wrong token, one that waited past its deadline or whose client has gone),
a server not in the cache. So every check, refusal and counter stays where it is; this path
only ever answers 200 with the bytes (and the ``ServerTrack-As-Of`` header) Falcon would send.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from servertrack.api.admission import Admission
from servertrack.api.headers import NOSNIFF
from servertrack.api.read_path import ReadPath
from servertrack.common.headers import AS_OF_HEADER

PREFIX = "/servers/"
SUFFIX = "/loads"
AS_OF = AS_OF_HEADER.lower()


class FastReads:
    """The WSGI entrance in front of the Falcon app (see the module docstring)."""

    def __init__(
        self, app: Callable[..., Iterable[bytes]], reads: ReadPath, admission: Admission
    ) -> None:
        self.app = app
        self.reads = reads
        self.admission = admission

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if (
            environ.get("REQUEST_METHOD") == "GET"
            and path.startswith(PREFIX)
            and path.endswith(SUFFIX)
            and not environ.get("QUERY_STRING")
            and self.admission.refusal(environ) is None
        ):
            # No name check: the cache holds only names the app has checked (PERF: the check
            # was 9 % of a cached read on granian), so any other name misses and goes to it.
            answer = self.reads.peek(path[len(PREFIX) : -len(SUFFIX)])
            if answer is not None:
                body = answer.body
                start_response(  # the very list Falcon sends, in its order
                    "200 OK",
                    [
                        ("content-type", "application/json"),
                        (AS_OF, answer.as_of),
                        NOSNIFF,
                        ("content-length", str(len(body))),
                    ],
                )
                return [body]
        return self.app(environ, start_response)
