"""Request bodies on granian: read whole before the app sees them, a bounded number at a time.

Waitress reads a body on its event loop and runs the app once the request is complete. Granian
hands a request to an app thread as soon as its headers are in, and ``wsgi.input.read()`` then
blocks that thread until the bytes arrive, with no time limit (hyper has no body timeout, and a
WSGI read cannot be interrupted: a thread that gave up on it stays in it until its client sends
the rest or leaves). So 64 clients trickling 64 bodies held all 64 threads, and nothing else
was answered.

:class:`BodySlots` bounds that: a ``POST`` body is read in one of ``slots`` body slots (fewer
than the app's threads), then handed to the app as a buffer with its true length. A ``POST``
that finds every slot taken is answered 503 at once without reading its body, which makes
granian close its connection; it is counted as ``connections_closed{reason="body_slots_full"}``.
However slowly bodies arrive, the other threads keep answering everything else (``/health``, the
reads). With a record token, a ``POST`` without it is handed to the app unread (which answers
401), so only clients holding the token can take a slot. A body still has no deadline: while
every slot is held, records are refused, which is why ``--http granian`` listens beyond loopback
only behind a proxy that buffers bodies.

It also reads a chunked body (no ``Content-Length``), which a WSGI app would otherwise see as
empty, up to one byte past the app's limit, so the app answers 413 ``too_large`` as waitress does.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable, Iterable
from typing import Any

from servertrack.api.admission import Admission
from servertrack.api.app import DRAIN_LIMIT, MAX_BODY
from servertrack.api.headers import NOSNIFF
from servertrack.api.stats import ApiStats

FULL = "body_slots_full"


def slots_for(threads: int) -> int:
    """Body slots for an app with ``threads`` threads: half of them, so the other half always
    serve requests without a body."""
    return max(1, threads // 2)


class BodySlots:
    """WSGI middleware in front of the app (see the module docstring)."""

    def __init__(
        self,
        app: Callable[..., Iterable[bytes]],
        slots: int,
        stats: ApiStats,
        admission: Admission,
        max_body: int = MAX_BODY,
    ) -> None:
        self.app = app
        self.admission = admission
        self.slots = threading.BoundedSemaphore(slots)
        self.count = slots
        self.stats = stats
        self.max_body = max_body

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "POST":
            return self.app(environ, start_response)  # only a POST's body is ever read
        size = self._size_to_read(environ)
        if size == 0 or self.admission.refusal(environ) is not None:
            return self.app(environ, start_response)  # the app refuses it, body unread
        if not self.slots.acquire(blocking=False):
            self.stats.connection_closed(FULL)
            return self._refuse(start_response)
        try:
            body = environ["wsgi.input"].read(size)
        finally:
            self.slots.release()
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        return self.app(environ, start_response)

    def _size_to_read(self, environ: dict[str, Any]) -> int:
        """Bytes to read before the app runs: the announced length when the app would read it
        (up to ``DRAIN_LIMIT``; a larger one is refused unread), one past the limit for a chunked
        body, else 0."""
        announced = environ.get("CONTENT_LENGTH")
        if announced:
            try:
                length = int(announced)
            except ValueError:
                return 0
            return length if 0 < length <= DRAIN_LIMIT else 0
        if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            return self.max_body + 1
        return 0

    def _refuse(self, start_response: Any) -> list[bytes]:
        body = json.dumps(
            {
                "title": "Service Unavailable",
                "reason": FULL,
                "description": f"all {self.count} request body slots are taken by bodies still "
                "arriving; try again",
            }
        ).encode()
        start_response(
            "503 Service Unavailable",
            [
                ("content-type", "application/json"),
                ("content-length", str(len(body))),
                ("retry-after", "1"),
                NOSNIFF,
            ],
        )
        return [body]
