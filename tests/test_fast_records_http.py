"""Over real HTTP on each server (waitress, granian): a single record answered by the fast path
gets byte for byte the answer the Falcon app gives the same record (status line, every header
but the date, body), valid or refused, with the record token or without, oversized too; and
both count the same refusals.

A query string sends a request to the app (the fast path takes none, and ``POST
/servers/{name}/loads`` reads no parameter), so each case is sent twice on one host: as it is,
and with ``?via=app``. Each record names a server of its own per path, so neither answer is a
duplicate of the other.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from servertrack.api.intake import MAX_BODY
from servertrack.testing.hosts import HostUnderTest as Host

RECORD = "rec-0123456789abcdef"
JSON_TYPE = {"Content-Type": "application/json"}
AUTH = {**JSON_TYPE, "Authorization": f"Bearer {RECORD}"}


def exchange(
    port: int, path: str, body: bytes, headers: dict[str, str]
) -> tuple[str, list[tuple[str, str]], bytes]:
    """One POST on a connection of its own: the status line, the headers in the order sent (the
    date left out) and the raw body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", path, body, headers)
        answer = connection.getresponse()
        payload = answer.read()
        status = f"{answer.status} {answer.reason}"
        kept = [(k.lower(), v) for k, v in answer.getheaders() if k.lower() != "date"]
        return status, kept, payload
    finally:
        connection.close()


def cases(now: float) -> list[tuple[str, bytes, dict[str, str], str]]:
    """(what, body, headers, expected status) for one API with a record token."""
    return [
        ("a record", b'{"cpu": 12.5, "ram": 40.0}', AUTH, "202"),
        ("a record with its ts", json.dumps({"cpu": 1, "ts": now - 5}).encode(), AUTH, "202"),
        ("malformed JSON", b"{not json", AUTH, "400"),
        ("duplicate keys", b'{"cpu": 1, "cpu": 2}', AUTH, "400"),
        ("an unknown field", b'{"cpu": 1, "disk": 2}', AUTH, "400"),
        ("not an object", b"[1]", AUTH, "400"),
        ("cpu over 100", b'{"cpu": 101}', AUTH, "422"),
        ("cpu a string", b'{"cpu": "5"}', AUTH, "422"),
        ("ts in the future", json.dumps({"cpu": 1, "ts": now + 600}).encode(), AUTH, "422"),
        ("no token", b'{"cpu": 1}', JSON_TYPE, "401"),
        ("a wrong token", b'{"cpu": 1}', {**JSON_TYPE, "Authorization": "Bearer x"}, "401"),
        ("a body at the limit", b'{"cpu": 3}' + b" " * (MAX_BODY - 10), AUTH, "202"),
        ("a body over the limit", b'{"cpu": 3}' + b" " * (MAX_BODY - 9), AUTH, "413"),
    ]


def test_fast_and_app_answers_to_single_records_are_identical(
    start_host: Callable[..., Host], tmp_path: Path, http_server: str
) -> None:
    """Valid records, refused ones, tokens missing or wrong, bodies at and over the limit: the
    same answer from the fast path and from the app, on this server, and the same counts of
    refusals."""
    (tmp_path / "token").write_text(RECORD + "\n")
    host = start_host("--no-agent", "--http", http_server, "--token-file", str(tmp_path / "token"))

    def rejected() -> dict[str, int]:
        status, stats = host.get("/stats")
        assert status == 200
        return dict(stats["api"]["rejected"])

    now = time.time()
    answers: dict[str, dict[str, Any]] = {}
    counts: dict[str, dict[str, int]] = {}
    for via in ("", "?via=app"):
        before = rejected()
        answers[via] = {}
        for index, (what, body, headers, expected) in enumerate(cases(now)):
            path = f"/servers/same-{index}{'-app' if via else ''}/loads{via}"
            got = exchange(host.api_port, path, body, headers)
            assert got[0].startswith(expected), (what, via, got)
            answers[via][what] = got
        after = rejected()
        counts[via] = {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}
    for what, got in answers[""].items():
        assert got == answers["?via=app"][what], what
    assert counts[""] == counts["?via=app"], counts
    assert sum(counts[""].values()) == 10, counts
