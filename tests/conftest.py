"""Fixtures that start the real daemons as child processes on free loopback ports."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import zmq

from servertrack.common.testing import free_port

STOP_DEADLINE = 15.0
READY_DEADLINE = 30.0


def http(
    method: str, url: str, body: Any = None, timeout: float = 5.0, raw: bytes | None = None
) -> tuple[int, Any]:
    """One HTTP request; returns the status and the decoded JSON body (or None)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = response.read()
            status = response.status
    except urllib.error.HTTPError as err:
        payload = err.read()
        status = err.code
    return status, json.loads(payload) if payload else None


def wait_for(predicate: Callable[[], Any], deadline: float, what: str, step: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy, failing after ``deadline`` seconds."""
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
    pytest.fail(f"timed out after {deadline} s waiting for {what} (last error: {last_error})")


@dataclass
class Process:
    """A daemon started as a child process in its own session, stopped and reaped on teardown."""

    argv: list[str]
    log_path: Path
    process: subprocess.Popen | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    def start(self) -> Process:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env},
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self, deadline: float = STOP_DEADLINE) -> float:
        """SIGTERM and wait; returns the seconds it took. Kills the group and fails if too slow."""
        assert self.process is not None
        if self.process.poll() is not None:
            return 0.0
        began = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            self.kill_group()
            pytest.fail(f"{self.argv[2:4]} did not stop within {deadline} s of SIGTERM")
        return time.monotonic() - began

    def kill_group(self) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=STOP_DEADLINE)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def servertrack(*args: str) -> list[str]:
    return [sys.executable, "-m", "servertrack.common.cli", *args]


@dataclass
class Host:
    """A running ``servertrack run``."""

    process: Process
    api_port: int
    ingest_port: int

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def ingest(self) -> str:
        return f"tcp://127.0.0.1:{self.ingest_port}"

    def get(self, path: str) -> tuple[int, Any]:
        return http("GET", self.api + path)

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        return http("POST", self.api + path, body)


@pytest.fixture
def start_host(tmp_path: Path) -> Iterator[Callable[..., Host]]:
    """Start ``servertrack run`` with free ports; every host is stopped (and reaped) afterwards."""
    started: list[Process] = []

    def start(*extra: str) -> Host:
        api_port, ingest_port = free_port(), free_port()
        index = len(started)
        runtime = tmp_path / f"rt{index}"
        argv = servertrack(
            "run",
            "--api-port",
            str(api_port),
            "--ingest-port",
            str(ingest_port),
            "--runtime-dir",
            str(runtime),
            *extra,
        )
        process = Process(argv, tmp_path / f"host{index}.log").start()
        started.append(process)
        host = Host(process, api_port, ingest_port)
        wait_for(lambda: host.get("/health")[0] == 200, READY_DEADLINE, "the host to be healthy")
        return host

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def zmq_context() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)
