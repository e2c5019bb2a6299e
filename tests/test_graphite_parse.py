"""Graphite plaintext without sockets: the line parser and the path mapper over the byte-exact
collectd captures in ``../shared/realclients/captures/`` (expected counts computed here with plain
string operations), every kind of line, the rule files, and random lines that are each counted
exactly once."""

from __future__ import annotations

import math
import os
import random
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servertrack.common.batch import Batch
from servertrack.forward.points import MetricSum, window_points
from servertrack.receiver.graphite import (
    MAX_LINE,
    GraphiteIntake,
    PathMapper,
    RuleError,
    Stream,
    load_rules,
    parse_rules,
)
from servertrack.receiver.state import ReceiverState
from servertrack.testing.hosts import FakeClock

SHARED = Path(
    os.environ.get("SERVERTRACK_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared")
)
CAPTURES = SHARED / "realclients" / "captures"
T0 = 1_795_366_800.0


def capture_files() -> list[Path]:
    files = sorted(CAPTURES.glob("*.raw"))
    if not files:
        pytest.fail(f"no captures in {CAPTURES} (set SERVERTRACK_SHARED_DIR)")
    return files


def intake_at(now: float, rules: str = "", **options: Any) -> tuple[GraphiteIntake, FakeClock]:
    clock = FakeClock(now)
    state = ReceiverState(clock)
    mapper = PathMapper(parse_rules(rules)) if rules else PathMapper()
    return GraphiteIntake(state, mapper, **options), clock


def feed(intake: GraphiteIntake, data: bytes, now: float, chunks: list[int] | None = None) -> None:
    """Feed ``data`` on one connection (in pieces of the given sizes), then close it."""
    stream = intake.open(0.0)
    sizes = chunks or [len(data)]
    offset = 0
    for size in sizes:
        piece, offset = data[offset : offset + size], offset + size
        if piece:
            assert intake.feed(stream, piece, now, 0.0)
    if offset < len(data):
        assert intake.feed(stream, data[offset:], now, 0.0)
    intake.close(stream)


def points(batch: Batch, state: ReceiverState) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """(server, metric) → [(ts, value)] of the samples a batch carries."""
    names = {server.id: name for name, server in state.servers.items()}
    found: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for index, ts in enumerate(batch.ts.tolist()):
        for metric, column in (("cpu", batch.cpu), ("ram", batch.ram)):
            value = float(column[index])
            if not math.isnan(value):
                key = (names[int(batch.ids[index])], metric)
                found.setdefault(key, []).append((ts, value))
    return found


def rejected(state: ReceiverState) -> dict[str, int]:
    return dict(state.counters()["rejected"]["graphite"])


def accounted(state: ReceiverState) -> int:
    counters = state.counters()
    return (
        counters["accepted"]["graphite"]
        + sum(counters["rejected"]["graphite"].values())
        + counters["duplicates"]
    )


# -- the captures -------------------------------------------------------------------------------
def expected_from_capture(raw: bytes) -> dict[str, Any]:
    """What the built-in rules should make of a capture, restated with plain string splitting."""
    mapped: dict[tuple[str, str], list[tuple[float, float]]] = {}
    unmapped = nan = clamped = duplicates = 0
    seen: set[tuple[str, str, float]] = set()
    for text in raw.decode("ascii").splitlines():
        path, value_text, ts_text = text.split(" ")
        nodes = path.split(".")
        metric = None
        if len(nodes) == 3 and nodes[0] == "servertrack" and nodes[2] in ("cpu", "ram"):
            metric = nodes[2]
        elif len(nodes) == 4 and nodes[0] == "collectd":
            metric = {
                ("cpu", "percent-active"): "cpu",
                ("memory", "percent-used"): "ram",
            }.get((nodes[2], nodes[3]))
        if metric is None:
            unmapped += 1
            continue
        if value_text == "nan":
            nan += 1
            continue
        value = float(value_text)
        if 100 < value <= 110:
            value, clamped = 100.0, clamped + 1
        key = (nodes[1], metric, float(ts_text))
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        mapped.setdefault((nodes[1], metric), []).append((float(ts_text), value))
    return {
        "mapped": mapped,
        "unmapped": unmapped,
        "nan": nan,
        "clamped": clamped,
        "duplicates": duplicates,
    }


def capture_now(raw: bytes) -> float:
    """A receiving clock just after the newest timestamp of a capture."""
    return max(float(line.split()[2]) for line in raw.splitlines()) + 1.0


@pytest.mark.parametrize("capture", capture_files(), ids=lambda path: path.stem)
def test_captures_map_what_the_built_in_rules_say(capture: Path) -> None:
    """Every line of a real collectd capture is counted once: the collectd cpu and memory
    percentages become points of their host (per host and metric, the same timestamps and
    values as a plain split of the file gives), everything else is unmapped."""
    raw = capture.read_bytes()
    now = capture_now(raw)
    intake, _ = intake_at(now)
    feed(intake, raw, now)
    expected = expected_from_capture(raw)
    state = intake.state
    batch = state.flush(now)

    assert points(batch, state) == expected["mapped"]
    lines = raw.count(b"\n")
    assert state.counters()["received"]["graphite"] == lines
    assert accounted(state) == lines
    assert rejected(state) == {
        reason: count
        for reason, count in (("unmapped", expected["unmapped"]), ("nan", expected["nan"]))
        if count
    }
    assert state.graphite_clamped == expected["clamped"]
    assert state.counters()["duplicates"] == expected["duplicates"]


def test_the_minimal_capture_gives_one_cpu_and_one_ram_point_a_second() -> None:
    """The capture made with collectd-minimal.conf maps to web01_example_com's cpu and ram,
    one point per second each; its load and other memory lines are the unmapped ones."""
    raw = (CAPTURES / "collectd-run7-minimal.raw").read_bytes()
    now = capture_now(raw)
    intake, _ = intake_at(now)
    feed(intake, raw, now)
    found = points(intake.state.flush(now), intake.state)
    assert set(found) == {("web01_example_com", "cpu"), ("web01_example_com", "ram")}
    for series in found.values():
        stamps = [ts for ts, _ in series]
        assert stamps == sorted(set(stamps))
        assert all(0 <= value <= 100 for _, value in series)
    others = [line for line in raw.splitlines() if b".load." in line or b"-used " not in line]
    assert rejected(intake.state) == {"unmapped": len(others) - raw.count(b"percent-active")}
    assert any(b".load." in line for line in others)


@pytest.mark.parametrize("seed", range(5))
def test_any_split_of_a_capture_gives_the_same_points(seed: int) -> None:
    """Lines cut across reads anywhere (one byte at a time included) give what one read gives."""
    raw = (CAPTURES / "collectd-final-recommended-config.raw").read_bytes()
    now = capture_now(raw)
    whole, _ = intake_at(now)
    feed(whole, raw, now)
    rng = random.Random(seed)
    sizes = [rng.choice([1, 2, 7, 80, 81, 1500]) for _ in range(len(raw))]
    pieces, _ = intake_at(now)
    feed(pieces, raw, now, sizes)
    assert points(pieces.state.flush(now), pieces.state) == points(
        whole.state.flush(now), whole.state
    )
    assert pieces.state.counters() | {"batches": 0} == whole.state.counters() | {"batches": 0}


def test_a_rule_file_maps_a_capture_without_the_prefix_dot() -> None:
    """Run 3 was sent with Prefix "collectd" (no dot), so the host node reads ``collectddb-1_prod``:
    a rule with ``collectd{server}`` maps its memory percentage to ``db-1_prod``."""
    raw = (CAPTURES / "collectd-run3-aggregated-cpu-percent.raw").read_bytes()
    now = capture_now(raw)
    intake, _ = intake_at(now, "collectd{server}.memory.percent-used ram\n")
    feed(intake, raw, now)
    found = points(intake.state.flush(now), intake.state)
    used = [line.split() for line in raw.splitlines() if line.split()[0].endswith(b".percent-used")]
    assert found == {("db-1_prod", "ram"): [(float(ts), float(value)) for _, value, ts in used]}
    assert rejected(intake.state) == {"unmapped": raw.count(b"\n") - len(used)}


def test_tagged_paths_are_unmapped() -> None:
    """collectd with UseTags writes ``name;tag=value`` paths: no built-in rule maps them."""
    raw = (CAPTURES / "collectd-run4-usetags-active.raw").read_bytes()
    now = capture_now(raw)
    intake, _ = intake_at(now)
    feed(intake, raw, now)
    assert rejected(intake.state) == {"unmapped": raw.count(b"\n")}


# -- lines --------------------------------------------------------------------------------------
def test_line_endings_separators_and_timestamps() -> None:
    """``\\n`` and ``\\r\\n`` endings, tabs and repeated spaces, integer and float timestamps,
    and ``-1`` for the receiving clock."""
    now = T0 + 0.25
    intake, _ = intake_at(now)
    data = (
        b"servertrack.a.cpu 10 1795366790\n"
        b"servertrack.a.ram 20.5 1795366790.5\r\n"
        b"servertrack.b.cpu\t30  -1\r\n"
        b"collectd.c.memory.percent-used 40 1795366791\n"
    )
    feed(intake, data, now)
    found = points(intake.state.flush(now), intake.state)
    assert found == {
        ("a", "cpu"): [(1795366790.0, 10.0)],
        ("a", "ram"): [(1795366790.5, 20.5)],
        ("b", "cpu"): [(now, 30.0)],
        ("c", "ram"): [(1795366791.0, 40.0)],
    }
    assert rejected(intake.state) == {}


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"", "bad_line"),
        (b"\r", "bad_line"),
        (b"servertrack.a.cpu 10", "bad_line"),
        (b"servertrack.a.cpu 10 1795366790 extra", "bad_line"),
        (b"servertrack.a.cpu ten 1795366790", "bad_line"),
        (b"servertrack.a.cpu 10 yesterday", "bad_line"),
        (b"servertrack.a.cpu 5_0 1795366790", "bad_line"),
        (b"servertrack.a.cpu 50 1_795_366_790", "bad_line"),
        (b"servertrack.\xff.cpu 10 1795366790", "bad_line"),
        (b"servertrack.a.disk 10 1795366790", "unmapped"),
        (b"collectd.a.cpu.percent-idle 10 1795366790", "unmapped"),
        (b"servertrack.a.cpu nan 1795366790", "nan"),
        (b"servertrack.a.cpu -nan 1795366790", "nan"),
        (b"servertrack.a.cpu 110.01 1795366790", "bad_cpu"),
        (b"servertrack.a.cpu -0.5 1795366790", "bad_cpu"),
        (b"servertrack.a.ram inf 1795366790", "bad_ram"),
        (b"servertrack.a.cpu 10 inf", "bad_ts"),
        (b"servertrack.a.cpu 10 nan", "bad_ts"),
        (b"servertrack.a.cpu 10 %d" % (T0 + 61), "future"),
        (b"servertrack.a.cpu 10 %d" % (T0 - 90_000), "too_old"),
        (b"servertrack.a!b.cpu 10 1795366790", "bad_fqdn"),
        (b"servertrack.%s.cpu 10 1795366790" % (b"a" * 254), "bad_fqdn"),
    ],
)
def test_each_bad_line_is_counted_under_its_reason(line: bytes, reason: str) -> None:
    """A line that cannot become a sample is counted once under the reason that says why, and
    the good line after it is still taken."""
    intake, _ = intake_at(T0)
    feed(intake, line + b"\r\nservertrack.ok.cpu 5 1795366790\n", T0)
    assert rejected(intake.state) == {reason: 1}
    assert points(intake.state.flush(T0), intake.state) == {("ok", "cpu"): [(1795366790.0, 5.0)]}


@pytest.mark.parametrize("metric", ["cpu", "ram"])
def test_values_a_little_over_100_are_clamped_and_counted(metric: str) -> None:
    """100 < value <= 110 becomes 100.0 and is counted in ``graphite_clamped``; 100 itself and
    everything up to it is taken as it is."""
    intake, _ = intake_at(T0)
    values = [100.0, 100.001, 100.997528, 110.0, 99.5]
    data = b"".join(
        b"servertrack.a.%s %r %d\n" % (metric.encode(), v, T0 - i) for i, v in enumerate(values)
    )
    feed(intake, data, T0)
    found = points(intake.state.flush(T0), intake.state)
    assert [value for _, value in found[("a", metric)]] == [min(v, 100.0) for v in values]
    assert intake.state.graphite_clamped == sum(1 for v in values if v > 100)


def test_negative_zero_is_taken_as_zero() -> None:
    """``-0.0`` is a valid zero (of a new server and of a known one), stored as ``0.0``."""
    intake, _ = intake_at(T0)
    feed(intake, b"servertrack.z.cpu -0.0 1795366790\nservertrack.z.cpu -0 1795366791\n", T0)
    values = [v for _, v in points(intake.state.flush(T0), intake.state)[("z", "cpu")]]
    assert values == [0.0, 0.0]
    assert all(math.copysign(1.0, v) == 1.0 for v in values)


def test_line_length_limit() -> None:
    """A line of ``MAX_LINE`` bytes (before ``\\n`` or ``\\r\\n``) is read; one byte more is
    ``line_too_long``, counted once however many reads it spans, and the line after it is taken."""
    head = b"servertrack.a.cpu 5 "
    exact = head + b"1795366790".rjust(MAX_LINE - len(head), b"0")
    assert len(exact) == MAX_LINE
    over = b"servertrack.a.ram 5 " + b"1795366791".rjust(MAX_LINE + 1 - len(head), b"0")
    huge = b"x" * (10 * MAX_LINE)
    data = exact + b"\r\n" + over + b"\n" + huge + b"\r\n" + b"servertrack.b.ram 7 1795366792\n"
    for sizes in ([len(data)], [100] * (len(data) // 100 + 1), [MAX_LINE + 3] * 20):
        intake, _ = intake_at(T0)
        feed(intake, data, T0, sizes)
        assert rejected(intake.state) == {"line_too_long": 2}, sizes
        found = points(intake.state.flush(T0), intake.state)
        assert found == {("a", "cpu"): [(1795366790.0, 5.0)], ("b", "ram"): [(1795366792.0, 7.0)]}


def test_an_over_long_line_cut_by_the_disconnect_is_counted_once() -> None:
    """A line still over-long when its connection closes counts as ``line_too_long`` only."""
    intake, _ = intake_at(T0)
    feed(intake, b"servertrack.a.cpu 1 1795366790\n" + b"y" * 5000, T0, [1000] * 6)
    assert rejected(intake.state) == {"line_too_long": 1}


def test_a_half_line_at_disconnect_is_dropped_and_counted() -> None:
    """What follows the last newline when the connection closes is a ``partial_line``; a
    stream that ends with its newline leaves nothing."""
    intake, _ = intake_at(T0)
    feed(intake, b"servertrack.a.cpu 1 1795366790\nservertrack.a.cpu 2 17953", T0)
    assert rejected(intake.state) == {"partial_line": 1}
    assert [v for _, v in points(intake.state.flush(T0), intake.state)[("a", "cpu")]] == [1.0]
    clean, _ = intake_at(T0)
    feed(clean, b"servertrack.a.cpu 1 1795366790\r\n", T0)
    assert rejected(clean.state) == {}


def test_the_stream_notes_when_its_unfinished_line_began() -> None:
    """``began`` is the monotonic time of the first byte of the line not finished yet: kept while
    the line (or an over-long one being discarded) goes on, new when a line begins after a
    newline, None when nothing is left unfinished. The listener's line deadline reads it."""
    intake, _ = intake_at(T0)
    stream = intake.open(0.0)
    intake.feed(stream, b"servertrack.a.cpu 1", T0, 1.0)
    assert stream.began == 1.0
    intake.feed(stream, b" 17953", T0, 2.0)
    assert stream.began == 1.0
    intake.feed(stream, b"66790\nservertrack.a.cpu", T0, 3.0)
    assert stream.began == 3.0
    intake.feed(stream, b" 2 1795366791\n", T0, 4.0)
    assert stream.began is None
    intake.feed(stream, b"y" * (2 * MAX_LINE), T0, 5.0)
    intake.feed(stream, b"y" * (2 * MAX_LINE), T0, 6.0)
    assert (stream.skipping, stream.began) == (True, 5.0)
    intake.feed(stream, b"y\n", T0, 7.0)
    assert stream.began is None
    assert rejected(intake.state) == {"line_too_long": 1}
    assert intake.state.counters()["accepted"]["graphite"] == 2


def test_duplicates_are_keyed_by_server_ts_and_metric() -> None:
    """The same (server, ts, metric) again is a duplicate; cpu and ram of one ts are two points,
    and a record over HTTP at the same ts is not taken for a repeat of either."""
    intake, _ = intake_at(T0)
    data = (
        b"servertrack.a.cpu 1 1795366790\n"
        b"servertrack.a.ram 2 1795366790\n"
        b"servertrack.a.cpu 3 1795366790\n"
        b"servertrack.a.cpu 4 1795366790.5\n"
        b"servertrack.b.cpu 5 1795366790\n"
    )
    feed(intake, data, T0)
    state = intake.state
    assert state.record([["a", 1795366790.0, 9.0, 9.0]], T0) == {"accepted": 1, "duplicates": 0}
    assert state.counters()["duplicates"] == 1
    found = points(state.flush(T0), state)
    assert found[("a", "cpu")] == [(1795366790.0, 1.0), (1795366790.5, 4.0), (1795366790.0, 9.0)]
    assert state.counters()["dedup_keys"] == 5


def test_new_servers_beyond_the_cap_are_refused() -> None:
    """``max_servers`` holds for Graphite points too: a new name beyond it is ``server_limit``,
    a known one carries on."""
    clock = FakeClock(T0)
    state = ReceiverState(clock, max_servers=2)
    intake = GraphiteIntake(state)
    data = b"".join(b"servertrack.s%d.cpu 1 1795366790\n" % i for i in range(4))
    feed(intake, data + b"servertrack.s0.ram 1 1795366790\n", T0)
    assert rejected(state) == {"server_limit": 2}
    assert state.counters()["accepted"]["graphite"] == 3


def test_servertrack_forward_lines_chain_under_their_sanitised_names() -> None:
    """The lines ``servertrack forward`` writes for a window are read back by another receiver:
    each server's means under its sanitised name (``web-1.example.com`` → ``web-1_example_com``,
    ``_fleet`` → ``_fleet_``), the fleet summaries unmapped."""
    sums = {
        "web-1.example.com": {"cpu": MetricSum([25.0, 12.5], 3), "ram": MetricSum([80.0], 2)},
        "_fleet": {"cpu": MetricSum([7.0], 1)},
    }
    window = window_points(int(T0) - 300, sums, "servertrack")
    intake, _ = intake_at(T0)
    feed(intake, b"".join(window.lines), T0)
    found = points(intake.state.flush(T0), intake.state)
    ts = float(window.t)
    assert found == {
        ("web-1_example_com", "cpu"): [(ts, 37.5 / 3)],
        ("web-1_example_com", "ram"): [(ts, 40.0)],
        ("_fleet_", "cpu"): [(ts, 7.0)],
    }
    assert rejected(intake.state) == {"unmapped": len(window.lines) - 3}


# -- the rate limit -----------------------------------------------------------------------------
def test_a_connection_over_its_line_rate_is_cut() -> None:
    """The bucket holds one second of lines: a read beyond it takes what the bucket allows,
    counts the rest as ``rate_limited`` and asks for the connection to be closed; lines within
    the rate never are."""
    intake, _ = intake_at(T0, rate=100)
    stream = intake.open(0.0)
    line = b"servertrack.a.cpu 1 -1\n"
    for second in range(5):  # 100 lines a second, in tenths: within the rate
        for tenth in range(10):
            assert intake.feed(stream, line * 10, T0, second + tenth / 10)
    assert rejected(intake.state) == {}
    assert not intake.feed(stream, line * 150, T0, 5.5)  # the bucket holds 100 again
    assert rejected(intake.state) == {"rate_limited": 150 - 100}
    assert intake.state.counters()["received"]["graphite"] == 500 + 150


# -- rules --------------------------------------------------------------------------------------
def test_rule_files_map_before_the_built_in_rules(tmp_path: Path) -> None:
    """File rules come first, in file order; ``*`` matches inside one node, ``inverted`` takes
    100 - value; paths no rule maps fall through to the built-in rules."""
    rules = tmp_path / "graphite.map"
    rules.write_text(
        "# Diamond\n"
        "servers.{server}.cpu.total.idle   cpu  inverted   # 100 - idle\n"
        "\n"
        "hosts.{server}.mem*.used-percent  ram\n"
        "hosts.{server}.*.used-percent     cpu\n"
        "collectd.{server}.cpu.percent-active ram\n"
    )
    mapper = PathMapper(load_rules(rules))
    assert mapper.map(b"servers.db1.cpu.total.idle") == ("db1", "cpu", True)
    assert mapper.map(b"hosts.h_1.memory.used-percent") == ("h_1", "ram", False)
    assert mapper.map(b"hosts.h_1.mem.used-percent") == ("h_1", "ram", False)
    assert mapper.map(b"hosts.h_1.swap.used-percent") == ("h_1", "cpu", False)
    assert mapper.map(b"collectd.c.cpu.percent-active") == ("c", "ram", False)
    assert mapper.map(b"servertrack.s.cpu") == ("s", "cpu", False)
    assert mapper.map(b"servers.db1.cpu.total.idle.extra") is None
    assert mapper.map(b"servers..cpu.total.idle") is None
    intake = GraphiteIntake(ReceiverState(FakeClock(T0)), mapper)
    feed(intake, b"servers.db1.cpu.total.idle 87.5 1795366790\n", T0)
    assert points(intake.state.flush(T0), intake.state) == {("db1", "cpu"): [(1795366790.0, 12.5)]}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("a.{server}.b disk", "metric must be cpu or ram"),
        ("a.b.c cpu", "{server} exactly once"),
        ("{server}.{server} cpu", "{server} exactly once"),
        ("a..{server} cpu", "empty node"),
        ("a.{server}.b/c cpu", "is not letters"),
        ("a.*{server} cpu", "may not touch"),
        ("a.{server}* cpu", "may not touch"),
        ("a.** .{server} cpu", "a rule is"),
        ("a.{server} cpu inverse", "a rule is"),
        ("a.{server}", "a rule is"),
    ],
)
def test_a_bad_rule_names_the_file_and_the_line(tmp_path: Path, line: str, message: str) -> None:
    """Every malformed rule stops the load with the file, the line number and what is wrong."""
    rules = tmp_path / "bad.map"
    rules.write_text(f"# fine so far\nok.{{server}}.cpu cpu\n{line}\n")
    with pytest.raises(RuleError) as caught:
        load_rules(rules)
    assert str(caught.value).startswith(f"{rules}:3: ")
    assert message in str(caught.value)


def test_rule_file_errors(tmp_path: Path) -> None:
    """A repeated pattern names the line it repeats; an unreadable or non-UTF-8 file is an
    error too."""
    rules = tmp_path / "twice.map"
    rules.write_text("a.{server} cpu\nb.{server} ram\na.{server} ram\n")
    with pytest.raises(RuleError, match=r"twice.map:3: .* already a rule on line 1"):
        load_rules(rules)
    with pytest.raises(RuleError, match="cannot read the rule file"):
        load_rules(tmp_path / "missing.map")
    binary = tmp_path / "binary.map"
    binary.write_bytes(b"a.{server} cpu \xff\n")
    with pytest.raises(RuleError, match="not UTF-8"):
        load_rules(binary)


def test_the_mapping_memory_is_bounded() -> None:
    """Remembered answers never exceed the cache size, whatever the paths."""
    mapper = PathMapper(cache_size=100)
    for index in range(1000):
        assert mapper.map(b"servertrack.s%d.cpu" % index) == (f"s{index}", "cpu", False)
        assert len(mapper.cache) <= 100


# -- random lines -------------------------------------------------------------------------------
PIECES = st.sampled_from(
    [
        b"servertrack.h%d.cpu",
        b"servertrack.h%d.ram",
        b"collectd.h%d.cpu.percent-active",
        b"collectd.h%d.memory.percent-used",
        b"collectd.h%d.load.load.shortterm",
        b"junk%d",
    ]
)
VALUES = st.one_of(
    st.floats(-20, 130).map(lambda v: repr(v).encode()),
    st.sampled_from([b"nan", b"inf", b"-1", b"1e3", b"x", b""]),
)
STAMPS = st.one_of(
    st.integers(int(T0) - 100_000, int(T0) + 100).map(lambda t: b"%d" % t),
    st.sampled_from([b"-1", b"1795366790.5", b"nan", b"?"]),
)


@st.composite
def graphite_lines(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=40)).replace(b"\n", b"")
    path = draw(PIECES) % draw(st.integers(0, 5))
    fields = [path, draw(VALUES), draw(STAMPS)]
    separator = draw(st.sampled_from([b" ", b"\t", b"  "]))
    ending = draw(st.sampled_from([b"", b"\r"]))
    return separator.join(fields[: draw(st.integers(1, 4))]) + ending


@settings(deadline=None)
@given(
    lines=st.lists(graphite_lines(), max_size=60),
    tail=st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")),
    cuts=st.lists(st.integers(1, 64), max_size=30),
    max_line=st.sampled_from([24, 48, MAX_LINE]),
)
def test_random_lines_never_raise_and_each_is_counted_once(
    lines: list[bytes], tail: bytes, cuts: list[int], max_line: int
) -> None:
    """Whatever the bytes and however they are cut, nothing raises, every line (the half line
    at the end included) is counted exactly once, and the batch still encodes."""
    data = b"\n".join(lines) + (b"\n" if lines else b"") + tail
    intake, _ = intake_at(T0, max_line=max_line)
    feed(intake, data, T0, cuts)
    state = intake.state
    expected = data.count(b"\n") + (1 if tail else 0)
    assert state.counters()["received"]["graphite"] == expected
    assert accounted(state) == expected
    batch = Batch.decode(state.flush(T0).encode())
    assert len(batch) == state.counters()["accepted"]["graphite"]
    assert np.all((batch.cpu[~np.isnan(batch.cpu)] >= 0) & (batch.cpu[~np.isnan(batch.cpu)] <= 100))


def test_a_stream_keeps_at_most_one_line_of_memory() -> None:
    """However the bytes come, what a connection holds between reads stays under a line."""
    intake, _ = intake_at(T0)
    stream: Stream = intake.open(0.0)
    rng = random.Random(3)
    for _ in range(200):
        chunk = bytes(rng.choice(b"ab \n") if rng.random() < 0.01 else 97 for _ in range(3000))
        intake.feed(stream, chunk, T0, 0.0)
        stream.tokens = intake.rate
        assert len(stream.tail) <= MAX_LINE + 1
    assert Counter(rejected(intake.state)).total() > 0
