"""``POST /api/v1/read``: Prometheus' remote-read protocol, the sampled response type.

A request is one snappy block (Content-Encoding ``snappy``) holding a ``ReadRequest``; the answer
is one snappy block holding a ``ReadResponse`` with a ``QueryResult`` per query, in order. Each
query's matchers (``EQ``, ``NEQ``, ``RE``, ``NRE``, with the semantics of
:mod:`servertrack.promapi.matchers`) pick series among the families with history (cpu and ram:
mean, minimum and maximum) and the servers. A series holds, inside the query's
``[start_timestamp_ms, end_timestamp_ms]``, the hour values at the hours' starts for the time
before the oldest minute of the minute window, then the minute values at the minutes' starts;
a bucket without data has no sample, and a series without a sample in the range is left out.

Every way a request can be refused raises :class:`BadPromRequest` (a 400 naming the reason):
a wrong encoding, a body that is not one snappy block or not a ``ReadRequest``, a body over
the size cap (compressed or declared decompressed: the declared size is read before anything
is decompressed), a matcher of an unknown type, a regex RE2 cannot compile, only streamed
chunks accepted, and a query over the caps on queries, series or samples.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import cramjam
import numpy as np
from google.protobuf.message import DecodeError

from servertrack.promapi import prompb
from servertrack.promapi.errors import BadPromRequest
from servertrack.promapi.families import HISTORY_FAMILIES
from servertrack.promapi.matchers import MatchType, matcher, select

CONTENT_TYPE = "application/x-protobuf"
RESPONSE_HEADERS = {"Content-Type": CONTENT_TYPE, "Content-Encoding": "snappy"}
MS = 1000


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps on one remote-read request (each a 400 naming it when exceeded)."""

    max_body_bytes: int = 1 << 20
    """Body size at most, compressed and (as the snappy block declares it) decompressed."""
    max_queries: int = 16
    max_series: int = 10_000
    """Series one query may match."""
    max_samples: int = 1_000_000
    """Samples one query's answer may hold (84 per series at most: a whole day)."""


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True, eq=False)
class SeriesHistory:
    """The history of some servers, one row per server in the order they were asked for.

    ``minute_starts`` are the starts (epoch seconds, oldest first) of the minutes of the minute
    window, ``hour_starts`` those of the hour window; ``minutes[family]`` is a float array of
    shape (servers, minutes) and ``hours[family]`` of shape (servers, hours), NaN where a bucket
    has no value, for every family with history.
    """

    minute_starts: np.ndarray
    hour_starts: np.ndarray
    minutes: Mapping[str, np.ndarray]
    hours: Mapping[str, np.ndarray]

    def __post_init__(self) -> None:
        for family in HISTORY_FAMILIES:
            if family.name not in self.minutes or family.name not in self.hours:
                raise ValueError(f"no history for {family.name}")


HistorySource = Callable[[Sequence[str]], SeriesHistory]
"""Gives the history of the named servers (every name is one the caller listed)."""


def _declared_length(body: bytes) -> int:
    """The decompressed length a snappy block declares (its leading varint)."""
    length = shift = 0
    for index, byte in enumerate(body[:5]):
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return length
        shift += 7
        if index == 4:
            break
    raise BadPromRequest("bad_snappy", "the body is not a snappy block (no length header)")


def decode_request(
    body: bytes,
    content_encoding: str | None,
    content_type: str | None = CONTENT_TYPE,
    limits: Limits = Limits(),
) -> prompb.ReadRequest:
    """The ``ReadRequest`` in a request body, or :class:`BadPromRequest`."""
    if (content_encoding or "").strip().lower() != "snappy":
        raise BadPromRequest(
            "bad_encoding",
            f"Content-Encoding must be snappy, got {content_encoding or 'none'}",
        )
    kind = (content_type or CONTENT_TYPE).split(";")[0].strip().lower()
    if kind != CONTENT_TYPE:
        raise BadPromRequest("bad_encoding", f"Content-Type must be {CONTENT_TYPE}, got {kind}")
    if len(body) > limits.max_body_bytes:
        raise BadPromRequest(
            "too_large", f"the body is {len(body)} bytes, over {limits.max_body_bytes}"
        )
    declared = _declared_length(body)
    if declared > limits.max_body_bytes:
        raise BadPromRequest(
            "too_large",
            f"the body decompresses to {declared} bytes, over {limits.max_body_bytes}",
        )
    try:
        raw = bytes(cramjam.snappy.decompress_raw(body))
    except cramjam.DecompressionError as err:
        raise BadPromRequest("bad_snappy", f"the body is not a snappy block: {err}") from err
    try:
        request = prompb.ReadRequest.FromString(raw)
    except (DecodeError, ValueError, RecursionError) as err:
        raise BadPromRequest("bad_protobuf", f"the body is not a ReadRequest: {err}") from err
    _check_response_types(request)
    if len(request.queries) > limits.max_queries:
        raise BadPromRequest(
            "too_many_queries",
            f"{len(request.queries)} queries in one request, over the cap of "
            f"{limits.max_queries} queries",
        )
    return request


def _check_response_types(request: prompb.ReadRequest) -> None:
    accepted = list(request.accepted_response_types)
    if accepted and prompb.SAMPLES not in accepted:
        names = ", ".join(prompb.RESPONSE_TYPES.get(t, str(t)) for t in accepted)
        raise BadPromRequest(
            "unsupported_response_type",
            f"the request accepts {names}; this server answers only SAMPLES (the sampled "
            "response type)",
        )


@dataclass(frozen=True, slots=True)
class _Window:
    """Which buckets fall in a query's time range, and their timestamps in milliseconds."""

    hours: np.ndarray
    minutes: np.ndarray
    stamps: list[int]

    @classmethod
    def of(cls, history: SeriesHistory, start_ms: int, end_ms: int) -> _Window:
        minute_ms = np.asarray(history.minute_starts, dtype=np.int64) * MS
        hour_ms = np.asarray(history.hour_starts, dtype=np.int64) * MS
        before_minutes = hour_ms < minute_ms[0] if len(minute_ms) else np.ones(len(hour_ms), bool)
        hours = np.flatnonzero(before_minutes & (hour_ms >= start_ms) & (hour_ms <= end_ms))
        minutes = np.flatnonzero((minute_ms >= start_ms) & (minute_ms <= end_ms))
        return cls(hours, minutes, [*hour_ms[hours].tolist(), *minute_ms[minutes].tolist()])


def _query_result(
    query: prompb.Query, names: Sequence[str], history: HistorySource, limits: Limits
) -> prompb.QueryResult:
    matchers = []
    for item in query.matchers:
        if item.type not in MatchType._value2member_map_:
            raise BadPromRequest("bad_matcher", f"matcher type {item.type} is not EQ/NEQ/RE/NRE")
        matchers.append(matcher(item.name, MatchType(item.type), item.value))
    selection = select(matchers, names)
    picked = [
        (family.name, rows)
        for family in sorted(HISTORY_FAMILIES, key=lambda f: f.name)
        if (rows := selection.family_rows(family.name, len(names))) is not None and rows.any()
    ]
    series = sum(int(rows.sum()) for _, rows in picked)
    if series > limits.max_series:
        raise BadPromRequest(
            "too_many_series",
            f"the query matches {series} series, over the cap of {limits.max_series} series "
            "per query",
        )
    result = prompb.QueryResult()
    if not picked:
        return result
    wanted = np.flatnonzero(np.logical_or.reduce([rows for _, rows in picked]))
    wanted = wanted[np.argsort([names[row] for row in wanted.tolist()], kind="stable")]
    wanted_names = [names[row] for row in wanted.tolist()]
    past = history(wanted_names)
    window = _Window.of(past, query.start_timestamp_ms, query.end_timestamp_ms)
    blocks = []
    for family, rows in picked:
        inside = rows[wanted]
        values = np.concatenate(
            (
                past.hours[family][inside][:, window.hours],
                past.minutes[family][inside][:, window.minutes],
            ),
            axis=1,
        )
        blocks.append((family, np.flatnonzero(inside), values))
    samples = sum(int(np.count_nonzero(~np.isnan(values))) for _, _, values in blocks)
    if samples > limits.max_samples:
        raise BadPromRequest(
            "too_many_samples",
            f"the answer holds {samples} samples, over the cap of {limits.max_samples} samples "
            "per query",
        )
    for family, positions, values in blocks:
        for position, row in zip(positions.tolist(), values.tolist(), strict=True):
            points = [
                prompb.Sample(value=value, timestamp=stamp)
                for value, stamp in zip(row, window.stamps, strict=True)
                if value == value
            ]
            if points:
                timeseries = result.timeseries.add()
                timeseries.labels.add(name="__name__", value=family)
                timeseries.labels.add(name="server", value=wanted_names[position])
                timeseries.samples.extend(points)
    return result


def answer(
    request: prompb.ReadRequest,
    names: Sequence[str],
    history: HistorySource,
    limits: Limits = Limits(),
) -> prompb.ReadResponse:
    """The ``ReadResponse`` to ``request`` over the servers ``names``."""
    response = prompb.ReadResponse()
    for query in request.queries:
        response.results.append(_query_result(query, names, history, limits))
    return response


def encode_response(response: prompb.ReadResponse) -> bytes:
    """A ``ReadResponse`` as the body of the answer: one snappy block."""
    return bytes(cramjam.snappy.compress_raw(response.SerializeToString()))


def handle(
    body: bytes,
    content_encoding: str | None,
    content_type: str | None,
    names: Sequence[str],
    history: HistorySource,
    limits: Limits = Limits(),
) -> bytes:
    """The whole exchange: the answer's body (sent with :data:`RESPONSE_HEADERS`), or
    :class:`BadPromRequest`."""
    request = decode_request(body, content_encoding, content_type, limits)
    return encode_response(answer(request, names, history, limits))
