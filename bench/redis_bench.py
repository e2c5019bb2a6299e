"""Redis store figures, side by side in one run, each Redis started fresh on a free port.

- sustained: servers sending one sample a second, merged into one redis-server by one writer
  (this process), stepping the fleet up until a step fails: a step passes when every batch is
  merged within 2 s of being cut (flushes fold the batches that piled up, as the aggregator does
  when behind), nothing is lost (every merge counted in full, and sampled servers' hour buckets
  hold one sample per batch), and the writer keeps up;
- the same into a 3-master Redis Cluster on this box, and the ratio to one Redis;
- Redis memory per server with all 84 buckets of every server full (health and index included);
- Redis cores per 10k samples/s (INFO cpu over the steps that passed);
- view() latency at 64 concurrent readers (8 processes x 8 threads, each with its own
  connection) while a writer process merges half the sustained maximum;
- fleet_rows() time for the memory fleet.

    python -m bench.redis_bench           # full (about 10 minutes)
    python -m bench.redis_bench --quick   # short holds and two steps
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import redis

from servertrack.common.batch import ServerHealth
from servertrack.readmodel.errors import StoreUnavailable
from servertrack.store.cells import BatchColumns
from servertrack.store.keys import SHARDS, server_keys, shard_keys
from servertrack.store.reader import RedisReader
from servertrack.store.redis_store import RedisStore
from servertrack.testing.redis import RedisClusterUnderTest, RedisServer

FULL_STEPS = [10_000, 25_000, 50_000, 75_000, 100_000, 125_000, 150_000]
QUICK_STEPS = [10_000, 50_000]
MAX_FLUSH_SECONDS = 2.0
WARM_UP = 4.0
"""Seconds at the start of a step not counted in flush times (the first merge creates every
server's keys and index entry)."""
READERS = (8, 8)
"""Reader processes x threads: 64 concurrent view() calls, each thread its own connection."""
READER_NICENESS = 5
READER_SWITCH_INTERVAL = 0.0005
OPEN_LOOP_RATE = 1000.0
"""Views a second offered in all by the 64 open-loop readers."""


def names_of(servers: int) -> list[str]:
    return [f"server-{k:07d}.example.com" for k in range(servers)]


def cpu_seconds(clients: list[redis.Redis]) -> float:
    """Redis CPU (user + sys) summed over ``clients``' servers."""
    total = 0.0
    for client in clients:
        info = client.info("cpu")
        total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return total


class Feeder:
    """Cuts one batch a second (one sample per server), as a receiver does."""

    def __init__(self, servers: int, seed: int = 1) -> None:
        self.servers = servers
        self.rng = np.random.default_rng(seed)
        self.number = 0
        self.rows = np.arange(servers)

    def batch(self, now: float) -> BatchColumns:
        rng, n = self.rng, self.servers
        batch = BatchColumns(
            self.number,
            self.rows,
            now - rng.random(n) * 0.9,
            np.round(rng.uniform(0, 100, n), 1),
            np.round(rng.uniform(0, 100, n), 1),
            np.full(n, self.number, np.int64),
        )
        self.number += 1
        return batch


def sustain(
    url: str, servers: int, hold: float, writer: str = "bench", prefilled: float | None = None
) -> dict[str, Any]:
    """Merge ``servers`` samples a second for ``hold`` seconds (plus warm-up); flush latency is
    from a batch's cut to the end of the merge that applied it. ``prefilled``: the time of a
    :func:`fill_all_buckets` before, whose samples the loss check then counts too."""
    names = names_of(servers)
    feeder = Feeder(servers)
    store = RedisStore(url, max_servers=None)
    store.open()
    pending: list[tuple[BatchColumns, float]] = []
    latencies: list[float] = []
    folded: list[int] = []
    applied = generated = failures = 0
    began = time.monotonic()
    next_cut = began
    cpu_began = time.process_time()
    try:
        while True:
            now = time.monotonic()
            if now - began >= WARM_UP + hold:
                break
            while now >= next_cut:
                pending.append((feeder.batch(time.time()), next_cut))
                generated += servers
                next_cut += 1.0
            if not pending:
                time.sleep(max(0.0, next_cut - time.monotonic()))
                continue
            try:
                result = store.merge(writer, [b for b, _ in pending], names, None, time.time())
            except StoreUnavailable:
                failures += 1
                time.sleep(0.1)
                continue
            done = time.monotonic()
            applied += result.applied
            if done - began > WARM_UP:
                latencies.extend(done - cut for _, cut in pending)
                folded.append(len(pending))
            pending = []
        # anything still cut is merged before counting
        if pending:
            result = store.merge(writer, [b for b, _ in pending], names, None, time.time())
            applied += result.applied
        writer_cpu = time.process_time() - cpu_began
        checked = random.Random(1).sample(names, min(500, servers))
        wrong = 0
        for name in checked:
            now = time.time()
            view = RedisReader(store).view(name, now)
            held = int(view.hours["samples"].sum()) if view else 0
            wrong += held != feeder.number + filled_in_window(prefilled, now)
        seconds = time.monotonic() - began
    finally:
        store.close()
    worst = max(latencies, default=float("inf"))
    return {
        "servers": servers,
        "seconds": round(seconds, 1),
        "batches": feeder.number,
        "flush_p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "flush_max_s": round(worst, 3),
        "batches_per_merge_max": max(folded, default=0),
        "lost": generated - applied,
        "servers_checked_wrong": wrong,
        "unavailable": failures,
        "writer_cpu_s": round(writer_cpu, 1),
        "passed": worst <= MAX_FLUSH_SECONDS and applied == generated and wrong == 0,
    }


def step_up(url: str, clients: list[redis.Redis], steps: list[int], hold: float) -> dict[str, Any]:
    """Run the steps in order until one fails; the figure is the last step that passed."""
    results = []
    best = 0
    for servers in steps:
        for client in clients:
            client.flushall()
        cpu_before = cpu_seconds(clients)
        result = sustain(url, servers, hold)
        result["redis_cpu_s"] = round(cpu_seconds(clients) - cpu_before, 1)
        result["redis_cores_per_10k_samples_s"] = round(
            result["redis_cpu_s"] / result["seconds"] / (servers / 10_000), 3
        )
        results.append(result)
        print(json.dumps(result), file=sys.stderr, flush=True)
        if not result["passed"]:
            break
        best = servers
    return {"sustained_servers": best, "steps": results}


def fill_stamps(now: float) -> list[float]:
    """One sample in each of the 60 minutes and the 24 hours up to ``now``."""
    return [now - minute * 60 for minute in range(60)] + [now - h * 3600 for h in range(1, 24)]


def filled_in_window(filled: float | None, now: float) -> int:
    """How many of one server's fill samples are still inside the hour window at ``now``."""
    if filled is None:
        return 0
    oldest = (now - now % 3600) - 23 * 3600
    return sum(1 for ts in fill_stamps(filled) if ts - ts % 3600 >= oldest)


def fill_all_buckets(store: RedisStore, servers: int, now: float) -> None:
    """Every server gets one sample in each of its 60 minutes and 24 hours, plus its health."""
    names = names_of(servers)
    stamps = fill_stamps(now)
    health = {name: ServerHealth(ips=("192.0.2.10", "2001:db8::10"), lost=3) for name in names}
    chunk = 5000
    for start in range(0, servers, chunk):
        rows = np.arange(start, min(servers, start + chunk))
        ts = np.repeat(np.asarray(stamps), rows.size)
        batch = BatchColumns(
            0,
            np.tile(rows, len(stamps)),
            ts,
            np.full(ts.size, 42.5),
            np.full(ts.size, 61.25),
        )
        part = {names[k]: health[names[k]] for k in rows.tolist()}
        store.merge("fill", [batch], names, part, now)


def memory(url: str, client: redis.Redis, servers: int) -> dict[str, Any]:
    client.flushall()
    before = int(client.info("memory")["used_memory"])
    now = time.time()
    store = RedisStore(url, max_servers=None)
    store.open()
    try:
        fill_all_buckets(store, servers, now)
        view = RedisReader(store).view(names_of(1)[0], now)
        assert view is not None and len(view.minutes) == 60 and len(view.hours) == 24
        began = time.perf_counter()
        rows = RedisReader(store).fleet_rows(now)
        fleet_ms = (time.perf_counter() - began) * 1e3
        assert len(rows) == servers
    finally:
        store.close()
    after = int(client.info("memory")["used_memory"])
    sample = random.Random(2).sample(names_of(servers), 200)
    per_key = {"minutes": 0, "hours": 0, "health": 0}
    encodings = set()
    for name in sample:
        for label, key in zip(per_key, server_keys(name), strict=True):
            per_key[label] += int(client.memory_usage(key, samples=0) or 0)
        encodings.add(client.object("encoding", server_keys(name)[1]).decode())
    shards = sum(
        int(client.memory_usage(key, samples=0) or 0)
        for k in range(SHARDS)
        for key in shard_keys(k)
    )
    return {
        "servers": servers,
        "redis_bytes_per_server": round((after - before) / servers),
        "key_bytes_per_server": {
            label: round(total / len(sample)) for label, total in per_key.items()
        },
        "index_and_summary_bytes_per_server": round(shards / servers),
        "hour_hash_encoding": sorted(encodings),
        "fleet_rows_ms": round(fleet_ms, 1),
    }


# -- reads under ingest -------------------------------------------------------------------------
def _reader(
    url: str, servers: int, threads: int, seconds: float, interval: float | None, out: Any
) -> None:
    """``threads`` readers, each with its own connection: back to back (closed loop), or one
    view every ``interval`` seconds each (open loop; latency then counts from the scheduled
    start, so a reader that falls behind is not flattered)."""
    # Readers yield the CPU to the writer, so that ingest really runs at the rate asked on
    # this 2-core box (API replicas would run elsewhere).
    os.nice(READER_NICENESS)
    # A thread whose answer has arrived waits for the interpreter lock up to the switch interval
    # (5 ms by default) per runnable thread: a latency tail that is not the store's.
    sys.setswitchinterval(READER_SWITCH_INTERVAL)
    names = names_of(servers)
    store = RedisStore(url, max_servers=None)
    store.open()
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors = [0] * threads
    start = time.perf_counter()
    stop = start + seconds

    def loop(slot: int) -> None:
        rng = random.Random(slot + os.getpid())
        scheduled = start + (rng.random() * interval if interval else 0.0)
        while scheduled < stop:
            if interval:
                time.sleep(max(0.0, scheduled - time.perf_counter()))
            else:
                scheduled = time.perf_counter()
            try:
                RedisReader(store).view(rng.choice(names), time.time())
            except StoreUnavailable:
                errors[slot] += 1
            else:
                latencies[slot].append(time.perf_counter() - scheduled)
            scheduled += interval or 0.0

    workers = [threading.Thread(target=loop, args=(k,)) for k in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    store.close()
    out.put(([x for part in latencies for x in part], sum(errors)))


def _writer(url: str, servers: int, seconds: float, filled: float, out: Any) -> None:
    out.put(sustain(url, servers, seconds, writer="half", prefilled=filled))


def reads_under_ingest(
    url: str,
    client: redis.Redis,
    servers: int,
    seconds: float,
    readers: tuple[int, int] = READERS,
    rate: float | None = None,
) -> dict[str, Any]:
    """view() latency with ``readers`` (processes, threads) while a writer process merges
    ``servers`` samples a second; back to back, or at ``rate`` views a second in all."""
    client.flushall()
    filled = time.time()
    with contextlib.closing(RedisStore(url, max_servers=None)) as store:
        store.open()
        fill_all_buckets(store, servers, filled)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    writer = context.Process(target=_writer, args=(url, servers, seconds + 4, filled, results))
    writer.start()
    time.sleep(WARM_UP + 1)
    processes, threads = readers
    interval = processes * threads / rate if rate else None
    started = [
        context.Process(target=_reader, args=(url, servers, threads, seconds, interval, results))
        for _ in range(processes)
    ]
    for reader in started:
        reader.start()
    outcomes = [results.get(timeout=seconds + 600) for _ in range(processes + 1)]
    for process in (writer, *started):
        process.join(timeout=60)
    ingest = next(o for o in outcomes if isinstance(o, dict))
    latencies = sorted(x for o in outcomes if isinstance(o, tuple) for x in o[0])
    errors = sum(o[1] for o in outcomes if isinstance(o, tuple))
    return {
        "servers": servers,
        "readers": processes * threads,
        "offered_per_s": rate,
        "views": len(latencies),
        "views_per_s": round(len(latencies) / seconds),
        "p50_ms": round(latencies[len(latencies) // 2] * 1e3, 2) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1e3, 2) if latencies else None,
        "max_ms": round(latencies[-1] * 1e3, 2) if latencies else None,
        "unavailable": errors,
        "ingest": ingest,
    }


# -- the run ------------------------------------------------------------------------------------
@contextlib.contextmanager
def single_redis(workdir: Path) -> Iterator[RedisServer]:
    server = RedisServer(workdir / "single").start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def cluster_redis(workdir: Path) -> Iterator[RedisClusterUnderTest]:
    cluster = RedisClusterUnderTest(workdir / "cluster", masters=3, replicas=0).start()
    try:
        yield cluster
    finally:
        cluster.stop()


def run(quick: bool) -> dict[str, Any]:
    steps = QUICK_STEPS if quick else FULL_STEPS
    hold = 6.0 if quick else 30.0
    results: dict[str, Any] = {"quick": quick}
    with tempfile.TemporaryDirectory(prefix="redis-bench-") as scratch:
        workdir = Path(scratch)
        with single_redis(workdir) as server:
            client = server.client(timeout=30)
            results["single"] = step_up(server.url, [client], steps, hold)
            results["memory"] = memory(server.url, client, 10_000 if quick else 20_000)
            half = max(results["single"]["sustained_servers"] // 2, 5_000)
            seconds = 8 if quick else 30
            results["reads"] = reads_under_ingest(server.url, client, half, seconds)
            results["reads_open"] = reads_under_ingest(
                server.url, client, half, seconds, rate=OPEN_LOOP_RATE
            )
        with cluster_redis(workdir) as cluster:
            clients = [node.client(timeout=30) for node in cluster.nodes]
            results["cluster"] = step_up(cluster.url, clients, steps, hold)
    single = results["single"]["sustained_servers"]
    results["cluster_ratio"] = (
        round(results["cluster"]["sustained_servers"] / single, 2) if single else None
    )
    passed = [s for s in results["single"]["steps"] if s["passed"]]
    results["redis_cores_per_10k_samples_s"] = (
        passed[-1]["redis_cores_per_10k_samples_s"] if passed else None
    )
    return results


def table(results: dict[str, Any]) -> str:
    single, cluster = results["single"], results["cluster"]
    memory_ = results["memory"]
    reads = results["reads"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    lines = [
        "| figure | target | measured | |",
        "|---|---|---|---|",
        f"| servers at 1 sample/s into one redis-server, zero loss, flush ≤ 2 s | ≥ 50,000 | "
        f"{single['sustained_servers']:,} | {verdict(single['sustained_servers'] >= 50_000)} |",
        f"| the same into a 3-master cluster on this box | | {cluster['sustained_servers']:,} | |",
        f"| cluster ÷ one redis-server | ≥ 0.8 | {results['cluster_ratio']} | "
        f"{verdict((results['cluster_ratio'] or 0) >= 0.8)} |",
        f"| Redis memory per server, all 84 buckets full (bytes) | ≤ 8,192 | "
        f"{memory_['redis_bytes_per_server']:,} | "
        f"{verdict(memory_['redis_bytes_per_server'] <= 8192)} |",
        f"| view() p99 at 64 readers while ingest runs at half the maximum (ms) | ≤ 20 | "
        f"{reads['p99_ms']} | {verdict((reads['p99_ms'] or 1e9) <= 20)} |",
        f"| view() p50 / p99 at 64 readers back to back (ms), views/s | | "
        f"{reads['p50_ms']} / {reads['p99_ms']}, {reads['views_per_s']:,}/s | |",
        f"| view() p50 / p99 at 64 connections, {OPEN_LOOP_RATE:,.0f} views/s offered (ms) | | "
        f"{results['reads_open']['p50_ms']} / {results['reads_open']['p99_ms']} | |",
        f"| writer flush p50 / max during the reads (s) | ≤ 2 | "
        f"{reads['ingest']['flush_p50_s']} / {reads['ingest']['flush_max_s']} | |",
        f"| Redis cores per 10k samples/s | | {results['redis_cores_per_10k_samples_s']} | |",
        f"| fleet_rows() for {memory_['servers']:,} servers (ms) | | "
        f"{memory_['fleet_rows_ms']} | |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short holds, two steps")
    args = parser.parse_args(argv)
    results = run(args.quick)
    print(table(results))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
