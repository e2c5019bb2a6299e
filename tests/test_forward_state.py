"""``servertrack forward`` as a real process facing a bad or odd state file: a message and an
exit code, never a traceback; a state ahead of the clock is a warning, and it keeps running."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from servertrack.testing.hosts import ChildProcess, free_port, servertrack_argv, wait_until

pytestmark = pytest.mark.e2e
BAD = {
    "huge": b'{"version": 1, "done_until": 99999999999999999999999999}',
    "binary": b"\xff\xfe\x00garbage",
    "nested": b"[" * 100_000,
    "empty": b"",
}


def forward_argv(state: Path) -> list[str]:
    """Against loopback ports where nothing listens: the state file is read before either is."""
    return servertrack_argv(
        "forward",
        "--graphite",
        f"tcp://127.0.0.1:{free_port()}",
        "--api",
        f"http://127.0.0.1:{free_port()}",
        "--state",
        str(state),
    )


@pytest.mark.parametrize("kind", [*BAD, "a directory"])
def test_a_bad_state_file_stops_the_forwarder_with_a_message(tmp_path: Path, kind: str) -> None:
    state = tmp_path / "forward.state"
    if kind == "a directory":
        state.mkdir()
    else:
        state.write_bytes(BAD[kind])
    done = subprocess.run(
        forward_argv(state), capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("servertrack forward: "), done.stderr
    assert "Traceback" not in done.stderr and str(state) in done.stderr


def test_a_state_ahead_of_the_clock_is_a_warning_and_the_forwarder_runs_on(
    tmp_path: Path,
) -> None:
    state = tmp_path / "forward.state"
    ahead = int(time.time()) // 300 * 300 + 30 * 86400
    state.write_text(f'{{"version": 1, "done_until": {ahead}}}')
    forwarder = ChildProcess(forward_argv(state), tmp_path / "forward.log").start()
    try:
        wait_until(lambda: "ahead of this clock" in forwarder.log(), 20, "the warning")
        line = next(x for x in forwarder.log().splitlines() if "ahead of this clock" in x)
        assert " WARNING " in line and "resuming from now" in line
        assert forwarder.process is not None and forwarder.process.poll() is None
    finally:
        forwarder.stop()
    assert forwarder.process.returncode == 0, forwarder.log()
    assert "Traceback" not in forwarder.log()
