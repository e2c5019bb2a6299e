"""The systemd units in ``deploy/`` are valid for systemd, sandboxed, and set real flags; the
example environment file names only variables the commands read, with values they accept."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from servertrack.common.config import env_name
from servertrack.host.cli import COMMANDS, command_parser

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
UNITS = sorted(DEPLOY.glob("*.service"))
SYSTEMD_ANALYZE = "/usr/bin/systemd-analyze"
SANDBOX = (
    ("NoNewPrivileges", "yes"),
    ("ProtectSystem", "strict"),
    ("Restart", "on-failure"),
    ("DynamicUser", "yes"),
)


def settings(text: str) -> list[tuple[str, str]]:
    """``(key, value)`` of every setting line (comments and sections left out)."""
    pairs = []
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            pairs.append((key, value))
    return pairs


def variables_of(command: str) -> dict[str, str]:
    """Every ``SERVERTRACK_<COMMAND>_<FLAG>`` the command reads, by variable."""
    parser = command_parser(command)
    return {
        env_name(parser, action.option_strings[0]): action.option_strings[0]
        for action in parser._actions
        if action.option_strings
        and action.option_strings[0].startswith("--")
        and action.dest != "help"
    }


def test_there_are_units_for_a_node_the_monitoring_host_and_the_forwarder() -> None:
    assert {unit.name for unit in UNITS} == {
        "servertrack-agent.service",
        "servertrack.service",
        "servertrack-forward.service",
    }


@pytest.mark.parametrize("unit", UNITS, ids=lambda unit: unit.name)
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path, unit: Path) -> None:
    """``systemd-analyze verify`` finds nothing to say about the unit, once ExecStart points at
    this environment's command (``make test`` installs Debian's systemd, which provides it)."""
    assert Path(SYSTEMD_ANALYZE).exists(), "systemd-analyze is missing (Debian's systemd)"
    command = Path(unit.read_text().split("ExecStart=", 1)[1].split()[0]).name
    installed = shutil.which(command, path=str(Path(sys.executable).parent))
    assert installed is not None, command
    text, count = re.subn(r"(?m)^ExecStart=\S+", f"ExecStart={installed}", unit.read_text())
    assert count == 1
    copy = tmp_path / unit.name
    copy.write_text(text)
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert unit.name not in result.stderr, result.stderr  # e.g. "Unknown key" warnings


@pytest.mark.parametrize("unit", UNITS, ids=lambda unit: unit.name)
def test_every_unit_runs_unprivileged_sandboxed_and_restarts_on_failure(unit: Path) -> None:
    pairs = settings(unit.read_text())
    for required in SANDBOX:
        assert required in pairs, (unit.name, required)
    assert ("EnvironmentFile", "-/etc/servertrack/servertrack.env") in pairs


@pytest.mark.parametrize("unit", UNITS, ids=lambda unit: unit.name)
def test_the_variables_a_unit_sets_are_flags_of_its_command(unit: Path) -> None:
    pairs = settings(unit.read_text())
    argv = dict(pairs)["ExecStart"].split()
    command = "agent" if argv[0].endswith("servertrack-agent") else argv[1]
    known = variables_of(command)
    for key, value in pairs:
        if key == "Environment":
            variable = value.split("=", 1)[0]
            assert variable in known, (unit.name, variable)


def test_the_example_environment_names_real_variables_with_accepted_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    example = (DEPLOY / "servertrack.env.example").read_text()
    entries = re.findall(r"(?m)^#?(SERVERTRACK_[A-Z_]+)=(.*)$", example)
    assert len(entries) > 20
    for variable, value in entries:
        if variable == "SERVERTRACK_LOG_LEVEL":
            continue
        command = next(c for c in COMMANDS if variable.startswith(f"SERVERTRACK_{c.upper()}_"))
        assert variable in variables_of(command), variable
        monkeypatch.setenv(variable, value)
        argv = ["--graphite", "tcp://g:2003"] if command == "forward" else []
        command_parser(command).parse_args(argv)  # the value is accepted (else SystemExit)
        monkeypatch.delenv(variable)
