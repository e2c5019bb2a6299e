"""Fixtures that start the real daemons as child processes on free loopback ports, the
hypothesis profiles, and the order test modules are handed to parallel workers in."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from itertools import zip_longest
from pathlib import Path

import pytest
import zmq
import zmq.auth
from hypothesis import settings

from servertrack.testing.hosts import READY_DEADLINE, launch_host, wait_until
from servertrack.testing.hosts import HostUnderTest as Host
from servertrack.testing.redis import RedisServer
from tests.alertmanager_support import Alertmanager, Recorder

FULL_EXAMPLES = 300
"""Examples per property test under ``CI=true``; a fifth of that otherwise, so a run at a desk
stays quick while CI tries every property in full."""
settings.register_profile("ci", max_examples=FULL_EXAMPLES)
settings.register_profile("dev", max_examples=FULL_EXAMPLES // 5)
settings.load_profile(
    os.environ.get("SERVERTRACK_HYPOTHESIS_PROFILE")
    or ("ci" if os.environ.get("CI", "").lower() in ("true", "1") else "dev")
)


LONGEST_FIRST = (
    "test_read_freshness.py",
    "test_forward_fresh.py",
    "test_graphite_listener.py",
    "test_slowloris.py",
    "test_redis_host.py",
    "test_redis_host_failures.py",
    "test_e2e.py",
    "test_host_lifecycle.py",
    "test_schemathesis.py",
    "test_http_servers.py",
    "test_dashboard_browser.py",
    "test_prometheus_host.py",
    "test_alerts_live.py",
    "test_prometheus_anomaly.py",
    "test_anomaly_host.py",
    "test_curve.py",
    "test_anomaly_detector.py",
    "test_forward_unit.py",
    "test_hostile.py",
    "test_fleet_scale.py",
    "test_fleet_minute_edges.py",
)
"""The longest modules (wall time, from ``--durations``; the two first hold the longest fault
tests), longest first. Only an order: a module left out merely starts later."""


@pytest.hookimpl(trylast=True)  # after ``-m`` has deselected what will not run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest modules first, then the others that start real processes (marked ``e2e``),
    then the rest, each module in its own order: with ``--dist loadfile`` (``make test``)
    parallel workers take the long modules at the start and the short ones fill in at the end,
    instead of a long one starting last. With ``--dist load`` (``make test-faults``) a worker is
    first handed two tests in a row, so the first half of that order is interleaved with the
    second: each worker starts one long test beside a short one."""
    real = {item.path for item in items if item.get_closest_marker("e2e")}

    def rank(item: pytest.Item) -> int:
        if item.path.name in LONGEST_FIRST:
            return LONGEST_FIRST.index(item.path.name)
        return len(LONGEST_FIRST) + (item.path not in real)

    items.sort(key=rank)
    if getattr(config.option, "dist", "no") == "load":
        half = (len(items) + 1) // 2
        items[:] = [
            item for pair in zip_longest(items[:half], items[half:]) for item in pair if item
        ]


@pytest.fixture
def start_host(tmp_path: Path) -> Iterator[Callable[..., Host]]:
    """Start ``servertrack run`` with free ports; every host is stopped (and reaped) afterwards."""
    started: list[Host] = []

    def start(*extra: str, open_files: int | None = None) -> Host:
        host = launch_host(tmp_path, *extra, name=f"host{len(started)}", open_files=open_files)
        started.append(host)
        return host

    yield start
    stop_all(started)


def stop_all(hosts: list[Host]) -> None:
    """Stop every host (each within its deadline); fail naming those that had to be killed."""
    slow = []
    for host in hosts:
        try:
            host.process.stop()
        except TimeoutError as err:
            slow.append(str(err))
    if slow:
        pytest.fail("; ".join(slow))


@pytest.fixture(scope="module")
def shared_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Host]]:
    """Hosts shared by the tests of a module: ``shared_host(*flags)`` starts ``servertrack run``
    with ``flags`` the first time they are asked for and hands the same host back afterwards
    (checked healthy first). Its tests use server names of their own and compare counters with
    what they read before they began; a test that stops, kills or breaks a daemon, or needs
    counters from zero, takes ``start_host`` instead."""
    workdir = tmp_path_factory.mktemp("shared")
    hosts: dict[tuple[str, ...], Host] = {}

    def get(*extra: str) -> Host:
        host = hosts.get(extra)
        if host is None:
            host = launch_host(workdir, *extra, name=f"shared{len(hosts)}")
            hosts[extra] = host
        assert host.process.process is not None and host.process.process.poll() is None, (
            f"the shared host {extra} has stopped: {host.process.log()[-2000:]}"
        )
        wait_until(lambda: host.get("/health")[0] == 200, READY_DEADLINE, "the shared host")
        return host

    yield get
    stop_all(list(hosts.values()))


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for a whole test module (see ``redis_server``)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_server(module_redis: RedisServer) -> RedisServer:
    """The module's redis-server, emptied for this test (no keys, no library, no memory limit).
    A test that stops, pauses or restarts Redis starts its own ``RedisServer`` instead."""
    return module_redis.reset()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, for a test that stops or pauses it."""
    server = RedisServer(tmp_path / "own-redis").start()
    yield server
    server.stop()  # resumes it first if it was paused


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
    ``graphite.map``, an alert rules file ``rules.yml``, CURVE pairs ``keys/receiver`` and
    ``keys/agent`` (the agent's public key authorized in ``keys/authorized``) and a runtime
    directory ``rt``; no ``SERVERTRACK_*`` variable set, and ``XDG_STATE_HOME`` inside it."""
    for variable in [name for name in os.environ if name.startswith("SERVERTRACK_")]:
        monkeypatch.delenv(variable)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    for name, text in (("token", "record\n"), ("read", "read\n"), ("pw", "secret\n")):
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o600)
    (tmp_path / "graphite.map").write_text("hosts.{server}.memory.percent-used ram\n")
    (tmp_path / "rules.yml").write_text("rules:\n  - alert: Hot\n    when: cpu > 95\n")
    keys = tmp_path / "keys"
    (keys / "authorized").mkdir(parents=True)
    zmq.auth.create_certificates(keys, "receiver")
    public, _ = zmq.auth.create_certificates(keys, "agent")
    os.link(public, keys / "authorized" / "agent.key")
    for secret in keys.glob("*.key_secret"):
        secret.chmod(0o600)
    (tmp_path / "rt").mkdir()
    return tmp_path
