"""``GET /metrics``: the ``/stats`` counters in Prometheus text format.

A custom collector reads the aggregator's stats at scrape time (nothing is kept in the API
process), in a registry of its own per app next to prometheus_client's ``ProcessCollector`` for the
API process itself; the global registry is never touched.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import falcon
import psutil
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from servertrack.api.backend import Backend

SOURCES = ("zmq", "http")
"""Always exported (0 until the first sample), so rate() has a series from the start."""
AGGREGATOR_DROPS = {
    "unknown_server": "unknown_server",
    "malformed_batches": "malformed_batch",
    "batch_errors": "batch_error",
}

Stats = Mapping[str, Any]


def _number(value: Any) -> float | None:
    """A number from the stats JSON as a float; ``None`` for null, booleans and anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _counts(value: Any) -> dict[str, float]:
    if not isinstance(value, Mapping):
        return {}
    numbers = {str(key): _number(raw) for key, raw in value.items()}
    return {key: number for key, number in numbers.items() if number is not None}


def _counter(name: str, doc: str, value: Any) -> Metric | None:
    number = _number(value)
    return None if number is None else CounterMetricFamily(name, doc, value=number)


def _gauge(name: str, doc: str, value: Any) -> Metric | None:
    number = _number(value)
    return None if number is None else GaugeMetricFamily(name, doc, value=number)


def _labelled(
    family: CounterMetricFamily | GaugeMetricFamily, label_sets: dict[str, float]
) -> Metric:
    for label, value in sorted(label_sets.items()):
        family.add_metric([label], value)
    return family


def stats_metrics(stats: Stats, api_rss: int | None = None) -> Iterator[Metric]:
    """Metric families for one ``/stats`` answer; a counter that is absent is left out."""
    receiver = stats.get("receiver") or {}
    aggregator = stats.get("aggregator") or {}
    for verb in ("received", "accepted"):
        yield _labelled(
            CounterMetricFamily(
                f"servertrack_samples_{verb}",
                f"Samples {verb} by the receiver, by source.",
                labels=["source"],
            ),
            {**dict.fromkeys(SOURCES, 0.0), **_counts(receiver.get(verb))},
        )
    yield _labelled(
        CounterMetricFamily(
            "servertrack_samples_rejected",
            "Samples refused by the receiver, by reason.",
            labels=["reason"],
        ),
        _counts(receiver.get("rejected")),
    )
    aggregator_drops = _counts(aggregator)
    yield _labelled(
        CounterMetricFamily(
            "servertrack_aggregator_dropped",
            "Samples or batches the aggregator could not apply, by reason.",
            labels=["reason"],
        ),
        {label: aggregator_drops.get(key, 0.0) for key, label in AGGREGATOR_DROPS.items()},
    )
    rss = GaugeMetricFamily(
        "servertrack_process_rss_bytes",
        "Resident memory of each ServerTrack process.",
        labels=["process"],
    )
    for process, value in (
        ("api", api_rss),
        ("receiver", receiver.get("rss_bytes")),
        ("aggregator", aggregator.get("rss_bytes")),
    ):
        number = _number(value)
        if number is not None:
            rss.add_metric([process], number)
    yield rss
    singles = (
        _counter(
            "servertrack_samples_duplicate",
            "Duplicate samples dropped.",
            receiver.get("duplicates"),
        ),
        _counter(
            "servertrack_samples_lost",
            "Samples never received: gaps in the agents' sequence numbers.",
            receiver.get("lost"),
        ),
        _counter(
            "servertrack_batches_forward_dropped",
            "Batches the receiver could not hand to the aggregator (backlog full).",
            receiver.get("forward_dropped"),
        ),
        _counter(
            "servertrack_batches_lost",
            "Batches a restarted aggregator could no longer get from the receiver.",
            aggregator.get("batches_lost"),
        ),
        _counter(
            "servertrack_receiver_batches", "Batches sent by the receiver.", receiver.get("batches")
        ),
        _counter(
            "servertrack_aggregator_batches",
            "Batches applied by the aggregator.",
            aggregator.get("batches"),
        ),
        _counter(
            "servertrack_samples_applied",
            "Samples applied to the rollups.",
            aggregator.get("applied", 0),
        ),
        _counter(
            "servertrack_samples_expired",
            "Samples whose hour left the window between receiver and aggregator.",
            aggregator.get("expired", 0),
        ),
        _gauge(
            "servertrack_servers_tracked",
            "Servers with data in the last 24 hours.",
            aggregator.get("servers_tracked"),
        ),
        _gauge(
            "servertrack_servers_seen",
            "Server names the receiver has seen since it started.",
            receiver.get("servers_seen"),
        ),
        *(
            _gauge(
                f"servertrack_batch_flush_lag_{stat}_seconds",
                f"{label} seconds from the receiver sending a batch to the aggregator applying "
                "it, over the last 60 batches.",
                aggregator.get(f"flush_lag_{stat}_seconds"),
            )
            for stat, label in (
                ("p50", "Median"),
                ("p99", "99th percentile of"),
                ("max", "Longest"),
            )
        ),
        _gauge(
            "servertrack_batch_size_samples",
            "Samples in the last batch applied.",
            aggregator.get("batch_size_last"),
        ),
        _gauge(
            "servertrack_batch_size_max_samples",
            "Samples in the largest of the last 60 batches.",
            aggregator.get("batch_size_max"),
        ),
        _gauge(
            "servertrack_last_batch_age_seconds",
            "Seconds since the aggregator applied a batch.",
            aggregator.get("last_batch_age_seconds"),
        ),
        _gauge(
            "servertrack_snapshot_age_seconds",
            "Seconds since the aggregator last wrote its snapshot.",
            aggregator.get("snapshot_age_seconds"),
        ),
    )
    yield from (family for family in singles if family is not None)


class StatsCollector(Collector):
    """Asks ``fetch`` for the stats on every scrape; an ``Unavailable`` from it propagates."""

    def __init__(self, fetch: Callable[[], Stats], rss: Callable[[], int | None]) -> None:
        self.fetch = fetch
        self.rss = rss

    def collect(self) -> Iterator[Metric]:
        yield from stats_metrics(self.fetch(), self.rss())


def _own_rss() -> int | None:
    try:
        return int(psutil.Process().memory_info().rss)
    except psutil.Error:  # pragma: no cover - /proc unreadable
        return None


def make_registry(backend: Backend) -> CollectorRegistry:
    """A registry of its own: the stats collector and the API process's standard metrics."""

    def fetch() -> Stats:
        reply = backend.query({"op": "stats"})
        return json.loads(reply["body"])

    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(fetch, _own_rss))
    ProcessCollector(registry=registry)
    return registry


class MetricsResource:
    """``GET /metrics``: scrapes the registry; 503 JSON when the aggregator does not answer."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.data = generate_latest(self.registry)
        resp.content_type = CONTENT_TYPE_LATEST
