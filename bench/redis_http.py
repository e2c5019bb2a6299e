"""Reads over HTTP in Redis mode: ``GET /servers/{name}/loads`` at 64 connections (wrk), on a
host running with ``--store redis://...``, idle and while the fleet ingests into the same Redis at
half the sustained maximum (the load generator's ZeroMQ publishers on this same machine), on each
HTTP server in turn.

    python -m bench.redis_http [--ingest 37500] [--seconds 20] [--http waitress granian]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench import http_bench, ingest
from servertrack.loadgen.main import send_fleet
from servertrack.testing.hosts import HostUnderTest, launch_host
from servertrack.testing.redis import RedisServer

HTTP_SERVERS = ("waitress", "granian")


def _feed(api: str, endpoint: str, rate: int, seconds: float) -> None:
    send_fleet(ingest.plan_for(rate, seconds, 2, api, endpoint, "rget"))


PARTS = ("receiver", "aggregator", "api")
"""The host's daemons, by module (granian's workers run the api's)."""


class CpuShare:
    """Cores each part used between :meth:`start` and :meth:`stop`: the host's daemons, the
    load generator, Redis, and the whole machine (wrk is the rest)."""

    def __init__(self, host_pid: int, feeder_pid: int | None, redis_pid: int) -> None:
        self.roots = {"host": host_pid, "generator": feeder_pid, "redis": redis_pid}
        self.began = 0.0
        self.before: dict[str, float] = {}

    def _label(self, root: str, process: psutil.Process) -> str:
        if root != "host":
            return root
        try:
            argv = " ".join(process.cmdline())
        except psutil.Error:
            return "host"
        return next((part for part in PARTS if f"servertrack.{part}" in argv), "host")

    def _seconds(self) -> dict[str, float]:
        used: dict[str, float] = {}
        for root, pid in self.roots.items():
            if pid is None:
                continue
            try:
                top = psutil.Process(pid)
                family = [top, *top.children(recursive=True)]
            except psutil.Error:
                continue
            for process in family:
                try:
                    times = process.cpu_times()
                except psutil.Error:
                    continue
                label = self._label(root, process)
                used[label] = used.get(label, 0.0) + times.user + times.system
        times = psutil.cpu_times()
        used["machine"] = sum(times) - times.idle - getattr(times, "iowait", 0.0)
        return used

    def start(self) -> None:
        self.began, self.before = time.monotonic(), self._seconds()

    def stop(self) -> dict[str, float]:
        elapsed = time.monotonic() - self.began
        after = self._seconds()
        return {
            label: round((seconds - self.before.get(label, 0.0)) / elapsed, 2)
            for label, seconds in sorted(after.items())
        }


def measure(
    ingest_rate: int = 37_500, seconds: float = 20.0, servers: tuple[str, ...] = HTTP_SERVERS
) -> dict[str, Any]:
    """The figures of each HTTP server, one after the other in this run."""
    http_bench.ensure_wrk()
    figures: dict[str, Any] = {"ingest_samples_per_s": ingest_rate}
    for server in servers:
        figures[server] = measure_one(server, ingest_rate, seconds)
    return figures


def measure_under_ingest(
    host: HostUnderTest,
    redis_server: RedisServer,
    names: list[str],
    ingest_rate: int,
    seconds: float,
    bare_url: str,
    bare_log: Path,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """GETs from the host, then from the bare server (the ceiling), while the fleet ingests."""
    assert redis_server.process is not None
    feeder = multiprocessing.get_context("fork").Process(
        target=_feed, args=(host.api, host.ingest, ingest_rate, 2 * seconds + 25)
    )
    feeder.start()
    try:
        time.sleep(10)  # past the first merges of every new server
        share = CpuShare(host.process.pid, feeder.pid, redis_server.process.pid)
        share.start()
        ours = http_bench.measure_get(host.api, names, seconds)
        ours["cores"] = share.stop()
        bare = http_bench.measure_bare_at(bare_url, bare_log, seconds)
    finally:
        feeder.join(timeout=seconds + 180)
        if feeder.is_alive():
            feeder.kill()
            feeder.join(timeout=10)
    return ours, bare


def measure_one(server: str, ingest_rate: int, seconds: float) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="servertrack-redis-http-") as folder:
        work = Path(folder)
        redis_server = RedisServer(work / "redis").start()
        host = launch_host(
            work, "--no-agent", "--store", redis_server.url, "--http", server, name="redis-http"
        )
        try:
            names = http_bench.populate(host.api)
            http_bench.wait_visible(host.api, names)
            assert redis_server.process is not None
            share = CpuShare(host.process.pid, None, redis_server.process.pid)
            share.start()
            figures["get_idle"] = http_bench.measure_get(host.api, names, seconds)
            figures["get_idle"]["cores"] = share.stop()
            with http_bench.bare_server(server) as (bare_url, bare_log):
                figures["bare_idle"] = http_bench.measure_bare_at(bare_url, bare_log, seconds)
                figures["get_under_ingest"], figures["bare_under_ingest"] = measure_under_ingest(
                    host, redis_server, names, ingest_rate, seconds, bare_url, bare_log
                )
            status, body = host.get("/stats")
            if status != 200:
                raise RuntimeError(f"/stats answered {status}: {body}")
            stats = body["aggregator"]
            figures["read_cache"] = body.get("api", {}).get("read_cache")
            figures["store_errors"] = stats.get("store_errors")
            figures["store_dropped"] = stats.get("store_dropped")
            figures["flush_lag_p99_seconds"] = stats.get("flush_lag_p99_seconds")
        finally:
            host.process.stop()
            redis_server.stop()
    for value in figures.values():
        if isinstance(value, dict):
            value.pop("wrk_stderr", None)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_http", description=__doc__)
    parser.add_argument("--ingest", type=int, default=37_500)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--http", nargs="+", choices=HTTP_SERVERS, default=list(HTTP_SERVERS))
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.ingest, args.seconds, tuple(args.http)), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
