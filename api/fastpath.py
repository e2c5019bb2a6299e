"""The two hot requests served before Falcon: ``GET /servers/{name}/loads`` whose answer the read
cache holds for the current generation, and ``POST /servers/{name}/loads`` (a single record).

PERF: Falcon's request and response objects, middleware and routing cost more than the rest of
a cached read (on waitress, a cached GET through Falcon reached 0.61 of bare waitress) and more
than the validation of a single record (``bench/results``). This WSGI entrance answers those
two itself and hands everything else to the app unchanged: a query string, a name Falcon would
refuse, a request :class:`~servertrack.api.admission.Admission` refuses (a missing or wrong
token, one that waited past its deadline or whose client has gone), a server not in the cache, a
record whose body has no plain length within the limit or a content type other than JSON.

What it answers, it answers as the app would, with the same code: a read with the store's bytes
and exactly the headers Falcon sends; a record through the one validation of
:mod:`servertrack.api.intake` and the same group commit (``Backend.record``), refusals counted by
:func:`~servertrack.api.app.count_refusal` and shaped by :func:`~servertrack.api.errors.error_json`,
a failure turned into an answer by :func:`~servertrack.api.app.failure`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import falcon

from servertrack.api.admission import Admission
from servertrack.api.app import count_refusal, failure
from servertrack.api.backend import Backend
from servertrack.api.errors import error_json
from servertrack.api.headers import NOSNIFF
from servertrack.api.intake import MAX_BODY, Intake, accepted_json, decode_json, read_body
from servertrack.api.read_path import ReadPath
from servertrack.api.stats import ApiStats
from servertrack.common.headers import AS_OF_HEADER
from servertrack.common.sample import valid_fqdn

PREFIX = "/servers/"
SUFFIX = "/loads"
AS_OF = AS_OF_HEADER.lower()
CONTENT_TYPE = ("content-type", "application/json")
SNIFF = (NOSNIFF[0].lower(), NOSNIFF[1])
"""As Falcon sends it: header names in lower case."""
ACCEPTED = falcon.HTTP_202


class FastPaths:
    """The WSGI entrance in front of the Falcon app (see the module docstring)."""

    def __init__(
        self,
        app: Callable[..., Iterable[bytes]],
        reads: ReadPath,
        admission: Admission,
        intake: Intake,
        stats: ApiStats,
    ) -> None:
        self.app = app
        self.reads = reads
        self.backend: Backend = reads.backend
        self.admission = admission
        self.intake = intake
        self.stats = stats

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if (
            path.startswith(PREFIX)
            and path.endswith(SUFFIX)
            and not environ.get("QUERY_STRING")
            and self.admission.refusal(environ) is None
        ):
            method = environ.get("REQUEST_METHOD")
            if method == "GET":
                answer = self._read(path, start_response)
            elif method == "POST":
                answer = self._record(environ, path, start_response)
            else:
                answer = None
            if answer is not None:
                return answer
        return self.app(environ, start_response)

    def _read(self, path: str, start_response: Any) -> list[bytes] | None:
        # No name check: the cache holds only names the app has checked (PERF: the check
        # was 9 % of a cached read on granian), so any other name misses and goes to it.
        answer = self.reads.peek(path[len(PREFIX) : -len(SUFFIX)])
        if answer is None:
            return None
        body = answer.body
        start_response(  # the very list Falcon sends, in its order
            "200 OK",
            [CONTENT_TYPE, (AS_OF, answer.as_of), SNIFF, ("content-length", str(len(body)))],
        )
        return [body]

    def _record(
        self, environ: dict[str, Any], path: str, start_response: Any
    ) -> list[bytes] | None:
        name = path[len(PREFIX) : -len(SUFFIX)]
        length = environ.get("CONTENT_LENGTH", "")
        media = environ.get("CONTENT_TYPE", "application/json")
        if (
            not valid_fqdn(name)  # the app says which of its two refusals
            or not length.isdigit()
            or not 0 < int(length) <= MAX_BODY
            or media.partition(";")[0].strip().lower() != "application/json"
        ):
            return None
        try:
            raw = read_body(environ["wsgi.input"], int(length))
            body = accepted_json(self.backend.record([self.intake.single(name, decode_json(raw))]))
        except falcon.HTTPError as error:
            count_refusal(self.stats, "POST", path, error)
            return self._error(path, error, start_response)
        except Exception as err:  # as the app's handlers make of it: a 503, or a logged 500
            return self._error(path, failure(self.stats, "POST", path, err), start_response)
        start_response(  # the very list Falcon sends, in its order
            ACCEPTED, [CONTENT_TYPE, SNIFF, ("content-length", str(len(body)))]
        )
        return [body]

    @staticmethod
    def _error(path: str, error: falcon.HTTPError, start_response: Any) -> list[bytes]:
        body = error_json("POST", path, error)
        start_response(
            falcon.code_to_http_status(error.status),
            [CONTENT_TYPE, SNIFF, ("content-length", str(len(body)))],
        )
        return [body]
