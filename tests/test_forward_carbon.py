"""End to end: samples recorded through a real ServerTrack API reach a real carbon-cache
(Debian's graphite-carbon) through ``servertrack forward``, and whisper's own tool reads back
the exact means at the windows' timestamps."""

from __future__ import annotations

import json
import math
import random
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest

from servertrack.testing.hosts import ChildProcess as Process
from servertrack.testing.hosts import HostUnderTest as Host
from servertrack.testing.hosts import free_port, wait_until
from servertrack.testing.hosts import servertrack_argv as servertrack
from tests.support import wait_for

pytestmark = pytest.mark.e2e

CARBON = Path("/usr/bin/carbon-cache")
WHISPER_FETCH = Path("/usr/bin/whisper-fetch")
INTERVAL = 60
PREFIX = "e2e"
SERVERS = ("web-1.example.com", "db.example.com", "cache_1")


def carbon_config(root: Path, line_port: int, query_port: int) -> Path:
    """A carbon.conf with everything under ``root`` and listeners on loopback only."""
    conf, storage = root / "conf", root / "storage"
    for directory in (conf, storage / "whisper", storage / "log", storage / "lists"):
        directory.mkdir(parents=True, exist_ok=True)
    (conf / "carbon.conf").write_text(f"""[cache]
STORAGE_DIR = {storage}
LOCAL_DATA_DIR = {storage / "whisper"}
WHITELISTS_DIR = {storage / "lists"}
LOG_DIR = {storage / "log"}
PID_DIR = {storage}
DATABASE = whisper
ENABLE_LOGROTATION = False
ENABLE_TAGS = False
USER =
MAX_CACHE_SIZE = inf
MAX_UPDATES_PER_SECOND = inf
MAX_CREATES_PER_MINUTE = inf
LINE_RECEIVER_INTERFACE = 127.0.0.1
LINE_RECEIVER_PORT = {line_port}
ENABLE_UDP_LISTENER = False
UDP_RECEIVER_INTERFACE = 127.0.0.1
PICKLE_RECEIVER_INTERFACE = 127.0.0.1
PICKLE_RECEIVER_PORT = {free_port()}
CACHE_QUERY_INTERFACE = 127.0.0.1
CACHE_QUERY_PORT = {query_port}
LOG_UPDATES = False
CARBON_METRIC_INTERVAL = 0
""")
    # One slot per minute for a day: each 60-s window lands in its own slot, unaggregated.
    (conf / "storage-schemas.conf").write_text(
        f"[default]\npattern = .*\nretentions = {INTERVAL}s:1d\n"
    )
    (conf / "storage-aggregation.conf").write_text(
        "[default]\npattern = .*\nxFilesFactor = 0\naggregationMethod = average\n"
    )
    return conf / "carbon.conf"


@pytest.fixture
def carbon(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A carbon-cache on a free loopback port: ``(line port, whisper directory)``."""
    assert CARBON.exists() and WHISPER_FETCH.exists(), (
        "Debian's graphite-carbon and python3-whisper are needed (make test installs them)"
    )
    root = tmp_path / "carbon"
    line_port = free_port()
    conf = carbon_config(root, line_port, free_port())
    process = Process(
        [str(CARBON), f"--config={conf}", "--nodaemon", "start"], tmp_path / "carbon.log"
    )
    process.start()
    try:

        def listening() -> bool:
            assert process.process is not None and process.process.poll() is None, process.log()
            with socket.create_connection(("127.0.0.1", line_port), timeout=0.5):
                return True

        wait_for(listening, 30, "carbon-cache to listen")
        yield line_port, root / "storage" / "whisper"
    finally:
        process.stop()


@pytest.fixture
def forwarders(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    started: list[Process] = []

    def start(*args: str) -> Process:
        process = Process(servertrack("forward", *args), tmp_path / f"forward{len(started)}.log")
        started.append(process.start())
        return process

    yield start
    for process in started:
        process.stop()


def whisper_values(path: Path, since: int) -> dict[int, float]:
    """The non-empty points of a whisper file from ``since`` on, read with whisper-fetch."""
    result = subprocess.run(
        [str(WHISPER_FETCH), "--json", f"--from={since}", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    answer = json.loads(result.stdout)
    return {
        answer["start"] + index * answer["step"]: value
        for index, value in enumerate(answer["values"])
        if value is not None
    }


def exit_counters(log: str) -> dict[str, str]:
    line = [row for row in log.splitlines() if "counters at exit:" in row][-1]
    return dict(re.findall(r"(\w+)=(\S+)", line.split("counters at exit:")[1]))


def test_recorded_samples_reach_whisper_with_the_exact_means(
    start_host: Callable[..., Host],
    carbon: tuple[int, Path],
    forwarders: Callable[..., Process],
    tmp_path: Path,
) -> None:
    """Samples posted for the last 12 minutes are forwarded at start (backfill) in 60-s
    windows; whisper-fetch reads, at each window's start, the brute-force mean of the raw
    samples (and exactly the mean of the API's sums, bit for bit); fleet points likewise. A
    second run from the same state file sends nothing."""
    line_port, whisper = carbon
    host = start_host("--no-agent")
    rng = random.Random(42)
    now = time.time()
    first = int(now // 60) * 60 - 12 * 60
    raw: list[tuple[str, float, float | None, float | None]] = []
    for server in SERVERS:
        for minute in range(first, first + 10 * 60, 60):
            for _ in range(rng.randrange(0 if server == "cache_1" else 1, 6)):
                ts = minute + rng.uniform(0, 59.999)
                ram = (
                    None
                    if server == "db.example.com" and rng.random() < 0.3
                    else rng.uniform(0, 100)
                )
                raw.append((server, ts, rng.uniform(0, 100), ram))
    items = [
        {"server": s, "ts": ts, "cpu": cpu, **({"ram": ram} if ram is not None else {})}
        for s, ts, cpu, ram in raw
    ]
    status, body = host.post("/loads", items)
    assert status == 202 and body["accepted"] == len(raw), body

    def recorded() -> int:
        total = 0
        for server in SERVERS:
            status, view = host.get(f"/servers/{server}/loads")
            total += sum(b["samples"] for b in view["minutes"]) if status == 200 else 0
        return total

    wait_for(lambda: recorded() == len(raw), 10, "every sample in the minute buckets")

    expected: dict[tuple[str, int], float] = {}
    for t in range(first, first + 10 * 60, INTERVAL):
        in_window = [s for s in raw if t <= s[1] < t + INTERVAL]
        for index, metric in ((2, "cpu"), (3, "ram")):
            means = []
            every: list[float] = []
            for server in SERVERS:
                values = [s[index] for s in in_window if s[0] == server and s[index] is not None]
                if values:
                    node = server.replace(".", "_")
                    expected[(f"{node}/{metric}", t)] = math.fsum(values) / len(values)
                    means.append(math.fsum(values) / len(values))
                    every += values
            if means:
                expected[(f"_fleet/{metric}/mean", t)] = math.fsum(every) / len(every)
                expected[(f"_fleet/{metric}/max", t)] = max(means)
                expected[(f"_fleet/{metric}/servers", t)] = len(means)

    state = tmp_path / "forward.state"
    args = ("--graphite", f"tcp://127.0.0.1:{line_port}", "--api", host.api)
    options = ("--interval", str(INTERVAL), "--backfill", "1200", "--prefix", PREFIX)
    forward = forwarders(*args, *options, "--state", str(state))
    files = {name for name, _ in expected}

    def stored() -> dict[tuple[str, int], float]:
        found = {}
        for name in files:
            path = whisper / PREFIX / f"{name}.wsp"
            if not path.exists():
                return {}
            for ts, value in whisper_values(path, first - 600).items():
                found[(name, ts)] = value
        return found

    def complete() -> dict[tuple[str, int], float]:
        found = stored()
        return found if set(expected) <= set(found) else {}

    try:
        found = wait_until(complete, 45, "every point in whisper", step=0.5)
    except TimeoutError as err:
        pytest.fail(f"{err}\n{forward.log()}")
    assert set(found) == set(expected), "points at timestamps no window had"
    for key, value in expected.items():
        assert math.isclose(found[key], value, rel_tol=1e-12), (key, found[key], value)

    # Bit for bit: whisper holds exactly fsum(minute sums) / count computed from the API.
    for server in SERVERS:
        for bucket in host.get(f"/servers/{server}/loads")[1]["minutes"]:
            start = int(datetime.fromisoformat(bucket["start"]).timestamp())
            if bucket["cpu_samples"]:
                key = (f"{server.replace('.', '_')}/cpu", start)
                assert found[key] == bucket["cpu_sum"] / bucket["cpu_samples"]

    forward.stop()
    assert forward.process is not None and forward.process.returncode == 0, forward.log()
    counters = exit_counters(forward.log())
    assert counters["points_sent"] == str(len(expected))
    assert counters["dropped"] == "0" and counters["skipped"] == "0"
    assert int(counters["windows_sent"]) == len({t for _, t in expected})

    again = forwarders(*args, *options, "--state", str(state))
    wait_for(lambda: "already handled" in again.log(), 20, "the second run to start")
    time.sleep(1.0)
    again.stop()
    assert exit_counters(again.log())["points_sent"] == "0"
    assert stored() == found
