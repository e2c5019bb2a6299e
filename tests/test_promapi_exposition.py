"""The ``/metrics/servers`` writer: both formats, escaping, filters, chunks, gzip, negotiation.

The writer is checked line for line against a plain restatement (one formatted line per server
and family, in a loop) over random snapshots, and what it writes is read back with
prometheus_client's parsers (the OpenMetrics one is strict).
"""

from __future__ import annotations

import gzip
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from servertrack.promapi.errors import BadPromRequest
from servertrack.promapi.exposition import (
    OPENMETRICS,
    TEXT,
    ScrapeFilter,
    ServerMinutes,
    accepts_gzip,
    exposition,
    gzipped,
    negotiate,
    parse_scrape_params,
)
from servertrack.promapi.families import FAMILIES

NOW = 1_800_000_030.0
MINUTE_START = 1_799_999_940
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def snapshot(
    names: list[str], seed: int = 1, nan_share: float = 0.2, **changes: Any
) -> ServerMinutes:
    rng = np.random.default_rng(seed)
    count = len(names)

    def column(low: float, high: float) -> np.ndarray:
        values = rng.uniform(low, high, count)
        values[rng.random(count) < nan_share] = np.nan
        return values

    columns: dict[str, Any] = {
        "names": names,
        "minute_start": float(MINUTE_START),
        **{
            key: column(0, 100)
            for key in ("cpu", "cpu_min", "cpu_max", "ram", "ram_min", "ram_max")
        },
        "samples": rng.integers(0, 60, count).astype(float),
        "cpu_anomaly": column(0, 1),
        "ram_anomaly": column(0, 1),
        "last_seen": NOW - rng.uniform(-30, 900, count),
        "now": NOW,
        "status": rng.integers(0, 3, count).astype(float),
    }
    columns.update(changes)
    return ServerMinutes(**columns)


def text(snap: ServerMinutes, scrape: ScrapeFilter | None = None, fmt: Any = TEXT) -> str:
    return b"".join(exposition(snap, scrape, fmt)).decode()


def restated(snap: ServerMinutes, openmetrics: bool) -> str:
    """The exposition written out plainly: every family, every server with a value."""
    out = []
    for family in FAMILIES:
        lines = []
        for row, name in enumerate(snap.names):
            if family.column == "age":
                value = round(max(snap.now - float(snap.last_seen[row]), 0.0), 3)
            else:
                value = float(getattr(snap, family.column)[row])
            if math.isnan(value):
                continue
            shown = str(int(value)) if family.integer else repr(value)
            shown = {"inf": "+Inf", "-inf": "-Inf"}.get(shown, shown)
            label = name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
            line = f'{family.name}{{server="{label}"}} {shown}'
            if family.minute:
                start = int(np.broadcast_to(snap.minute_start, len(snap.names))[row])
                line += f" {start if openmetrics else start * 1000}"
            lines.append(line + "\n")
        if lines:
            out.append(f"# HELP {family.name} {family.help}\n# TYPE {family.name} gauge\n")
            if openmetrics and family.unit:
                out.append(f"# UNIT {family.name} {family.unit}\n")
            out += lines
    return "".join(out) + ("# EOF\n" if openmetrics else "")


NAMES = [f"server-{i:03d}.example.com" for i in range(40)]


@pytest.mark.parametrize("fmt", [TEXT, OPENMETRICS], ids=["text", "openmetrics"])
def test_the_writer_is_the_plain_restatement(fmt: Any) -> None:
    """Both formats, byte for byte what a plain loop over servers and families writes."""
    snap = snapshot(NAMES)
    assert text(snap, fmt=fmt) == restated(snap, fmt.openmetrics)


@settings(max_examples=40, deadline=None)
@given(
    names=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=12, unique=True),
    seed=st.integers(0, 2**32 - 1),
    chunk=st.integers(1, 7),
    per_server_minutes=st.booleans(),
)
def test_any_names_any_chunking_read_back_exactly(
    names: list[str], seed: int, chunk: int, per_server_minutes: bool
) -> None:
    """Whatever the names (quotes, backslashes, newlines, any Unicode) and the chunk size, the
    text matches the restatement, every chunk is whole lines, and prometheus_client's parser
    reads back every name, value and timestamp."""
    starts = MINUTE_START - 60 * np.arange(len(names)) if per_server_minutes else MINUTE_START
    snap = snapshot(names, seed, minute_start=starts)
    chunks = list(exposition(snap, None, TEXT, chunk_rows=chunk))
    assert all(piece.endswith(b"\n") for piece in chunks)
    whole = b"".join(chunks).decode()
    assert whole == restated(snap, openmetrics=False)
    for family in text_string_to_metric_families(whole):
        column = snap.column(next(f for f in FAMILIES if f.name == family.name))
        for sample in family.samples:
            row = names.index(sample.labels["server"])
            assert sample.value == column[row]
            if sample.timestamp is not None:
                assert sample.timestamp == np.broadcast_to(starts, len(names))[row]


def test_openmetrics_is_strictly_valid_with_units_and_seconds() -> None:
    """The strict OpenMetrics parser accepts the output: units declared, timestamps in
    seconds, ``# EOF`` last; names with quotes and newlines included."""
    names = ["plain", 'with "quotes"', "back\\slash", "new\nline"]
    snap = snapshot(names, nan_share=0.0)
    families = {f.name: f for f in openmetrics_families(text(snap, fmt=OPENMETRICS))}
    assert families["servertrack_server_cpu_percent"].unit == "percent"
    assert families["servertrack_server_last_seen_age_seconds"].unit == "seconds"
    cpu = families["servertrack_server_cpu_percent"].samples
    assert [s.labels["server"] for s in cpu] == names
    assert [float(s.timestamp) for s in cpu] == [MINUTE_START] * 4
    assert families["servertrack_server_status"].samples[0].timestamp is None


def test_nan_leaves_a_series_out_and_infinity_is_written_as_prometheus_does() -> None:
    """A NaN omits that server's series of that family (and a family with no series is not
    declared); infinities are ``+Inf``/``-Inf``."""
    nan = np.full(2, np.nan)
    snap = snapshot(["a", "b"], cpu=np.array([np.inf, np.nan]), ram=nan, ram_min=nan, ram_max=nan)
    out = text(snap)
    assert 'servertrack_server_cpu_percent{server="a"} +Inf' in out
    assert 'servertrack_server_cpu_percent{server="b"}' not in out
    assert "servertrack_server_ram_percent" not in out


def test_last_seen_age_is_to_the_millisecond_and_never_negative() -> None:
    """The age is ``now - last_seen`` rounded to 1 ms; a sample ahead of the clock is age 0."""
    snap = snapshot(["a", "b"], last_seen=np.array([NOW - 12.34567, NOW + 30]))
    out = text(snap)
    assert 'servertrack_server_last_seen_age_seconds{server="a"} 12.346\n' in out
    assert 'servertrack_server_last_seen_age_seconds{server="b"} 0.0\n' in out


def series(out: str) -> set[tuple[str, str]]:
    return {
        (family.name, sample.labels["server"])
        for family in text_string_to_metric_families(out)
        for sample in family.samples
    }


def everything(names: list[str]) -> set[tuple[str, str]]:
    return {(family.name, name) for family in FAMILIES for name in names}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"server": "web-1"}, lambda f, s: s == "web-1"),
        ({"server": ["web-1", "db-1", "nope"]}, lambda f, s: s in ("web-1", "db-1")),
        ({"match[]": '{server=~"web-.*"}'}, lambda f, s: s.startswith("web-")),
        ({"match[]": '{server=~"web"}'}, lambda f, s: False),
        ({"match[]": "servertrack_server_status"}, lambda f, s: f.endswith("status")),
        (
            {"match[]": ['servertrack_server_status{server!="web-1"}', '{server="web-1"}']},
            lambda f, s: s == "web-1" or f.endswith("status"),
        ),
        (
            {"match[]": '{__name__=~"servertrack_server_cpu_.*", server!~"web-.*"}'},
            lambda f, s: "_cpu_" in f and s == "db-1",
        ),
        (
            {"match[]": '{server=~".+", job=""}', "server": "db-1"},
            lambda f, s: s == "db-1",
        ),
        ({"match[]": '{server=~".+", job="servertrack"}'}, lambda f, s: False),
        ({"match[]": '{server=~".+", job!="servertrack"}'}, lambda f, s: True),
    ],
)
def test_filters_pick_series_as_federate_does(params: dict[str, Any], expected: Any) -> None:
    """``server=`` names intersect with the union of the ``match[]`` selectors; a label the
    series do not have has the empty value."""
    names = ["web-1", "web-2", "db-1"]
    snap = snapshot(names, nan_share=0.0)
    want = {(f, s) for f, s in everything(names) if expected(f, s)}
    assert series(text(snap, parse_scrape_params(params))) == want


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"match": "x"}, "unknown_parameter"),
        ({"match[]": "{"}, "bad_selector"),
        ({"match[]": '{server=~".*"}'}, "bad_selector"),
        ({"match[]": '{server=~"("}'}, "bad_regex"),
        ({"match[]": ["up"] * 65}, "bad_selector"),
    ],
)
def test_bad_parameters_are_refused_before_anything_is_written(
    params: dict[str, Any], reason: str
) -> None:
    """An unknown parameter, a selector that does not parse or matches everything, a regex
    that does not compile, too many selectors: BadPromRequest with the reason."""
    with pytest.raises(BadPromRequest) as refused:
        parse_scrape_params(params)
    assert refused.value.reason == reason
    assert refused.value.body()["reason"] == reason


def test_chunks_stay_small_for_a_large_fleet() -> None:
    """10,000 servers come in chunks of at most a few hundred KB, never as one string."""
    names = [f"server-{i:06d}.example.com" for i in range(10_000)]
    chunks = list(exposition(snapshot(names, nan_share=0.0)))
    assert max(len(chunk) for chunk in chunks) < 512 * 1024
    assert sum(chunk.count(b"\n") for chunk in chunks) == 10_000 * len(FAMILIES) + 2 * len(FAMILIES)


def test_gzip_stream_inflates_to_the_text() -> None:
    """The gzip stream is one member that inflates to the exposition."""
    snap = snapshot(NAMES)
    assert gzip.decompress(b"".join(gzipped(exposition(snap)))).decode() == text(snap)


@pytest.mark.parametrize(
    ("accept", "fmt"),
    [
        (PROMETHEUS_ACCEPT, OPENMETRICS),
        ("application/openmetrics-text; version=1.0.0", OPENMETRICS),
        ("application/openmetrics-text;version=0.0.1;q=0.75,text/plain;q=0.5", OPENMETRICS),
        ("application/openmetrics-text;version=2.0.0", TEXT),
        ("application/openmetrics-text;q=0,text/plain", TEXT),
        ("text/plain;version=0.0.4", TEXT),
        ("text/plain,application/openmetrics-text;q=0.5", TEXT),
        (None, TEXT),
        ("", TEXT),
    ],
)
def test_accept_chooses_the_format(accept: str | None, fmt: Any) -> None:
    """OpenMetrics when asked for (1.0.0, 0.0.1 or no version) at least as much as text."""
    assert negotiate(accept) == fmt


@pytest.mark.parametrize(
    ("value", "wanted"),
    [("gzip", True), ("gzip, deflate, br", True), ("br;q=1, gzip;q=0", False), (None, False)],
)
def test_accept_encoding_chooses_gzip(value: str | None, wanted: bool) -> None:
    assert accepts_gzip(value) is wanted
