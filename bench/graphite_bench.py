"""Graphite plaintext ingest: the highest line rate one TCP client sustains into a real host,
beside carbon-cache's own plaintext receiver at the same rates.

Load shape (the same bytes carbon gets, from ``bench.carbon_baseline``'s sender): N servers
each send a cpu and a ram line per second, ``servertrack.srvNNNNNN.cpu <v> <ts>``, so a step of
R lines/s is R/2 servers. The chained ServerTrack format is a built-in mapping, so every line
maps. One sender process, one TCP connection, paced in 1-s ticks on ``time.monotonic``, each
tick's lines written with large ``sendall`` chunks.

Each step starts a fresh ``servertrack run --no-agent --graphite-port P`` and first sends one
warm-up tick (every server registered, as a real fleet's would be long before). A step is
sustained when all of these hold:
- the sender kept its pace: every tick written before the next one began (a receiver that
  reads too slowly pushes back through TCP, and shows up here);
- every line is accounted for: accepted + rejected + duplicates = lines sent, with nothing
  rejected and no duplicate (the lines are all valid and distinct), and every accepted line
  applied by the aggregator within 3 s of the last send (no growing backlog);
- the aggregator's flush lag p99 over the hold is under 2 s.

carbon-cache is measured by ``bench.carbon_baseline.measure_carbon`` at the same line rates
(it needs ``make bench``'s install: PyPI carbon, whisper and Twisted); its sender uses two
connections, and it stops at its first step not sustained.

Run alone: ``python -m bench.graphite_bench [--quick] [--hold 60] [--steps 50000,100000]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import queue
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench.carbon_baseline import SENDER_GIVE_UP_S, START_DELAY_S, Fleet, sender_main
from servertrack.loadgen.main import receiver_totals, wait_settled
from servertrack.testing.hosts import free_port, launch_host

FULL_STEPS = [50_000, 100_000, 150_000, 200_000]
QUICK_STEPS = [50_000, 100_000]
CARBON_REFERENCE = 20_000
"""Lines/s carbon-cache sustained in the last full bench: measured first, as its yardstick."""
DRAIN_LIMIT = 3.0
"""Seconds from the last send until every line is applied: a flush plus the lag bound."""
LAG_LIMIT = 2.0


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def warm_up(port: int, api: str, servers: int) -> None:
    """One tick of every server, stamped a second ago, then wait until it is all applied."""
    before = receiver_totals(api)
    with socket.create_connection(("127.0.0.1", port), timeout=SENDER_GIVE_UP_S) as sock:
        sock.sendall(Fleet(0, servers).payload(0, int(time.time()) - 1))
    wait_settled(api, before, 2 * servers)


def send(port: int, servers: int, hold: float) -> tuple[dict[str, Any], float, float]:
    """Run one sender process for ``hold`` 1-s ticks; returns its report, when it began and when
    the last tick was due to end (monotonic)."""
    ticks = max(1, round(hold))
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    start_mono = time.monotonic() + START_DELAY_S
    base_ts = int(time.time() + START_DELAY_S)
    sender = ctx.Process(
        target=sender_main, args=(0, servers, port, start_mono, base_ts, ticks, results)
    )
    sender.start()
    try:
        report = results.get(timeout=START_DELAY_S + ticks + SENDER_GIVE_UP_S + 30)
    except queue.Empty:
        report = {"error": "no report", "points": 0, "ticks": 0, "late_ticks": ticks, "cpu_s": 0}
    finally:
        sender.join(timeout=10)
        if sender.is_alive():
            sender.kill()
            sender.join(timeout=10)
        results.close()
    return report, start_mono, start_mono + ticks


def step(workdir: Path, rate: int, hold: float) -> dict[str, Any]:
    """One fresh host, ``rate`` lines/s for ``hold`` seconds from one client (see the module
    docstring for the verdict)."""
    servers = rate // 2
    port = free_port()
    host = launch_host(workdir, "--no-agent", "--graphite-port", str(port), name=f"graphite-{rate}")
    try:
        daemons = {name: host.child(name) for name in ("receiver", "aggregator")}
        warm_up(port, host.api, servers)
        before = receiver_totals(host.api)
        batches_before = host.get("/stats")[1]["receiver"]["batches"]
        counted_from = time.monotonic()
        cpu_before = {name: cpu_seconds(p) for name, p in daemons.items()}
        report, began, due = send(port, servers, hold)
        sent = int(report["points"])
        delta = wait_settled(host.api, before, sent)
        finished = time.monotonic()
        settle = max(0.0, finished - max(due, began))
        wall = finished - counted_from
        cores = {name: (cpu_seconds(p) - cpu_before[name]) / wall for name, p in daemons.items()}
        stats = host.get("/stats")[1]
    finally:
        host.process.stop()
    ticks = max(1, round(hold))
    lags = stats["aggregator"]["flush_lag_recent_seconds"][-ticks:]
    lag_p99 = float(np.percentile(lags, 99)) if lags else 0.0
    accounted = delta["accepted"] + delta["rejected"] + delta["duplicates"]
    kept_pace = report.get("error") is None and report["late_ticks"] == 0
    clean = (
        accounted == sent
        and delta["rejected"] == 0
        and delta["duplicates"] == 0
        and delta["applied"] + delta["expired"] == delta["accepted"]
    )
    sustained = kept_pace and clean and settle <= DRAIN_LIMIT and lag_p99 < LAG_LIMIT
    return {
        "lines_per_s": rate,
        "servers": servers,
        "sent": sent,
        "accepted": delta["accepted"],
        "rejected": delta["rejected"],
        "duplicates": delta["duplicates"],
        "applied": delta["applied"],
        "sender_late_ticks": report["late_ticks"],
        "sender_max_tick_s": round(report.get("max_tick_s") or 0.0, 3),
        "sender_error": report.get("error"),
        "settle_s": round(settle, 2),
        "flush_lag_p99_s": round(lag_p99, 3),
        "batches_per_s": round((stats["receiver"]["batches"] - batches_before) / wall, 2),
        "receiver_cores": round(cores["receiver"], 2),
        "aggregator_cores": round(cores["aggregator"], 2),
        "sender_cores": round(float(report.get("cpu_s", 0.0)) / max(1, round(hold)), 2),
        "sustained": sustained,
    }


def sweep(workdir: Path, steps: list[int], hold: float) -> dict[str, Any]:
    """Step up until the first step that is not sustained."""
    results, best = [], 0
    for rate in steps:
        result = step(workdir, rate, hold)
        print(f"  graphite {rate:,} lines/s: {json.dumps(result)}", flush=True)
        results.append(result)
        if not result["sustained"]:
            break
        best = rate
    return {"sustained_lines_per_s": best, "steps": results}


def carbon(steps: list[int], hold: float, workdir: Path) -> dict[str, Any]:
    """carbon-cache at the same line rates (2 lines per server), after its reference rate."""
    try:
        from bench.carbon_baseline import measure_carbon
    except ImportError as err:  # pragma: no cover - the bench extra is not installed
        return {"error": f"carbon is not installed ({err}); run `make bench`"}
    servers = sorted({CARBON_REFERENCE // 2, *(rate // 2 for rate in steps)})
    try:
        return measure_carbon(servers, hold_seconds=hold, workdir=workdir / "carbon-graphite")
    except Exception as err:  # report, do not lose the rest of the run
        return {"error": f"{type(err).__name__}: {err}"}


def measure(
    steps: list[int], hold: float, workdir: Path, with_carbon: bool = True
) -> dict[str, Any]:
    """ServerTrack's Graphite ingest over ``steps`` (lines/s), and carbon-cache beside it."""
    results: dict[str, Any] = {"hold_s": hold, "servertrack": sweep(workdir, steps, hold)}
    if with_carbon:
        results["carbon"] = carbon(steps, hold, workdir)
    return results


def main(argv: list[str] | None = None) -> int:
    import tempfile

    parser = argparse.ArgumentParser(prog="python -m bench.graphite_bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="two steps, 15 s holds")
    parser.add_argument("--hold", type=float, help="seconds per step (default 60, quick 15)")
    parser.add_argument("--steps", help="comma-separated lines/s, ascending")
    parser.add_argument("--no-carbon", action="store_true", help="leave carbon-cache out")
    args = parser.parse_args(argv)
    steps = [int(s) for s in args.steps.split(",")] if args.steps else None
    steps = steps or (QUICK_STEPS if args.quick else FULL_STEPS)
    hold = args.hold or (15.0 if args.quick else 60.0)
    with tempfile.TemporaryDirectory(prefix="servertrack-graphite-bench-") as tmp:
        print(json.dumps(measure(steps, hold, Path(tmp), not args.no_carbon), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
