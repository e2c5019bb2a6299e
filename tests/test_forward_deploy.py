"""The forwarder's systemd unit is valid for systemd and configures the flags it means to."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from servertrack.forward.main import build_parser

UNIT = Path(__file__).resolve().parents[1] / "deploy" / "servertrack-forward.service"
SYSTEMD_ANALYZE = "/usr/bin/systemd-analyze"


def settings(text: str) -> list[tuple[str, str]]:
    """``(key, value)`` of every setting line (comments and sections left out)."""
    pairs = []
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            pairs.append((key, value))
    return pairs


@pytest.mark.skipif(not Path(SYSTEMD_ANALYZE).exists(), reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    """``systemd-analyze verify`` finds nothing to say about the unit, once ExecStart points at
    the servertrack of this environment."""
    servertrack = shutil.which("servertrack", path=str(Path(sys.executable).parent))
    assert servertrack is not None
    text = UNIT.read_text()
    text, count = re.subn(r"(?m)^ExecStart=\S+", f"ExecStart={servertrack}", text)
    assert count == 1
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert UNIT.name not in result.stderr, result.stderr  # e.g. "Unknown key" warnings


def test_the_unit_runs_unprivileged_keeps_its_state_and_restarts() -> None:
    pairs = settings(UNIT.read_text())
    for required in (
        ("DynamicUser", "yes"),
        ("StateDirectory", "servertrack-forward"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("Restart", "on-failure"),
        ("EnvironmentFile", "-/etc/servertrack/forward.env"),
    ):
        assert required in pairs, required
    exec_start = dict(pairs)["ExecStart"]
    assert exec_start.split()[1:] == ["forward"]


def test_the_state_variable_of_the_unit_sets_the_state_flag(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The unit sets --state through its SERVERTRACK_FORWARD_* variable, inside its
    StateDirectory (%S is /var/lib)."""
    pairs = settings(UNIT.read_text())
    environment = dict(value.split("=", 1) for key, value in pairs if key == "Environment")
    path = environment["SERVERTRACK_FORWARD_STATE"]
    assert path.startswith("%S/servertrack-forward/")
    monkeypatch.setenv("SERVERTRACK_FORWARD_STATE", path)
    assert build_parser().parse_args(["--graphite", "tcp://h:2003"]).state == path
