"""Aggregator figures measured in a fresh process, through the aggregator's own code path
(``AggregatorState.apply``: id translation, slicing, rollups) with an injected clock.

- apply: median time to apply one 1-second batch of ``--batch`` samples (one per server), warm.
- memory: RSS growth per server once ``--servers`` servers have every one of their 60 minute and
  24 hour buckets filled, and the time a full ``gc.collect()`` then takes (median of 5).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from typing import Any

import numpy as np
import psutil
import zmq

from servertrack.aggregator.daemon import AggregatorConfig, AggregatorDaemon
from servertrack.common.batch import Batch
from servertrack.testing.hosts import FakeClock

NOW = 1_800_000_030.0


def make_daemon(clock: FakeClock) -> AggregatorDaemon:
    return AggregatorDaemon(AggregatorConfig(), context=zmq.Context.instance(), clock=clock)


def batch(number: int, servers: int, ts: float, names: bool, rng: np.random.Generator) -> Batch:
    return Batch(
        epoch="bench",
        number=number,
        sent=ts,
        ids=np.arange(servers, dtype=np.int32),
        ts=np.full(servers, ts),
        cpu=np.round(rng.uniform(0, 100, servers), 1),
        ram=np.round(rng.uniform(0, 100, servers), 1),
        names=[(i, f"server-{i:07d}.example.com") for i in range(servers)] if names else [],
    )


def measure_apply(servers: int, repeats: int = 15) -> dict[str, Any]:
    clock = FakeClock(NOW)
    daemon = make_daemon(clock)
    rng = np.random.default_rng(1)
    daemon.state.apply(batch(0, servers, NOW - 1, True, rng))
    times = []
    for number in range(1, repeats + 1):
        prepared = batch(number, servers, NOW - 1 + number * 1e-3, False, rng)
        began = time.perf_counter()
        daemon.state.apply(prepared)
        times.append(time.perf_counter() - began)
    return {
        "batch": servers,
        "apply_ms_median": round(statistics.median(times) * 1e3, 1),
        "apply_ms_max": round(max(times) * 1e3, 1),
    }


def measure_memory(servers: int) -> dict[str, Any]:
    process = psutil.Process()
    gc.collect()
    before = process.memory_info().rss
    clock = FakeClock(NOW)
    daemon = make_daemon(clock)
    rng = np.random.default_rng(2)
    stamps = [NOW - minute * 60 for minute in range(60)]
    stamps += [NOW - hour * 3600 for hour in range(1, 24)]
    for number, ts in enumerate(sorted(stamps)):
        daemon.state.apply(batch(number, servers, ts, number == 0, rng))
    row = daemon.store.row_of["server-0000000.example.com"]
    view = daemon.store.view("server-0000000.example.com")
    assert view is not None and len(view.minutes) == 60 and len(view.hours) == 24, row
    gc.collect()
    after = process.memory_info().rss
    pauses = []
    for _ in range(5):
        began = time.perf_counter()
        gc.collect()
        pauses.append(time.perf_counter() - began)
    return {
        "servers": servers,
        "rss_bytes_per_server": round((after - before) / servers),
        "rollup_array_bytes_per_server": round(daemon.store.nbytes / daemon.store.capacity),
        "gc_collect_ms_median": round(statistics.median(pauses) * 1e3, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("what", choices=["apply", "memory"])
    parser.add_argument("--servers", type=int, default=100_000)
    args = parser.parse_args()
    result = measure_apply(args.servers) if args.what == "apply" else measure_memory(args.servers)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
