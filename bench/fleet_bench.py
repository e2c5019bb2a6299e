"""The fleet overview's first page for a large fleet, through the real read path, memory mode.

A :class:`Rollups` is filled with ``--servers`` servers, every one with a sample in each of the
60 minutes, and handed to a real :class:`AggregatorDaemon` (its query loop in a thread, ipc
sockets); the API is ``create_app`` over a ``ZmqBackend`` served by waitress on a free loopback
port, and ``GET /fleet`` (the default first page: 100 rows, sorted by status then cpu) is timed
from request to last byte over a kept-alive connection.

- cold: the first request after the table was invalidated (a new minute, as after a new batch):
  the whole table is recomputed over the rings, then sorted and paged;
- warm: the same request again (the table is cached: status pass, sort, page);
- table: ``fleet_table`` alone, in this process, before the daemon starts;
- grid: ``GET /fleet/grid`` (every server), warm.

    .venv/bin/python -m bench.fleet_bench [--servers 10000] [--repeats 15]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from servertrack.aggregator.daemon import AggregatorConfig, AggregatorDaemon
from servertrack.aggregator.fleet import fleet_table
from servertrack.aggregator.rollups import Rollups
from servertrack.api.app import create_app
from servertrack.api.backend import ZmqBackend
from servertrack.api.server import make_waitress
from servertrack.api.stats import ApiStats
from servertrack.common.testing import FakeClock, free_port

NOW = 1_800_000_030.0
TARGET_MS = 100.0


def filled(servers: int, clock: FakeClock) -> Rollups:
    """``servers`` servers with one sample in each of the last 60 minutes."""
    rng = np.random.default_rng(1)
    rollups = Rollups(clock, capacity=servers)
    rows = np.array([rollups.row_for(f"server-{i:06d}.example.com") for i in range(servers)])
    current = NOW - NOW % 60
    for minute in range(59, -1, -1):
        ts = np.full(servers, current - minute * 60 + 5.0)
        cpu = np.round(rng.uniform(0, 100, servers), 1)
        ram = np.round(rng.uniform(0, 100, servers), 1)
        rollups.apply(rows, ts, cpu, ram, NOW)
    return rollups


def timed_get(connection: http.client.HTTPConnection, path: str) -> tuple[float, bytes]:
    began = time.perf_counter()
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read()
    elapsed = (time.perf_counter() - began) * 1e3
    if response.status != 200:
        raise RuntimeError(f"GET {path}: {response.status} {body[:200]!r}")
    return elapsed, body


def median(values: list[float]) -> float:
    return round(statistics.median(values), 1)


def measure(servers: int, repeats: int) -> dict[str, Any]:
    clock = FakeClock(NOW)
    rollups = filled(servers, clock)
    table_ms = []
    for _ in range(5):
        began = time.perf_counter()
        fleet_table(rollups, clock())
        table_ms.append((time.perf_counter() - began) * 1e3)
    context = zmq.Context()
    with tempfile.TemporaryDirectory(prefix="servertrack-fleet-bench-") as folder:
        ipc = Path(folder)
        config = AggregatorConfig(
            batches=f"ipc://{ipc}/batches",
            query=f"ipc://{ipc}/query",
            receiver_control=f"ipc://{ipc}/receiver",
        )
        daemon = AggregatorDaemon(config, rollups, context, clock=clock)
        aggregator = threading.Thread(target=daemon.run, name="aggregator", daemon=True)
        aggregator.start()
        backend = ZmqBackend(config.receiver_control, config.query, 5.0, context)
        server = make_waitress(create_app(backend, clock), "127.0.0.1", free_port(), 4, ApiStats())
        serving = threading.Thread(target=server.run, name="waitress", daemon=True)
        serving.start()
        connection = http.client.HTTPConnection("127.0.0.1", server.effective_port, timeout=30)
        try:
            timed_get(connection, "/fleet")  # connections and sockets warmed
            cold, warm, grid = [], [], []
            rows = 0
            for _ in range(repeats):
                clock.advance(60.0)  # a new minute: the cached table is stale
                elapsed, body = timed_get(connection, "/fleet")
                cold.append(elapsed)
                rows = len(json.loads(body)["rows"])
                warm.append(timed_get(connection, "/fleet")[0])
                grid.append(timed_get(connection, "/fleet/grid")[0])
        finally:
            connection.close()
            server.stop(timeout=5)
            daemon.stop.set()
            aggregator.join(timeout=10)
            backend.close()
            context.destroy(linger=0)
    return {
        "servers": servers,
        "minutes_filled": 60,
        "rows_on_page": rows,
        "fleet_table_ms_median": median(table_ms),
        "first_page_cold_ms_median": median(cold),
        "first_page_cold_ms_max": round(max(cold), 1),
        "first_page_warm_ms_median": median(warm),
        "grid_ms_median": median(grid),
        "target_ms": TARGET_MS,
        "met": statistics.median(cold) <= TARGET_MS,
        "mode": "memory",
    }


def measure_redis(servers: int, repeats: int) -> dict[str, Any]:
    """The same first page in Redis mode: a fresh redis-server filled with ``servers`` servers
    (every minute and hour), read by the API straight from Redis (``StoreBackend``)."""
    from bench.redis_bench import fill_all_buckets
    from servertrack.api.store_backend import StoreBackend
    from servertrack.common.redis_testing import RedisServer
    from servertrack.store.redis_store import RedisStore

    with tempfile.TemporaryDirectory(prefix="servertrack-fleet-redis-") as folder:
        redis_server = RedisServer(Path(folder) / "redis").start()
        writer = RedisStore(redis_server.url, max_servers=None)
        reader = RedisStore(redis_server.url)
        server = None
        try:
            writer.open()
            fill_all_buckets(writer, servers, time.time())
            clock = FakeClock(time.time())
            backend = StoreBackend(reader, None, clock)
            server = make_waitress(
                create_app(backend, clock), "127.0.0.1", free_port(), 4, ApiStats()
            )
            threading.Thread(target=server.run, name="waitress", daemon=True).start()
            connection = http.client.HTTPConnection("127.0.0.1", server.effective_port, timeout=30)
            try:
                timed_get(connection, "/fleet")
                cold, warm = [], []
                rows = 0
                for _ in range(repeats):
                    clock.advance(1.0)  # the Redis table is read again every second
                    elapsed, body = timed_get(connection, "/fleet")
                    cold.append(elapsed)
                    rows = len(json.loads(body)["rows"])
                    warm.append(timed_get(connection, "/fleet")[0])
            finally:
                connection.close()
        finally:
            if server is not None:
                server.stop(timeout=5)
            writer.close()
            reader.close()
            redis_server.stop()
    return {
        "servers": servers,
        "rows_on_page": rows,
        "first_page_cold_ms_median": median(cold),
        "first_page_cold_ms_max": round(max(cold), 1),
        "first_page_warm_ms_median": median(warm),
        "target_ms": TARGET_MS,
        "met": statistics.median(cold) <= TARGET_MS,
        "mode": "redis",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet_bench", description=__doc__)
    parser.add_argument("--servers", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--mode", choices=["memory", "redis"], default="memory")
    args = parser.parse_args(argv)
    how = measure if args.mode == "memory" else measure_redis
    print(json.dumps(how(args.servers, args.repeats), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
