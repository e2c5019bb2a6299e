"""Sustained ZeroMQ ingest: the highest N servers x 1 sample/s held for the hold time.

Each step starts a fresh ``servertrack run --no-agent`` (the real daemons) and drives it with
the ``servertrack loadgen`` publishers. A step is sustained when all of these hold:
- the generator kept its pace (no tick started more than half an interval late; its sockets
  never drop, they wait at the high-water mark, so a slow receiver shows up here);
- zero loss: sent = accepted, and no seq gap, rejection or duplicate;
- everything was applied within 3 s of the last send (one flush plus the lag bound: no
  growing backlog);
- the aggregator's flush lag p99 < 2 s.
The same steps are run against a bare pyzmq SUB (``bench/bare_sub.py``) fed by the same
generator, as the ceiling.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from bench import profile
from servertrack.loadgen.main import Plan, receiver_totals, send_fleet, wait_settled
from servertrack.testing.hosts import free_port, launch_host

DRAIN_LIMIT = 3.0
"""Seconds from the last send until all is applied: one flush interval plus the 2 s lag bound."""


def plan_for(
    servers: int, hold: float, publishers: int, api: str, ingest: str, prefix: str
) -> Plan:
    return Plan(
        prefix=prefix,
        servers=servers,
        rate=1.0,
        duration=hold,
        via="zmq",
        publishers=publishers,
        api=api,
        ingest=ingest,
        backfill_hours=0.0,
        backfill_step=300.0,
        checked=frozenset(),
        seed=1,
    )


def children_cpu() -> float:
    """CPU seconds of this process's finished children (the load generator's workers)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_seconds(process: Any) -> float:
    times = process.cpu_times()
    return times.user + times.system


def step_servertrack(
    workdir: Path, servers: int, hold: float, publishers: int, profiled: bool = False
) -> dict[str, Any]:
    """One step (see the module docstring); ``profiled``: py-spy samples the receiver and the
    aggregator through the hold, and the result has where each spent its time."""
    host = launch_host(workdir, "--no-agent", name=f"ingest-{servers}")
    found: dict[str, Any] = {}
    try:
        daemons = {name: host.child(name) for name in ("receiver", "aggregator")}
        prefix = f"b{uuid.uuid4().hex[:5]}"
        # Warm-up, as for carbon: one tick registers every server (rows, names, first touch of
        # the rollup memory) before the hold measures the steady state.
        warm = receiver_totals(host.api)
        warm_reports, _ = send_fleet(
            plan_for(servers, 1, publishers, host.api, host.ingest, prefix)
        )
        wait_settled(host.api, warm, sum(r.sent for r in warm_reports))
        before = receiver_totals(host.api)
        generator_before = children_cpu()
        cpu_before = {name: cpu_seconds(p) for name, p in daemons.items()}
        began = time.monotonic()
        pids = {name: p.pid for name, p in daemons.items()} if profiled else {}
        with profile.sampled(pids, hold) as found:
            try:
                reports, elapsed = send_fleet(
                    plan_for(servers, hold, publishers, host.api, host.ingest, prefix)
                )
            except RuntimeError as err:  # the receiver stopped taking samples for a while
                if not profiled:
                    raise
                wall = time.monotonic() - began
                return {  # ``found`` is filled as the sampling ends, before the caller reads it
                    "servers": servers,
                    "sustained": False,
                    "error": str(err),
                    **{
                        f"{name}_cores": round((cpu_seconds(p) - cpu_before[name]) / wall, 2)
                        for name, p in daemons.items()
                    },
                    "profiles": found,
                }
        sent = sum(r.sent for r in reports)
        delta = wait_settled(host.api, before, sent)
        settled = time.monotonic() - began - elapsed
        wall = time.monotonic() - began
        cores = {name: (cpu_seconds(p) - cpu_before[name]) / wall for name, p in daemons.items()}
        generator = (children_cpu() - generator_before) / elapsed
        aggregator = host.get("/stats")[1]["aggregator"]
    finally:
        host.process.stop()
    late = sum(r.late_ticks for r in reports)
    hold_lags = aggregator["flush_lag_recent_seconds"][-int(hold) :]
    extra = (
        {"flush_lags_s": [round(lag, 3) for lag in hold_lags], "profiles": found}
        if profiled
        else {}
    )
    lag_p99 = float(np.percentile(hold_lags, 99)) if hold_lags else 0.0
    clean = delta["accepted"] == sent and not (
        delta["lost"] or delta["rejected"] or delta["duplicates"]
    )
    sustained = late == 0 and clean and settled <= DRAIN_LIMIT and lag_p99 < 2.0
    return {
        "servers": servers,
        "offered_per_s": servers,
        "sent": sent,
        "accepted": delta["accepted"],
        "lost": delta["lost"],
        "late_ticks": late,
        "settle_s": round(settled, 2),
        "flush_lag_p99_s": round(lag_p99, 3),
        "receiver_cores": round(cores["receiver"], 2),
        "aggregator_cores": round(cores["aggregator"], 2),
        "generator_cores": round(generator, 2),
        "sustained": sustained,
        **extra,
    }


def step_bare(workdir: Path, servers: int, hold: float, publishers: int) -> dict[str, Any]:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    bare = subprocess.Popen(
        [sys.executable, "-m", "bench.bare_sub", "--bind", endpoint, "--limit", str(hold + 120)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert bare.stdout is not None
        bare.stdout.readline()  # "ready"
        plan = plan_for(servers, hold, publishers, "", endpoint, f"b{uuid.uuid4().hex[:5]}")
        generator_before = children_cpu()
        reports, elapsed = send_fleet(plan)
        generator = (children_cpu() - generator_before) / elapsed
        finished = time.monotonic()
        out, _ = bare.communicate(timeout=hold + 150)
    finally:
        if bare.poll() is None:
            bare.kill()
            bare.wait(timeout=10)
    result = json.loads(out.strip().splitlines()[-1])
    sent = sum(r.sent for r in reports)
    late = sum(r.late_ticks for r in reports)
    drained = max(0.0, result["last"] - finished)
    return {
        "servers": servers,
        "sent": sent,
        "received": result["received"],
        "late_ticks": late,
        "settle_s": round(drained, 2),
        "generator_cores": round(generator, 2),
        "sustained": late == 0 and result["received"] == sent and drained <= DRAIN_LIMIT,
    }


def sweep(kind: str, workdir: Path, steps: list[int], hold: float, publishers: int) -> dict:
    """Step up until the first step that is not sustained."""
    run = step_servertrack if kind == "servertrack" else step_bare
    results, best = [], 0
    for servers in steps:
        result = run(workdir, servers, hold, publishers)
        print(f"  {kind} {servers} servers: {result}", flush=True)
        results.append(result)
        if not result["sustained"]:
            break
        best = servers
    return {"sustained_per_s": best, "steps": results}
