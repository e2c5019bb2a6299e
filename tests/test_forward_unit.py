"""The forwarder with an injected clock, a fake API built from raw samples and an in-process
fake Grok: days of windows in seconds, with the sink and the API failing in every way."""

from __future__ import annotations

import itertools
import logging
import math
import random
import re
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from servertrack.common.oracle import iso_z
from servertrack.common.testing import FakeClock
from servertrack.forward.daemon import ForwardConfig, Forwarder
from servertrack.forward.main import main as forward_main
from servertrack.forward.main import parse_graphite
from servertrack.forward.points import (
    MalformedAnswer,
    WindowCollector,
    answer_time,
    check_prefix,
    sanitize,
    series_name,
    window_points,
)
from servertrack.forward.sink import Backoff, GraphiteSink, PointQueue, WriteFailed
from servertrack.forward.source import SourceError
from servertrack.forward.state_file import StateFile, StateFileError
from servertrack.forward.windows import Schedule, ScheduleError, check_settings

DAY = 86400
HOUR = 3600
START = 1_800_000_000 - 1_800_000_000 % DAY + 7 * 60 + 3.25
"""Midnight UTC plus 7 min 3.25 s: the first run starts in the middle of a window."""
SERVERS = [f"web-{i:02d}.example.com" for i in range(9)] + ["db_1.example.com", "lb-1", "x-9"]

Raw = tuple[float, float | None, float | None]


# -- a ServerTrack API answering from raw samples -----------------------------------------------
class FakeFleet:
    """Raw samples drawn per (server, minute) from a seeded RNG; answers ``servers()`` and
    ``loads()`` from them as the API would at the fake clock's time."""

    def __init__(self, clock: FakeClock, servers: list[str] = SERVERS, seed: int = 7) -> None:
        self.clock = clock
        self.names = servers
        self.seed = seed
        self.cache: dict[tuple[str, int], list[Raw]] = {}
        self.down: list[tuple[float, float]] = []
        """Wall-clock spans during which every request answers 503."""
        self.silent_fleet: list[tuple[float, float]] = []
        """Wall-clock spans without any sample from any server."""
        self.reads = 0
        self.failures = 0
        self.url = "fake"

    def raw(self, server: str, minute: int) -> list[Raw]:
        key = (server, minute)
        if key not in self.cache:
            rng = random.Random(f"{self.seed}:{server}:{minute}")
            quiet = (minute // 5 + self.names.index(server)) % 11 == 0 or any(
                a <= minute * 60 < b for a, b in self.silent_fleet
            )
            samples: list[Raw] = []
            if not quiet:
                for _ in range(rng.choice((0, 1, 2, 2, 3))):
                    ts = minute * 60 + rng.randrange(0, 60_000) / 1000
                    cpu = None if rng.random() < 0.1 else rng.uniform(0, 100)
                    ram = rng.uniform(0, 100) if cpu is None or rng.random() > 0.1 else None
                    samples.append((ts, cpu, ram))
            self.cache[key] = sorted(samples)
        return self.cache[key]

    def _check_up(self) -> None:
        now = self.clock()
        if any(a <= now < b for a, b in self.down):
            self.failures += 1
            raise SourceError("http_503", "the aggregator did not answer")

    def last_seen(self, server: str, now: float) -> float | None:
        minute = int(now // 60)
        for back in range(24 * 60):
            seen = [s[0] for s in self.raw(server, minute - back) if s[0] <= now]
            if seen:
                return max(seen)
        return None

    def servers(self) -> list[tuple[str, float | None]]:
        self._check_up()
        now = self.clock()
        return [(name, self.last_seen(name, now)) for name in self.names]

    def view(self, server: str, now: float, hours: bool = False) -> dict[str, Any]:
        current = int(now // 60)
        minutes = [
            _bucket(m * 60, [s for s in self.raw(server, m) if s[0] <= now])
            for m in range(current - 59, current + 1)
        ]
        answer: dict[str, Any] = {
            "server": server,
            "minutes": [b for b in minutes if b],
            "as_of": iso_z(now),
        }
        if hours:
            hour = int(now // HOUR)
            answer["hours"] = []
            for h in range(hour - 23, hour + 1):
                group = [s for m in range(h * 60, h * 60 + 60) for s in self.raw(server, m)]
                bucket = _bucket(h * HOUR, [s for s in group if s[0] <= now])
                if bucket:
                    answer["hours"].append(bucket)
        return answer

    def loads(self, names: list[str], stop: threading.Event | None = None) -> dict[str, Any]:
        self._check_up()
        self.reads += 1
        now = self.clock()
        return {name: self.view(name, now) for name in names}

    def close(self) -> None:
        pass


def _bucket(start: int, samples: list[Raw]) -> dict[str, Any] | None:
    """An API bucket; sums added one by one in arrival order, as the aggregator's float64s are."""
    if not samples:
        return None
    bucket: dict[str, Any] = {"start": iso_z(start), "samples": len(samples)}
    for index, metric in ((1, "cpu"), (2, "ram")):
        values = [s[index] for s in samples if s[index] is not None]
        total = 0.0
        for value in values:
            total += value
        bucket[f"{metric}_sum"] = total if values else None
        bucket[metric] = total / len(values) if values else None
        bucket[f"{metric}_samples"] = len(values)
    return bucket


def expected_points(fleet: FakeFleet, t: int, interval: int, prefix: str) -> dict[str, float]:
    """Brute force over the raw samples of window ``t``: every point it should send."""
    points: dict[str, float] = {}
    per_metric: dict[str, list[list[float]]] = {"cpu": [], "ram": []}
    for server in fleet.names:
        raw = [s for m in range(t // 60, (t + interval) // 60) for s in fleet.raw(server, m)]
        for index, metric in ((1, "cpu"), (2, "ram")):
            values = [s[index] for s in raw if s[index] is not None]
            if values:
                node = server.replace(".", "_")
                points[f"{prefix}.{node}.{metric}"] = math.fsum(values) / len(values)
                per_metric[metric].append(values)
    for metric, groups in per_metric.items():
        if groups:
            every = [v for group in groups for v in group]
            points[f"{prefix}._fleet.{metric}.mean"] = math.fsum(every) / len(every)
            points[f"{prefix}._fleet.{metric}.max"] = max(math.fsum(g) / len(g) for g in groups)
            points[f"{prefix}._fleet.{metric}.servers"] = len(groups)
    return points


# -- an in-process Grok -------------------------------------------------------------------------
@dataclass
class FakeGrok:
    """A Graphite plaintext receiver that, like Grok, refuses a point whose timestamp is not
    newer than the last one stored for its metric. Only whole lines (ended by a newline) count."""

    clock: FakeClock
    down: list[tuple[float, float]] = field(default_factory=list)
    flapping: list[tuple[float, float]] = field(default_factory=list)
    """Spans with up/down every 7 minutes and connections cut in the middle of a write."""
    rng: random.Random = field(default_factory=lambda: random.Random(3))
    stored: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    arrival: list[tuple[str, int, float]] = field(default_factory=list)
    rejected: list[bytes] = field(default_factory=list)
    generation: int = 0
    was_up: bool = True
    connections: int = 0
    cut_lines: int = 0

    def up(self) -> bool:
        now = self.clock()
        if any(a <= now < b for a, b in self.down):
            state = False
        elif any(a <= now < b for a, b in self.flapping):
            state = int(now // 420) % 2 == 0
        else:
            state = True
        if state != self.was_up:
            self.generation += 1
            self.was_up = state
        return state

    def cutting(self) -> bool:
        now = self.clock()
        return any(a <= now < b for a, b in self.flapping)

    def opener(self, host: str, port: int, timeout: float) -> FakeConnection:
        if not self.up():
            raise ConnectionRefusedError(111, "Connection refused")
        self.connections += 1
        return FakeConnection(self, self.generation)

    def receive(self, line: bytes) -> None:
        name, value, ts = line.decode().split(" ")
        series = self.stored.setdefault(name, [])
        if series and series[-1][0] >= int(ts):
            self.rejected.append(line)
            return
        series.append((int(ts), float(value)))
        self.arrival.append((name, int(ts), float(value)))


class FakeConnection:
    def __init__(self, grok: FakeGrok, generation: int) -> None:
        self.grok = grok
        self.generation = generation
        self.buffer = b""

    def alive(self) -> bool:
        return self.grok.up() and self.grok.generation == self.generation

    def peer_closed(self) -> bool:
        return not self.alive()

    def send(self, data: bytes, timeout: float) -> int:
        if not self.alive():
            raise WriteFailed(0, "ConnectionResetError")
        taken = len(data)
        if self.grok.cutting() and self.grok.rng.random() < 0.3:
            taken = self.grok.rng.randrange(0, len(data))
        self.buffer += data[:taken]
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            self.grok.receive(line)
        return taken

    def close(self) -> None:
        if self.buffer:
            self.grok.cut_lines += 1  # a line cut in the middle is never taken
        self.buffer = b""


# -- driving the forwarder ----------------------------------------------------------------------
@dataclass
class Rig:
    wall: FakeClock
    mono: FakeClock
    fleet: FakeFleet
    grok: FakeGrok
    config: ForwardConfig
    state_path: Path | None
    queue_size: int = 100_000
    runs: list[Forwarder] = field(default_factory=list)

    def start(self) -> Forwarder:
        sink = GraphiteSink(
            "grok.test",
            2003,
            PointQueue(self.queue_size),
            monotonic=self.mono,
            backoff=Backoff(rng=random.Random(len(self.runs)).random),
            opener=self.grok.opener,
        )
        state = StateFile(self.state_path) if self.state_path else None
        forwarder = Forwarder(
            self.config, self.fleet, sink, state, clock=self.wall, monotonic=self.mono
        )
        self.runs.append(forwarder)
        return forwarder

    def run_until(self, forwarder: Forwarder, until: float) -> None:
        while self.wall.now < until:
            delay = max(forwarder.step(), 0.05)
            delay = min(delay, until - self.wall.now + 0.05)
            self.wall.advance(delay)
            self.mono.advance(delay)


def make_rig(tmp_path: Path | None, queue_size: int = 100_000, interval: int = 300) -> Rig:
    wall = FakeClock(START)
    return Rig(
        wall,
        FakeClock(5_000.0),
        FakeFleet(wall),
        FakeGrok(wall),
        ForwardConfig(interval=interval, prefix="st"),
        tmp_path / "state.json" if tmp_path else None,
        queue_size,
    )


def totals(runs: list[Forwarder]) -> Counter[str]:
    total: Counter[str] = Counter()
    for run in runs:
        for key, value in run.snapshot().items():
            if isinstance(value, int):
                total[key] += value
    return total


def classify(rig: Rig, first: int, until: int) -> dict[str, list[int]]:
    """Sort every window in ``[first, until)`` by what reached the fake Grok, checking each
    point that arrived against the brute-force mean of the raw samples."""
    got: dict[int, dict[str, float]] = {}
    for name, ts, value in rig.grok.arrival:
        got.setdefault(ts, {})[name] = value
    status: dict[str, list[int]] = {"full": [], "partial": [], "absent": [], "empty": []}
    for t in range(first, until, rig.config.interval):
        want = expected_points(rig.fleet, t, rig.config.interval, "st")
        have = got.pop(t, {})
        for name, value in have.items():
            assert name in want, f"{iso_z(t)}: unexpected point {name}"
            assert math.isclose(value, want[name], rel_tol=1e-12), (iso_z(t), name)
        if not want:
            status["empty"].append(t)
        elif len(have) == len(want):
            status["full"].append(t)
        else:
            status["partial" if have else "absent"].append(t)
    assert not got, f"points outside the windows: {sorted(got)}"
    return status


def assert_in_order_and_once(grok: FakeGrok) -> None:
    assert grok.rejected == [], "a point was resent or sent out of order"
    stamps = [ts for _, ts, _ in grok.arrival]
    assert stamps == sorted(stamps), "windows did not arrive in order"
    for name, series in grok.stored.items():
        assert all(a[0] < b[0] for a, b in itertools.pairwise(series)), name


# -- the three-day run --------------------------------------------------------------------------
def test_three_days_with_sink_outages_flapping_api_outages_and_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Three days of 5-minute windows: Grok down for 5 hours and flapping (with writes cut in
    the middle) for 4, the API down for 2 hours (windows beyond --backfill are skipped) and for
    10 minutes (caught up), a restart while Grok is down. Every window arrives once, in order,
    with the exact means, or is counted; the counters add up, one log line per window and the
    counters every hour."""
    caplog.set_level(logging.INFO, logger="servertrack.forward")
    rig = make_rig(tmp_path)
    day = START - START % DAY
    rig.grok.down = [
        (day + 6 * HOUR, day + 11 * HOUR),
        (day + DAY + 18 * HOUR, day + DAY + 19 * HOUR),
    ]
    rig.grok.flapping = [(day + DAY + 10 * HOUR, day + DAY + 14 * HOUR)]
    api_down = (day + 20 * HOUR, day + 22 * HOUR)
    rig.fleet.down = [api_down, (day + 2 * DAY + 3 * HOUR, day + 2 * DAY + 3 * HOUR + 600)]
    rig.fleet.silent_fleet = [(day + 2 * DAY + 8 * HOUR, day + 2 * DAY + 8 * HOUR + 1200)]
    end = START + 3 * DAY

    first = rig.start()
    rig.run_until(first, day + DAY + 18 * HOUR + 1800)  # Grok is down: points are queued
    assert first.queue.size > 0
    first.shutdown()
    second = rig.start()
    rig.run_until(second, end)
    second.shutdown()

    assert_in_order_and_once(rig.grok)
    assert rig.grok.cut_lines > 0, "the flapping sink never cut a write: the test lost its teeth"
    done_until = StateFile(tmp_path / "state.json").load()
    assert done_until is not None
    window_one = math.ceil((START - 3300) / 300) * 300
    status = classify(rig, window_one, done_until)
    count = totals(rig.runs)
    handled = (done_until - window_one) // 300
    assert handled >= 3 * DAY // 300 - 1
    assert (
        count["windows_sent"] + count["windows_empty"] + count["windows_dropped"] + count["skipped"]
        == handled
    )
    assert count["windows_sent"] == len(status["full"])
    assert count["points_sent"] == len(rig.grok.arrival)
    assert count["dropped_queue_full"] == 0
    # Only what was still queued at the restart was dropped, all of it counted.
    assert count["dropped"] == count["dropped_at_exit"] == first.snapshot()["dropped_at_exit"] > 0
    restart = day + DAY + 18 * HOUR + 1800
    missing = status["absent"] + status["partial"]
    at_restart = [t for t in missing if rig.grok.down[1][0] - 315 < t < restart]
    in_api_outage = [t for t in status["absent"] if api_down[0] - 315 < t < api_down[1]]
    assert sorted(at_restart + in_api_outage) == sorted(missing), "a window went missing"
    assert count["windows_dropped"] == len(at_restart) > 0
    # The API outage kept back windows beyond --backfill: skipped (the API is retried every 30 s).
    windows = range(window_one, done_until, 300)
    surely = {t for t in windows if api_down[0] - 315 < t < api_down[1] - 3300}
    maybe = {t for t in windows if api_down[0] - 315 < t < api_down[1] + 30 - 3300}
    assert surely <= set(in_api_outage) <= maybe
    assert count["skipped"] == len(in_api_outage) > 10
    assert len(status["empty"]) == count["windows_empty"] == 4
    assert count["connect_failures"] > 100 and count["write_failures"] > 0
    assert count["reconnects"] > 10 and count["peer_closed"] > 0
    errors: Counter[str] = Counter()
    for run in rig.runs:
        errors.update(run.counters.api_errors)
    assert errors["http_503"] >= 2
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("servertrack.forward")]
    kinds = Counter(
        "sent"
        if re.match(r"window \S+: \d+ points sent \(", m)
        else "dropped"
        if re.match(r"window \S+: \d+ of \d+ points sent, \d+ dropped", m)
        else "empty"
        if re.match(r"window \S+: no samples", m)
        else "hourly"
        if m.startswith("counters: ")
        else "exit"
        if m.startswith("counters at exit: ")
        else "other"
        for m in messages
    )
    assert kinds["sent"] == count["windows_sent"]
    assert kinds["dropped"] == count["windows_dropped"]
    assert kinds["empty"] == count["windows_empty"]
    assert kinds["exit"] == 2
    assert 3 * 24 - 2 <= kinds["hourly"] <= 3 * 24


def test_a_full_queue_drops_the_oldest_points_and_counts_them(tmp_path: Path) -> None:
    """With room for 400 points and Grok down for 5 hours, the oldest points are dropped and
    counted; the newest arrive in order, and sent + dropped equals every point read."""
    rig = make_rig(tmp_path, queue_size=400)
    day = START - START % DAY
    rig.grok.down = [(day + 2 * HOUR, day + 7 * HOUR)]
    forwarder = rig.start()
    rig.run_until(forwarder, START + 9 * HOUR)
    forwarder.shutdown()

    assert_in_order_and_once(rig.grok)
    done_until = StateFile(tmp_path / "state.json").load()
    assert done_until is not None
    window_one = math.ceil((START - 3300) / 300) * 300
    status = classify(rig, window_one, done_until)
    count = forwarder.snapshot()
    every_point = sum(
        len(expected_points(rig.fleet, t, 300, "st")) for t in range(window_one, done_until, 300)
    )
    assert count["skipped"] == 0
    assert count["dropped"] == count["dropped_queue_full"] > 0
    assert count["points_sent"] + count["dropped"] == every_point
    assert count["windows_dropped"] == len(status["absent"]) + len(status["partial"]) > 0
    assert count["windows_sent"] == len(status["full"])
    # What was dropped is the oldest of the outage: one run of whole windows, then at most one
    # window cut at the edge of the queue, then everything newer arrived.
    absent, partial = status["absent"], status["partial"]
    assert absent == list(range(absent[0], absent[-1] + 1, 300))
    assert rig.grok.down[0][0] - 315 < absent[0] and absent[-1] < rig.grok.down[0][1]
    assert partial in ([], [absent[-1] + 300])
    assert all(t < absent[0] or t > absent[-1] for t in status["full"])


def test_a_restart_from_the_state_file_sends_nothing_twice(tmp_path: Path) -> None:
    """Stopped and started again (from the state file) several times, mid-window and right at a
    window's due time, the forwarder never sends a point twice nor skips a window."""
    rig = make_rig(tmp_path)
    stops = [START + 1000, START + 1000 + 315 - 1000 % 300, START + 4000, START + 4003]
    for stop in stops:
        forwarder = rig.start()
        rig.run_until(forwarder, stop)
        forwarder.shutdown()
    forwarder = rig.start()
    rig.run_until(forwarder, START + 3 * HOUR)
    forwarder.shutdown()
    assert_in_order_and_once(rig.grok)
    done_until = StateFile(tmp_path / "state.json").load()
    assert done_until is not None
    window_one = math.ceil((START - 3300) / 300) * 300
    status = classify(rig, window_one, done_until)
    assert status["absent"] == [] and status["partial"] == []
    assert totals(rig.runs)["windows_sent"] == len(status["full"]) >= 30


def test_a_long_stop_skips_the_windows_beyond_backfill(tmp_path: Path) -> None:
    """Back after 3 hours, the forwarder sends the windows within --backfill (3300 s) and
    counts the older ones as skipped."""
    rig = make_rig(tmp_path)
    forwarder = rig.start()
    rig.run_until(forwarder, START + HOUR)
    forwarder.shutdown()
    stopped_at = StateFile(tmp_path / "state.json").load()
    assert stopped_at is not None
    rig.wall.advance(3 * HOUR)
    rig.mono.advance(3 * HOUR)
    back = rig.wall.now
    forwarder = rig.start()
    rig.run_until(forwarder, back + 60)
    oldest_sent = math.ceil((back - 3300) / 300) * 300
    assert forwarder.snapshot()["skipped"] == (oldest_sent - stopped_at) // 300
    sent = sorted({ts for _, ts, _ in rig.grok.arrival if ts >= stopped_at})
    latest = (back - 15 - 300) // 300 * 300
    assert sent[0] == oldest_sent and sent[-1] == latest
    forwarder.shutdown()


def test_windows_lost_to_an_api_down_from_the_first_start_are_counted(tmp_path: Path) -> None:
    """The API is down for the first two hours: the windows that fall out of --backfill before
    it answers are counted as skipped, none unaccounted for."""
    rig = make_rig(tmp_path)
    rig.fleet.down = [(START, START + 2 * HOUR)]
    forwarder = rig.start()
    rig.run_until(forwarder, START + 2 * HOUR + 600)
    forwarder.shutdown()
    done_until = StateFile(tmp_path / "state.json").load()
    assert done_until is not None
    window_one = math.ceil((START - 3300) / 300) * 300
    count = forwarder.snapshot()
    status = classify(rig, window_one, done_until)
    assert count["skipped"] == len(status["absent"]) + sum(
        1 for t in status["empty"] if t < START + 2 * HOUR - 3300
    )
    assert count["skipped"] >= (2 * HOUR - 300) // 300 - 1
    assert (
        count["windows_sent"] + count["windows_empty"] + count["skipped"]
        == (done_until - window_one) // 300
    )
    assert all(t < START + 2 * HOUR - 3300 + 30 for t in status["absent"])


def test_an_unusable_answer_sends_nothing_and_is_read_again(tmp_path: Path) -> None:
    """A bucket without sums (an API from before them) fails the read, which is counted and
    retried; nothing of that window is sent until the API answers properly."""
    rig = make_rig(tmp_path)
    real_view = rig.fleet.view
    broken = {"on": True}

    def view(server: str, now: float, hours: bool = False) -> dict[str, Any]:
        answer = real_view(server, now, hours)
        if broken["on"]:
            for bucket in answer["minutes"]:
                bucket.pop("cpu_sum")
        return answer

    rig.fleet.view = view  # type: ignore[method-assign]
    forwarder = rig.start()
    rig.run_until(forwarder, START + 120)
    assert rig.grok.arrival == []
    assert forwarder.counters.api_errors.get("bad_bucket", 0) >= 2
    broken["on"] = False
    rig.run_until(forwarder, START + 240)
    forwarder.shutdown()
    assert rig.grok.arrival
    assert_in_order_and_once(rig.grok)


class LaggingFleet(FakeFleet):
    """The fleet behind a cache gone wrong: a server's n-th read for which ``lagging(n)`` holds
    is answered as the API answered ``lag`` seconds earlier (``as_of`` included)."""

    def __init__(self, clock: FakeClock, lag: float, lagging: Callable[[int], bool]) -> None:
        super().__init__(clock)
        self.lag = lag
        self.lagging = lagging
        self.asked: Counter[str] = Counter()
        self.lagged = 0

    def loads(self, names: list[str], stop: threading.Event | None = None) -> dict[str, Any]:
        self._check_up()
        self.reads += 1
        now = self.clock()
        answers = {}
        for name in names:
            self.asked[name] += 1
            late = self.lagging(self.asked[name])
            self.lagged += late
            answers[name] = self.view(name, now - self.lag if late else now)
        return answers


def lagging_rig(tmp_path: Path, lagging: Callable[[int], bool]) -> Rig:
    """One-minute windows read from a fleet whose lagging answers are two minutes old (older
    than any window due), re-read without a pause."""
    rig = make_rig(tmp_path, interval=60)
    rig.fleet = LaggingFleet(rig.wall, 120, lagging)
    rig.config.reread_pause = 0.0
    return rig


def test_an_answer_older_than_the_window_is_read_again_never_sent(tmp_path: Path) -> None:
    """Every other answer for a server comes from a cache two minutes behind: each of those is
    counted and read again, and every window sent is the brute-force mean of its raw samples."""
    rig = lagging_rig(tmp_path, lambda n: n % 2 == 1)
    forwarder = rig.start()
    rig.run_until(forwarder, START + 2 * HOUR)
    forwarder.shutdown()
    assert_in_order_and_once(rig.grok)
    done_until = StateFile(tmp_path / "state.json").load()
    assert done_until is not None
    window_one = math.ceil((START - 3300) / 60) * 60
    status = classify(rig, window_one, done_until)
    assert status["absent"] == [] and status["partial"] == []
    assert len(status["full"]) > 100
    count = forwarder.snapshot()
    assert isinstance(rig.fleet, LaggingFleet)
    assert count["answers_reread"] == rig.fleet.lagged > 100
    assert count["api_errors"] == {}


def test_answers_that_stay_older_than_the_window_send_nothing_until_fresh(
    tmp_path: Path,
) -> None:
    """A cache that keeps serving old answers: after ``rereads`` reads again the read fails as
    ``stale_answer`` and nothing of the window is sent; once the answers are fresh, every window
    goes out, exact."""
    behind = {"on": True}
    rig = lagging_rig(tmp_path, lambda n: behind["on"])
    forwarder = rig.start()
    rig.run_until(forwarder, START + 100)
    assert rig.grok.arrival == []
    failures = forwarder.counters.api_errors["stale_answer"]
    assert failures >= 2
    assert forwarder.counters.answers_reread >= failures * rig.config.rereads
    behind["on"] = False
    rig.run_until(forwarder, START + 600)
    forwarder.shutdown()
    assert_in_order_and_once(rig.grok)
    done_until = StateFile(tmp_path / "state.json").load()
    assert done_until is not None
    status = classify(rig, math.ceil((START - 3300) / 60) * 60, done_until)
    assert status["partial"] == [] and len(status["full"]) > 50
    assert len(status["absent"]) == forwarder.snapshot()["skipped"]  # out of --backfill meanwhile


def test_a_state_file_that_cannot_be_written_holds_the_points_back(tmp_path: Path) -> None:
    """If the state cannot be saved, nothing is queued (it could be sent twice after a
    restart); the failure is counted and the windows go out once the file can be written."""
    rig = make_rig(tmp_path)
    blocked = tmp_path / "state.json"
    forwarder = rig.start()
    blocked.mkdir()  # a directory where the file should be: os.replace fails
    rig.run_until(forwarder, START + 100)
    assert rig.grok.arrival == [] and forwarder.counters.state_errors >= 2
    blocked.rmdir()
    rig.run_until(forwarder, START + 200)
    forwarder.shutdown()
    assert rig.grok.arrival and StateFile(blocked).load() is not None


def test_servers_outside_the_glob_are_not_read_nor_counted_in_the_fleet() -> None:
    """--servers web-0[0-2]*: only those servers' points, and fleet figures over them only."""
    rig = make_rig(None)
    rig.config.servers = "web-0[0-2]*"
    forwarder = rig.start()
    rig.run_until(forwarder, START + 600)
    forwarder.shutdown()
    chosen = FakeFleet(rig.wall, SERVERS[:3])
    names = {name for name, _, _ in rig.grok.arrival}
    assert {n.split(".")[1] for n in names} <= {
        "web-00_example_com",
        "web-01_example_com",
        "web-02_example_com",
        "_fleet",
    }
    window_one = math.ceil((START - 3300) / 300) * 300
    for name, ts, value in rig.grok.arrival:
        want = expected_points(chosen, ts, 300, "st")
        assert math.isclose(value, want[name], rel_tol=1e-12), (name, ts)
    assert {ts for _, ts, _ in rig.grok.arrival} >= {window_one, window_one + 300}


# -- hourly windows -----------------------------------------------------------------------------
def test_hourly_windows_come_from_the_hour_buckets() -> None:
    """With --interval 3600 each window is one hour bucket of the API, mean exact."""
    wall = FakeClock(START + 5 * HOUR)
    fleet = FakeFleet(wall, SERVERS[:3])
    t = int(wall.now // HOUR) * HOUR - HOUR
    collector = WindowCollector([t], 3600, "hours")
    for server in fleet.names:
        collector.add(server, fleet.view(server, wall.now, hours=True))
    points = window_points(t, collector.windows[t], "st")
    want = expected_points(fleet, t, 3600, "st")
    got = {p.decode().split()[0]: float(p.decode().split()[1]) for p in points.lines}
    assert set(got) == set(want)
    assert all(math.isclose(got[k], want[k], rel_tol=1e-12) for k in want)
    schedule = Schedule(3600)
    assert schedule.backfill == 7200 and schedule.plan(wall.now).windows[-1] == t


# -- the pieces ---------------------------------------------------------------------------------
def test_means_are_exact_against_a_brute_force_mean_of_the_raw_samples() -> None:
    """Random samples spread over minutes: each window mean, fleet mean, max and count equal
    the brute-force figures from the raw samples."""
    rng = random.Random(11)
    raw: dict[str, list[Raw]] = {}
    t = 1_800_000_000 - 1_800_000_000 % 600
    for server in ("a.example", "b.example", "c"):
        raw[server] = [
            (t + rng.uniform(0, 600), rng.choice((None, rng.random() * 100)), rng.random() * 100)
            for _ in range(rng.randrange(1, 400))
        ]
    collector = WindowCollector([t], 600)
    for server, samples in raw.items():
        minutes = []
        for m in range(t // 60, t // 60 + 10):
            bucket = _bucket(m * 60, [s for s in samples if m * 60 <= s[0] < m * 60 + 60])
            if bucket:
                minutes.append(bucket)
        collector.add(server, {"minutes": minutes})
    points = window_points(t, collector.windows[t], "p")
    got = {p.decode().split()[0]: p.decode().split()[1] for p in points.lines}
    for server, samples in raw.items():
        for index, metric in ((1, "cpu"), (2, "ram")):
            values = [s[index] for s in samples if s[index] is not None]
            if values:
                want = math.fsum(values) / len(values)
                assert math.isclose(
                    float(got[f"p.{sanitize(server)}.{metric}"]), want, rel_tol=1e-13
                )
    every_cpu = [s[1] for samples in raw.values() for s in samples if s[1] is not None]
    assert math.isclose(float(got["p._fleet.cpu.mean"]), math.fsum(every_cpu) / len(every_cpu))
    assert got["p._fleet.ram.servers"] == "3"
    assert all(line.endswith(f" {t}\n".encode()) for line in points.lines)


def test_values_are_written_so_they_read_back_as_the_same_float() -> None:
    """A mean such as 1/3 is written with every digit it needs (repr), not rounded."""
    collector = WindowCollector([0], 60)
    collector.add(
        "s",
        {
            "minutes": [
                {
                    "start": iso_z(0),
                    "cpu_sum": 1.0,
                    "cpu_samples": 3,
                    "ram_samples": 0,
                    "ram_sum": None,
                }
            ]
        },
    )
    points = window_points(0, collector.windows[0], "p")
    value = points.lines[0].split()[1]
    assert float(value) == 1 / 3 and value == repr(1 / 3).encode()


def test_server_names_become_one_graphite_node() -> None:
    """Dots and every character outside [A-Za-z0-9_-] become '_' (as collectd does)."""
    assert sanitize("web-1.example.com") == "web-1_example_com"
    assert sanitize("a b/c\té:x") == "a_b_c___x"
    assert sanitize("Ok_name-9") == "Ok_name-9"
    assert series_name("_fleet") == "_fleet_" and series_name(".fleet") == "_fleet_"
    with pytest.raises(ValueError, match="prefix"):
        check_prefix("bad prefix")
    assert check_prefix("a.b-c_d") == "a.b-c_d"


def test_servers_with_the_same_sanitised_name_are_pooled_into_one_series() -> None:
    """web.1 and web_1 share the node web_1: one point with the mean of both servers' samples
    (never two points with one timestamp), and the sharing is reported."""
    collector = WindowCollector([0], 60)
    for server, total, count in (("web.1", 30.0, 3), ("web_1", 50.0, 1)):
        collector.add(
            server,
            {
                "minutes": [
                    {"start": iso_z(0), "cpu_sum": total, "cpu_samples": count, "ram_samples": 0}
                ]
            },
        )
    points = window_points(0, collector.windows[0], "p")
    names = [p.split()[0] for p in points.lines]
    assert names.count(b"p.web_1.cpu") == 1
    assert float(points.lines[names.index(b"p.web_1.cpu")].split()[1]) == 80.0 / 4
    assert points.shared_names == {"web_1": ["web.1", "web_1"]}
    assert float(points.lines[names.index(b"p._fleet.cpu.max")].split()[1]) == 50.0
    assert points.lines[names.index(b"p._fleet.cpu.servers")].split()[1] == b"2"


def test_malformed_buckets_are_refused_with_a_reason() -> None:
    collector = WindowCollector([0], 60)
    for bad in (
        {"start": "yesterday", "cpu_samples": 1, "cpu_sum": 1.0},
        {"start": "2026-11-22T10:00:00", "cpu_samples": 1, "cpu_sum": 1.0},
        {"start": iso_z(0), "cpu_samples": 1, "cpu_sum": None},
        {"start": iso_z(0), "cpu_samples": True, "cpu_sum": 1.0},
        {"start": iso_z(0), "cpu_samples": 1, "cpu_sum": "1"},
    ):
        with pytest.raises(MalformedAnswer):
            collector.add("s", {"minutes": [bad]})
    with pytest.raises(MalformedAnswer):
        collector.add("s", {"hours": []})


def test_an_answer_must_say_when_it_was_read() -> None:
    """``as_of`` is read as a time; an answer without one, or with one that is not an ISO time
    with a zone, is refused (an API too old to date its answers cannot be trusted fresh)."""
    assert answer_time("s", {"as_of": "2026-11-22T10:01:32.5Z"}) == 1_795_341_692.5
    for bad in ({}, {"as_of": None}, {"as_of": "now"}, {"as_of": "2026-11-22T10:01:32"}, []):
        with pytest.raises(MalformedAnswer, match="as_of") as refused:
            answer_time("s", bad)
        assert refused.value.reason == "bad_answer"


def test_the_interval_must_be_a_multiple_of_60_that_divides_3600() -> None:
    valid = [d for d in range(1, 7201) if d % 60 == 0 and 3600 % d == 0]
    for interval in range(-60, 7201):
        backfill = 7200 if interval == 3600 else 3300
        if interval in valid:
            check_settings(interval, 15, max(backfill, interval + 15))
        elif interval % 30 == 0 or interval in (1, 59, 61):
            with pytest.raises(ScheduleError, match="--interval"):
                check_settings(interval, 15, backfill)
    assert valid == [60, 120, 180, 240, 300, 360, 600, 720, 900, 1200, 1800, 3600]


def test_backfill_must_reach_the_newest_window_and_stay_inside_the_api_window() -> None:
    with pytest.raises(ScheduleError, match="--backfill"):
        Schedule(300, 15, 314)
    with pytest.raises(ScheduleError, match="--backfill"):
        Schedule(300, 15, 3541)
    with pytest.raises(ScheduleError, match="--backfill"):
        Schedule(3600, 15, 3300)
    assert Schedule(300, 15, 315).backfill == 315 and Schedule(1800).backfill == 3300


def test_the_schedule_waits_for_the_grace_period_and_never_goes_back() -> None:
    """A window is due at its end plus the grace; a clock that jumps back sends nothing."""
    schedule = Schedule(300, 15, 3300, done_until=1_800_000_300)
    assert schedule.plan(1_800_000_614.9).windows == ()
    assert schedule.next_due(1_800_000_000) == 1_800_000_615
    plan = schedule.plan(1_800_000_615)
    assert plan.windows == (1_800_000_300,) and plan.skipped == 0
    schedule.commit(plan)
    assert schedule.plan(1_800_000_000).windows == ()
    assert schedule.done_until == 1_800_000_600


def test_first_start_sends_back_to_backfill_and_skips_nothing() -> None:
    now = 1_800_000_000 + 17
    plan = Schedule(300).plan(now)
    assert plan.skipped == 0
    assert plan.windows[0] >= now - 3300 and plan.windows[0] - 300 < now - 3300
    assert plan.windows[-1] + 300 + 15 <= now < plan.windows[-1] + 600 + 15


def test_the_state_file_is_replaced_atomically_and_a_broken_one_is_refused(
    tmp_path: Path,
) -> None:
    state = StateFile(tmp_path / "fwd.state")
    assert state.load() is None
    state.save(1_800_000_300)
    state.save(1_800_000_600)
    assert state.load() == 1_800_000_600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fwd.state"]  # no temporary left
    (tmp_path / "fwd.state").write_text("{not json")
    with pytest.raises(StateFileError, match="move it away"):
        state.load()
    (tmp_path / "fwd.state").write_text('{"done_until": -5}')
    with pytest.raises(StateFileError):
        state.load()


def test_a_state_ahead_of_the_clock_is_a_warning_and_the_forwarder_resumes_from_now(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A state file written while the clock ran 30 days ahead: a WARNING says so, and the
    forwarder sends every window from the end of the one in progress on, instead of nothing
    for 30 days."""
    caplog.set_level(logging.INFO, logger="servertrack.forward")
    rig = make_rig(tmp_path)
    StateFile(tmp_path / "state.json").save(int(START // 300) * 300 + 30 * DAY)
    forwarder = rig.start()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("ahead of this clock" in message for message in warnings), warnings
    rig.run_until(forwarder, START + HOUR)
    forwarder.shutdown()
    resumed = math.ceil(START / 300) * 300
    latest = (START + HOUR - 15 - 300) // 300 * 300
    sent = sorted({ts for _, ts, _ in rig.grok.arrival})
    assert sent == list(range(resumed, int(latest) + 1, 300))
    assert_in_order_and_once(rig.grok)
    assert StateFile(tmp_path / "state.json").load() == latest + 300


def test_a_state_a_little_ahead_sends_nothing_twice(tmp_path: Path) -> None:
    """A clock set back by a few seconds after a window was handled: that window is not sent
    again, and the next one goes out on time."""
    rig = make_rig(tmp_path)
    forwarder = rig.start()
    rig.run_until(forwarder, START + 1000)
    forwarder.shutdown()
    done_until = StateFile(tmp_path / "state.json").load()
    assert done_until is not None
    rig.wall.set(done_until - 5)
    forwarder = rig.start()
    rig.run_until(forwarder, done_until + 600)
    forwarder.shutdown()
    assert_in_order_and_once(rig.grok)
    assert rig.grok.rejected == []
    assert max(ts for _, ts, _ in rig.grok.arrival) == done_until


BAD_STATES = {
    "empty": b"",
    "not JSON": b"garbage",
    "binary": b"\xff\xfe\x00\x01",
    "a list": b"[1]",
    "a string": b'"done_until"',
    "null": b"null",
    "no done_until": b'{"version": 1}',
    "a string done_until": b'{"done_until": "1800000000"}',
    "a float done_until": b'{"done_until": 1800000000.5}',
    "a boolean done_until": b'{"done_until": true}',
    "NaN": b'{"done_until": NaN}',
    "Infinity": b'{"done_until": 1e400}',
    "negative": b'{"done_until": -300}',
    "huge": b'{"done_until": 99999999999999999999999999}',
    "thousands of digits": b'{"done_until": ' + b"9" * 5000 + b"}",
    "nested too deeply": b"[" * 100_000,
    "too long": b'{"done_until": 1800000000, "pad": "' + b" " * 10_000 + b'"}',
}


@pytest.mark.parametrize("content", list(BAD_STATES.values()), ids=list(BAD_STATES))
def test_every_bad_state_file_is_refused_with_a_message(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(StateFileError, match="move it away"):
        StateFile(path).load()
    with pytest.raises(SystemExit) as stopped:
        forward_main(["--graphite", "tcp://127.0.0.1:2003", "--state", str(path)])
    assert str(stopped.value).startswith("servertrack forward: state file")


def test_a_state_path_that_cannot_be_read_is_refused_with_a_message(tmp_path: Path) -> None:
    """A directory, or a path under a plain file, stops the command with a message."""
    (tmp_path / "a-file").write_text("x")
    for path in (tmp_path, tmp_path / "a-file" / "state.json"):
        with pytest.raises(SystemExit) as stopped:
            forward_main(["--graphite", "tcp://127.0.0.1:2003", "--state", str(path)])
        assert str(stopped.value).startswith("servertrack forward: cannot read state file")


def test_the_queue_keeps_order_drops_the_oldest_and_counts() -> None:
    queue = PointQueue(5)
    queue.put(1, [b"a\n", b"b\n", b"c\n"])
    queue.put(2, [b"d\n", b"e\n", b"f\n"])
    assert queue.dropped_full == 1 and queue.chunk() == [b"b\n", b"c\n", b"d\n", b"e\n", b"f\n"]
    queue.written(3)
    finished = queue.take_finished()
    assert [(b.tag, b.written, b.dropped_full) for b in finished] == [(1, 2, 1)]
    assert queue.size == 2 and queue.drop_all() == 2
    assert [(b.tag, b.written, b.dropped_exit) for b in queue.take_finished()] == [(2, 1, 2)]


def test_backoff_doubles_up_to_its_cap_with_jitter() -> None:
    rng = random.Random(5)
    backoff = Backoff(1.0, 60.0, rng.random)
    delays = [backoff.next_delay() for _ in range(12)]
    for n, delay in enumerate(delays):
        ceiling = min(60.0, 2.0**n)
        assert ceiling / 2 <= delay <= ceiling
    assert len(set(delays[-5:])) == 5, "capped delays are still jittered"
    backoff.reset()
    assert backoff.next_delay() <= 1.0


# -- the command line ---------------------------------------------------------------------------
def test_the_graphite_target_is_a_tcp_url() -> None:
    assert parse_graphite("tcp://grok.example.com:2003") == ("grok.example.com", 2003)
    assert parse_graphite("tcp://[::1]:2103") == ("::1", 2103)
    assert parse_graphite("tcp://carbon") == ("carbon", 2003)
    for bad in (None, "", "http://h:2003", "tcp://:2003", "tcp://h:99999", "tcp://h:2003/x"):
        with pytest.raises(ValueError, match="--graphite"):
            parse_graphite(bad)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--interval", "420"], "--interval"),
        (["--backfill", "4000"], "--backfill"),
        (["--prefix", "a..b"], "--prefix"),
        (["--graphite", "udp://h:2003"], "--graphite"),
        (["--api", "localhost:8080"], "--api"),
    ],
)
def test_bad_flags_stop_the_command_with_a_message(
    flags: list[str], message: str, tmp_path: Path
) -> None:
    argv = ["--graphite", "tcp://127.0.0.1:2003", "--state", str(tmp_path / "s"), *flags]
    with pytest.raises(SystemExit) as stopped:
        forward_main(argv)
    assert str(stopped.value).startswith("servertrack forward:") and message in str(stopped.value)


def test_a_broken_state_file_stops_the_command_with_a_message(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text("garbage")
    with pytest.raises(SystemExit, match="move it away"):
        forward_main(["--graphite", "tcp://127.0.0.1:2003", "--state", str(state)])
