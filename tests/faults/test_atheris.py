"""A bounded coverage-guided fuzzing run of the receiver's intake (atheris, real process)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.faults
HARNESS = Path(__file__).with_name("atheris_wire.py")


def test_atheris_finds_no_crash_in_the_intake(tmp_path: Path) -> None:
    """500,000 generated messages: no exception and every one counted exactly once."""
    pytest.importorskip("atheris")
    result = subprocess.run(
        [
            sys.executable,
            str(HARNESS),
            "-atheris_runs=500000",
            "-max_len=2048",
            "-seed=1",
            f"-artifact_prefix={tmp_path}/",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done 500000 in" in result.stderr
