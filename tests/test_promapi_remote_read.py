"""The remote-read codec and evaluation: the messages against ``protoc``, answers against a
brute-force restatement, caps, and every way a request can be refused."""

from __future__ import annotations

import ast
import contextlib
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cramjam
import numpy as np
import pytest
from google.protobuf import descriptor_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from servertrack.promapi import prompb
from servertrack.promapi.errors import BadPromRequest
from servertrack.promapi.families import HISTORY_FAMILIES
from servertrack.promapi.remote_read import (
    Limits,
    SeriesHistory,
    decode_request,
    handle,
)
from tests.promapi_support import tool

PROTO = Path(__file__).resolve().parents[1] / "promapi" / "prompb.proto"
NOW_MINUTE = 1_800_003_540
"""The minute window then starts on an hour: that hour is not older than the window."""
MINUTES = NOW_MINUTE - 60 * np.arange(59, -1, -1, dtype=np.int64)
HOURS = (NOW_MINUTE - NOW_MINUTE % 3600) - 3600 * np.arange(23, -1, -1, dtype=np.int64)
NAMES = ["web-2", "web-10", "db-1", "web-1", "cache-1", "db-2"]
SNAPPY = "snappy"


def _values(seed: int, shape: tuple[int, int]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = np.round(rng.uniform(0, 100, shape), 2)
    values[rng.random(shape) < 0.3] = np.nan
    return values


FULL = {
    family.name: (_values(i, (len(NAMES), 60)), _values(100 + i, (len(NAMES), 24)))
    for i, family in enumerate(HISTORY_FAMILIES)
}


class History:
    """The history of :data:`NAMES`, recording each call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, names: Sequence[str]) -> SeriesHistory:
        self.calls.append(list(names))
        rows = [NAMES.index(name) for name in names]
        return SeriesHistory(
            MINUTES,
            HOURS,
            {family: minutes[rows] for family, (minutes, _) in FULL.items()},
            {family: hours[rows] for family, (_, hours) in FULL.items()},
        )


Matchers = list[tuple[int, str, str]]


def body_of(*queries: tuple[int, int, Matchers], types: Sequence[int] = ()) -> bytes:
    request = prompb.ReadRequest(accepted_response_types=list(types))
    for start, end, matchers in queries:
        query = request.queries.add(start_timestamp_ms=start, end_timestamp_ms=end)
        for type_, name, value in matchers:
            query.matchers.add(type=type_, name=name, value=value)
    return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))


def decoded(answer: bytes) -> list[list[tuple[dict[str, str], list[tuple[int, float]]]]]:
    response = prompb.ReadResponse.FromString(bytes(cramjam.snappy.decompress_raw(answer)))
    return [
        [
            (
                {label.name: label.value for label in series.labels},
                [(sample.timestamp, sample.value) for sample in series.samples],
            )
            for series in result.timeseries
        ]
        for result in response.results
    ]


def brute_force(start: int, end: int, matchers: Matchers) -> list[tuple[dict[str, str], list]]:
    """The answer to one query, restated: every family and server in label order, each
    matcher checked on the series' labels (a missing label is ""), hours before the minute
    window, then minutes, inside [start, end], without the empty buckets."""

    def accepts(type_: int, wanted: str, value: str) -> bool:
        if type_ in (0, 1):
            return (value == wanted) == (type_ == 0)
        return (re.fullmatch(wanted, value, re.DOTALL) is not None) == (type_ == 2)

    out = []
    for family in sorted(FULL):
        minutes, hours = FULL[family]
        for name in sorted(NAMES):
            labels = {"__name__": family, "server": name}
            if not all(accepts(t, v, labels.get(n, "")) for t, n, v in matchers):
                continue
            row = NAMES.index(name)
            points = [
                (int(ts) * 1000, float(hours[row, i]))
                for i, ts in enumerate(HOURS)
                if ts < MINUTES[0] and not np.isnan(hours[row, i])
            ]
            points += [
                (int(ts) * 1000, float(minutes[row, i]))
                for i, ts in enumerate(MINUTES)
                if not np.isnan(minutes[row, i])
            ]
            points = [(ts, value) for ts, value in points if start <= ts <= end]
            if points:
                out.append((labels, points))
    return out


# -- the messages -------------------------------------------------------------------------------
def _comparable(file: descriptor_pb2.FileDescriptorProto) -> list[Any]:
    described = []
    for message in file.message_type:
        fields = [(f.name, f.number, f.type, f.label, f.type_name) for f in message.field]
        enums = [(e.name, [(v.name, v.number) for v in e.value]) for e in message.enum_type]
        described.append((message.name, fields, enums))
    return sorted(described)


def test_the_messages_are_those_of_the_proto_file(tmp_path: Path) -> None:
    """``protoc`` compiles ``prompb.proto`` to the very messages the module builds (names,
    numbers, types, labels and enums), in package ``prometheus``."""
    out = tmp_path / "prompb.desc"
    subprocess.run(
        [tool("protoc"), f"--proto_path={PROTO.parent}", f"--descriptor_set_out={out}", PROTO.name],
        check=True,
        timeout=30,
    )
    compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    assert compiled.package == "prometheus"
    assert _comparable(compiled) == _comparable(prompb.file_descriptor())


def _declared_for_the_type_checker() -> dict[str, list[tuple[str, bool]]]:
    """The fields (name, repeated) of the message classes prompb declares under
    ``TYPE_CHECKING``, read from its source."""
    tree = ast.parse(Path(prompb.__file__).read_text())
    (block,) = [
        node
        for node in tree.body
        if isinstance(node, ast.If)
        and ast.unparse(node.test) == "TYPE_CHECKING"
        and any(isinstance(item, ast.ClassDef) for item in node.body)
    ]
    return {
        cls.name: [
            (item.target.id, ast.unparse(item.annotation).startswith("Repeated"))
            for item in cls.body
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
        ]
        for cls in block.body
        if isinstance(cls, ast.ClassDef)
    }


def test_the_type_checker_knows_the_fields_the_messages_have() -> None:
    """The classes declared for the type checker have the fields of the built messages, in
    order, repeated where they are repeated."""
    built = {
        name: [(field, repeated) for field, _, _, repeated in fields]
        for name, fields in prompb.MESSAGES.items()
    }
    assert _declared_for_the_type_checker() == built


def test_a_request_in_prometheus_wire_bytes_decodes() -> None:
    """Bytes laid out by hand from Prometheus' field numbers decode to the request they mean:
    one query (1), its start (1) and end (2), a RE matcher (3: type 1, name 2, value 3), hints
    (4: step 1) and the accepted response types (2, packed)."""
    matcher = b"\x08\x02\x12\x06server\x1a\x05web.*"
    hints = b"\x08\xe8\x07"
    query = b"\x08\x01\x10\x02\x1a" + bytes([len(matcher)]) + matcher + b"\x22\x03" + hints
    raw = b"\x0a" + bytes([len(query)]) + query + b"\x12\x02\x01\x00"
    request = decode_request(bytes(cramjam.snappy.compress_raw(raw)), SNAPPY)
    (only,) = request.queries
    assert (only.start_timestamp_ms, only.end_timestamp_ms, only.hints.step_ms) == (1, 2, 1000)
    assert [(m.type, m.name, m.value) for m in only.matchers] == [(2, "server", "web.*")]
    assert list(request.accepted_response_types) == [1, 0]


# -- answers ------------------------------------------------------------------------------------
ALL = (0, 2**62)


@pytest.mark.parametrize(
    "matchers",
    [
        [(0, "__name__", "servertrack_server_cpu_percent"), (0, "server", "web-1")],
        [(0, "__name__", "servertrack_server_cpu_percent"), (2, "server", "web-.*")],
        [(2, "__name__", "servertrack_server_ram.*"), (1, "server", "web-1")],
        [(3, "__name__", "servertrack_server_(cpu|ram)_percent"), (0, "server", "db-1")],
        [(0, "__name__", "servertrack_server_status")],
        [(0, "__name__", "servertrack_server_cpu_percent"), (0, "job", "x")],
        [(0, "__name__", "servertrack_server_cpu_percent"), (1, "job", "x")],
        [(0, "__name__", "servertrack_server_cpu_percent"), (0, "job", "")],
        [(2, "server", "web"), (0, "__name__", "servertrack_server_cpu_percent")],
    ],
)
def test_answers_are_the_brute_force_restatement(matchers: Matchers) -> None:
    """EQ, NEQ, RE and NRE on ``__name__`` and ``server`` (and on a label the series lack)
    select what the restatement selects, with the same samples, series in label order."""
    answer = handle(body_of((*ALL, matchers)), SNAPPY, prompb_type(), NAMES, History())
    assert decoded(answer) == [brute_force(*ALL, matchers)]


def prompb_type() -> str:
    return "application/x-protobuf"


@settings(max_examples=60, deadline=None)
@given(
    start=st.integers(int(HOURS[0]) * 1000 - 10**6, int(MINUTES[-1]) * 1000 + 10**6),
    span=st.integers(-(10**6), 30 * 3600 * 1000),
    server=st.sampled_from([*NAMES, "web-.*", ".*-1", "nope"]),
    family=st.sampled_from([f.name for f in HISTORY_FAMILIES]),
    negate=st.booleans(),
)
def test_any_time_range_gives_the_samples_inside_it(
    start: int, span: int, server: str, family: str, negate: bool
) -> None:
    """Whatever the range (empty, reversed, partial, around the window's edges), each series
    holds exactly the samples inside it; a series with none is left out."""
    matchers = [(0, "__name__", family), (3 if negate else 2, "server", server)]
    query = (start, start + span, matchers)
    answer = handle(body_of(query, query), SNAPPY, None, NAMES, History())
    assert decoded(answer) == [brute_force(*query)] * 2


def test_history_is_asked_only_for_the_matched_servers_in_name_order() -> None:
    """The history source is asked once per query, for the matched servers sorted by name,
    and not at all when nothing matches."""
    history = History()
    handle(body_of((*ALL, [(2, "server", "web-.*")])), SNAPPY, None, NAMES, history)
    handle(body_of((*ALL, [(0, "server", "nope")])), SNAPPY, None, NAMES, history)
    assert history.calls == [["web-1", "web-10", "web-2"]]


def test_streamed_chunks_first_then_samples_is_answered_with_samples() -> None:
    """Response types are taken in order, the first this server has: SAMPLES."""
    matchers = [(0, "server", "db-2"), (0, "__name__", "servertrack_server_cpu_percent")]
    answer = handle(body_of((*ALL, matchers), types=(1, 0)), SNAPPY, None, NAMES, History())
    assert decoded(answer) == [brute_force(*ALL, matchers)]


# -- caps ---------------------------------------------------------------------------------------
def test_a_query_at_the_caps_is_answered_and_one_over_is_refused_naming_them() -> None:
    """Series and samples are capped per query, queries per request; the 400 names the cap."""
    one_family = [(0, "__name__", "servertrack_server_cpu_percent")]
    series = len(brute_force(*ALL, one_family))
    samples = sum(len(points) for _, points in brute_force(*ALL, one_family))
    body = body_of((*ALL, one_family))
    handle(body, SNAPPY, None, NAMES, History(), Limits(max_series=series, max_samples=samples))
    for limits, reason, cap in [
        (Limits(max_series=series - 1), "too_many_series", f"cap of {series - 1} series"),
        (Limits(max_samples=samples - 1), "too_many_samples", f"cap of {samples - 1} samples"),
        (Limits(max_queries=0), "too_many_queries", "cap of 0 queries"),
    ]:
        with pytest.raises(BadPromRequest) as refused:
            handle(body, SNAPPY, None, NAMES, History(), limits)
        assert refused.value.reason == reason and cap in refused.value.message


# -- refusals -----------------------------------------------------------------------------------
GOOD = body_of((*ALL, [(0, "server", "web-1")]))


@pytest.mark.parametrize(
    ("body", "encoding", "content_type", "reason"),
    [
        (GOOD, None, None, "bad_encoding"),
        (GOOD, "gzip", None, "bad_encoding"),
        (GOOD, SNAPPY, "application/json", "bad_encoding"),
        (b"", SNAPPY, None, "bad_snappy"),
        (b"\x80\x80\x80\x80\x80\x80", SNAPPY, None, "bad_snappy"),
        (b"\x10\x00\x01", SNAPPY, None, "bad_snappy"),
        (GOOD[:-3], SNAPPY, None, "bad_snappy"),
        (b"\xff\xff\x7f", SNAPPY, None, "too_large"),
        (b"\x00" * ((1 << 20) + 1), SNAPPY, None, "too_large"),
        (bytes(cramjam.snappy.compress_raw(b"\x0a\x05\x01")), SNAPPY, None, "bad_protobuf"),
        (bytes(cramjam.snappy.compress_raw(b"\x0a\x02\x1a\xff")), SNAPPY, None, "bad_protobuf"),
        (body_of((*ALL, [(9, "server", "x")])), SNAPPY, None, "bad_matcher"),
        (body_of((*ALL, [(2, "server", "(?=x)")])), SNAPPY, None, "bad_regex"),
        (
            body_of((*ALL, [(0, "server", "x")]), types=(1,)),
            SNAPPY,
            None,
            "unsupported_response_type",
        ),
        (
            body_of((*ALL, [(0, "server", "x")]), types=(5,)),
            SNAPPY,
            None,
            "unsupported_response_type",
        ),
    ],
)
def test_bad_requests_are_refused_with_their_reason(
    body: bytes, encoding: str | None, content_type: str | None, reason: str
) -> None:
    """A wrong encoding or content type, a body that is not one snappy block, oversized
    (declared or sent), not a ReadRequest, an unknown matcher type, a regex that does not
    compile, only streamed chunks accepted: BadPromRequest with the reason, history untouched."""
    history = History()
    with pytest.raises(BadPromRequest) as refused:
        handle(body, encoding, content_type, NAMES, history)
    assert refused.value.reason == reason
    assert history.calls == []


def test_only_streamed_chunks_is_refused_naming_what_is_supported() -> None:
    with pytest.raises(BadPromRequest) as refused:
        decode_request(body_of((*ALL, []), types=(1,)), SNAPPY)
    assert "STREAMED_XOR_CHUNKS" in refused.value.message
    assert "only SAMPLES" in refused.value.message


@settings(deadline=None)
@given(raw=st.binary(max_size=300), compress=st.booleans())
def test_no_body_fails_otherwise_than_as_a_bad_request(raw: bytes, compress: bool) -> None:
    """Random bytes, raw or in a valid snappy block, are answered or refused with
    BadPromRequest, never another exception."""
    body = bytes(cramjam.snappy.compress_raw(raw)) if compress else raw
    with contextlib.suppress(BadPromRequest):
        handle(body, SNAPPY, None, NAMES, History())
