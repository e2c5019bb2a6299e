"""``GET /metrics``: the ``/stats`` counters in Prometheus text format.

A custom collector reads the aggregator's stats at scrape time (nothing is kept in the API
process), in a registry of its own per app next to prometheus_client's ``ProcessCollector`` for the
API process itself; the global registry is never touched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import falcon
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from servertrack.api.backend import Backend
from servertrack.api.stats import ApiStats
from servertrack.common.counters import (
    AGGREGATOR_DROP_REASONS,
    CLOSE_REASONS,
    COUNTERS,
    GRAPHITE_CLOSE_REASONS,
    PROMETHEUS_REJECT_REASONS,
    SOURCES,
    Counter,
)

Stats = Mapping[str, Any]
Labels = tuple[str, ...]

ALWAYS = {
    "source": SOURCES,
    ("aggregator", "dropped"): tuple(AGGREGATOR_DROP_REASONS),
    ("api", "connections_closed"): CLOSE_REASONS,
    ("receiver", "graphite_connections_closed"): tuple(GRAPHITE_CLOSE_REASONS),
    ("api", "read_cache"): ("hit", "stale", "miss"),
    ("api", "prometheus_rejected"): tuple(PROMETHEUS_REJECT_REASONS),
}
"""Label values exported even at 0, so rate() has a series from the start."""


def _number(value: Any) -> float | None:
    """A number from the stats JSON as a float; ``None`` for null, booleans and anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _samples(counter: Counter, value: Any) -> dict[Labels, float]:
    """The label values and numbers one stat contributes, following its declared shape."""
    fixed = tuple(label for _, label in counter.fixed)
    if not counter.labels:
        number = _number(value)
        return {} if number is None else {fixed: number}
    found: dict[Labels, float] = {}
    first = counter.labels[0]
    defaults = ALWAYS.get((counter.section, counter.key), ALWAYS.get(first, ()))
    level = value if isinstance(value, Mapping) else {}
    for key in (*defaults, *(k for k in level if k not in defaults)):
        inner = level.get(key, 0)
        if len(counter.labels) == 1:
            number = _number(inner)
            if number is not None:
                found[(*fixed, str(key))] = number
        elif isinstance(inner, Mapping):
            for reason, raw in inner.items():
                number = _number(raw)
                if number is not None:
                    found[(*fixed, str(key), str(reason))] = number
    return found


def stats_metrics(stats: Stats) -> Iterator[Metric]:
    """Metric families for one ``/stats`` answer (receiver, aggregator and api sections), as
    declared in :mod:`servertrack.common.counters`; stats of several sections that share a family
    are added up, and a stat that is absent is left out."""
    families: dict[str, tuple[Counter, dict[Labels, float]]] = {}
    for counter in COUNTERS:
        section = stats.get(counter.section) or {}
        if counter.key not in section and not counter.labels:
            continue
        _, values = families.setdefault(counter.metric, (counter, {}))
        for labels, number in _samples(counter, section.get(counter.key)).items():
            values[labels] = values.get(labels, 0.0) + number
    for counter, values in families.values():
        names = [name for name, _ in counter.fixed] + list(counter.labels)
        kind = CounterMetricFamily if counter.kind == "counter" else GaugeMetricFamily
        family = kind(counter.metric, counter.help, labels=names)
        for labels, number in sorted(values.items()):
            family.add_metric(list(labels), number)
        yield family


class StatsCollector(Collector):
    """Asks ``fetch`` for the stats on every scrape; an ``Unavailable`` from it propagates."""

    def __init__(self, fetch: Callable[[], Stats]) -> None:
        self.fetch = fetch

    def collect(self) -> Iterator[Metric]:
        yield from stats_metrics(self.fetch())


def make_registry(backend: Backend, api: ApiStats) -> CollectorRegistry:
    """A registry of its own: the stats collector and the API process's standard metrics."""

    def fetch() -> Stats:
        return {**backend.stats(), "api": api.snapshot()}

    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(fetch))
    ProcessCollector(registry=registry)
    return registry


class MetricsResource:
    """``GET /metrics``: scrapes the registry; 503 JSON when the aggregator does not answer."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.data = generate_latest(self.registry)
        resp.content_type = CONTENT_TYPE_LATEST
