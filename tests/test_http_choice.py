"""Choosing the HTTP server: ``--http`` and ``--workers`` on ``servertrack run`` and
``servertrack api``, and what the API hands granian's worker processes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from servertrack.api import granian_server
from servertrack.api import main as api_main
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
