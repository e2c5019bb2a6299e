"""Fixtures that start the real daemons as child processes on free loopback ports."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from servertrack.common.testing import ChildProcess as Process
from servertrack.common.testing import HostUnderTest as Host
from servertrack.common.testing import http_json as http
from servertrack.common.testing import launch_host, wait_until
from servertrack.common.testing import servertrack_argv as servertrack

__all__ = ["Host", "Process", "http", "servertrack", "wait_for"]


def wait_for(predicate: Callable[[], Any], deadline: float, what: str, step: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy, failing the test after ``deadline``."""
    try:
        return wait_until(predicate, deadline, what, step)
    except TimeoutError as err:
        pytest.fail(str(err))


@pytest.fixture
def start_host(tmp_path: Path) -> Iterator[Callable[..., Host]]:
    """Start ``servertrack run`` with free ports; every host is stopped (and reaped) afterwards."""
    started: list[Host] = []

    def start(*extra: str) -> Host:
        host = launch_host(tmp_path, *extra, name=f"host{len(started)}")
        started.append(host)
        return host

    yield start
    slow = []
    for host in started:
        try:
            host.process.stop()
        except TimeoutError as err:
            slow.append(str(err))
    if slow:
        pytest.fail("; ".join(slow))


@pytest.fixture
def zmq_context() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)
