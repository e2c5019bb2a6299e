"""The forwarder's API client against a real HTTP server on loopback: the bearer token, paged
and unpaged server lists, vanished servers, 503s, and keep-alive connections the server closed."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from servertrack.forward.source import ApiSource, SourceError

TOKEN = "s3cret-token"
NAMES = [f"srv{i}.example.com" for i in range(5)]


class FakeApi(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.paged = True
        self.status = 200
        self.gone = {"srv3.example.com"}
        self.drop_idle = False
        self.as_of: dict[str, str] = {}
        """Server name → the ``ServerTrack-As-Of`` its answer carries (none if absent)."""
        """Close each connection after answering, without saying so (an idle-timeout)."""
        self.requests: list[str] = []
        self.connections: set[tuple[str, int]] = set()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeApi

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        api = self.server
        api.requests.append(self.path)
        api.connections.add(self.client_address)
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self.answer(401, {"reason": "unauthorized"})
        if api.status != 200:
            return self.answer(api.status, {"title": "unavailable"})
        url = urlsplit(self.path)
        if url.path == "/base/servers":
            query = parse_qs(url.query)
            rows = [{"server": n, "last_seen": "2026-11-22T10:01:31.2Z"} for n in NAMES]
            if not api.paged:
                return self.answer(200, {"servers": rows})
            limit = int(query["limit"][0])
            start = int(query.get("cursor", ["0"])[0])
            following = start + limit if start + limit < len(rows) else None
            page = {
                "servers": rows[start : start + limit],
                "total": len(rows),
                "next_cursor": None if following is None else str(following),
            }
            return self.answer(200, page)
        name = url.path.removeprefix("/base/servers/").removesuffix("/loads")
        if name in api.gone:
            return self.answer(404, {"reason": "unknown_server"})
        return self.answer(200, {"server": name, "minutes": [], "hours": []}, api.as_of.get(name))

    def answer(self, status: int, body: Any, as_of: str | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if as_of is not None:
            self.send_header("ServerTrack-As-Of", as_of)
        self.end_headers()
        self.wfile.write(data)
        if self.server.drop_idle:
            self.close_connection = True


@contextlib.contextmanager
def running() -> Iterator[FakeApi]:
    api = FakeApi()
    thread = threading.Thread(target=api.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield api
    finally:
        api.shutdown()
        api.server_close()
        thread.join(10)
        assert not thread.is_alive()


@contextlib.contextmanager
def client(api: FakeApi, **options: Any) -> Iterator[ApiSource]:
    source = ApiSource(
        f"http://127.0.0.1:{api.server_address[1]}/base/", TOKEN, timeout=5, **options
    )
    try:
        yield source
    finally:
        source.close()


def test_paged_server_lists_are_followed_to_the_end_with_the_token() -> None:
    """Pages of 2 are followed through next_cursor; every request carries the bearer token."""
    with running() as api, client(api, page_limit=2) as source:
        servers = source.servers()
    assert [name for name, _ in servers] == NAMES
    assert servers[0][1] == datetime(2026, 11, 22, 10, 1, 31, 200_000, tzinfo=UTC).timestamp()
    assert [r for r in api.requests if r.startswith("/base/servers?")] == [
        "/base/servers?limit=2",
        "/base/servers?limit=2&cursor=2",
        "/base/servers?limit=2&cursor=4",
    ]


def test_an_unpaged_list_is_read_as_one_page() -> None:
    with running() as api, client(api) as source:
        api.paged = False
        assert [name for name, _ in source.servers()] == NAMES


def test_a_server_that_vanished_is_left_out_and_connections_are_reused() -> None:
    """A 404 between the list and the read is normal; the reads share a few connections."""
    with running() as api, client(api, connections=2) as source:
        answers = source.loads(NAMES * 4)
    assert sorted(answers) == sorted(set(NAMES) - api.gone)
    assert len(api.connections) <= 2


def test_each_answer_carries_the_time_the_api_read_it() -> None:
    """An answer's ``ServerTrack-As-Of`` header is in it as ``as_of``; one without the header
    has none (the forwarder refuses it)."""
    with running() as api, client(api) as source:
        api.as_of = {NAMES[0]: "2026-11-22T10:01:32.5Z"}
        answers = source.loads(NAMES[:2])
    assert answers[NAMES[0]]["as_of"] == "2026-11-22T10:01:32.5Z"
    assert "as_of" not in answers[NAMES[1]]


def test_connections_the_server_closed_while_idle_are_opened_again() -> None:
    """A keep-alive connection the server dropped (idle timeout) is retried once, fresh."""
    with running() as api, client(api, connections=1) as source:
        api.drop_idle = True
        answers = source.loads(NAMES)
    assert len(answers) == len(NAMES) - 1
    assert len(api.connections) >= len(NAMES)


@pytest.mark.parametrize("status", [503, 401, 500])
def test_an_api_that_fails_fails_the_whole_read_with_a_reason(status: int) -> None:
    with running() as api, client(api) as source:
        api.status = status
        with pytest.raises(SourceError) as failure:
            source.loads(NAMES)
        assert failure.value.reason == f"http_{status}"
        with pytest.raises(SourceError):
            source.servers()


def test_an_api_that_is_down_is_unreachable() -> None:
    with running() as api:
        port = api.server_address[1]
    source = ApiSource(f"http://127.0.0.1:{port}", timeout=2)
    try:
        with pytest.raises(SourceError) as failure:
            source.servers()
        assert failure.value.reason == "unreachable"
    finally:
        source.close()


def test_only_http_urls_are_taken() -> None:
    with pytest.raises(ValueError, match="--api"):
        ApiSource("ftp://example.com")
