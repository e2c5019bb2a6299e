"""Reads over HTTP in Redis mode: ``GET /servers/{name}/loads`` at 64 connections (wrk), on a
host running with ``--store redis://...``, idle and while the fleet ingests into the same Redis at
half the sustained maximum (the load generator's ZeroMQ publishers on this same machine).

    python -m bench.redis_http [--ingest 37500] [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import http_bench, ingest
from servertrack.common.redis_testing import RedisServer
from servertrack.common.testing import launch_host
from servertrack.loadgen.fleet import send_fleet


def _feed(api: str, endpoint: str, rate: int, seconds: float) -> None:
    send_fleet(ingest.plan_for(rate, seconds, 2, api, endpoint, "rget"))


def measure(ingest_rate: int = 37_500, seconds: float = 20.0) -> dict[str, Any]:
    http_bench.ensure_wrk()
    figures: dict[str, Any] = {"ingest_samples_per_s": ingest_rate}
    with tempfile.TemporaryDirectory(prefix="servertrack-redis-http-") as folder:
        work = Path(folder)
        redis_server = RedisServer(work / "redis").start()
        host = launch_host(work, "--no-agent", "--store", redis_server.url, name="redis-http")
        try:
            names = http_bench.populate(host.api)
            http_bench.wait_visible(host.api, names)
            figures["get_idle"] = http_bench.measure_get(host.api, names, seconds)
            feeder = multiprocessing.get_context("fork").Process(
                target=_feed, args=(host.api, host.ingest, ingest_rate, seconds + 20)
            )
            feeder.start()
            try:
                time.sleep(10)  # past the first merges of every new server
                figures["get_under_ingest"] = http_bench.measure_get(host.api, names, seconds)
            finally:
                feeder.join(timeout=seconds + 180)
                if feeder.is_alive():
                    feeder.kill()
                    feeder.join(timeout=10)
            status, body = host.get("/stats")
            if status != 200:
                raise RuntimeError(f"/stats answered {status}: {body}")
            stats = body["aggregator"]
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
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.ingest, args.seconds), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
