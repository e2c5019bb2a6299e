"""``servertrack loadgen`` against a real ``servertrack run``, over both transports."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest

from servertrack.loadgen.main import build_parser, make_plan
from servertrack.testing.hosts import HostUnderTest as Host
from servertrack.testing.hosts import servertrack_argv as servertrack

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("via", ["zmq", "http"])
def test_loadgen_passes_against_a_real_host(shared_host: Callable[..., Host], via: str) -> None:
    """A few thousand samples with an hour of back-fill are all accounted for and exact (on a
    host the module shares: each run has server names of its own and counts from where the
    totals were when it began)."""
    host = shared_host("--no-agent")
    result = subprocess.run(
        servertrack(
            "loadgen",
            "--servers",
            "300",
            "--rate",
            "2",
            "--duration",
            "3",
            "--via",
            via,
            "--api",
            host.api,
            "--ingest",
            host.ingest,
            "--backfill-hours",
            "1",
            "--backfill-step",
            "600",
            "--check",
            "0",
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "PASSED"
    assert "checked 300 servers" in result.stdout


def test_loadgen_fails_when_the_answers_are_wrong(shared_host: Callable[..., Host]) -> None:
    """Samples recorded under the same names by someone else make the check fail."""
    host = shared_host("--no-agent")
    assert host.post("/servers/spoiled-000000.loadgen/loads", {"cpu": 99.9})[0] == 202
    result = subprocess.run(
        servertrack(
            "loadgen",
            "--servers",
            "5",
            "--rate",
            "1",
            "--duration",
            "2",
            "--via",
            "http",
            "--api",
            host.api,
            "--check",
            "0",
            "--prefix",
            "spoiled",
            "--publishers",
            "1",
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stdout.strip().splitlines()[-1].startswith("FAILED: ")


@pytest.mark.parametrize("api", ["localhost:8080", "https://127.0.0.1:8080", "http://"])
def test_an_api_that_is_no_http_url_is_refused_with_its_reason(api: str) -> None:
    """``--api`` must be ``http://HOST[:PORT]``: anything else stops the run before it starts,
    saying so (``localhost:8080`` has no host to urllib, and the checks speak plain HTTP)."""
    with pytest.raises(SystemExit, match="--api must be an http:// URL with a host"):
        make_plan(build_parser().parse_args(["--api", api]))
