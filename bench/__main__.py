"""``make bench``: every figure side by side in one run, printed as Markdown and saved in
``bench/results/``. Figures, not timed tests: nothing here fails on a slow machine.

    python -m bench             # the full run (about 25 minutes on 2 cores)
    python -m bench --quick     # short holds and few steps, to try the machinery
    python -m bench --only nab  # the anomaly detector over the NAB corpus, and its cost
    python -m bench --only nab --score DIR   # score any NAB-layout results folder
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import zmq

from bench import (
    agent_bench,
    alerts_bench,
    fleet_bench,
    graphite_bench,
    http_bench,
    ingest,
    nab_bench,
    profile,
    redis_bench,
    redis_http,
)
from servertrack.loadgen.main import send_fleet
from servertrack.testing.hosts import launch_host

RESULTS = Path(__file__).resolve().parent / "results"
FULL_STEPS = [50_000, 100_000, 125_000, 150_000, 175_000, 200_000, 250_000, 300_000]
QUICK_STEPS = [50_000, 100_000]
CARBON_FULL_STEPS = [5_000, 10_000, 20_000, 25_000, 30_000, 35_000, 40_000]
CARBON_QUICK_STEPS = [1_000, 2_000]
GET_INGEST_RATE = 100_000
SECTIONS = (
    "core",
    "http",
    "agent",
    "fleet",
    "redis",
    "redis-http",
    "graphite",
    "alerts",
    "prom",
    "nab",
)
"""``core``: ingest, carbon, apply and memory; ``http``: the HTTP API on each server beside the
bare servers; ``agent``: the agent beside the floor; ``fleet``: the dashboard's first page for
10,000 servers, in memory and in Redis mode, and the dashboard while 250,000 servers appear
through one Graphite connection and report; ``redis``: the Redis store (one redis-server and a
3-master cluster) and HTTP reads from it; ``graphite``: Graphite plaintext ingest from one TCP
client, beside carbon-cache's receiver; ``alerts``: one evaluation of the default alert rules
over 100,000 servers; ``prom``: ``/metrics/servers`` for 100,000 servers and a remote read over
the series cap; ``nab``: the anomaly detector over the NAB corpus, scored beside the published
scoreboard, and its cost per series (about 10 s)."""


def machine() -> dict[str, Any]:
    model = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {"python": platform.python_version(), "libzmq": zmq.zmq_version()}
    for package in (
        "pyzmq",
        "msgpack",
        "numpy",
        "protobuf",
        "cramjam",
        "google-re2",
        "falcon",
        "waitress",
        "granian",
        "sortedcontainers",
        "carbon",
        "whisper",
        "twisted",
    ):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cores": os.cpu_count(),
        "model": model,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "versions": versions,
    }


def rollups_figure(what: str, servers: int) -> dict[str, Any]:
    """A figure from ``bench.rollups_bench`` run in a fresh process (clean RSS)."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.rollups_bench", what, "--servers", str(servers)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def prom_figure(servers: int, repeats: int) -> dict[str, Any]:
    """The figures of ``bench.prom_bench``, run in a fresh process (clean peak RSS)."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.prom_bench",
            "--servers",
            str(servers),
            "--repeats",
            str(repeats),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def _background_ingest(api: str, endpoint: str, seconds: float) -> None:
    plan = ingest.plan_for(GET_INGEST_RATE, seconds, 2, api, endpoint, "bget")
    send_fleet(plan)


HTTP_SERVERS = ("waitress", "granian")
PROFILE_SECONDS = 8.0
ALTERNATIONS = 3
"""Turns of ours and the bare server for each GET figure (the median of each is reported)."""


def _api_pids(host: Any) -> dict[str, int]:
    """The processes serving the API (granian's workers, not its supervising process) and the
    daemons behind them."""
    api = host.child("api")
    workers = api.children()
    pids = {"api": api.pid} if not workers else {f"api-{w.pid}": w.pid for w in workers}
    return {
        **pids,
        "receiver": host.child("receiver").pid,
        "aggregator": host.child("aggregator").pid,
    }


def _with_ingest(host: Any, seconds: float, measure: Any) -> Any:
    """``measure()`` while loadgen publishers send 100k samples/s over ZeroMQ to ``host`` for
    ``seconds`` (plus a start)."""
    feeder = multiprocessing.get_context("fork").Process(
        target=_background_ingest, args=(host.api, host.ingest, seconds + 20)
    )
    feeder.start()
    try:
        time.sleep(10)  # past the first tick's registration of 100k servers
        return measure()
    finally:
        feeder.join(timeout=seconds + 180)
        if feeder.is_alive():
            feeder.kill()
            feeder.join(timeout=10)


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median req/s, with the median p99 of the runs (``p99_median_ms``) and
    every run's req/s and p99 beside it."""
    ordered = sorted(runs, key=lambda run: run["requests_per_s"] or 0.0)
    chosen = dict(ordered[len(ordered) // 2])
    p99s = sorted(run["p99_ms"] for run in runs if run["p99_ms"] is not None)
    chosen["p99_median_ms"] = p99s[len(p99s) // 2] if p99s else None
    chosen["runs"] = [
        {
            "requests_per_s": run["requests_per_s"],
            "p99_ms": run["p99_ms"],
            "load": run["loadavg_1m"],
        }
        for run in runs
    ]
    return chosen


def _alternate(
    ours: Any, bare: Any, rounds: int = ALTERNATIONS
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Ours and the bare server in turn, ``rounds`` times each, so that both see the same
    machine (it is shared, and its load moves by the minute); the median run of each."""
    mine, floor = [], []
    for _ in range(rounds):
        mine.append(ours())
        floor.append(bare())
    return _median_run(mine), _median_run(floor)


def http_server_figures(workdir: Path, server: str, seconds: float) -> dict[str, Any]:
    """Every HTTP figure through a real host whose API runs on ``server``: GETs in turns with
    the bare server (idle, then under 100k samples/s of ingest), and py-spy profiles of single
    POSTs and of GETs (separate short runs, so sampling does not touch the figures)."""
    figures: dict[str, Any] = {}
    host = launch_host(workdir, "--no-agent", "--http", server, name=f"http-{server}")
    try:
        figures["post_single"] = http_bench.measure_post_single(host.api, seconds)
        figures["post_batch"] = http_bench.measure_post_batch(host.api, seconds)
        names = http_bench.populate(host.api)
        http_bench.wait_visible(host.api, names)
        with http_bench.bare_server(server) as (url, log_path):

            def ours() -> dict[str, Any]:
                return http_bench.measure_get(host.api, names, seconds)

            def bare() -> dict[str, Any]:
                return http_bench.measure_bare_at(url, log_path, seconds)

            figures["get_idle"], figures["bare_idle"] = _alternate(ours, bare)
            span = 2 * ALTERNATIONS * (seconds + 2)
            figures["get_under_ingest"], figures["bare_under_ingest"] = _with_ingest(
                host, span, lambda: _alternate(ours, bare)
            )
        profiles: dict[str, Any] = {}
        with profile.sampled(_api_pids(host), PROFILE_SECONDS) as found:
            http_bench.measure_post_single(host.api, PROFILE_SECONDS + 1)
        profiles["post_single"] = found
        with profile.sampled(_api_pids(host), PROFILE_SECONDS) as found:
            http_bench.measure_get(host.api, names, PROFILE_SECONDS + 1)
        profiles["get_idle"] = found
        figures["read_cache"] = host.get("/stats")[1]["api"].get("read_cache")
        figures["profiles"] = profiles
    finally:
        host.process.stop()
    return figures


def http_figures(workdir: Path, seconds: float) -> dict[str, Any]:
    """Every HTTP figure on each server option, each beside its bare server."""
    http_bench.ensure_wrk()
    figures: dict[str, Any] = {}
    for server in HTTP_SERVERS:
        print(f"HTTP on {server} ...", flush=True)
        figures[server] = http_server_figures(workdir, server, seconds)
    for value in figures.values():
        for inner in (value, *value.values()):
            if isinstance(inner, dict):
                inner.pop("wrk_stderr", None)
    return figures


def carbon_figures(steps: list[int], hold: float, workdir: Path) -> dict[str, Any]:
    try:
        from bench.carbon_baseline import measure_carbon
    except ImportError as err:  # the bench extra is not installed
        return {"error": f"carbon is not installed ({err}); run `make bench`"}
    try:
        return measure_carbon(steps, hold_seconds=hold, workdir=workdir / "carbon")
    except Exception as err:  # report, do not lose the rest of the run
        return {"error": f"{type(err).__name__}: {err}"}


def verdict(value: float | None, target: float, higher_is_better: bool = True) -> str:
    if value is None:
        return "n/a"
    met = value >= target if higher_is_better else value <= target
    return "met" if met else "**not met**"


def agent_rows(agent: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    return [
        (
            "agent resident memory (MB), beside the bare floor "
            f"(pyzmq+psutil+msgpack+PUB: {agent['floor_rss_mb']} MB)",
            "≤ 22",
            f"{agent['agent_rss_mb']}",
            verdict(agent["agent_rss_mb"], 22, False),
        ),
        (
            f"agent CPU at a 1 s interval over {agent['cpu_window_s']:.0f} s (% of one core)",
            "≤ 0.2",
            f"{agent['agent_cpu_percent']}",
            verdict(agent["agent_cpu_percent"], 0.2, False),
        ),
        (
            "agent's first sample, from process start to the receiver (s, median of 7)",
            "≤ 0.3",
            f"{agent['first_sample_s_median']} (max {agent['first_sample_s_max']})",
            verdict(agent["first_sample_s_median"], 0.3, False),
        ),
    ]


def fleet_rows(fleet: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    cold = fleet["first_page_cold_ms_median"]
    return [
        (
            f"dashboard: first /fleet page, {fleet['servers']:,} servers, {fleet['mode']} mode, "
            "table rebuilt (ms, median)",
            "≤ 100",
            f"{cold} (max {fleet['first_page_cold_ms_max']}, cached "
            f"{fleet['first_page_warm_ms_median']})",
            verdict(cold, 100, False),
        )
    ]


CAP_PHASES = (("creating", "while the names appear"), ("reporting", "while they report"))


def fleet_cap_rows(cap: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The 250,000-server case: /fleet while the names appear and while they report, the
    flush lag of both phases, and the grid's size."""
    if "error" in cap:
        return [("dashboard at the server cap", "", f"failed: {cap['error']}", "n/a")]
    rows = []
    for phase, words in CAP_PHASES:
        fleet = cap[f"fleet_{phase}"]
        within = fleet.get("ok_within_1s_ratio")
        rows.append(
            (
                f"dashboard at the cap ({cap['servers']:,} servers): /fleet {words}: p50 / p99 "
                "(ms), reads, share answered 200 within 1 s",
                "1.0",
                f"{fleet.get('p50_ms')} / {fleet.get('p99_ms')}, {fleet['reads']}, {within}",
                verdict(within, 1.0),
            )
        )
    for phase, words in CAP_PHASES:
        lag = cap[f"flush_lag_{phase}"]
        rows.append(
            (
                f"dashboard at the cap: flush lag p99 {words} (s, {lag['batches']} batches)",
                "< 2",
                f"{lag.get('p99_s')} (max {lag.get('max_s')})",
                verdict(lag.get("p99_s"), 2.0 - 1e-9, False),
            )
        )
    sizes = [cap[key] for key in ("grid_bytes_refresh", "grid_bytes_with_names")]
    rows.append(
        (
            "dashboard at the cap: /fleet/grid bytes, a refresh (names held) / with the names",
            "",
            " / ".join("n/a" if size is None else f"{size:,}" for size in sizes),
            "",
        )
    )
    return rows


def redis_http_rows(figures: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    def figure(run: dict[str, Any]) -> str:
        return f"{run['p50_ms']} / {run['p99_ms']}, {run['requests_per_s']:,.0f}/s"

    rate = figures["ingest_samples_per_s"]
    rows = []
    for server in redis_http.HTTP_SERVERS:
        if server not in figures:
            continue
        runs = figures[server]
        idle, busy = runs["get_idle"], runs["get_under_ingest"]
        rows += [
            (
                f"Redis mode, {server}: GET /servers/{{name}}/loads p50 / p99 at 64 connections, "
                "idle (ms), req/s",
                "p99 ≤ 20",
                f"{figure(idle)}; bare {server}: {figure(runs['bare_idle'])}",
                verdict(idle["p99_ms"], 20, False),
            ),
            (
                f"Redis mode, {server}: the same while ingesting {rate:,} samples/s into the "
                "same Redis (ms), req/s",
                "p99 ≤ 20",
                f"{figure(busy)}; bare {server} under the same ingest: "
                f"{figure(runs['bare_under_ingest'])}",
                verdict(busy["p99_ms"], 20, False),
            ),
        ]
    return rows


def graphite_rows(graphite: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    ours = graphite["servertrack"]
    best = ours["sustained_lines_per_s"]
    at_best = next((s for s in ours["steps"] if s["lines_per_s"] == best), None)
    carbon = graphite.get("carbon", {})
    theirs = carbon.get("sustained_datapoints_per_s")
    failed = next((s for s in ours["steps"] if not s["sustained"]), None)
    return [
        (
            "sustained Graphite plaintext ingest, one TCP client, into 1 s batches (lines/s)",
            "≥ 100,000",
            f"{best:,}" + (f" (not {failed['lines_per_s']:,})" if failed else " (every step)"),
            verdict(best, 100_000),
        ),
        (
            "receiver CPU at that rate (cores); flush lag p99 (s)",
            "",
            f"{at_best['receiver_cores']}; {at_best['flush_lag_p99_s']}" if at_best else "n/a",
            "",
        ),
        (
            "carbon-cache plaintext receiver, same lines, same steps (lines/s)",
            "",
            f"{theirs:,.0f}" if theirs is not None else carbon.get("error", "n/a"),
            "",
        ),
        (
            "Graphite ingest ÷ carbon-cache",
            "",
            f"{best / theirs:.1f}" if theirs else "n/a",
            "",
        ),
    ]


def alerts_rows(alerts: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    median = alerts["evaluate_ms_median"]
    return [
        (
            f"alert evaluation, {alerts['servers']:,} servers x the {alerts['rules']} default "
            f"rules (ms, median of {alerts['evaluations']})",
            f"≤ {alerts['target_ms']:.0f}",
            f"{median} (max {alerts['evaluate_ms_max']}; the read model's columns before it "
            f"{alerts.get('columns_ms_median', '?')}; {alerts['pending']:,} pending and "
            f"{alerts['firing']:,} firing; what to send {alerts['due_ms_median']}, the "
            f"/alerts listing {alerts['api_alerts_ms_median']})",
            verdict(median, alerts["target_ms"], False),
        )
    ]


def prom_rows(prom: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    expo, read, route = prom["exposition"], prom["remote_read"], prom["route"]
    gz, om = expo["text_gzip"], expo["openmetrics_gzip"]
    worst = max(gz["seconds_median"], om["seconds_median"])
    memory = max(expo["peak_rss_rise_mb"], expo["tracemalloc_peak_mb"])
    route_worst = max(
        route["first_scrape_s"],
        route["text_gzip"]["seconds_median"],
        route["openmetrics_gzip"]["seconds_median"],
    )
    return [
        (
            f"GET /metrics/servers through the API (waitress, aggregator over ZeroMQ), "
            f"{route['servers']:,} servers, gzipped text / OpenMetrics, to the last byte "
            "(s, median; first scrape)",
            "≤ 2",
            f"{route['text_gzip']['seconds_median']} / "
            f"{route['openmetrics_gzip']['seconds_median']}; first {route['first_scrape_s']} "
            f"(plain text {route['text']['seconds_median']}, "
            f"{route['text']['bytes'] / 1e6:.0f} MB; {route['text_gzip']['bytes'] / 1e6:.1f} MB "
            "gzipped)",
            verdict(route_worst, 2, False),
        ),
        (
            "its extra memory: the process's RSS rise during a scrape, aggregator reply "
            "included (MB, highest)",
            "≤ 100",
            f"{route['rss_rise_mb_max']}",
            verdict(route["rss_rise_mb_max"], 100, False),
        ),
        (
            f"the exposition writer alone, {expo['servers']:,} servers, gzipped, text / "
            "OpenMetrics (s, median)",
            "≤ 2",
            f"{gz['seconds_median']} / {om['seconds_median']} (plain text "
            f"{expo['text']['seconds_median']}; {expo['text']['bytes'] / 1e6:.0f} MB, "
            f"{gz['bytes'] / 1e6:.1f} MB gzipped)",
            verdict(worst, 2, False),
        ),
        (
            "its memory beyond the snapshot: peak RSS rise / tracemalloc peak (MB)",
            "≤ 100",
            f"{expo['peak_rss_rise_mb']} / {expo['tracemalloc_peak_mb']} (largest chunk "
            f"{gz['largest_chunk_bytes'] / 1e3:.0f} KB)",
            verdict(memory, 100, False),
        ),
        (
            f"remote read, one query over {read['series']:,} series ({read['samples']:,} "
            "samples), body to body (s, median)",
            "",
            f"{read['seconds_median']} ({read['answer_bytes'] / 1e6:.1f} MB snappy)",
            "",
        ),
    ]


def redis_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The Redis store's own table, one row per line."""
    rows = []
    for line in redis_bench.table(results["redis"]).splitlines()[2:]:
        a, b, c, d = (cell.strip() for cell in line.strip("|").split("|"))
        rows.append((a, b, c, d))
    return rows


def table(results: dict[str, Any]) -> str:
    rows = []
    if "ingest_servertrack" in results:
        rows += core_rows(results)
    if "http" in results:
        rows += http_rows(results["http"])
    if "agent" in results:
        rows += agent_rows(results["agent"])
    if "fleet" in results:
        rows += fleet_rows(results["fleet"]) + fleet_rows(results["fleet_redis"])
    if "fleet_cap" in results:
        rows += fleet_cap_rows(results["fleet_cap"])
    if "redis" in results:
        rows += redis_rows(results)
    if "redis_http" in results:
        rows += redis_http_rows(results["redis_http"])
    if "graphite" in results:
        rows += graphite_rows(results["graphite"])
    if "alerts" in results:
        rows += alerts_rows(results["alerts"])
    if "prom" in results:
        rows += prom_rows(results["prom"])
    if "nab" in results:
        rows += nab_bench.rows(results["nab"])
    lines = ["| figure | target | measured | |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def core_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    st = results["ingest_servertrack"]["sustained_per_s"]
    bare = results["ingest_bare"]["sustained_per_s"]
    carbon = results["carbon"].get("sustained_datapoints_per_s")
    apply_ms = results["apply"]["apply_ms_median"]
    memory = results["memory"]
    rows = [
        (
            "sustained ZeroMQ ingest, zero loss, generator on the same box (samples/s)",
            "≥ 200,000",
            f"{st:,}",
            verdict(st, 200_000),
        ),
        ("bare pyzmq receive+decode ceiling, same generator (msgs/s)", "", f"{bare:,}", ""),
        (
            "ingest ÷ bare ceiling",
            "≥ 0.5",
            f"{st / bare:.2f}" if bare else "n/a",
            verdict(st / bare if bare else None, 0.5),
        ),
        ("carbon-cache sustained (datapoints/s)", "", f"{carbon:,.0f}" if carbon else "n/a", ""),
        (
            "ServerTrack datapoints/s (2 per sample) ÷ carbon-cache",
            "≥ 10",
            f"{2 * st / carbon:.1f}" if carbon else "n/a",
            verdict(2 * st / carbon if carbon else None, 10),
        ),
        (
            "apply one 1 s batch of 200k samples (ms, median)",
            "≤ 100",
            f"{apply_ms}",
            verdict(apply_ms, 100, False),
        ),
        (
            "aggregator RSS per server, 100k servers, all buckets full (bytes)",
            "≤ 4,096",
            f"{memory['rss_bytes_per_server']:,}",
            verdict(memory["rss_bytes_per_server"], 4096, False),
        ),
        (
            "full gc.collect() in the aggregator (ms)",
            "≤ 20",
            f"{memory['gc_collect_ms_median']}",
            verdict(memory["gc_collect_ms_median"], 20, False),
        ),
    ]
    return rows


def _p99(figure: dict[str, Any]) -> float:
    """The median p99 of a figure measured in turns, else its own p99."""
    value = figure.get("p99_median_ms", figure["p99_ms"])
    return float(value) if value is not None else float("inf")


def _rate(figure: dict[str, Any]) -> str:
    return f"{figure['requests_per_s']:,.0f} (p50 {figure['p50_ms']} ms, p99 {_p99(figure)} ms)"


def http_rows(http: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Each figure on each server beside the bare ceilings, and the verdict on each target."""
    rows = []
    for server in HTTP_SERVERS:
        figures = http[server]
        bare = figures["bare_idle"]
        ceiling = bare["requests_per_s"]
        get, post = figures["get_idle"], figures["post_single"]
        load = figures["get_under_ingest"]
        floor = figures["bare_under_ingest"]
        rows.append(
            (
                f"bare {server}: a constant JSON body, GET, in turns with ours (the ceiling)",
                "",
                _rate(bare),
                "",
            )
        )
        rows += [
            (
                f"{server}: GET /servers/{{name}}/loads req/s, 64 connections, idle",
                "≥ 10,000, p99 ≤ 20 ms" if server == "granian" else "",
                f"{_rate(get)}; {get['requests_per_s'] / ceiling:.2f} of bare {server}",
                verdict(get["requests_per_s"], 10_000) if server == "granian" else "",
            ),
            (
                f"{server}: POST /servers/{{name}}/loads req/s, 64 connections",
                "≥ 10,000, p99 ≤ 20 ms" if server == "granian" else "",
                _rate(post),
                verdict(post["requests_per_s"], 10_000) if server == "granian" else "",
            ),
            (
                f"{server}: GET p99 while ingesting 100k samples/s (ms)",
                "≤ 50",
                f"{_p99(load)} ({load['requests_per_s']:,.0f} req/s); bare {server} under "
                f"the same ingest: {_p99(floor)} ({floor['requests_per_s']:,.0f} req/s)",
                verdict(_p99(load), 50, False),
            ),
            (
                f"{server}: POST /loads (samples/s)",
                "≥ 100,000",
                f"{figures['post_batch']['samples_per_s']:,.0f}",
                verdict(figures["post_batch"]["samples_per_s"], 100_000),
            ),
        ]
        if server == "granian":
            p99s = max(_p99(get), _p99(post))
            rows.append(
                (
                    "granian: p99 of both idle figures (ms)",
                    "≤ 20",
                    f"{p99s}",
                    verdict(p99s, 20, False),
                )
            )
        else:
            ratio = get["requests_per_s"] / ceiling
            rows.append(
                (
                    "waitress: GET req/s ÷ bare waitress",
                    "≥ 0.8",
                    f"{ratio:.2f}",
                    verdict(ratio, 0.8),
                )
            )
    return rows


def _loads(value: Any) -> list[float]:
    """Every 1-minute load average wrk noted in a part of the results."""
    if isinstance(value, dict):
        found = list(value.get("loadavg_1m") or [])
        for inner in value.values():
            found += _loads(inner)
        return found
    return []


def http_notes(http: dict[str, Any] | None) -> list[str]:
    """The machine's load during the HTTP runs, and where each process spent its time."""
    if not http:
        return []
    loads = _loads(http)
    lines = [
        f"1-minute load average during the HTTP runs: {min(loads):.1f} to {max(loads):.1f} "
        "(2 cores; other work shares the machine).",
        "",
        "### Where the time goes (py-spy, leaf frames, share of working samples)",
        "",
    ]
    for server in HTTP_SERVERS:
        lines.append(f"- {server}, read cache {http[server].get('read_cache')}")
        for figure, found in http[server].get("profiles", {}).items():
            for process, summary in found.items():
                if isinstance(summary, str):  # the profiler's own complaint
                    top = summary
                else:
                    top = "; ".join(summary.get("self", [])[:5]) or summary.get("error", "none")
                lines.append(f"  - {figure}, {process}: {top}")
    return [*lines, ""]


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    parts = [
        f"# ServerTrack bench, {results['date']}",
        "",
        f"Machine: {m['cores']} cores, {m['model']}, {m['memory_gib']} GiB, Linux "
        f"{m['kernel']}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
        + f". Mode: {results['mode']}, hold {results['hold_s']} s per step. "
        f"Command: `{results['command']}`.",
        "",
        table(results),
        "",
        *http_notes(results.get("http")),
        *(nab_bench.section(results["nab"]) if "nab" in results else []),
        "## Details",
        "",
        "```json",
        json.dumps({k: v for k, v in results.items() if k != "machine"}, indent=1),
        "```",
    ]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short holds, few steps")
    parser.add_argument("--hold", type=float, help="seconds per ingest step (default 60)")
    parser.add_argument("--publishers", type=int, default=2)
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections to run (default all: {', '.join(SECTIONS)})",
    )
    parser.add_argument(
        "--score",
        type=Path,
        metavar="DIR",
        help="nab: only score the NAB-layout results in DIR (DIR/<detector>/<category>/"
        "<detector>_<name>.csv) and print each detector's three normalised scores",
    )
    parser.add_argument(
        "--nab-results",
        type=Path,
        metavar="DIR",
        help="nab: write the detector's NAB-layout results to DIR (default: a temporary dir)",
    )
    args = parser.parse_args(argv)
    if args.score is not None:
        if not args.score.is_dir():
            parser.error(f"--score: {args.score} is not a directory")
        print(nab_bench.score_lines(nab_bench.score_dir(args.score)))
        return 0
    only = set(args.only.split(","))
    if only - set(SECTIONS):
        parser.error(f"unknown section(s): {', '.join(sorted(only - set(SECTIONS)))}")
    hold = args.hold or (15.0 if args.quick else 60.0)
    steps = QUICK_STEPS if args.quick else FULL_STEPS
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "quick" if args.quick else "full",
        "hold_s": hold,
        "machine": machine(),
        "command": " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)]),
    }
    with tempfile.TemporaryDirectory(prefix="servertrack-bench-") as tmp:
        work = Path(tmp)
        if "core" in only:
            print("apply and memory ...", flush=True)
            results["apply"] = rollups_figure("apply", 200_000)
            results["memory"] = rollups_figure("memory", 100_000)
            print("bare pyzmq ceiling ...", flush=True)
            results["ingest_bare"] = ingest.sweep("bare", work, steps, hold, args.publishers)
            print("ServerTrack ingest ...", flush=True)
            results["ingest_servertrack"] = ingest.sweep(
                "servertrack", work, steps, hold, args.publishers
            )
            print("carbon-cache ...", flush=True)
            results["carbon"] = carbon_figures(
                CARBON_QUICK_STEPS if args.quick else CARBON_FULL_STEPS, hold, work
            )
        if "http" in only:
            print("HTTP ...", flush=True)
            results["http"] = http_figures(work, 10.0 if args.quick else 20.0)
        if "agent" in only:
            print("agent ...", flush=True)
            results["agent"] = agent_bench.measure(15.0 if args.quick else 60.0)
        if "fleet" in only:
            print("dashboard fleet page ...", flush=True)
            results["fleet"] = fleet_bench.measure(10_000, 5 if args.quick else 15)
            results["fleet_redis"] = fleet_bench.measure_redis(10_000, 5 if args.quick else 15)
            print("dashboard at the server cap ...", flush=True)
            try:
                results["fleet_cap"] = fleet_bench.measure_at_cap(
                    work, report_seconds=15 if args.quick else 30
                )
            except Exception as err:  # report, do not lose the rest of the run
                results["fleet_cap"] = {"error": f"{type(err).__name__}: {err}"}
        if "redis" in only:
            print("Redis store ...", flush=True)
            results["redis"] = redis_bench.run(args.quick)
        if "redis-http" in only:
            print("HTTP reads in Redis mode ...", flush=True)
            results["redis_http"] = redis_http.measure(seconds=10.0 if args.quick else 20.0)
        if "nab" in only:
            print("anomaly detector over the NAB corpus ...", flush=True)
            results["nab"] = nab_bench.measure(args.nab_results)
        if "graphite" in only:
            print("Graphite plaintext ingest and carbon-cache ...", flush=True)
            results["graphite"] = graphite_bench.measure(
                graphite_bench.QUICK_STEPS if args.quick else graphite_bench.FULL_STEPS,
                hold,
                work,
            )
        if "alerts" in only:
            print("alert evaluation ...", flush=True)
            results["alerts"] = alerts_bench.measure(100_000)
        if "prom" in only:
            print("Prometheus exposition and remote read ...", flush=True)
            results["prom"] = prom_figure(100_000, 3 if args.quick else 7)
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d-%H%M")
    name = results["mode"] if only == set(SECTIONS) else "-".join(sorted(only))
    try:
        text = report(results)
    except Exception:
        # An hour of measurements outlives a bug in the report: keep the figures as they are.
        (RESULTS / f"{stamp}-{name}.json").write_text(json.dumps(results, indent=1, default=str))
        raise
    (RESULTS / f"{stamp}-{name}.md").write_text(text)
    if only == set(SECTIONS):
        (RESULTS / "latest.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
