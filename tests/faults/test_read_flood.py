"""Reads never starve ingest: 48 clients looping on the largest ``/servers`` page of a 10,000
server fleet for 10 s, giving up after 2 s as impatient clients do. Batches keep their one-second
cadence throughout, and ``/health`` is 200 within a second of the flood's end."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable

import pytest

from servertrack.testing.hosts import HostUnderTest, http_json

pytestmark = pytest.mark.faults
SERVERS = 10_000
CLIENTS = 48
FLOOD_SECONDS = 10.0


def flood(host: HostUnderTest, stop: threading.Event, answered: list[int]) -> None:
    while not stop.is_set():
        connection = http.client.HTTPConnection("127.0.0.1", host.api_port, timeout=2)
        try:
            connection.request("GET", "/servers?limit=10000")
            response = connection.getresponse()
            response.read()
            answered.append(response.status)
        except OSError:
            answered.append(0)  # gave up (timeout) or was refused
        finally:
            connection.close()


def test_a_read_flood_neither_stops_batches_nor_outlives_itself(
    start_host: Callable[..., HostUnderTest],
) -> None:
    host = start_host("--no-agent")
    for start in range(0, SERVERS, 5000):
        items = [{"server": f"flood-{i:05d}", "cpu": 1.0} for i in range(start, start + 5000)]
        assert host.post("/loads", items)[0] == 202
    stats = http_json("GET", host.api + "/stats", timeout=10)[1]
    before = stats["aggregator"]["batches"]
    stop = threading.Event()
    answered: list[int] = []
    threads = [
        threading.Thread(target=flood, args=(host, stop, answered), daemon=True)
        for _ in range(CLIENTS)
    ]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(FLOOD_SECONDS)
    stop.set()
    for thread in threads:
        thread.join(timeout=10)
    flooded = time.monotonic() - began
    ended = time.monotonic()
    status, _ = http_json("GET", host.api + "/health", timeout=5)
    assert status == 200 and time.monotonic() - ended < 1.0
    stats = http_json("GET", host.api + "/stats", timeout=10)[1]["aggregator"]
    assert stats["batches"] - before >= flooded - 2  # one a second, flood or not
    lags = stats["flush_lag_recent_seconds"][-int(FLOOD_SECONDS) :]
    assert max(lags) < 1.0, lags
    assert answered.count(200) > CLIENTS  # the flood was real: pages were served
