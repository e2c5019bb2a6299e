"""``servertrack run`` composes its daemons' settings: each child gets the same settings as the
command lines the host wrote by hand before its daemons declared their own flags; the children
get none of their daemons' variables; every daemon's settings are checked before anything
starts, a failure named by ``run``'s flag; and the one port probe every command uses.

``BEFORE`` holds, for a few representative ``servertrack run`` command lines and environments,
the exact argv each child was started with then (``{tmp}`` and ``{rt}`` stand for the test's
directory and the runtime directory). A child parsed the flags it was given and took the rest
from its own ``SERVERTRACK_<DAEMON>_*`` variables, which it inherited from the host; so the
settings it ran with are what its parser makes of that argv in the host's environment. Today's
child must end up with the same settings, parsed from its argv in the environment it is given.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from servertrack.common.lifecycle import port_unavailable
from servertrack.host import supervisor as host
from servertrack.host.cli import command_parser
from servertrack.testing.hosts import free_port
from tests.support import assert_fatal

AGGREGATOR = ["servertrack.aggregator", "--batches", "ipc://{rt}/batches", "--query"]
AGGREGATOR += ["ipc://{rt}/query", "--receiver-control", "ipc://{rt}/receiver-control"]
RECEIVER_ENDPOINTS = ["--control", "ipc://{rt}/receiver-control", "--aggregator"]
RECEIVER_ENDPOINTS += ["ipc://{rt}/batches", "--aggregator-query", "ipc://{rt}/query"]
API_ENDPOINTS = ["--receiver-control", "ipc://{rt}/receiver-control"]
API_ENDPOINTS += ["--aggregator-query", "ipc://{rt}/query"]
DEFAULT_SNAPSHOT = ["--snapshot", "{tmp}/state/servertrack/port-8080/aggregator.npz"]

BEFORE: dict[str, tuple[list[str], dict[str, str], dict[str, list[str]]]] = {
    "defaults": (
        [],
        {},
        {
            "aggregator": [
                *AGGREGATOR,
                *["--max-servers", "250000", *DEFAULT_SNAPSHOT, "--snapshot-interval", "30.0"],
            ],
            "receiver": [
                *["servertrack.receiver", "--bind", "tcp://127.0.0.1:5556", *RECEIVER_ENDPOINTS],
                *["--retention", "300.0", "--max-servers", "250000"],
            ],
            "api": [
                *["servertrack.api", "--host", "127.0.0.1", "--port", "8080", "--threads", "64"],
                *["--http", "waitress", "--workers", "1", *API_ENDPOINTS],
            ],
            "agent": [
                *["servertrack.agent", "--connect", "tcp://127.0.0.1:5556", "--interval", "1.0"],
                *["--format", "msgpack"],
            ],
        },
    ),
    "everything": (
        [
            *["--api-port", "18080", "--ingest-port", "15556", "--bind", "127.0.0.2"],
            *["--graphite-port", "12003", "--graphite-map", "{tmp}/graphite.map"],
            *["--accept-pickle", "--retention", "120", "--data-dir", "{tmp}/data"],
            *["--snapshot-interval", "10", "--threads", "8", "--http", "granian"],
            *["--workers", "2", "--max-servers", "1000", "--token-file", "{tmp}/token"],
            *["--read-token-file", "{tmp}/read", "--agent-interval", "0.5"],
            *["--agent-name", "node-1", "--agent-format", "pickle.gz"],
            *["--rules", "{tmp}/rules.yml", "--rules-interval", "5"],
            *["--alertmanager", "http://127.0.0.1:9093", "--alertmanager", "http://[::1]:9094"],
        ],
        {},
        {
            "aggregator": [
                *AGGREGATOR,
                *["--max-servers", "1000", "--snapshot", "{tmp}/data/aggregator.npz"],
                *["--snapshot-interval", "10.0", "--rules", "{tmp}/rules.yml"],
                *["--rules-interval", "5", "--alertmanager", "http://127.0.0.1:9093"],
                *["--alertmanager", "http://[::1]:9094"],
                *["--external-url", "http://127.0.0.2:18080"],
            ],
            "receiver": [
                *["servertrack.receiver", "--bind", "tcp://127.0.0.2:15556", *RECEIVER_ENDPOINTS],
                *["--retention", "120.0", "--max-servers", "1000", "--accept-pickle"],
                *["--graphite", "tcp://127.0.0.2:12003", "--graphite-map", "{tmp}/graphite.map"],
            ],
            "api": [
                *["servertrack.api", "--host", "127.0.0.2", "--port", "18080", "--threads", "8"],
                *["--http", "granian", "--workers", "2", *API_ENDPOINTS],
                *["--token-file", "{tmp}/token", "--read-token-file", "{tmp}/read"],
            ],
            "agent": [
                *["servertrack.agent", "--connect", "tcp://127.0.0.2:15556", "--interval", "0.5"],
                *["--format", "pickle.gz", "--name", "node-1"],
            ],
        },
    ),
    "redis, open to the network": (
        [
            *["--bind", "0.0.0.0", "--http", "granian", "--behind-buffering-proxy"],
            *["--store", "redis://127.0.0.1:6390/2", "--store-password-file", "{tmp}/pw"],
            *["--store-timeout", "2.5", "--store-flush", "0.25", "--store-wait-replicas", "1"],
            *["--store-hold", "60", "--graphite-port", "2003", "--agent-name", "edge-1"],
            *["--max-servers", "5000", "--threads", "16", "--no-rules"],
            *["--external-url", "https://monitor.example.com/servertrack"],
        ],
        {},
        {
            "aggregator": [
                *AGGREGATOR,
                *["--max-servers", "5000", "--store", "redis://127.0.0.1:6390/2"],
                *["--store-timeout", "2.5", "--store-password-file", "{tmp}/pw"],
                *["--store-flush", "0.25", "--store-wait-replicas", "1", "--store-hold", "60.0"],
                *["--no-rules", "--external-url", "https://monitor.example.com/servertrack"],
                *["--alerts-state", "{tmp}/state/servertrack/port-8080/alerts.json"],
            ],
            "receiver": [
                *["servertrack.receiver", "--bind", "tcp://0.0.0.0:5556", *RECEIVER_ENDPOINTS],
                *["--retention", "300.0", "--max-servers", "5000"],
                *["--graphite", "tcp://0.0.0.0:2003"],
            ],
            "api": [
                *["servertrack.api", "--host", "0.0.0.0", "--port", "8080", "--threads", "16"],
                *["--http", "granian", "--workers", "1", "--behind-buffering-proxy"],
                *[*API_ENDPOINTS, "--store", "redis://127.0.0.1:6390/2"],
                *["--store-timeout", "2.5", "--store-password-file", "{tmp}/pw"],
            ],
            "agent": [
                *["servertrack.agent", "--connect", "tcp://127.0.0.1:5556", "--interval", "1.0"],
                *["--format", "msgpack", "--name", "edge-1"],
            ],
        },
    ),
    "curve": (
        [
            *["--curve-secret", "{tmp}/keys/receiver.key_secret"],
            *["--authorized-keys", "{tmp}/keys/authorized"],
            *["--agent-curve-secret", "{tmp}/keys/agent.key_secret"],
        ],
        {},
        {
            "aggregator": [
                *AGGREGATOR,
                *["--max-servers", "250000", *DEFAULT_SNAPSHOT, "--snapshot-interval", "30.0"],
            ],
            "receiver": [
                *["servertrack.receiver", "--bind", "tcp://127.0.0.1:5556", *RECEIVER_ENDPOINTS],
                *["--retention", "300.0", "--max-servers", "250000"],
                *["--curve-secret", "{tmp}/keys/receiver.key_secret"],
                *["--authorized-keys", "{tmp}/keys/authorized"],
            ],
            "api": [
                *["servertrack.api", "--host", "127.0.0.1", "--port", "8080", "--threads", "64"],
                *["--http", "waitress", "--workers", "1", *API_ENDPOINTS],
            ],
            "agent": [
                *["servertrack.agent", "--connect", "tcp://127.0.0.1:5556", "--interval", "1.0"],
                *["--format", "msgpack", "--curve-secret", "{tmp}/keys/agent.key_secret"],
                *["--server-key", "{rt}/receiver.key"],
            ],
        },
    ),
    "environment": (
        ["--data-dir", "{tmp}/data"],
        {
            "SERVERTRACK_RUN_RETENTION": "200",
            "SERVERTRACK_RUN_AGENT_NAME": "env-node",
            "SERVERTRACK_RUN_HTTP": "granian",
            "SERVERTRACK_RECEIVER_GRAPHITE_LINE_TIMEOUT": "5",
            "SERVERTRACK_RECEIVER_FLUSH_INTERVAL": "0.5",
            "SERVERTRACK_API_REQUEST_DEADLINE": "2",
            "SERVERTRACK_API_CONNECTION_LIMIT": "300",
        },
        {
            "aggregator": [
                *AGGREGATOR,
                *["--max-servers", "250000", "--snapshot", "{tmp}/data/aggregator.npz"],
                *["--snapshot-interval", "30.0"],
            ],
            "receiver": [
                *["servertrack.receiver", "--bind", "tcp://127.0.0.1:5556", *RECEIVER_ENDPOINTS],
                *["--retention", "200.0", "--max-servers", "250000"],
            ],
            "api": [
                *["servertrack.api", "--host", "127.0.0.1", "--port", "8080", "--threads", "64"],
                *["--http", "granian", "--workers", "1", *API_ENDPOINTS],
            ],
            "agent": [
                *["servertrack.agent", "--connect", "tcp://127.0.0.1:5556", "--interval", "1.0"],
                *["--format", "msgpack", "--name", "env-node"],
            ],
        },
    ),
}


def filled(argv: list[str], tmp: Path) -> list[str]:
    return [part.format(tmp=tmp, rt=tmp / "rt") for part in argv]


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """``use(env)``: make ``os.environ`` exactly ``env`` until the test ends or the next use."""

    def use(env: dict[str, str]) -> None:
        for name in set(os.environ) - set(env):
            monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)

    yield use


def settings(child: str, argv: list[str]) -> dict[str, object]:
    """What the daemon ``child`` runs with: its parser's reading of ``argv`` in the current
    environment."""
    return vars(command_parser(child).parse_args(argv))


@pytest.mark.parametrize("case", list(BEFORE))
def test_each_daemon_gets_the_settings_it_got_before(
    case: str, setting_files: Path, environment: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv, env, before = BEFORE[case]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    host_env = dict(os.environ)
    children = host.plan(
        host.build_parser().parse_args(filled(argv, setting_files)), str(setting_files / "rt")
    )
    assert [child.name for child in children] == list(before)
    for child in children:
        environment(host_env)  # type: ignore[operator]
        expected = settings(child.name, filled(before[child.name], setting_files)[1:])
        assert child.argv[:3] == [sys.executable, "-m", before[child.name][0]]
        environment(child.environment())  # type: ignore[operator]
        assert settings(child.name, child.argv[3:]) == expected, child.name


def children_of(argv: list[str], tmp: Path) -> dict[str, host.Child]:
    args = host.build_parser().parse_args(filled(argv, tmp))
    return {child.name: child for child in host.plan(args, str(tmp / "rt"))}


def test_children_do_not_get_their_daemons_variables(
    setting_files: Path, environment: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Variables meant for standalone daemons (an environment file shared with the nodes'
    agents) do not reach the host's children: the host's settings are the only ones. What
    ``run`` does not offer, the host reads from them and passes on."""
    stray = {
        "SERVERTRACK_AGENT_NAME": "some-node",
        "SERVERTRACK_AGENT_CURVE_SECRET": "{tmp}/keys/agent.key_secret",
        "SERVERTRACK_RECEIVER_ACCEPT_PICKLE": "yes",
        "SERVERTRACK_AGGREGATOR_STORE": "redis://127.0.0.1:6390/2",
        "SERVERTRACK_API_TOKEN_FILE": "{tmp}/token",
    }
    for name, value in stray.items():
        monkeypatch.setenv(name, value.format(tmp=setting_files))
    monkeypatch.setenv("SERVERTRACK_RECEIVER_GRAPHITE_RATE", "1000")
    monkeypatch.setenv("SERVERTRACK_LOG_LEVEL", "DEBUG")
    children = children_of(["--graphite-port", "2003"], setting_files)
    got = {}
    for name, child in children.items():
        own = {
            variable for variable in stray if variable.startswith(f"SERVERTRACK_{name.upper()}_")
        }
        assert own and not own & set(child.environment()), name
        assert child.environment()["SERVERTRACK_LOG_LEVEL"] == "DEBUG"
        environment(child.environment())  # type: ignore[operator]
        got[name] = settings(name, child.argv[3:])
    assert got["agent"]["name"] is None and got["agent"]["curve_secret"] is None
    assert got["receiver"]["accept_pickle"] is False
    assert got["receiver"]["graphite_rate"] == 1000.0
    assert got["aggregator"]["store"] == "memory"
    assert got["api"]["token_file"] is None


def test_a_bad_variable_of_a_daemon_stops_the_host_naming_it(
    setting_files: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before anything starts (it used to stop only the receiver, again and again)."""
    monkeypatch.setenv("SERVERTRACK_RECEIVER_GRAPHITE_RATE", "fast")
    with pytest.raises(SystemExit) as stopped:
        children_of([], setting_files)
    assert stopped.value.code == 2
    assert "SERVERTRACK_RECEIVER_GRAPHITE_RATE='fast'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "refused"),
    [
        (["--retention", "30", "--snapshot-interval", "30"], True),
        (["--retention", "30", "--snapshot-interval", "30", "--data-dir", ""], False),
        (["--retention", "30", "--snapshot-interval", "30", "--store", "redis://h:1/0"], False),
        (["--retention", "31", "--snapshot-interval", "30"], False),
    ],
)
def test_retention_must_outlast_the_snapshot_interval_when_there_are_snapshots(
    argv: list[str], refused: bool, setting_files: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if refused:
        assert_fatal(capsys, lambda: children_of(argv, setting_files), "--retention must be longer")
    else:
        assert children_of(argv, setting_files)


def test_a_check_of_the_local_agent_names_runs_flag(
    setting_files: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The agent's ``--curve-secret`` is ``--agent-curve-secret`` to ``servertrack run``."""
    (setting_files / "keys" / "agent.key_secret").write_text("not a key\n")
    argv = [*BEFORE["curve"][0]]
    message = "servertrack run: --agent-curve-secret: cannot read the key pair"
    assert_fatal(capsys, lambda: children_of(argv, setting_files), message)


def test_an_ipv6_bind_address_is_bracketed_in_endpoints(setting_files: Path) -> None:
    """``--bind ::1`` gives ``tcp://[::1]:PORT``, which the receiver and the agent accept."""
    children = children_of(["--bind", "::1", "--graphite-port", "2003"], setting_files)
    receiver = settings("receiver", children["receiver"].argv[3:])
    assert receiver["bind"] == "tcp://[::1]:5556"
    assert receiver["graphite"] == "tcp://[::1]:2003"
    assert settings("agent", children["agent"].argv[3:])["connect"] == "tcp://[::1]:5556"


def test_the_port_probe_gives_the_reason_a_port_cannot_be_listened_on() -> None:
    """One probe for every command that checks its ports before it starts: None for a free
    port (on an address or on every one), the system's reason for one something listens on."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        number = taken.getsockname()[1]
        assert port_unavailable("127.0.0.1", number) == os.strerror(errno.EADDRINUSE)
        assert port_unavailable("*", number) == os.strerror(errno.EADDRINUSE)
    assert port_unavailable("127.0.0.1", number) is None
    assert port_unavailable("*", free_port()) is None
    assert port_unavailable("192.0.2.1", free_port()) == os.strerror(errno.EADDRNOTAVAIL)
