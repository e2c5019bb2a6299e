"""Figures of ``servertrack.promapi``, measured in a fresh process (clean peak RSS).

- exposition: seconds to write the whole ``GET /metrics/servers`` body for ``--servers``
  servers (every family, every server), as text, as text gzipped (what Prometheus 2 asks
  for... in OpenMetrics: both are measured), median of ``--repeats``; and the memory it takes
  beyond the snapshot: the rise of the process's peak RSS over the first run, and the
  tracemalloc peak of a separate run.
- the route: ``GET /metrics/servers`` through the real API (the Falcon app as ``servertrack api``
  assembles it, on its waitress server, over the daemons backend asking a real aggregator daemon
  over ZeroMQ) for ``--servers`` servers with a sample in each of the last 60 minutes: seconds
  from the request to the body's last byte (gzipped text, gzipped OpenMetrics, plain text), the
  first scrape (the fleet table built) and the median of the next ones; and the process's RSS
  rise above its level before the scrape, sampled every 5 ms while it runs (an upper bound: the
  aggregator's reply is made in the same process).
- remote read: seconds to answer one query over the series cap (10,000 servers' cpu, 84
  samples each), from the request's bytes to the answer's.

The snapshot is what a real fleet gives: 12 samples a minute per server, values to 0.1 as
psutil reports them (so minima and maxima are short, means long), anomaly scores in [0, 1].

    .venv/bin/python -m bench.prom_bench [--servers 100000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import http.client
import json
import resource
import statistics
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cramjam
import numpy as np
import psutil
import zmq

from servertrack.aggregator.daemon import AggregatorConfig, AggregatorDaemon
from servertrack.api.assembly import assemble
from servertrack.api.daemons_backend import DaemonsBackend
from servertrack.api.server import make_waitress
from servertrack.promapi import prompb
from servertrack.promapi.exposition import (
    OPENMETRICS,
    TEXT,
    Format,
    ServerMinutes,
    exposition,
    gzipped,
)
from servertrack.promapi.families import HISTORY_FAMILIES
from servertrack.promapi.remote_read import Limits, SeriesHistory, handle
from servertrack.testing.hosts import FakeClock, free_port

NOW = 1_800_000_030.0
TARGET_SECONDS = 2.0
TARGET_MB = 100.0
READ_SERVERS = 10_000


def names(servers: int) -> list[str]:
    return [f"server-{i:07d}.example.com" for i in range(servers)]


def snapshot(servers: int) -> ServerMinutes:
    rng = np.random.default_rng(1)

    def minute() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        samples = np.round(rng.uniform(0, 100, (servers, 12)), 1)
        return samples.sum(axis=1) / 12, samples.min(axis=1), samples.max(axis=1)

    cpu, cpu_min, cpu_max = minute()
    ram, ram_min, ram_max = minute()
    return ServerMinutes(
        names=names(servers),
        minute_start=NOW - NOW % 60 - 60,
        cpu=cpu,
        cpu_min=cpu_min,
        cpu_max=cpu_max,
        ram=ram,
        ram_min=ram_min,
        ram_max=ram_max,
        samples=np.full(servers, 12.0),
        cpu_anomaly=rng.uniform(0, 1, servers),
        ram_anomaly=rng.uniform(0, 1, servers),
        last_seen=NOW - rng.uniform(0, 5, servers),
        now=NOW,
        status=np.full(servers, 2.0),
    )


def body(snap: ServerMinutes, fmt: Format, gzip: bool) -> Iterator[bytes]:
    chunks = exposition(snap, None, fmt)
    return gzipped(chunks) if gzip else chunks


def drain(chunks: Iterator[bytes]) -> tuple[int, int]:
    """Consume a body as a server would; its size and its largest chunk."""
    total = largest = 0
    for chunk in chunks:
        total += len(chunk)
        largest = max(largest, len(chunk))
    return total, largest


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_exposition(servers: int, repeats: int) -> dict[str, Any]:
    snap = snapshot(servers)
    before = peak_rss_mb()
    size, largest = drain(body(snap, TEXT, gzip=True))
    rss_rise = peak_rss_mb() - before
    figures: dict[str, Any] = {"servers": servers, "peak_rss_rise_mb": round(rss_rise, 1)}
    for label, fmt, gzip in (
        ("text", TEXT, False),
        ("text_gzip", TEXT, True),
        ("openmetrics_gzip", OPENMETRICS, True),
    ):
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            size, largest = drain(body(snap, fmt, gzip))
            times.append(time.perf_counter() - began)
        figures[label] = {
            "seconds_median": round(statistics.median(times), 3),
            "seconds_max": round(max(times), 3),
            "bytes": size,
            "largest_chunk_bytes": largest,
        }
    tracemalloc.start()
    drain(body(snap, TEXT, gzip=True))
    figures["tracemalloc_peak_mb"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
    tracemalloc.stop()
    worst = max(
        figures["text_gzip"]["seconds_median"], figures["openmetrics_gzip"]["seconds_median"]
    )
    memory = max(figures["peak_rss_rise_mb"], figures["tracemalloc_peak_mb"])
    figures["met"] = worst <= TARGET_SECONDS and memory <= TARGET_MB
    return figures


def history_source(servers: int) -> Any:
    rng = np.random.default_rng(2)
    minute_starts = (NOW - NOW % 60) - 60 * np.arange(59, -1, -1, dtype=np.int64)
    hour_starts = (NOW - NOW % 3600) - 3600 * np.arange(23, -1, -1, dtype=np.int64)
    minutes = {f.name: rng.uniform(0, 100, (servers, 60)) for f in HISTORY_FAMILIES}
    hours = {f.name: rng.uniform(0, 100, (servers, 24)) for f in HISTORY_FAMILIES}
    rows = {name: row for row, name in enumerate(names(servers))}

    def history(wanted: Sequence[str]) -> SeriesHistory:
        picked = [rows[name] for name in wanted]
        return SeriesHistory(
            minute_starts,
            hour_starts,
            {family: values[picked] for family, values in minutes.items()},
            {family: values[picked] for family, values in hours.items()},
        )

    return history


class RssWatch:
    """The highest RSS of this process while it runs, sampled every 5 ms in a thread."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.stop = threading.Event()
        self.peak = self.process.memory_info().rss
        self.thread = threading.Thread(target=self._run, name="rss-watch", daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.005):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> RssWatch:
        self.base = self.process.memory_info().rss
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)

    @property
    def rise_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def timed_scrape(
    connection: http.client.HTTPConnection, headers: dict[str, str]
) -> tuple[float, int, float]:
    """One scrape of the route read to its last byte: seconds, body bytes, RSS rise (MB)."""
    with RssWatch() as watch:
        began = time.perf_counter()
        connection.request("GET", "/metrics/servers", headers=headers)
        response = connection.getresponse()
        size = 0
        while chunk := response.read(1 << 16):
            size += len(chunk)
        elapsed = time.perf_counter() - began
    if response.status != 200:
        raise RuntimeError(f"GET /metrics/servers answered {response.status}")
    return elapsed, size, watch.rise_mb


ROUTE_FORMATS = {
    "text_gzip": {"Accept-Encoding": "gzip"},
    "openmetrics_gzip": {
        "Accept": "application/openmetrics-text; version=1.0.0",
        "Accept-Encoding": "gzip",
    },
    "text": {},
}


def measure_route(servers: int, repeats: int) -> dict[str, Any]:
    """``GET /metrics/servers`` through the real API over a real aggregator daemon."""
    from bench.fleet_bench import filled  # the fleet bench fills rollups the same way

    clock = FakeClock(NOW)
    rollups = filled(servers, clock)
    context = zmq.Context()
    figures: dict[str, Any] = {"servers": servers, "minutes_filled": 60}
    with tempfile.TemporaryDirectory(prefix="servertrack-prom-bench-") as folder:
        ipc = Path(folder)
        config = AggregatorConfig(
            batches=f"ipc://{ipc}/batches",
            query=f"ipc://{ipc}/query",
            receiver_control=f"ipc://{ipc}/receiver",
        )
        daemon = AggregatorDaemon(config, rollups, context, clock=clock)
        aggregator = threading.Thread(target=daemon.run, name="aggregator", daemon=True)
        aggregator.start()
        backend = DaemonsBackend(config.receiver_control, config.query, 30.0, context)
        app, reads, stats = assemble(backend, clock=clock)
        reads.start()
        server = make_waitress(app, "127.0.0.1", free_port(), 4, stats)
        serving = threading.Thread(target=server.run, name="waitress", daemon=True)
        serving.start()
        connection = http.client.HTTPConnection("127.0.0.1", server.effective_port, timeout=60)
        try:
            connection.request("GET", "/servers?limit=1")  # sockets to the aggregator warmed
            connection.getresponse().read()
            first, _, first_rise = timed_scrape(connection, ROUTE_FORMATS["text_gzip"])
            figures["first_scrape_s"] = round(first, 3)
            rises = [first_rise]
            for label, headers in ROUTE_FORMATS.items():
                times = []
                size = 0
                for _ in range(repeats):
                    elapsed, size, rise = timed_scrape(connection, headers)
                    times.append(elapsed)
                    rises.append(rise)
                figures[label] = {
                    "seconds_median": round(statistics.median(times), 3),
                    "seconds_max": round(max(times), 3),
                    "bytes": size,
                }
        finally:
            connection.close()
            server.stop(timeout=5)
            daemon.stop.set()
            aggregator.join(timeout=10)
            reads.close()
            context.destroy(linger=0)
    figures["rss_rise_mb_max"] = round(max(rises), 1)
    worst = max(
        figures["first_scrape_s"],
        figures["text_gzip"]["seconds_median"],
        figures["openmetrics_gzip"]["seconds_median"],
    )
    figures["met"] = worst <= TARGET_SECONDS and figures["rss_rise_mb_max"] <= TARGET_MB
    return figures


def measure_remote_read(repeats: int) -> dict[str, Any]:
    history = history_source(READ_SERVERS)
    fleet = names(READ_SERVERS)
    request = prompb.ReadRequest()
    query = request.queries.add(start_timestamp_ms=0, end_timestamp_ms=2**62)
    query.matchers.add(type=0, name="__name__", value="servertrack_server_cpu_percent")
    raw = bytes(cramjam.snappy.compress_raw(request.SerializeToString()))
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        answer = handle(raw, "snappy", None, fleet, history, Limits())
        times.append(time.perf_counter() - began)
    return {
        "series": READ_SERVERS,
        "samples": READ_SERVERS * 84,
        "seconds_median": round(statistics.median(times), 3),
        "answer_bytes": len(answer),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.prom_bench", description=__doc__)
    parser.add_argument("--servers", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    figures = {
        "route": measure_route(args.servers, args.repeats),
        "exposition": measure_exposition(args.servers, args.repeats),
        "remote_read": measure_remote_read(max(1, args.repeats // 2)),
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
