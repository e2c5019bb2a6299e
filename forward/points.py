"""From the API's buckets to Graphite lines: I/O-free.

With anomaly scores asked for (``--anomaly``), each scored minute of a window also gives
``PREFIX.<server>.cpu_anomaly`` and ``.ram_anomaly``, stamped with the minute's start (a series
pooling several servers sends the highest of their scores); minutes without a score send none.

A window's mean is ``fsum(bucket sums) / sum(bucket counts)`` over the buckets whose start lies in
the window: the exact mean of the raw samples (to float64 rounding), never a mean of means. Fleet
points, per metric: ``_fleet.<m>.mean`` over every raw sample of every server, ``_fleet.<m>.max``
the highest server mean, ``_fleet.<m>.servers`` the servers with samples of that metric.

Values are written with ``repr`` (the shortest text that reads back as the same float64), so what
Graphite stores equals the computed mean bit for bit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

METRICS = ("cpu", "ram")
FLEET = "_fleet"
UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


class MalformedAnswer(ValueError):
    """An API answer this forwarder cannot compute from (an older API, or a broken one)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def sanitize(server: str) -> str:
    """The server's name as one Graphite path node: ``.`` and anything outside
    ``[A-Za-z0-9_-]`` become ``_`` (as collectd's graphite plugin does)."""
    return UNSAFE.sub("_", server)


def series_name(server: str) -> str:
    """The node a server's points go under; ``_fleet`` stays the fleet's."""
    name = sanitize(server)
    return f"{name}_" if name == FLEET else name


def check_prefix(prefix: str) -> str:
    if not PREFIX_RE.match(prefix):
        raise ValueError(
            f"--prefix must be dot-separated nodes of letters, digits, '_' and '-', got {prefix!r}"
        )
    return prefix


def line(name: str, value: float | int, ts: int) -> bytes:
    """One plaintext-protocol line: ``name value timestamp``."""
    return f"{name} {value!r} {ts}\n".encode("ascii")


@dataclass(slots=True)
class MetricSum:
    """One metric of one server in one window: the bucket sums and the number of raw samples."""

    parts: list[float] = field(default_factory=list)
    count: int = 0

    def mean(self) -> float:
        return math.fsum(self.parts) / self.count


ServerSums = dict[str, MetricSum]
"""metric → its sums, for one server in one window (only metrics with samples)."""


def _number(bucket: dict[str, Any], key: str) -> float:
    value: Any = bucket.get(key)  # decoded JSON, checked here
    if type(value) not in (int, float) or not math.isfinite(value):
        raise MalformedAnswer(
            "bad_bucket", f"{key} is {value!r}; an API with bucket sums is needed"
        )
    return float(value)


def _count(bucket: dict[str, Any], key: str) -> int:
    value = bucket.get(key)
    if type(value) is not int or value < 0:
        raise MalformedAnswer("bad_bucket", f"{key} is {value!r}")
    return value


def answer_time(server: str, view: Any) -> float:
    """When a ``GET /servers/{name}/loads`` answer was read from the store (its
    ``ServerTrack-As-Of`` header, which the source puts in the answer as ``as_of``): every
    sample applied by then is in it."""
    text = view.get("as_of") if isinstance(view, dict) else None
    try:
        moment = datetime.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise MalformedAnswer(
            "bad_answer", f"{server}: as_of is {text!r}; an API that dates its answers is needed"
        )
    return moment.timestamp()


ServerScores = dict[tuple[int, str], float]
"""(minute start, metric) → anomaly score, for one server in one window (scored minutes only)."""


def _score(bucket: dict[str, Any], key: str) -> float | None:
    if key not in bucket:
        raise MalformedAnswer("bad_bucket", f"no {key}; an API with anomaly scores is needed")
    value = bucket[key]
    if value is None:
        return None
    if type(value) not in (int, float) or not 0.0 <= value <= 1.0:
        raise MalformedAnswer("bad_bucket", f"{key} is {value!r}")
    return float(value)


class WindowCollector:
    """Gathers, for the windows of one read, every server's bucket sums by window (and, with
    ``anomaly``, the anomaly scores of its minutes)."""

    def __init__(
        self, windows: Iterable[int], interval: int, scale: str = "minutes", anomaly: bool = False
    ) -> None:
        self.interval = interval
        self.scale = scale
        self.windows: dict[int, dict[str, ServerSums]] = {t: {} for t in windows}
        self.anomaly: dict[int, dict[str, ServerScores]] | None = (
            {t: {} for t in self.windows} if anomaly else None
        )
        self._starts: dict[str, int] = {}

    def _start(self, text: Any) -> int:
        start = self._starts.get(text) if isinstance(text, str) else None
        if start is None:
            try:
                moment = datetime.fromisoformat(text)
            except (TypeError, ValueError) as err:
                raise MalformedAnswer("bad_bucket", f"start is {text!r}") from err
            if moment.tzinfo is None:
                raise MalformedAnswer("bad_bucket", f"start {text!r} has no time zone")
            start = int(moment.timestamp())
            self._starts[text] = start
        return start

    def add(self, server: str, view: Any) -> None:
        """Take one ``GET /servers/{name}/loads`` answer."""
        for bucket, start in self._buckets(server, view, self.scale):
            sums = self.windows.get(start - start % self.interval)
            if sums is None:
                continue
            for metric in METRICS:
                count = _count(bucket, f"{metric}_samples")
                if count:
                    total = _number(bucket, f"{metric}_sum")
                    mine = sums.setdefault(server, {}).setdefault(metric, MetricSum())
                    mine.parts.append(total)
                    mine.count += count
        if self.anomaly is not None:
            self._add_scores(server, view)

    def _buckets(self, server: str, view: Any, scale: str) -> Iterator[tuple[dict[str, Any], int]]:
        """Each bucket of ``scale`` in an answer with its start; MalformedAnswer when the
        answer has no such list or a bucket is no object."""
        buckets = view.get(scale) if isinstance(view, dict) else None
        if not isinstance(buckets, list):
            raise MalformedAnswer("bad_answer", f"{server}: no {scale} list in the answer")
        for bucket in buckets:
            if not isinstance(bucket, dict):
                raise MalformedAnswer("bad_bucket", f"{server}: bucket {bucket!r}")
            yield bucket, self._start(bucket.get("start"))

    def _add_scores(self, server: str, view: dict[str, Any]) -> None:
        assert self.anomaly is not None
        for bucket, start in self._buckets(server, view, "minutes"):
            scores = self.anomaly.get(start - start % self.interval)
            if scores is None:
                continue
            for metric in METRICS:
                score = _score(bucket, f"{metric}_anomaly")
                if score is not None:
                    scores.setdefault(server, {})[(start, metric)] = score


@dataclass(slots=True)
class WindowPoints:
    """Everything one window sends."""

    t: int
    lines: list[bytes]
    servers: int
    shared_names: dict[str, list[str]]
    """Graphite names that several servers sanitise to (their samples are pooled in it)."""


def window_points(
    t: int,
    servers: dict[str, ServerSums],
    prefix: str,
    scores: dict[str, ServerScores] | None = None,
) -> WindowPoints:
    """The lines of window ``t``: two per server series, three per metric for the fleet, and
    with ``scores`` one per scored minute and metric of each server series."""
    series: dict[str, list[str]] = {}
    for server in servers:
        series.setdefault(series_name(server), []).append(server)
    lines: list[bytes] = []
    for name in sorted(series):
        members = series[name]
        for metric in METRICS:
            pooled = [servers[member][metric] for member in members if metric in servers[member]]
            if pooled:
                parts = [part for one in pooled for part in one.parts]
                mean = math.fsum(parts) / sum(one.count for one in pooled)
                lines.append(line(f"{prefix}.{name}.{metric}", mean, t))
        if scores:
            highest: dict[tuple[int, str], float] = {}
            for member in members:
                for key, score in scores.get(member, {}).items():
                    highest[key] = max(score, highest.get(key, score))
            for (start, metric), score in sorted(highest.items()):
                lines.append(line(f"{prefix}.{name}.{metric}_anomaly", score, start))
    for metric in METRICS:
        reporting = [sums[metric] for sums in servers.values() if metric in sums]
        if not reporting:
            continue
        every = [part for one in reporting for part in one.parts]
        fleet_mean = math.fsum(every) / sum(one.count for one in reporting)
        hottest = max(one.mean() for one in reporting)
        base = f"{prefix}.{FLEET}.{metric}"
        lines += (
            line(f"{base}.mean", fleet_mean, t),
            line(f"{base}.max", hottest, t),
            line(f"{base}.servers", len(reporting), t),
        )
    shared = {name: members for name, members in series.items() if len(members) > 1}
    return WindowPoints(t, lines, len(servers), shared)
