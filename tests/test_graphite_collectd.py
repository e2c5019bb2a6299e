"""A real collectd (Debian's ``collectd-core``) feeds a real host over Graphite plaintext.

collectd runs in the foreground with ``../shared/realclients/collectd-minimal.conf``, changed only
where it must be (host name, its directories, and the ``write_graphite`` host and port, pointed
at the host's free Graphite port). collectd writes the host name with its dots as ``_``, so
``web01.example.com`` reports as the server ``web01_example_com``.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from servertrack.testing.hosts import ChildProcess, HostUnderTest, free_port, wait_until

pytestmark = pytest.mark.e2e

SHARED = Path(
    os.environ.get("SERVERTRACK_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared")
)
TEMPLATE = SHARED / "realclients" / "collectd-minimal.conf"
COLLECTD = "/usr/sbin/collectd"
HOSTNAME = "web01.example.com"
SERVER = "web01_example_com"
FEED_DEADLINE = 30.0


def collectd_binary() -> str:
    """collectd's path; the test fails when it is missing (``make test`` installs it)."""
    path = COLLECTD if os.access(COLLECTD, os.X_OK) else shutil.which("collectd")
    if path is None:
        pytest.fail("collectd not found (make test installs Debian's collectd-core)")
    return path


def substitute(text: str, pattern: str, replacement: str) -> str:
    """Replace the one line matching ``pattern``; fail if the template has none or several."""
    changed, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    if count != 1:
        pytest.fail(f"{TEMPLATE}: {count} lines match {pattern!r}")
    return changed


def collectd_config(workdir: Path, port: int) -> Path:
    """The shared minimal config, with this test's host name, directories and Graphite port."""
    if not TEMPLATE.is_file():
        pytest.fail(f"{TEMPLATE} not found (set SERVERTRACK_SHARED_DIR)")
    text = TEMPLATE.read_text()
    base = workdir / "collectd"
    base.mkdir()
    text = substitute(text, r"^Hostname\s+.*$", f'Hostname    "{HOSTNAME}"')
    text = substitute(text, r"^BaseDir\s+.*$", f'BaseDir     "{base}"')
    text = substitute(text, r"^PIDFile\s+.*$", f'PIDFile     "{base / "collectd.pid"}"')
    text = substitute(text, r"^(\s+)Host\s+.*$", r'\1Host "127.0.0.1"')
    text = substitute(text, r"^(\s+)Port\s+.*$", rf'\1Port "{port}"')
    config = workdir / "collectd.conf"
    config.write_text(text)
    return config


def samples_of(host: HostUnderTest, metric: str) -> int:
    status, view = host.get(f"/servers/{SERVER}/loads")
    return sum(bucket[f"{metric}_samples"] for bucket in view["minutes"]) if status == 200 else 0


def test_collectd_feeds_cpu_and_ram_through_graphite_plaintext(
    start_host: Callable[..., HostUnderTest], tmp_path: Path
) -> None:
    """Within seconds of collectd starting, the host shows web01_example_com with cpu and ram
    minute buckets holding samples, and /stats counts the mapped lines as accepted Graphite
    samples and collectd's other series (load, memory states) as unmapped. When the receiver
    is killed and started again, collectd connects again and its points keep coming."""
    binary = collectd_binary()
    port = free_port()
    host = start_host("--no-agent", "--graphite-port", str(port))
    config = collectd_config(tmp_path, port)
    collectd = ChildProcess([binary, "-f", "-C", str(config)], tmp_path / "collectd.log").start()
    try:

        def fed() -> dict[str, Any] | None:
            status, view = host.get(f"/servers/{SERVER}/loads")
            if status != 200:
                return None
            minutes = view["minutes"]
            cpu = sum(bucket["cpu_samples"] for bucket in minutes)
            ram = sum(bucket["ram_samples"] for bucket in minutes)
            return view if cpu >= 2 and ram >= 2 else None

        try:
            view = wait_until(fed, FEED_DEADLINE, "collectd's cpu and ram in the host")
        except TimeoutError as err:
            pytest.fail(
                f"{err}\ncollectd:\n{collectd.log()[-3000:]}\nhost:\n{host.process.log()[-3000:]}"
            )
        receiver = host.get("/stats")[1]["receiver"]
        before = samples_of(host, "cpu")
        host.child("receiver").kill()
        try:
            wait_until(
                lambda: samples_of(host, "cpu") >= before + 3,
                FEED_DEADLINE,
                "collectd's points after a receiver restart",
            )
        except TimeoutError as err:
            pytest.fail(f"{err}\ncollectd:\n{collectd.log()[-3000:]}")
    finally:
        assert collectd.stop() < 10.0
    for bucket in view["minutes"]:
        for metric in ("cpu", "ram"):
            if bucket[f"{metric}_samples"]:
                assert 0.0 <= bucket[f"{metric}_min"] <= bucket[f"{metric}_max"] <= 100.0
    assert receiver["accepted"]["graphite"] >= 4
    assert receiver["rejected"]["graphite"]["unmapped"] > 0
    assert receiver["graphite_connections"] >= 1
    assert view["health"]["rejected"] == 0
    assert abs(view["health"]["skew_seconds"]) < 5.0
