"""Choosing the HTTP server: ``--http`` and ``--workers`` on ``servertrack run`` and
``servertrack api``, and what the API hands granian's worker processes."""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
from pathlib import Path

import pytest

from servertrack.api import exposure, granian_server
from servertrack.api import main as api_main
from servertrack.common.testing import free_port, servertrack_argv
from servertrack.host import supervisor as host


def run_args(*argv: str) -> argparse.Namespace:
    return host.build_parser().parse_args(["--no-agent", *argv])


def test_waitress_is_the_default_and_run_passes_the_choice_to_the_api_only() -> None:
    """``servertrack run`` gives the api child ``--http`` and ``--workers``, and no other."""
    children = {c.name: c for c in host.plan(run_args(), "/rt")}
    api = children["api"].argv
    assert api[api.index("--http") + 1] == "waitress"
    children = {
        c.name: c for c in host.plan(run_args("--http", "granian", "--workers", "2"), "/rt")
    }
    api = children["api"].argv
    assert api[api.index("--http") + 1] == "granian"
    assert api[api.index("--workers") + 1] == "2"
    for name, child in children.items():
        assert name == "api" or not {"--http", "--workers"} & set(child.argv)


def test_the_choice_comes_from_the_environment_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVERTRACK_RUN_HTTP", "granian")
    monkeypatch.setenv("SERVERTRACK_API_HTTP", "granian")
    assert run_args().http == "granian"
    assert api_main.build_parser().parse_args([]).http == "granian"


@pytest.mark.parametrize("build", [api_main.build_parser, host.build_parser])
def test_an_unknown_server_is_refused(
    build: object, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server name that is not offered stops the command with a usage message (exit 2)."""
    with pytest.raises(SystemExit) as stopped:
        build().parse_args(["--http", "gunicorn"])  # type: ignore[operator]
    assert stopped.value.code == 2
    assert "gunicorn" in capsys.readouterr().err
    monkeypatch.setenv("SERVERTRACK_API_HTTP", "gunicorn")
    with pytest.raises(SystemExit):
        api_main.build_parser()


def test_granian_workers_get_paths_and_numbers_never_a_token(tmp_path: Path) -> None:
    """The settings put in the environment for granian's workers are JSON with the token
    file's path, not the token."""
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    args = api_main.build_parser().parse_args(["--http", "granian", "--token-file", str(token)])
    settings = json.dumps(granian_server.settings_of(args))
    assert "s3cret-token" not in settings
    assert json.loads(settings)["token_file"] == str(token)
    assert json.loads(settings)["backend_timeout"] == args.backend_timeout


@pytest.mark.parametrize(
    ("host_address", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("*", False),
        ("::", False),
        ("10.0.0.5", False),
        ("monitor.example.com", False),
    ],
)
def test_only_loopback_addresses_count_as_loopback(host_address: str, loopback: bool) -> None:
    assert exposure.is_loopback(host_address) is loopback


def test_granian_beyond_loopback_needs_the_buffering_proxy_flag() -> None:
    """Waitress listens anywhere; granian beyond loopback only with --behind-buffering-proxy."""
    assert exposure.granian_exposure_error("waitress", "0.0.0.0", False) is None
    assert exposure.granian_exposure_error("granian", "127.0.0.1", False) is None
    assert exposure.granian_exposure_error("granian", "0.0.0.0", True) is None
    refusal = exposure.granian_exposure_error("granian", "0.0.0.0", False)
    assert refusal is not None and "--behind-buffering-proxy" in refusal


def test_run_passes_the_buffering_proxy_flag_to_the_api() -> None:
    children = {c.name: c for c in host.plan(run_args("--behind-buffering-proxy"), "/rt")}
    assert "--behind-buffering-proxy" in children["api"].argv
    children = {c.name: c for c in host.plan(run_args(), "/rt")}
    assert "--behind-buffering-proxy" not in children["api"].argv


@pytest.mark.e2e
@pytest.mark.parametrize(
    "command",
    [
        ["api", "--http", "granian", "--host", "0.0.0.0", "--port", "{port}"],
        ["run", "--no-agent", "--http", "granian", "--bind", "0.0.0.0", "--api-port", "{port}"],
    ],
)
def test_granian_refuses_to_listen_beyond_loopback_without_a_buffering_proxy(
    command: list[str], tmp_path: Path
) -> None:
    """``servertrack api`` and ``servertrack run`` with --http granian on 0.0.0.0 and no
    --behind-buffering-proxy leave at once with exit code 78 and a message naming the flag;
    nothing listens."""
    port = free_port()
    argv = [part.format(port=port) for part in command]
    if argv[0] == "run":
        argv += ["--ingest-port", str(free_port()), "--runtime-dir", str(tmp_path / "rt")]
        argv += ["--data-dir", str(tmp_path / "data")]
    done = subprocess.run(
        servertrack_argv(*argv), capture_output=True, text=True, timeout=20, check=False
    )
    assert done.returncode == 78, done.stderr
    assert "--behind-buffering-proxy" in done.stderr and "Traceback" not in done.stderr
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.e2e
def test_a_port_in_use_stops_the_api_with_a_message(http_server: str) -> None:
    """Either server leaves at once with exit code 78 and the address it could not take."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            servertrack_argv("api", "--http", http_server, "--port", str(port)),
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    assert done.returncode == 78, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in done.stderr
    assert "Traceback" not in done.stderr
