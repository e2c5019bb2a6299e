"""Fixtures that start the real daemons as child processes on free loopback ports."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq

from servertrack.common.testing import HostUnderTest as Host
from servertrack.common.testing import launch_host
from tests.alertmanager_support import Alertmanager, Recorder


@pytest.fixture
def start_host(tmp_path: Path) -> Iterator[Callable[..., Host]]:
    """Start ``servertrack run`` with free ports; every host is stopped (and reaped) afterwards."""
    started: list[Host] = []

    def start(*extra: str, open_files: int | None = None) -> Host:
        host = launch_host(tmp_path, *extra, name=f"host{len(started)}", open_files=open_files)
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


HTTP_SERVERS = ("waitress", "granian")


@pytest.fixture(params=HTTP_SERVERS)
def http_server(request: pytest.FixtureRequest) -> str:
    """Each HTTP server ``servertrack api --http`` offers: the test runs once on each."""
    return str(request.param)


@pytest.fixture
def webhook() -> Iterator[Recorder]:
    """A real HTTP server recording every notification POSTed to it; closed afterwards."""
    recorder = Recorder().start()
    yield recorder
    recorder.close()


@pytest.fixture
def alertmanager(tmp_path: Path, webhook: Recorder) -> Iterator[Alertmanager]:
    """A real ``prometheus-alertmanager`` on a free loopback port notifying ``webhook``;
    always stopped afterwards (a test may stop and start it again meanwhile)."""
    manager = Alertmanager(tmp_path / "alertmanager", webhook.url + "/hook").start()
    try:
        yield manager
    finally:
        manager.stop()
