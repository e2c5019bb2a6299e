"""Reads the fleet from a ServerTrack API: the server list, then each server's buckets.

A small pool of keep-alive HTTP connections (one per worker thread) reads thousands of servers in
a few seconds. ``GET /servers`` may be paged (``?limit=&cursor=``, answers carry ``next_cursor``)
or not; both are read. A 404 for a server that vanished since the list is normal. Any other
failure (the API down, a 503, an answer that cannot be used) fails the whole read with a
:class:`SourceError`, so a window is never sent with servers missing: it is read again later.
"""

from __future__ import annotations

import http.client
import json
import logging
import queue
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit

from servertrack.common.views import AS_OF_HEADER

log = logging.getLogger(__name__)

PAGE_LIMIT = 1000
MAX_PAGES = 100_000
CONNECTIONS = 8
TIMEOUT = 10.0
RETRY_PAUSE = 0.2
STALE = (
    http.client.RemoteDisconnected,
    http.client.CannotSendRequest,
    http.client.BadStatusLine,
    ConnectionResetError,
    BrokenPipeError,
)
"""What a keep-alive connection the server closed while idle raises: retried once, fresh."""


class SourceError(Exception):
    """The API could not be read; ``reason`` names how (``unreachable``, ``http_503`` ...)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def _parse_time(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None


class ApiSource:
    """``servers()`` and ``loads(names)`` over a pool of ``connections`` keep-alive connections."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        connections: int = CONNECTIONS,
        timeout: float = TIMEOUT,
        page_limit: int = PAGE_LIMIT,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--api must be an http:// or https:// URL, got {base_url!r}")
        self.url = base_url
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port
        self.base = parts.path.rstrip("/")
        self.timeout = timeout
        self.page_limit = page_limit
        self.headers = {"Accept": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self._idle: queue.SimpleQueue[http.client.HTTPConnection] = queue.SimpleQueue()
        self._all: list[http.client.HTTPConnection] = []
        for _ in range(connections):
            connection = self._new_connection()
            self._all.append(connection)
            self._idle.put(connection)
        self._executor = ThreadPoolExecutor(connections, thread_name_prefix="forward-api")

    def _new_connection(self) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return kind(self.host, self.port, timeout=self.timeout)

    # -- one request ----------------------------------------------------------------------------
    def get(self, path: str) -> tuple[int, Any]:
        """GET ``path`` on a pooled connection; the status and the decoded JSON (or None)."""
        status, answer, _ = self.get_dated(path)
        return status, answer

    def get_dated(self, path: str) -> tuple[int, Any, str | None]:
        """:meth:`get`, with the answer's ``ServerTrack-As-Of`` header (None without one)."""
        connection = self._idle.get()
        try:
            status, body, as_of = self._exchange(connection, path)
        finally:
            self._idle.put(connection)
        if status == 503:  # the aggregator was busy for a moment: one more try
            time.sleep(RETRY_PAUSE)
            connection = self._idle.get()
            try:
                status, body, as_of = self._exchange(connection, path)
            finally:
                self._idle.put(connection)
        if status == 404:
            return status, None, None
        if status != 200:
            raise SourceError(f"http_{status}", f"GET {path} answered {status}: {body[:200]!r}")
        try:
            return status, json.loads(body), as_of
        except ValueError as err:
            raise SourceError("bad_json", f"GET {path}: {err}") from None

    def _exchange(
        self, connection: http.client.HTTPConnection, path: str
    ) -> tuple[int, bytes, str | None]:
        url = self.base + path
        for attempt in (1, 2):
            reused = connection.sock is not None
            try:
                connection.request("GET", url, headers=self.headers)
                response = connection.getresponse()
                return response.status, response.read(), response.getheader(AS_OF_HEADER)
            except STALE as err:
                connection.close()
                if attempt == 2 or not reused:
                    raise SourceError("unreachable", f"GET {url}: {err!r}") from None
            except (OSError, http.client.HTTPException) as err:
                connection.close()
                raise SourceError("unreachable", f"GET {url}: {err!r}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    # -- the fleet ------------------------------------------------------------------------------
    def servers(self) -> list[tuple[str, float | None]]:
        """Every server with its last-seen time (None if the API gave none), following pages."""
        out: list[tuple[str, float | None]] = []
        cursor: str | None = None
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            path = f"/servers?limit={self.page_limit}"
            if cursor is not None:
                path += f"&cursor={quote(cursor, safe='')}"
            _, page = self.get(path)
            if not isinstance(page, dict) or not isinstance(page.get("servers"), list):
                raise SourceError("bad_answer", f"GET {path}: no servers list")
            for item in page["servers"]:
                name = item.get("server") if isinstance(item, dict) else None
                if not isinstance(name, str) or not name:
                    raise SourceError("bad_answer", f"GET {path}: server entry {item!r}")
                out.append((name, _parse_time(item.get("last_seen"))))
            cursor = page.get("next_cursor")
            if cursor is None:
                return out
            if not isinstance(cursor, str) or cursor in seen:
                raise SourceError("bad_answer", f"GET {path}: next_cursor {cursor!r}")
            seen.add(cursor)
        raise SourceError("bad_answer", f"more than {MAX_PAGES} pages of servers")

    def loads(self, names: Iterable[str], stop: threading.Event | None = None) -> dict[str, Any]:
        """Each server's ``GET /servers/{name}/loads`` answer, read in parallel, with its
        ``ServerTrack-As-Of`` header as ``as_of`` (when it has one); a server that answered 404
        is left out. The first failure stops the read and is raised."""
        failed = threading.Event()

        def one(name: str) -> tuple[str, Any]:
            if failed.is_set() or (stop is not None and stop.is_set()):
                return name, None
            try:
                _, view, as_of = self.get_dated(f"/servers/{quote(name, safe='')}/loads")
            except SourceError:
                failed.set()
                raise
            if isinstance(view, dict) and as_of is not None:
                view["as_of"] = as_of
            return name, view

        futures = [self._executor.submit(one, name) for name in names]
        answers: dict[str, Any] = {}
        try:
            for future in futures:
                name, view = future.result()
                if view is not None:
                    answers[name] = view
        finally:
            failed.set()
            for future in futures:
                future.cancel()
        if stop is not None and stop.is_set():
            raise SourceError("stopped", "stopping")
        return answers

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        for connection in self._all:
            connection.close()
