"""Files, ports and signals of ``servertrack run``: a second host on the same ports or data
directory leaves at once and touches nothing, an unreadable snapshot is moved aside, a snapshot
that cannot be written makes the host degraded (with the reason), SIGHUP stops it cleanly, no child
outlives its supervisor, and bad flags or variables get a message, never a traceback."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from servertrack.common.curve_keys import generate_pair
from servertrack.common.lifecycle import EXIT_CONFIG
from servertrack.receiver import curve
from servertrack.testing.hosts import (
    ChildProcess,
    HostUnderTest,
    free_port,
    servertrack_argv,
    wait_until,
)
from tests.support import wait_for

pytestmark = pytest.mark.e2e
CONFLICT_CPU = 3.0
"""CPU seconds a second host may spend before it leaves: starting Python and reading its flags
take about one; starting a daemon or waiting for one would take more. CPU, not wall time, so
that the check holds on a loaded machine (the wall time is bounded by the run's timeout)."""


def run_argv(api_port: int, ingest_port: int, data_dir: Path, runtime: Path) -> list[str]:
    return servertrack_argv(
        "run",
        "--no-agent",
        "--api-port",
        str(api_port),
        "--ingest-port",
        str(ingest_port),
        "--data-dir",
        str(data_dir),
        "--runtime-dir",
        str(runtime),
    )


def second_host(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a second host: it must leave at once, having used at most ``CONFLICT_CPU`` seconds
    of CPU (its own and its children's)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    spent = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert spent < CONFLICT_CPU, f"the second host used {spent:.2f} s of CPU before leaving"
    return result


def snapshot_written(data_dir: Path) -> bytes:
    path = data_dir / "aggregator.npz"
    return wait_for(lambda: path.exists() and path.read_bytes(), 15, "a snapshot")


def receiver_argv(port: int, control: str) -> list[str]:
    return servertrack_argv(
        "receiver",
        "--bind",
        f"tcp://127.0.0.1:{port}",
        "--aggregator-query",
        "",
        "--control",
        control,
    )


def test_a_second_host_on_the_same_ports_leaves_and_touches_nothing(
    start_host: Callable[..., HostUnderTest], tmp_path: Path
) -> None:
    """The second host leaves within 5 s naming the port; the first one's snapshot (which
    holds a sample answered 202) is untouched, and a restart still shows that sample."""
    data_dir = tmp_path / "host0-data"
    first = start_host("--no-agent")
    assert first.post("/servers/kept/loads", {"cpu": 42.0})[0] == 202
    wait_for(lambda: first.get("/servers/kept/loads")[0] == 200, 10, "the sample applied")
    first.process.stop()  # writes the snapshot
    host = start_host("--no-agent", "--data-dir", str(data_dir))
    snapshot = data_dir / "aggregator.npz"
    before = (snapshot.read_bytes(), snapshot.stat().st_mtime_ns)
    result = second_host(run_argv(host.api_port, host.ingest_port, data_dir, tmp_path / "other-rt"))
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert f"--api-port {host.api_port}" in result.stderr and "Traceback" not in result.stderr
    assert (snapshot.read_bytes(), snapshot.stat().st_mtime_ns) == before
    names = sorted(p.name for p in data_dir.iterdir())
    assert names == ["aggregator.npz", "aggregator.npz.lock", "host.lock"]
    assert host.get("/servers/kept/loads")[1]["minutes"][-1]["cpu"] == 42.0


def test_a_second_host_on_the_same_data_directory_leaves(
    start_host: Callable[..., HostUnderTest], tmp_path: Path
) -> None:
    host = start_host("--no-agent")
    data_dir = tmp_path / "host0-data"
    result = second_host(run_argv(free_port(), free_port(), data_dir, tmp_path / "rt2"))
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert f"data directory {data_dir} is in use by process {host.process.pid}" in result.stderr
    assert host.get("/health")[0] == 200


def test_an_unreadable_snapshot_is_moved_aside_and_counted(
    start_host: Callable[..., HostUnderTest], tmp_path: Path
) -> None:
    data_dir = tmp_path / "host0-data"
    data_dir.mkdir()
    (data_dir / "aggregator.npz").write_bytes(b"PK\x03\x04 a truncated zip")
    host = start_host("--no-agent")
    stats = host.get("/stats")[1]
    assert stats["aggregator"]["snapshots_quarantined"] == 1
    aside = data_dir / "aggregator.npz.unreadable-1"
    assert aside.read_bytes() == b"PK\x03\x04 a truncated zip"
    log = host.process.log()
    assert str(data_dir / "aggregator.npz") in log and "unreadable" in log
    assert host.post("/servers/after/loads", {"cpu": 1.0})[0] == 202


def test_a_snapshot_that_cannot_be_written_makes_the_host_degraded(
    start_host: Callable[..., HostUnderTest], tmp_path: Path
) -> None:
    host = start_host("--no-agent", "--snapshot-interval", "1", "--retention", "10")
    data_dir = tmp_path / "host0-data"
    snapshot_written(data_dir)
    shutil.rmtree(data_dir)
    data_dir.write_text("a file where the data directory was")  # root ignores permissions

    def degraded() -> dict | None:
        status, body = host.get("/health")
        return body if status == 200 and body["status"] == "degraded" else None

    body = wait_for(degraded, 15, "the host to report itself degraded")
    (problem,) = body["aggregator"]["problems"]
    assert "errno" in problem and str(data_dir) in problem
    metrics = wait_for(lambda: host.get("/stats")[1], 5, "stats")
    assert metrics["aggregator"]["snapshot_errors"] >= 1
    assert "errno" in host.process.log()


@pytest.mark.parametrize("whole_group", [False, True], ids=["supervisor", "process-group"])
def test_sighup_stops_the_host_cleanly_with_a_snapshot(
    start_host: Callable[..., HostUnderTest], tmp_path: Path, whole_group: bool
) -> None:
    """SIGHUP to ``run`` (or to its process group, as a terminal hang-up does) stops it like
    SIGTERM: exit 0, a final snapshot, no child left."""
    host = start_host("--no-agent")
    children = psutil.Process(host.process.pid).children()
    assert host.post("/servers/hup/loads", {"cpu": 3.0})[0] == 202
    wait_for(lambda: host.get("/servers/hup/loads")[0] == 200, 10, "the sample applied")
    if whole_group:
        os.killpg(host.process.pid, signal.SIGHUP)
    else:
        host.process.process.send_signal(signal.SIGHUP)
    assert host.process.process.wait(timeout=20) == 0
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive
    log = host.process.log()
    assert "aggregator stopped" in log and "receiver stopped" in log and "killing" not in log
    assert "exited with" not in log  # no child died on the signal: each stopped on its own
    assert (tmp_path / "host0-data" / "aggregator.npz").exists()


def test_no_child_outlives_a_killed_supervisor(
    start_host: Callable[..., HostUnderTest],
) -> None:
    host = start_host("--no-agent")
    children = psutil.Process(host.process.pid).children()
    assert len(children) == 3
    host.process.process.kill()
    host.process.process.wait(timeout=10)
    _, alive = psutil.wait_procs(children, timeout=15)
    for child in alive:
        child.kill()
    assert not alive, [child.cmdline() for child in alive]


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["run", "--api-port", "99999"], {}, "must be a TCP port from 1 to 65535, got '99999'"),
        (["run"], {"SERVERTRACK_RUN_API_PORT": "99999"}, "SERVERTRACK_RUN_API_PORT='99999'"),
        (["run", "--retention", "-3"], {}, "must be a number above 0"),
        (["run"], {"SERVERTRACK_RUN_THREADS": "many"}, "SERVERTRACK_RUN_THREADS='many'"),
        (["run"], {"SERVERTRACK_RUN_NO_AGENT": "perhaps"}, "SERVERTRACK_RUN_NO_AGENT"),
        (["receiver", "--bind", "tcp://127.0.0.1:70000"], {}, "tcp://HOST:PORT"),
        (["agent", "--interval", "0"], {}, "must be a number above 0"),
        (["api", "--port", "0"], {}, "must be a TCP port"),
    ],
)
def test_bad_numbers_and_variables_get_a_message_not_a_traceback(
    argv: list[str], env: dict[str, str], message: str
) -> None:
    result = subprocess.run(
        servertrack_argv(*argv),
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **env},
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_port_in_use_stops_a_standalone_daemon_with_a_message(tmp_path: Path) -> None:
    port = free_port()
    first = ChildProcess(
        receiver_argv(port, f"ipc://{tmp_path}/c1"), tmp_path / "first.log"
    ).start()
    try:
        wait_until(lambda: "listening" in first.log(), 20, "the first receiver")
        result = subprocess.run(
            receiver_argv(port, f"ipc://{tmp_path}/c2"), capture_output=True, text=True, timeout=30
        )
        assert result.returncode == EXIT_CONFIG
        assert f"cannot bind tcp://127.0.0.1:{port}" in result.stderr
    finally:
        first.stop()


def test_risky_key_permissions_are_warned_about(tmp_path: Path) -> None:
    _, secret = generate_pair(str(tmp_path), "receiver")
    agents = tmp_path / "agents"
    agents.mkdir()
    assert curve.warn_permissions(str(secret), str(agents)) == []
    secret.chmod(0o644)
    agents.chmod(0o777)
    warnings = curve.warn_permissions(str(secret), str(agents))
    assert any("can be read by other users" in w for w in warnings)
    assert any("can be written by any user" in w for w in warnings)
