"""Test helpers that ship with the project: a fake clock, a free loopback port and a rollup oracle.

:func:`oracle_buckets` is a deliberately naive re-statement of the bucket rules in plain Python
(no numpy, nothing from :mod:`servertrack.aggregator`), so the real rollups can be checked
against it: it groups the raw samples of one server by bucket in a dict and keeps the buckets
that are inside the windows at ``now``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

MINUTE = 60
HOUR = 3600
MINUTES_SHOWN = 60
HOURS_SHOWN = 24

RawSample = tuple[str, float, float | None, float | None]
"""``(fqdn, ts, cpu, ram)`` with ``None`` for a metric the sample does not carry."""


class FakeClock:
    """A clock to inject as ``clock=``: calling it returns the time it was set or advanced to."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move the clock forward (or back, with a negative value) and return the new time."""
        self.now += seconds
        return self.now

    def set(self, ts: float) -> float:
        """Jump the clock to ``ts`` and return it."""
        self.now = float(ts)
        return self.now


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def iso_z(ts: float) -> str:
    """``ts`` as ``2026-11-22T10:01:00Z``, with microseconds only when there are some."""
    moment = datetime.fromtimestamp(ts, tz=UTC)
    if moment.microsecond:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _start(ts: float, width: int) -> int:
    """Start of the bucket of ``width`` seconds holding ``ts``: ``ts - ts % width``."""
    return int(ts - ts % width)


def _bucket(start: int, group: list[RawSample]) -> dict[str, Any]:
    bucket: dict[str, Any] = {"start": iso_z(start)}
    for index, metric in ((2, "cpu"), (3, "ram")):
        values = [sample[index] for sample in group if sample[index] is not None]
        if values:
            total = math.fsum(values)
            bucket[metric] = total / len(values)
            bucket[f"{metric}_sum"] = total
            bucket[f"{metric}_min"] = min(values)
            bucket[f"{metric}_max"] = max(values)
        else:
            bucket[metric] = bucket[f"{metric}_sum"] = None
            bucket[f"{metric}_min"] = bucket[f"{metric}_max"] = None
        bucket[f"{metric}_samples"] = len(values)
    bucket["samples"] = len(group)
    return bucket


def _window(samples: list[RawSample], now: float, width: int, shown: int) -> list[dict[str, Any]]:
    newest = _start(now, width)
    oldest = newest - (shown - 1) * width
    groups: dict[int, list[RawSample]] = {}
    for sample in samples:
        start = _start(sample[1], width)
        if oldest <= start <= newest:
            groups.setdefault(start, []).append(sample)
    return [_bucket(start, groups[start]) for start in sorted(groups)]


def oracle_buckets(
    samples: Iterable[RawSample], now: float, fqdn: str | None = None
) -> dict[str, list[dict[str, Any]]]:
    """The minute and hour buckets one server should show at ``now``, in the shape of ``view()``.

    ``samples`` are the raw samples the server sent (those of other servers are skipped when
    ``fqdn`` is given). Only non-empty buckets inside the windows are returned, oldest first: the
    60 minute buckets and the 24 hour buckets up to and including the ones holding ``now``. Means
    are taken over raw samples; ``samples`` counts raw samples, whichever metrics they carry.
    The stream is assumed to respect the acceptance rule (``ts`` at most 60 s ahead of the clock
    when sent); anything older than the windows is simply not shown.
    """
    mine = [sample for sample in samples if fqdn is None or sample[0] == fqdn]
    return {
        "minutes": _window(mine, now, MINUTE, MINUTES_SHOWN),
        "hours": _window(mine, now, HOUR, HOURS_SHOWN),
    }


# -- real processes on loopback, for end-to-end tests and benchmarks ----------------------------
STOP_DEADLINE = 15.0
READY_DEADLINE = 30.0


def servertrack_argv(*args: str) -> list[str]:
    """The command line that runs ``servertrack ARGS`` with this interpreter."""
    return [sys.executable, "-m", "servertrack.common.cli", *args]


def http_json(
    method: str, url: str, body: Any = None, timeout: float = 5.0, raw: bytes | None = None
) -> tuple[int, Any]:
    """One HTTP request; returns the status and the decoded JSON body (or None)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload, status = response.read(), response.status
    except urllib.error.HTTPError as err:
        payload, status = err.read(), err.code
    return status, json.loads(payload) if payload else None


def wait_until(predicate: Callable[[], Any], deadline: float, what: str, step: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; TimeoutError after ``deadline`` s."""
    end = time.monotonic() + deadline
    last_error: Exception | None = None
    while time.monotonic() < end:
        try:
            result = predicate()
            if result:
                return result
        except (OSError, urllib.error.URLError, ValueError) as err:
            last_error = err
        time.sleep(step)
    raise TimeoutError(
        f"timed out after {deadline} s waiting for {what} (last error: {last_error})"
    )


@dataclass
class ChildProcess:
    """A command started in its own session (so its whole group can be killed), logging to a
    file; :meth:`stop` sends SIGTERM and waits, killing the group if it is too slow."""

    argv: list[str]
    log_path: Path
    process: subprocess.Popen | None = None

    def start(self) -> ChildProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self, deadline: float = STOP_DEADLINE) -> float:
        """SIGTERM and wait; returns the seconds it took, or raises TimeoutError after killing."""
        assert self.process is not None
        if self.process.poll() is not None:
            return 0.0
        began = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            self.kill_group()
            raise TimeoutError(f"{self.argv[3:5]} did not stop within {deadline} s") from None
        return time.monotonic() - began

    def kill_group(self) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=STOP_DEADLINE)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class HostUnderTest:
    """A running ``servertrack run`` on free loopback ports."""

    process: ChildProcess
    api_port: int
    ingest_port: int

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def ingest(self) -> str:
        return f"tcp://127.0.0.1:{self.ingest_port}"

    def get(self, path: str) -> tuple[int, Any]:
        return http_json("GET", self.api + path)

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        return http_json("POST", self.api + path, body)

    def child(self, name: str) -> psutil.Process:
        """The child process running daemon ``name`` (receiver, aggregator, api, agent)."""
        for child in psutil.Process(self.process.pid).children():
            if f"servertrack.{name}" in " ".join(child.cmdline()):
                return child
        raise LookupError(f"no {name} child")


def launch_host(workdir: Path, *extra: str, name: str = "host") -> HostUnderTest:
    """Start ``servertrack run`` with free ports under ``workdir`` and wait until it is healthy."""
    api_port, ingest_port = free_port(), free_port()
    argv = servertrack_argv(
        "run",
        "--api-port",
        str(api_port),
        "--ingest-port",
        str(ingest_port),
        "--runtime-dir",
        str(workdir / f"{name}-rt"),
        "--data-dir",
        str(workdir / f"{name}-data"),
        *extra,
    )
    process = ChildProcess(argv, workdir / f"{name}.log").start()
    host = HostUnderTest(process, api_port, ingest_port)
    try:
        wait_until(lambda: host.get("/health")[0] == 200, READY_DEADLINE, "the host to be healthy")
    except TimeoutError:
        process.stop()
        raise
    return host


EXACT_FIELDS = ("samples", "cpu_samples", "ram_samples", "cpu_min", "cpu_max", "ram_min", "ram_max")


def bucket_differences(
    view: dict[str, Any], expected: dict[str, list[dict[str, Any]]], rel_tol: float = 1e-12
) -> list[str]:
    """How a ``GET /servers/{name}/loads`` answer differs from :func:`oracle_buckets`, as
    readable lines (none when they agree): the same buckets in the same order, counts and
    extremes exactly equal, means and sums equal within ``rel_tol``, ``null`` where the oracle
    has none."""
    problems = []
    for scale in ("minutes", "hours"):
        got, want = view[scale], expected[scale]
        if [b["start"] for b in got] != [b["start"] for b in want]:
            problems.append(
                f"{scale}: buckets {[b['start'] for b in got]} != {[b['start'] for b in want]}"
            )
            continue
        for have, bucket in zip(got, want, strict=True):
            start = bucket["start"]
            for key in EXACT_FIELDS:
                if have[key] != bucket[key]:
                    problems.append(f"{scale} {start} {key}: {have[key]} != {bucket[key]}")
            for key in ("cpu", "ram", "cpu_sum", "ram_sum"):
                if (have[key] is None) != (bucket[key] is None) or (
                    bucket[key] is not None
                    and not math.isclose(have[key], bucket[key], rel_tol=rel_tol)
                ):
                    problems.append(f"{scale} {start} {key}: {have[key]!r} != {bucket[key]!r}")
    return problems
