"""What holds single POSTs on granian: CPU time and context switches a request in the API's
worker process, for four apps on the same granian settings, with the same wrk script:

- ``bare``: a constant body (the ceiling of ``make bench``);
- ``fast``: the API's fast path of single records (its validation, answer and counters) over a
  backend that answers every record at once;
- ``fast-stdlib``: the same with every body decoded by the standard library (no orjson lane);
- ``grouped``: the same through the group commit (``api/group.py``), whose receiver answers at
  once: the request thread waits for its group's verdict, the committer makes the trip;
- ``host``: a real ``servertrack run --http granian`` (the receiver over ZeroMQ).

Run by hand (only 127.0.0.1 gets traffic; every process is stopped afterwards)::

    .venv/bin/python -m bench.post_limits --seconds 5 --turns 2
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from bench import http_bench
from servertrack.testing.hosts import ChildProcess, free_port, http_json, launch_host, wait_until

APPS = ("bare", "fast", "fast-stdlib", "grouped")
VARIANT = "SERVERTRACK_POST_LIMITS_APP"
THREADS = 64


class _Instant:
    """A backend whose receiver takes every record at once."""

    def record(self, samples: list[Any]) -> dict[str, Any]:
        return {"accepted": len(samples), "duplicates": 0}

    def threads(self) -> list[Any]:
        return []

    def generation(self) -> None:
        return None

    def close(self) -> None:
        pass


class _InstantReceiver:
    """A receiver socket stand-in for the group commit: a verdict for every row at once."""

    endpoint = "inproc://instant"

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"verdicts": [None] * len(request["samples"])}

    def close(self) -> None:
        pass


class _Grouped(_Instant):
    def __init__(self) -> None:
        from servertrack.api.group import GroupCommit

        self.group = GroupCommit(_InstantReceiver(), 5.0)  # type: ignore[arg-type]  # a stand-in socket
        self.group.start()

    def record(self, samples: list[Any]) -> dict[str, Any]:
        return self.group.record(samples[0])


def app_factory() -> Any:
    """Granian's factory target: the app named in the environment."""
    from servertrack.api.admission import Admission
    from servertrack.api.assembly import assemble
    from servertrack.api.bodies import BodySlots, slots_for

    kind = os.environ[VARIANT]
    if kind == "bare":
        return http_bench.bare_app
    if kind == "fast-stdlib":
        from servertrack.api import intake

        intake._plain_record = lambda raw: None  # what the fast path costs without orjson
    backend = _Grouped() if kind == "grouped" else _Instant()
    fast, _, stats = assemble(backend, Admission(None, None, 5.0))  # type: ignore[arg-type]  # records only
    return BodySlots(fast, slots_for(THREADS), stats, fast.admission)


def switches(pid: int) -> int:
    """Context switches of every thread of ``pid`` so far."""
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/status"):
        try:
            with open(path) as status:
                total += sum(int(line.split()[1]) for line in status if "ctxt_switches" in line)
        except OSError:
            continue  # a thread that ended
    return total


def cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def costs(workers: list[psutil.Process], url: str, seconds: float) -> dict[str, Any]:
    """Single POSTs of the bench's wrk script, with the workers' CPU and switches a request."""
    before = [(cpu(w), switches(w.pid)) for w in workers]
    with http_bench.lines_file(["post-limits-1", "post-limits-2"]) as path:
        result = http_bench.run_wrk(url, ["single", path], seconds, 64)
    requests = max(1, result["requests"] or 1)
    spent = sum(cpu(w) - b[0] for w, b in zip(workers, before, strict=True))
    switched = sum(switches(w.pid) - b[1] for w, b in zip(workers, before, strict=True))
    return {
        "requests_per_s": result["requests_per_s"],
        "p99_ms": result["p99_ms"],
        "statuses": result["statuses"],
        "cpu_us_per_request": round(spent / requests * 1e6, 1),
        "switches_per_request": round(switched / requests, 2),
        "loadavg_1m": result["loadavg_1m"],
    }


@contextmanager
def serving(kind: str, workdir: Path) -> Iterator[tuple[str, list[psutil.Process]]]:
    """``kind`` on granian with the API's settings, on a free port: its URL and its worker."""
    if kind == "host":
        host = launch_host(workdir, "--no-agent", "--http", "granian", name="post-limits")
        try:
            yield host.api, host.child("api").children()
        finally:
            host.process.stop()
        return
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "bench.post_limits", "--serve", str(port), "--app", kind]
    process = ChildProcess(argv, workdir / f"{kind}.log").start()
    try:
        wait_until(lambda: http_json("GET", url + "/servers")[0] > 0, 30, kind)
        yield url, psutil.Process(process.pid).children()
    finally:
        process.stop()


def measure(seconds: float, turns: int) -> dict[str, list[dict[str, Any]]]:
    """Each app in turn, ``turns`` times (the machine is shared: turns see the same load)."""
    found: dict[str, list[dict[str, Any]]] = {kind: [] for kind in (*APPS, "host")}
    with tempfile.TemporaryDirectory(prefix="bench-post-limits-") as tmp:
        for _ in range(turns):
            for kind in found:
                with serving(kind, Path(tmp)) as (url, workers):
                    found[kind].append(costs(workers, url, seconds))
                print(kind, found[kind][-1], flush=True)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--app", choices=APPS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        from servertrack.api.granian_server import make_granian

        os.environ[VARIANT] = args.app
        make_granian("bench.post_limits:app_factory", "127.0.0.1", args.serve).serve()
        return 0
    print(json.dumps(measure(args.seconds, args.turns), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
