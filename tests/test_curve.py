"""CURVE on the ingest socket: key generation, authorized keys, and real agents on loopback."""

from __future__ import annotations

import argparse
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq
import zmq.auth

from servertrack.host import cli
from servertrack.host import supervisor as host
from servertrack.receiver import curve
from servertrack.receiver.daemon import ReceiverConfig, ReceiverDaemon
from servertrack.testing.hosts import ChildProcess as Process
from servertrack.testing.hosts import HostUnderTest as Host
from servertrack.testing.hosts import free_port, settled_stats
from servertrack.testing.hosts import servertrack_argv as servertrack
from tests.support import assert_fatal, wait_for

e2e = pytest.mark.e2e
"""Tests that start real daemons as child processes."""
pytestmark = pytest.mark.timeout(120)

INTERVAL = "0.2"
ARRIVAL = 20.0
"""Upper bound of a wait for an agent's first samples (they take about a second)."""
CONTROL_SAMPLES = 10
"""Samples of the control agent (started after the outsider, on the same interval) that arrive
before the outsider's chances to get in are judged over."""


@dataclass
class Keys:
    """A receiver's key pair, its authorized keys directory, and a place for agents' pairs."""

    root: Path
    receiver_public: Path
    receiver_secret: Path
    authorized: Path

    def agent(self, name: str, authorized: bool = True) -> tuple[Path, Path]:
        """A new agent key pair (public, secret); its public file is copied to the directory
        of authorized keys when ``authorized``."""
        folder = self.root / "agents"
        folder.mkdir(exist_ok=True)
        public, secret = zmq.auth.create_certificates(folder, name)
        if authorized:
            shutil.copy(public, self.authorized)
        return Path(public), Path(secret)

    def host_flags(self) -> tuple[str, ...]:
        return (
            "--curve-secret",
            str(self.receiver_secret),
            "--authorized-keys",
            str(self.authorized),
        )


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    root = tmp_path / "keys"
    root.mkdir()
    public, secret = zmq.auth.create_certificates(root, "receiver")
    authorized = root / "authorized"
    authorized.mkdir()
    return Keys(root, Path(public), Path(secret), authorized)


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    """Start real ``servertrack agent`` processes; every one is stopped (and reaped) afterwards."""
    started: list[Process] = []

    def start(target: Host, name: str, *flags: str) -> Process:
        argv = servertrack(
            "agent", "--connect", target.ingest, "--interval", INTERVAL, "--name", name, *flags
        )
        agent = Process(argv, tmp_path / f"agent-{name}.log").start()
        started.append(agent)
        return agent

    yield start
    slow = []
    for agent in started:
        try:
            agent.stop()
        except TimeoutError as err:
            slow.append(str(err))
    if slow:
        pytest.fail("; ".join(slow))


def curve_flags(secret: Path, keys: Keys) -> tuple[str, ...]:
    return "--curve-secret", str(secret), "--server-key", str(keys.receiver_public)


def zmq_received(target: Host) -> int:
    status, stats = target.get("/stats")
    assert status == 200, stats
    return int(stats["receiver"]["received"].get("zmq", 0))


def samples_of(target: Host, name: str) -> int:
    status, view = target.get(f"/servers/{name}/loads")
    return sum(bucket["samples"] for bucket in view["minutes"]) if status == 200 else 0


def assert_only_control_got_in(
    target: Host, control: Process, outsider: str, tried: Callable[[], bool] | None = None
) -> None:
    """The control agent's data arrived; ``outsider``'s did not, nor was it even received.

    The outsider was started first: once ``CONTROL_SAMPLES`` of the control agent's samples are
    in (and ``tried`` says the outsider was turned away, where it can tell), it has had as many
    chances. Once the control agent is stopped and its last batch is in, every message the
    receiver read must be one of the control agent's samples.
    """
    wait_for(
        lambda: samples_of(target, "control") >= CONTROL_SAMPLES,
        ARRIVAL,
        f"{CONTROL_SAMPLES} of the control agent's samples",
    )
    if tried is not None:
        wait_for(tried, ARRIVAL, "the outsider to be turned away")
    control.stop()
    wait_for(
        lambda: zmq_received(target) == samples_of(target, "control"),
        10,
        "the control agent's last samples to be counted",
    )
    assert target.get(f"/servers/{outsider}/loads")[0] == 404
    assert outsider not in [server["server"] for server in target.get("/servers")[1]["servers"]]


# -- real processes ------------------------------------------------------------------------------
@e2e
def test_authorised_agent_data_arrives(
    start_host: Callable[..., Host], start_agent: Callable[..., Process], keys: Keys
) -> None:
    target = start_host("--no-agent", *keys.host_flags())
    _, secret = keys.agent("trusted")
    agent = start_agent(target, "trusted.example", *curve_flags(secret, keys))
    wait_for(
        lambda: target.get("/servers/trusted.example/loads")[0] == 200,
        ARRIVAL,
        "the authorised agent's samples",
    )
    assert agent.process is not None and agent.process.poll() is None
    assert zmq_received(target) >= 1


@e2e
def test_unauthorised_key_never_reaches_the_aggregator(
    start_host: Callable[..., Host], start_agent: Callable[..., Process], keys: Keys
) -> None:
    target = start_host("--no-agent", *keys.host_flags())
    _, stranger = keys.agent("stranger", authorized=False)
    _, trusted = keys.agent("control")
    outsider = start_agent(target, "stranger.example", *curve_flags(stranger, keys))
    control = start_agent(target, "control", *curve_flags(trusted, keys))
    assert_only_control_got_in(
        target, control, "stranger.example", lambda: "refused this agent's key" in outsider.log()
    )
    assert "refused an agent with unknown public key" in target.process.log()
    assert "refused this agent's key" in outsider.log()
    assert outsider.process is not None and outsider.process.poll() is None


@e2e
def test_plain_agent_never_reaches_the_aggregator(
    start_host: Callable[..., Host], start_agent: Callable[..., Process], keys: Keys
) -> None:
    target = start_host("--no-agent", *keys.host_flags())
    _, trusted = keys.agent("control")
    start_agent(target, "plain.example")
    control = start_agent(target, "control", *curve_flags(trusted, keys))
    assert_only_control_got_in(target, control, "plain.example")


@e2e
def test_adding_a_key_admits_a_running_agent_without_restarts(
    start_host: Callable[..., Host], start_agent: Callable[..., Process], keys: Keys
) -> None:
    target = start_host("--no-agent", *keys.host_flags())
    receiver_pid = target.child("receiver").pid
    public, secret = keys.agent("late", authorized=False)
    agent = start_agent(target, "late.example", *curve_flags(secret, keys))
    wait_for(lambda: "refused this agent's key" in agent.log(), ARRIVAL, "the first refusal")
    settled_stats(target)  # two batches after the refusal: a sample that got in would show
    assert target.get("/servers/late.example/loads")[0] == 404

    shutil.copy(public, keys.authorized)
    wait_for(
        lambda: target.get("/servers/late.example/loads")[0] == 200,
        ARRIVAL,
        "the newly authorised agent's samples",
    )
    assert agent.process is not None and agent.process.poll() is None
    assert target.child("receiver").pid == receiver_pid
    assert "handshake with" in agent.log() and "succeeded after" in agent.log()


@e2e
def test_run_passes_the_keys_to_its_own_agent(start_host: Callable[..., Host], keys: Keys) -> None:
    _, secret = keys.agent("local")
    target = start_host(
        *keys.host_flags(),
        "--agent-curve-secret",
        str(secret),
        "--agent-name",
        "local.example",
        "--agent-interval",
        INTERVAL,
    )
    wait_for(
        lambda: target.get("/servers/local.example/loads")[0] == 200,
        ARRIVAL,
        "the local agent's samples",
    )
    assert "--server-key" in target.child("agent").cmdline()


# -- in process ----------------------------------------------------------------------------------
def test_keys_command_writes_a_loadable_pair(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "new" / "keys"
    assert cli.main(["keys", str(folder), "--name", "web-1.example"]) == 0
    public_file, secret_file = folder / "web-1.example.key", folder / "web-1.example.key_secret"
    public, none = zmq.auth.load_certificate(public_file)
    same_public, secret = zmq.auth.load_certificate(secret_file)
    assert none is None and secret is not None and len(secret) == 40
    assert public == same_public and len(public) == 40
    assert secret_file.stat().st_mode & 0o077 == 0
    assert zmq.auth.load_certificates(folder) == {public: True}
    assert str(secret_file) in capsys.readouterr().out

    assert cli.main(["keys", str(folder), "--name", "web-1.example"]) == 1
    assert zmq.auth.load_certificate(public_file)[0] == public
    assert cli.main(["keys", str(folder), "--name", "web-1.example", "--force"]) == 0
    assert zmq.auth.load_certificate(public_file)[0] != public


class StepClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_authorized_keys_reload_when_the_directory_changes(keys: Keys) -> None:
    clock = StepClock()
    provider = curve.AuthorizedKeys(str(keys.authorized), monotonic=clock)
    public_file, _ = keys.agent("one", authorized=False)
    key = zmq.auth.load_certificate(public_file)[0]
    assert provider.callback("*", key) is False

    shutil.copy(public_file, keys.authorized)
    clock.now += 0.5
    assert provider.callback("*", key) is False, "looked again within the reload interval"
    clock.now += 0.6
    assert provider.callback("*", key) is True

    (keys.authorized / "one.key").unlink()
    clock.now += 1.1
    assert provider.callback("*", key) is False


def test_a_half_written_key_file_is_skipped_and_read_again(keys: Keys) -> None:
    clock = StepClock()
    public_file, _ = keys.agent("two", authorized=False)
    key = zmq.auth.load_certificate(public_file)[0]
    (keys.authorized / "two.key").write_text("#   ZeroMQ CURVE Public Certificate\n")
    provider = curve.AuthorizedKeys(str(keys.authorized), monotonic=clock)
    assert provider.keys == frozenset()
    shutil.copy(public_file, keys.authorized / "two.key")
    clock.now += 1.1
    assert provider.callback("*", key) is True


def test_curve_flags_go_together(tmp_path: Path, keys: Keys) -> None:
    with pytest.raises(curve.CurveConfigError, match="go together"):
        curve.check_flags(str(keys.receiver_secret), None)
    with pytest.raises(curve.CurveConfigError, match="only a public key"):
        curve.check_config(str(keys.receiver_public), str(keys.authorized))
    with pytest.raises(curve.CurveConfigError, match="does not exist"):
        curve.check_config(str(keys.receiver_secret), str(tmp_path / "missing"))
    assert curve.check_flags(None, None) is False


def run_args(keys: Keys, *extra: str) -> argparse.Namespace:
    return host.build_parser().parse_args([*keys.host_flags(), *extra])


def test_plan_gives_the_agent_the_receivers_public_key_only(tmp_path: Path, keys: Keys) -> None:
    _, agent_secret = keys.agent("local")
    children = host.plan(run_args(keys, "--agent-curve-secret", str(agent_secret)), str(tmp_path))
    argv = {child.name: child.argv for child in children}
    receiver, agent = argv["receiver"], argv["agent"]
    assert receiver[receiver.index("--curve-secret") + 1] == str(keys.receiver_secret)
    assert receiver[receiver.index("--authorized-keys") + 1] == str(keys.authorized)
    server_key = agent[agent.index("--server-key") + 1]
    assert Path(server_key).parent == tmp_path
    assert zmq.auth.load_certificate(server_key) == (
        zmq.auth.load_certificate(keys.receiver_public)[0],
        None,
    )
    assert agent[agent.index("--curve-secret") + 1] == str(agent_secret)


def test_plan_refuses_half_a_curve_set_up(
    tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    args = run_args(keys)
    assert_fatal(capsys, lambda: host.plan(args, str(tmp_path)), "needs --agent-curve-secret")
    half = host.build_parser().parse_args(["--curve-secret", str(keys.receiver_secret)])
    assert_fatal(capsys, lambda: host.plan(half, str(tmp_path)), "go together")
    assert host.plan(run_args(keys, "--no-agent"), str(tmp_path))


def test_receiver_stops_its_zap_thread(tmp_path: Path, keys: Keys) -> None:
    """After ``run`` returns, no authenticator thread is left and the context terminates."""
    config = ReceiverConfig(
        bind=f"tcp://127.0.0.1:{free_port()}",
        control=f"ipc://{tmp_path}/control",
        aggregator=f"ipc://{tmp_path}/batches",
        curve_secret=str(keys.receiver_secret),
        authorized_keys=str(keys.authorized),
    )
    context = zmq.Context()
    daemon = ReceiverDaemon(config, context)
    runner = threading.Thread(target=daemon.run)
    runner.start()
    wait_for(
        lambda: any("Authentication" in type(t).__name__ for t in threading.enumerate()),
        5,
        "the ZAP thread",
    )
    daemon.stop.set()
    runner.join(timeout=5)
    assert not runner.is_alive()
    assert not any("Authentication" in type(t).__name__ for t in threading.enumerate())
    terminated = threading.Thread(target=context.term)
    terminated.start()
    terminated.join(timeout=5)
    assert not terminated.is_alive(), "a socket was left open"
