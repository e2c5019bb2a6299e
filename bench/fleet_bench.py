"""The fleet overview's first page for a large fleet, through the real read path, memory mode.

A :class:`Rollups` is filled with ``--servers`` servers, every one with a sample in each of the
60 minutes, and handed to a real :class:`AggregatorDaemon` (its query loop in a thread, ipc
sockets); the API is ``create_app`` over a ``ZmqBackend`` served by waitress on a free loopback
port, and ``GET /fleet`` (the default first page: 100 rows, sorted by status then cpu) is timed
from request to last byte over a kept-alive connection.

- cold: the first request after the table was invalidated (a new minute, as after a new batch):
  the table is made again from what the rollups keep for it (each server's current values, the
  rows in name order), then the page is picked;
- warm: the same request again (the table is cached: status pass, the page's part of the order);
- table: ``fleet_table`` alone, in this process, before the daemon starts;
- grid: ``GET /fleet/grid`` (every server), warm.

:func:`measure_at_cap` is the fleet at ``--max-servers`` through a real ``servertrack run``:
250,000 names created through one Graphite connection in 5 s, then every server reporting a cpu
and a ram line every 5 s (100,000 lines/s), while ``GET /fleet`` is timed four times a second and
``GET /fleet/grid`` every 5 s, as dashboards do. It reports, for the creation and the reporting
phase apart, the /fleet latency p50/p99 and the share of 200 answers (and of 200s within 1 s),
the grid's size, and the aggregator's flush lag p99 (the 2-s rule).

    .venv/bin/python -m bench.fleet_bench [--servers 10000] [--repeats 15]
    .venv/bin/python -m bench.fleet_bench --at-cap [--servers 250000]
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
from servertrack.common.fleet_testing import FleetSchedule, Read, run_fleet
from servertrack.common.limits import DEFAULT_MAX_SERVERS
from servertrack.common.testing import FakeClock, free_port, launch_host

NOW = 1_800_000_030.0
TARGET_MS = 100.0
AT_CAP_TARGET_S = 1.0
"""A /fleet page answers 200 within this at ``--max-servers``, while servers report."""
LAG_LIMIT_S = 2.0


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


def read_figures(reads: list[Read]) -> dict[str, Any]:
    """Latency p50/p99 (ms) of ``reads`` and the share answered 200, and 200 within 1 s."""
    if not reads:
        return {"reads": 0}
    ms = [read.seconds * 1e3 for read in reads]
    ok = [read for read in reads if read.status == 200]
    fast = [read for read in ok if read.seconds <= AT_CAP_TARGET_S]
    return {
        "reads": len(reads),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "max_ms": round(max(ms), 1),
        "ok_ratio": round(len(ok) / len(reads), 4),
        "ok_within_1s_ratio": round(len(fast) / len(reads), 4),
    }


def lag_figures(lags: list[float]) -> dict[str, Any]:
    if not lags:
        return {"batches": 0}
    return {
        "batches": len(lags),
        "p99_s": round(float(np.percentile(lags, 99)), 3),
        "max_s": round(max(lags), 3),
    }


def measure_at_cap(
    workdir: Path,
    servers: int = DEFAULT_MAX_SERVERS,
    create_seconds: int = 5,
    report_seconds: int = 30,
) -> dict[str, Any]:
    """The fleet at the server cap through a real host (see the module docstring)."""
    schedule = FleetSchedule(servers, create_seconds, report_seconds)
    port = free_port()
    host = launch_host(workdir, "--no-agent", "--graphite-port", str(port), name="fleet-cap")
    try:
        daemons = {name: host.child(name) for name in ("receiver", "aggregator", "api")}
        cpu_before = {name: sum(p.cpu_times()[:2]) for name, p in daemons.items()}
        began = time.monotonic()
        run = run_fleet(host, port, schedule)
        wall = time.monotonic() - began
        cores = {
            name: round((sum(p.cpu_times()[:2]) - cpu_before[name]) / wall, 2)
            for name, p in daemons.items()
        }
        rss = {name: p.memory_info().rss for name, p in daemons.items()}
        tracked = host.get("/stats")[1]["aggregator"]["servers_tracked"]
    finally:
        host.process.stop()
    grid_ok = [read for read in run.grid_reads if read.status == 200]
    refreshes = [read.size for read in grid_ok if not read.with_names]
    return {
        "servers": servers,
        "servers_tracked": tracked,
        "create_seconds": create_seconds,
        "report_seconds": report_seconds,
        "report_every_s": schedule.report_every,
        "lines_sent": run.sender["lines"],
        **run.totals,
        "sender_late_ticks": run.sender["late_ticks"],
        "sender_max_tick_s": round(run.sender.get("max_tick_s", 0.0), 2),
        "sender_error": run.sender.get("error"),
        "fleet_creating": read_figures(run.creating()),
        "fleet_reporting": read_figures(run.reporting()),
        "grid": read_figures(run.grid_reads),
        "grid_bytes_refresh": max(refreshes, default=None),
        "grid_bytes_with_names": max(
            (read.size for read in grid_ok if read.with_names), default=None
        ),
        "flush_lag_creating": lag_figures(run.lags_creating()),
        "flush_lag_reporting": lag_figures(run.lags_reporting()),
        "cores": cores,
        "rss_mb": {name: round(value / 2**20) for name, value in rss.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet_bench", description=__doc__)
    parser.add_argument("--servers", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--mode", choices=["memory", "redis"], default="memory")
    parser.add_argument("--at-cap", action="store_true", help="the fleet at the server cap")
    parser.add_argument("--report-seconds", type=int, default=30)
    args = parser.parse_args(argv)
    if args.at_cap:
        servers = args.servers if args.servers != 10_000 else DEFAULT_MAX_SERVERS
        with tempfile.TemporaryDirectory(prefix="servertrack-fleet-cap-") as folder:
            figures = measure_at_cap(Path(folder), servers, report_seconds=args.report_seconds)
        print(json.dumps(figures, indent=2))
        return 0
    how = measure if args.mode == "memory" else measure_redis
    print(json.dumps(how(args.servers, args.repeats), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
