"""Test helpers that ship with the project: a fake clock, free loopback ports, and real
processes (``servertrack run`` and its daemons) started, probed and stopped with deadlines.

The rollup oracle lives in :mod:`servertrack.common.oracle`.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil
import zmq

from servertrack.common import wire
from servertrack.common.buckets import MINUTE, oldest_accepted_ts
from servertrack.common.oracle import RawSample
from servertrack.common.sample import Sample


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


PORT_SPAN = 12_000
"""How many ports just below the kernel's ephemeral range :func:`free_port` hands out from."""


@dataclass
class PortSlice:
    """The ports :func:`free_port` hands out in one process: ``low`` to ``high - 1``, walked
    from ``next`` on."""

    low: int
    high: int
    next: int
    pid: int
    lock: threading.Lock = field(default_factory=threading.Lock)


def ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (``bind`` to port 0, outgoing
    connections)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
            return int(ranges.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def port_slice(worker: str, workers: int, top: int, start: int | None = None) -> PortSlice | None:
    """Worker ``gwN``'s share of the ``PORT_SPAN`` ports below ``top``, entered at ``start``
    (a random place by default, so two runs side by side seldom walk the same ports); None
    when the share would be too small to be worth it."""
    bottom = max(1024, top - PORT_SPAN)
    number = worker.removeprefix("gw")
    index = int(number) % workers if number.isdigit() and workers > 0 else 0
    size = (top - bottom) // max(1, workers)
    if size < 100:
        return None
    low = bottom + index * size
    begin = random.SystemRandom().randrange(low, low + size) if start is None else start
    return PortSlice(low, low + size, begin, os.getpid())


_slice: list[PortSlice | None] = []


def _this_process_slice() -> PortSlice | None:
    if not _slice or (_slice[0] is not None and _slice[0].pid != os.getpid()):
        _slice[:] = [
            port_slice(
                os.environ.get("PYTEST_XDIST_WORKER", "gw0"),
                int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1),
                ephemeral_low(),
            )
        ]
    return _slice[0]


def bindable(port: int) -> bool:
    """Nothing holds ``port`` on 127.0.0.1 (no listener, no connection left in TIME_WAIT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def next_free(ports: PortSlice) -> int | None:
    """The next port of ``ports`` that is free now (the walk goes on from there), or None."""
    with ports.lock:
        for _ in range(ports.high - ports.low):
            port = ports.next
            ports.next = port + 1 if port + 1 < ports.high else ports.low
            if bindable(port):
                return port
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now, for a server a test is about to start.

    Ports come from just below the kernel's ephemeral range, so no ``bind`` to port 0 and no
    outgoing connection of anyone on the machine takes one before the server binds it; each
    worker of a parallel run (pytest-xdist) walks its own slice, so two workers are never handed
    the same port, and one worker hands a port out again only after walking its whole slice.
    Where there is no room below the ephemeral range: a port the kernel picks (bound to port 0,
    then released)."""
    ports = _this_process_slice()
    port = next_free(ports) if ports is not None else None
    if port is not None:
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- real processes on loopback, for end-to-end tests and benchmarks ----------------------------
STOP_DEADLINE = 15.0
READY_DEADLINE = 30.0


def servertrack_argv(*args: str) -> list[str]:
    """The command line that runs ``servertrack ARGS`` with this interpreter."""
    return [sys.executable, "-m", "servertrack.host.cli", *args]


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


T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T | None], deadline: float, what: str, step: float = 0.1
) -> T:
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


def limit_open_files(files: int) -> None:
    """In a child before ``exec`` (``preexec_fn``): at most ``files`` open files, soft and hard
    (so the child cannot raise it back)."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))


@dataclass
class ChildProcess:
    """A command started in its own session (so its whole group can be killed), logging to a
    file; :meth:`stop` sends SIGTERM and waits, killing the group if it is too slow.
    ``open_files`` limits it (and its children) to that many open files."""

    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    open_files: int | None = None

    def start(self) -> ChildProcess:
        limit = (
            None
            if self.open_files is None
            else functools.partial(limit_open_files, self.open_files)
        )
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                preexec_fn=limit,  # setrlimit only: safe between fork and exec
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

    @property
    def runtime_dir(self) -> str:
        """Where its daemons' ipc sockets are (``receiver-control``, ``query``, ...)."""
        return self.flag("--runtime-dir")

    def flag(self, name: str) -> str:
        """The value the host was started with for flag ``name`` (the last one given)."""
        argv = self.process.argv
        return argv[len(argv) - 1 - argv[::-1].index(name) + 1]

    def get(self, path: str) -> tuple[int, Any]:
        return http_json("GET", self.api + path)

    def get_bytes(self, path: str) -> tuple[int, bytes]:
        """The status and the body as sent (to judge its size)."""
        try:
            with urllib.request.urlopen(self.api + path, timeout=5.0) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        return http_json("POST", self.api + path, body)

    def child(self, name: str) -> psutil.Process:
        """The child process running daemon ``name`` (receiver, aggregator, api, agent)."""
        for child in psutil.Process(self.process.pid).children():
            try:
                if f"servertrack.{name}" in " ".join(child.cmdline()):
                    return child
            except psutil.Error:  # a child that just died and is not reaped yet
                continue
        raise LookupError(f"no {name} child")


def launch_host(
    workdir: Path, *extra: str, name: str = "host", open_files: int | None = None
) -> HostUnderTest:
    """Start ``servertrack run`` with free ports under ``workdir`` and wait until it is healthy;
    ``open_files`` limits the host and its daemons to that many open files each."""
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
    process = ChildProcess(argv, workdir / f"{name}.log", open_files=open_files).start()
    host = HostUnderTest(process, api_port, ingest_port)
    try:
        wait_until(lambda: host.get("/health")[0] == 200, READY_DEADLINE, "the host to be healthy")
    except TimeoutError:
        process.stop()
        raise
    return host


def settled_stats(host: HostUnderTest, deadline: float = 15.0) -> dict[str, Any]:
    """``/stats`` once two more receiver batches have been applied: every record answered
    before the call is in its counters (the receiver's counters travel with its batches), so a
    test on a shared host can take them as its starting point."""
    first = wait_until(
        lambda: host.get("/stats")[1]["receiver"].get("batches"), deadline, "a first batch"
    )

    def later() -> dict[str, Any] | None:
        status, stats = host.get("/stats")
        return stats if status == 200 and stats["receiver"]["batches"] >= first + 2 else None

    return wait_until(later, deadline, "two more batches", step=0.05)


def view_at_stable_minute(host: HostUnderTest, name: str) -> tuple[dict[str, Any], float]:
    """GET a server's loads together with a ``now`` in the same minute as the answer."""
    for _ in range(3):
        before = time.time()
        status, body = host.get(f"/servers/{name}/loads")
        after = time.time()
        if status != 200:
            raise AssertionError(f"GET {name} answered {status}: {body}")
        if int(before // MINUTE) == int(after // MINUTE):
            return body, after
    raise AssertionError("could not read within one minute")


_warm_ups = itertools.count()


def warm_up(pub: zmq.SyncSocket, host: HostUnderTest, deadline: float = 10.0) -> None:
    """Publish throw-away samples until one shows on the host (PUB drops until connected).
    Each call uses a server name of its own (``warm-up-PID-N``), so on a host shared between
    tests every socket is seen connected, not just the first."""
    name = f"warm-up-{os.getpid()}-{next(_warm_ups)}"
    end = time.monotonic() + deadline
    seq = 0
    while time.monotonic() < end:
        pub.send_multipart(wire.encode(Sample(name, time.time(), 1.0, 1.0, seq)))
        seq += 1
        if host.get(f"/servers/{name}/loads")[0] == 200:
            return
        time.sleep(0.05)
    raise TimeoutError("the receiver never saw the warm-up samples")


def random_history(rng: random.Random, name: str, now: float, count: int) -> list[RawSample]:
    """Samples over the whole 24-hour window and the last minutes, some with one metric."""
    oldest = oldest_accepted_ts(now)
    out: list[RawSample] = []
    for index in range(count):
        ts = rng.uniform(oldest, now) if index % 3 else rng.uniform(now - 300, now)
        cpu = round(rng.uniform(0, 100), 3) if index % 7 else None
        ram = round(rng.uniform(0, 100), 3) if index % 11 or cpu is None else None
        out.append((name, ts, cpu, ram))
    return out


# -- ZeroMQ peers written by hand, for hostile-client tests -------------------------------------
ZMTP_GREETING = (
    b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" * 32
)
"""A ZMTP 3.0 greeting: signature, version 3.0, the NULL mechanism, as client, filler."""


def zmtp_ready(socket_type: bytes) -> bytes:
    """The READY command of a NULL-mechanism peer of ``socket_type`` (``b"PUB"``...)."""
    body = b"\x05READY\x0bSocket-Type" + len(socket_type).to_bytes(4, "big") + socket_type
    return b"\x04" + bytes([len(body)]) + body


def open_zmtp_connection(
    port: int, socket_type: bytes = b"PUB", timeout: float = 5.0
) -> socket.socket | None:
    """A TCP connection to a ZeroMQ socket on 127.0.0.1:``port`` that has gone through the ZMTP
    handshake (greetings and READY commands exchanged) and then holds still, as a client hoarding
    connections would; ``None`` when the peer ended it during the handshake. The caller closes
    it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.sendall(ZMTP_GREETING)
        received = b""
        while len(received) < len(ZMTP_GREETING) + 2:  # its greeting and its READY's header
            chunk = sock.recv(256)
            if not chunk:
                sock.close()
                return None
            received += chunk
        sock.sendall(zmtp_ready(socket_type))
    except (ConnectionResetError, BrokenPipeError):
        sock.close()
        return None
    return sock
