"""A client that trickles a request (slow-loris) is cut off by waitress' channel timeout."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from servertrack.common.testing import (
    ChildProcess,
    free_port,
    http_json,
    servertrack_argv,
    wait_until,
)

pytestmark = pytest.mark.e2e


def test_trickled_request_is_closed_after_the_channel_timeout(tmp_path: Path) -> None:
    """Half a request line and nothing more: the API closes the connection within the timeout
    plus waitress' 1 s clean-up tick, and keeps serving others."""
    port = free_port()
    api = ChildProcess(
        servertrack_argv(
            "api",
            "--port",
            str(port),
            "--channel-timeout",
            "2",
            "--receiver-control",
            f"tcp://127.0.0.1:{free_port()}",
            "--aggregator-query",
            f"tcp://127.0.0.1:{free_port()}",
        ),
        tmp_path / "api.log",
    ).start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_json("GET", base + "/health")[0] == 503, 20, "the api")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # no blank line: never ends
            began = time.monotonic()
            closed = sock.recv(1024) == b""  # blocks until the server hangs up (or 10 s)
            waited = time.monotonic() - began
        assert closed and waited < 6.0
        assert http_json("GET", base + "/health")[0] == 503  # still serving
    finally:
        api.stop()
