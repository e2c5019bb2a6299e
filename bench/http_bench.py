"""HTTP API throughput of ServerTrack, measured with wrk, next to the bare-waitress ceiling.

Why: the API is Falcon on waitress and every request makes a ZeroMQ round trip to the receiver
(writes) or the aggregator (reads). These figures say how many requests/s that costs, and how far
that is from what waitress itself serves on this machine with the same settings (the ceiling).

Load generator: wrk (``-t2``: the machine has 2 cores; ``--latency`` for p50/p99) with
``bench/wrk/servertrack.lua``, which rotates over server names, builds the bodies and counts the
reply statuses (and, for ``POST /loads``, the ``accepted`` / ``duplicates`` of the 202 replies).

``POST /loads``: wrk too, and the Lua script puts a fresh ts into every item of every request
(one ts per request, 10 us apart, starting 30 s in the past), so no sample is a (server, ts)
duplicate and the samples/s figure counts only samples the receiver really accepted. A body
built once and re-sent would be all duplicates after the first request. The receiver's own
counters (GET /stats) before and after are reported as a cross-check.

Only 127.0.0.1 is ever sent traffic. Every process started here is stopped in a ``finally``
(SIGTERM, then SIGKILL after a timeout). Run by hand::

    .venv/bin/python bench/http_bench.py --seconds 10                   # private host
    .venv/bin/python bench/http_bench.py --api http://127.0.0.1:8080 --what get,bare
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from servertrack.api.server import make_waitress
from servertrack.api.stats import ApiStats
from servertrack.testing.hosts import (
    ChildProcess,
    free_port,
    http_json,
    launch_host,
    wait_until,
)

HERE = Path(__file__).resolve().parent
LUA_SCRIPT = HERE / "wrk" / "servertrack.lua"
WRK_THREADS = 2
"""The machine has 2 cores; more wrk threads would only fight the server for them."""
STOP_TIMEOUT = 15.0
READY_TIMEOUT = 30.0
APT_TIMEOUT = 600.0
BATCH_TS_STEP = 1e-5
"""Seconds between the ts of two batch requests: distinct in float64, far below 60 s per run."""
WAITRESS_THREADS = 64
"""Same as ``servertrack api`` (api/main.py) so the ceiling is comparable."""
COUNTER_SETTLE = 2.5
"""Seconds for the receiver's counters to reach GET /stats (they ride the one-second batches)."""
LOOPBACK = frozenset({"127.0.0.1", "localhost"})


def check_loopback(url: str) -> str:
    """The URL without a trailing slash; refuses anything but loopback (we only load ourselves)."""
    host = urlsplit(url).hostname
    if host not in LOOPBACK:
        raise ValueError(f"refusing to send load to {url!r}: only 127.0.0.1 is allowed")
    return url.replace("://localhost", "://127.0.0.1").rstrip("/")


# -- wrk ------------------------------------------------------------------------------------


def ensure_wrk() -> str:
    """Path to wrk, installing the Debian package if needed (we are root on these machines)."""
    found = shutil.which("wrk")
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        raise RuntimeError("wrk is not installed and cannot be: need root and apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "--no-install-recommends", "wrk"]
    attempts: list[str] = []
    for step in (install, [apt, "update"], install):
        done = subprocess.run(
            step, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT, check=False
        )
        attempts.append(f"{' '.join(step[1:])}: exit {done.returncode} {done.stderr[-300:]}")
        if step is install and done.returncode == 0:
            break
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("could not install wrk with apt-get:\n" + "\n".join(attempts))
    return found


_TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_NUMBER_UNIT = r"([\d.]+)\s*(us|ms|s|m|h)\b"


def _ms(value: str, unit: str) -> float:
    return float(value) * _TIME_UNITS[unit]


def parse_wrk(output: str) -> dict[str, Any]:
    """The figures in wrk's report (and our Lua ``WRK_`` lines); absent ones are ``None``/0."""
    result: dict[str, Any] = {
        "requests": None,
        "duration_s": None,
        "requests_per_s": None,
        "p50_ms": None,
        "p99_ms": None,
        "non_2xx_wrk": 0,
        "socket_errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0},
        "statuses": {},
        "accepted": None,
        "duplicates": None,
    }
    if match := re.search(r"Requests/sec:\s*([\d.]+)", output):
        result["requests_per_s"] = float(match.group(1))
    if match := re.search(r"(\d+) requests in " + _NUMBER_UNIT, output):
        result["requests"] = int(match.group(1))
        result["duration_s"] = _ms(match.group(2), match.group(3)) / 1e3
    for pct, key in (("50", "p50_ms"), ("99", "p99_ms")):
        if match := re.search(rf"^\s*{pct}(?:\.0+)?%\s+{_NUMBER_UNIT}", output, re.MULTILINE):
            result[key] = round(_ms(match.group(1), match.group(2)), 3)
    if match := re.search(r"Non-2xx or 3xx responses:\s*(\d+)", output):
        result["non_2xx_wrk"] = int(match.group(1))
    if match := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    ):
        result["socket_errors"] = dict(
            zip(("connect", "read", "write", "timeout"), map(int, match.groups()), strict=True)
        )
    for status, count in re.findall(r"^WRK_STATUS (\d+) (\d+)$", output, re.MULTILINE):
        result["statuses"][status] = result["statuses"].get(status, 0) + int(count)
    if match := re.search(r"^WRK_ACCEPTED (\d+)$", output, re.MULTILINE):
        result["accepted"] = int(match.group(1))
    if match := re.search(r"^WRK_DUPLICATES (\d+)$", output, re.MULTILINE):
        result["duplicates"] = int(match.group(1))
    # wrk's own line counts only status > 399; our Lua count also sees 1xx/3xx.
    if result["statuses"]:
        result["non_2xx"] = sum(
            n for code, n in result["statuses"].items() if not 200 <= int(code) < 300
        )
    else:
        result["non_2xx"] = result["non_2xx_wrk"]
    return result


def run_wrk(
    url: str,
    lua_args: list[str],
    seconds: float,
    connections: int,
    timeout_s: float = 10.0,
) -> dict[str, Any]:
    """One wrk run against ``url`` with our Lua script; the parsed report plus the raw text."""
    url = check_loopback(url)
    wrk = ensure_wrk()
    duration = max(1, round(seconds))
    argv = [
        wrk,
        f"-t{WRK_THREADS}",
        f"-c{max(connections, WRK_THREADS)}",
        f"-d{duration}s",
        f"--timeout={round(timeout_s)}s",
        "--latency",
        "-s",
        str(LUA_SCRIPT),
        url,
        "--",
        *lua_args,
    ]
    load_before = os.getloadavg()[0]
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = process.communicate(timeout=duration + timeout_s + 60)
    finally:
        if process.poll() is None:  # only after a timeout: wrk stops by itself
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)
    if process.returncode != 0 or "Requests/sec" not in out:
        raise RuntimeError(f"wrk failed (exit {process.returncode}): {err.strip()}\n{out}")
    result = parse_wrk(out)
    if lua_args[0] != "batch":
        del result["accepted"], result["duplicates"]
    result.update(
        url=url,
        seconds=duration,
        connections=max(connections, WRK_THREADS),
        wrk_threads=WRK_THREADS,
        wrk_stderr=err.strip() or None,
        # Other work on the 2 cores skews every figure: keep the 1-min load average beside it.
        loadavg_1m=[round(load_before, 2), round(os.getloadavg()[0], 2)],
    )
    return result


@contextlib.contextmanager
def lines_file(lines: list[str]) -> Iterator[str]:
    """A temporary file with one item per line, for the Lua script to read in init()."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="bench-") as handle:
        handle.write("\n".join(lines) + "\n")
        handle.flush()
        yield handle.name


# -- measurements against the API -----------------------------------------------------------


def receiver_counters(api: str) -> dict[str, Any]:
    """The receiver's counters from GET /stats (reach the aggregator about a second late)."""
    status, body = http_json("GET", check_loopback(api) + "/stats")
    if status != 200 or not isinstance(body, dict):
        raise RuntimeError(f"GET /stats answered {status}: {body}")
    return dict(body.get("receiver") or {})


def _sum_counter(counters: dict[str, Any], key: str) -> int:
    value = counters.get(key, 0)
    return int(sum(value.values())) if isinstance(value, dict) else int(value or 0)


def populate(api: str, count: int = 300, prefix: str = "bench-get-") -> list[str]:
    """Make ``count`` servers known (one POST /loads) so GETs answer 200, not 404."""
    names = [f"{prefix}{i}" for i in range(count)]
    body = [{"server": name, "cpu": i % 100, "ram": (i * 3) % 100} for i, name in enumerate(names)]
    status, reply = http_json("POST", check_loopback(api) + "/loads", body)
    if status != 202:
        raise RuntimeError(f"POST /loads answered {status}: {reply}")
    return names


def wait_visible(api: str, names: list[str], deadline: float = 15.0) -> None:
    """Wait until the aggregator has a (once-a-second) batch with the last of ``names``."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if http_json("GET", f"{check_loopback(api)}/servers/{names[-1]}/loads")[0] == 200:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{names[-1]} not visible after {deadline} s")


def measure_post_single(api: str, seconds: float, connections: int = 64) -> dict[str, Any]:
    """Requests/s of ``POST /servers/{name}/loads`` (no ts: the API clock) over 300 names."""
    names = [f"bench-single-{i}" for i in range(300)]
    with lines_file(names) as path:
        result = run_wrk(api, ["single", path], seconds, connections)
    result["what"] = "POST /servers/{name}/loads"
    return result


def measure_post_batch(
    api: str, seconds: float, batch: int = 10_000, connections: int = 4
) -> dict[str, Any]:
    """Samples/s accepted via ``POST /loads``, ``batch`` distinct servers per body, fresh ts each.

    wrk's Lua builds each body from pre-formatted items joined by a per-request ts, so nothing is
    a duplicate; accepted samples are summed from the 202 replies and cross-checked with the
    receiver's counters (GET /stats) before and after. The counters' delta is larger: wrk stops
    counting at the deadline with up to ``connections`` bodies still being applied, and a 503
    (backend timeout) can come back for a body the receiver applied after all.
    """
    if not 1 <= batch <= 10_000:
        raise ValueError("batch must be 1..10000 (the API's limit)")
    api = check_loopback(api)
    time.sleep(COUNTER_SETTLE)  # let earlier traffic reach the counters before "before"
    before = receiver_counters(api)
    # 30 s in the past: inside the window, and even thousands of requests x 64 slots x 10 us
    # stay far from the 60 s "future" limit.
    base_ts = time.time() - 30.0
    result = run_wrk(
        api,
        ["batch", str(batch), "bench-batch-", f"{base_ts:.6f}", repr(BATCH_TS_STEP)],
        seconds,
        connections,
        timeout_s=30.0,
    )
    time.sleep(COUNTER_SETTLE)
    after = receiver_counters(api)
    duration = result["duration_s"] or float(result["seconds"])
    accepted = result["accepted"] or 0
    result.update(
        what="POST /loads",
        batch=batch,
        accepted_samples=accepted,
        samples_per_s=round(accepted / duration, 1),
        stats_accepted_delta=_sum_counter(after, "accepted") - _sum_counter(before, "accepted"),
        stats_duplicates_delta=_sum_counter(after, "duplicates")
        - _sum_counter(before, "duplicates"),
        client="wrk + Lua, fresh ts per request",
    )
    return result


def measure_get(
    api: str, names: list[str], seconds: float, connections: int = 64
) -> dict[str, Any]:
    """Requests/s of ``GET /servers/{name}/loads`` rotating over ``names`` (which must exist)."""
    if not names:
        raise ValueError("measure_get needs at least one existing server name")
    with lines_file([f"/servers/{name}/loads" for name in names]) as path:
        result = run_wrk(api, ["get", path], seconds, connections)
    result.update(what="GET /servers/{name}/loads", names=len(names))
    return result


# -- the ceiling: bare waitress -------------------------------------------------------------

BARE_BODY = b'{"server": "bare", "minutes": [], "hours": [], "last_seen": null}'


def bare_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """A trivial WSGI app: the same small JSON body for every request."""
    start_response(
        "200 OK",
        [("Content-Type", "application/json"), ("Content-Length", str(len(BARE_BODY)))],
    )
    return [BARE_BODY]


def bare_factory() -> Any:
    """Granian's factory target for the bare app."""
    return bare_app


def serve_bare(port: int, server_name: str = "waitress") -> int:
    """Serve :func:`bare_app` with ``servertrack api``'s settings for that server until
    SIGTERM."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if server_name == "granian":
        from servertrack.api.granian_server import make_granian

        # Run as a script, this module is __main__ in the forked granian worker too.
        target = f"{__name__}:bare_factory"
        make_granian(target, "127.0.0.1", port, threads=WAITRESS_THREADS).serve()
        return 0
    server = make_waitress(bare_app, "127.0.0.1", port, WAITRESS_THREADS, ApiStats())

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop(timeout=5)
    return 0


def measure_bare_waitress(seconds: float, connections: int = 64) -> dict[str, Any]:
    """The ceiling: GET req/s of waitress alone (same settings, same wrk script as GET)."""
    return measure_bare("waitress", seconds, connections)


@contextlib.contextmanager
def bare_server(server_name: str) -> Iterator[tuple[str, Path]]:
    """``server_name`` alone serving :func:`bare_app` with the settings ``servertrack api``
    gives it, on a free port; yields its URL and log file, stopped afterwards."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="bench-bare-") as tmp:
        log_path = Path(tmp) / f"{server_name}.log"
        process = ChildProcess(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--serve-bare",
                str(port),
                "--bare-server",
                server_name,
            ],
            log_path,
        ).start()
        try:
            wait_until(lambda: http_json("GET", url + "/")[0] == 200, READY_TIMEOUT, server_name)
            yield url, log_path
        finally:
            process.stop()


def measure_bare_at(
    url: str, log_path: Path, seconds: float, connections: int = 64, method: str = "GET"
) -> dict[str, Any]:
    """Req/s of a running bare server with the same wrk script as ours: GETs of one path, or
    (``method="POST"``) the single records of ``POST /servers/{name}/loads`` (the bare callable
    answers them with its constant body, unread)."""
    if method == "POST":
        with lines_file(["bare"]) as path:
            result = run_wrk(url, ["single", path], seconds, connections)
    else:
        with lines_file(["/servers/bare/loads"]) as path:
            result = run_wrk(url, ["get", path], seconds, connections)
    # Read before stopping: shutdown's "Canceling N pending task(s)" is not load trouble.
    result.update(what=f"bare {method}", server_warnings=_warnings(log_path))
    return result


def measure_bare(server_name: str, seconds: float, connections: int = 64) -> dict[str, Any]:
    """The ceiling: GET req/s of ``server_name`` alone serving a constant JSON body, with the
    settings ``servertrack api`` gives it and the same wrk script as GET."""
    with bare_server(server_name) as (url, log_path):
        result = measure_bare_at(url, log_path, seconds, connections)
    result["what"] = f"bare {server_name} GET"
    return result


def _warnings(log_path: Path) -> list[str]:
    """WARNING/ERROR lines of a server log (at most 20), to report trouble under load."""
    if not log_path.exists():
        return []
    lines = log_path.read_text(errors="replace").splitlines()
    return [line for line in lines if "WARNING" in line or "ERROR" in line][:20]


# -- a private host, for running the whole thing by hand --------------------------------------


@contextlib.contextmanager
def private_host() -> Iterator[tuple[str, Path]]:
    """``servertrack run --no-agent`` on free loopback ports in a temp dir; stopped afterwards."""
    with tempfile.TemporaryDirectory(prefix="bench-host-") as tmp:
        host = launch_host(Path(tmp), "--no-agent")
        try:
            yield host.api, host.process.log_path
        finally:
            host.process.stop()


def run_all(api: str, what: list[str], seconds: float) -> dict[str, Any]:
    """The chosen measurements in order; GET first makes its names exist."""
    results: dict[str, Any] = {}
    for item in what:
        if item == "post_single":
            results[item] = measure_post_single(api, seconds)
        elif item == "post_batch":
            results[item] = measure_post_batch(api, seconds)
        elif item == "get":
            names = populate(api)
            wait_visible(api, names)
            results[item] = measure_get(api, names, seconds)
        elif item == "bare":
            results[item] = measure_bare_waitress(seconds)
        else:
            raise ValueError(f"unknown measurement {item!r}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--api", help="API base URL on 127.0.0.1; default: start a private servertrack run"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument(
        "--what",
        default="post_single,post_batch,get,bare",
        help="comma-separated: post_single, post_batch, get, bare",
    )
    parser.add_argument("--raw", action="store_true", help="keep wrk's stderr field")
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--bare-server", default="waitress", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_bare:
        return serve_bare(args.serve_bare, args.bare_server)
    if not 1 <= args.seconds <= 600:
        parser.error("--seconds must be 1..600")
    what = [item.strip() for item in args.what.split(",") if item.strip()]
    ensure_wrk()
    if args.api:
        results = run_all(check_loopback(args.api), what, args.seconds)
    else:
        with private_host() as (api, log_path):
            results = run_all(api, what, args.seconds)
            results["host_warnings"] = _warnings(log_path)
    if not args.raw:
        for value in results.values():
            if isinstance(value, dict):
                value.pop("wrk_stderr", None)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
