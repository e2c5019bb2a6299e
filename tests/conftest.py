"""Fixtures that start the real daemons as child processes on free loopback ports."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq
import zmq.auth

from servertrack.testing.hosts import HostUnderTest as Host
from servertrack.testing.hosts import launch_host
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


@pytest.fixture
def setting_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding what daemons' settings name, each usable as it is: token
    files ``token`` and ``read``, a Redis password file ``pw``, a Graphite rule file
    ``graphite.map``, CURVE pairs ``keys/receiver`` and ``keys/agent`` (the agent's public key
    authorized in ``keys/authorized``) and a runtime directory ``rt``; no ``SERVERTRACK_*``
    variable set, and ``XDG_STATE_HOME`` inside it."""
    for variable in [name for name in os.environ if name.startswith("SERVERTRACK_")]:
        monkeypatch.delenv(variable)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    for name, text in (("token", "record\n"), ("read", "read\n"), ("pw", "secret\n")):
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o600)
    (tmp_path / "graphite.map").write_text("hosts.{server}.memory.percent-used ram\n")
    keys = tmp_path / "keys"
    (keys / "authorized").mkdir(parents=True)
    zmq.auth.create_certificates(keys, "receiver")
    public, _ = zmq.auth.create_certificates(keys, "agent")
    os.link(public, keys / "authorized" / "agent.key")
    for secret in keys.glob("*.key_secret"):
        secret.chmod(0o600)
    (tmp_path / "rt").mkdir()
    return tmp_path
