"""Every counter ServerTrack keeps, declared once with its meaning.

The receiver's and the aggregator's stats, the API's own, ``GET /stats``, ``GET /metrics`` and the
OpenAPI document are all derived from these declarations, so a counter cannot appear in one and
be missing from another (a test checks the daemons' stats against them).

A stats answer has one section per process (``receiver``, ``aggregator``, ``api``); a counter is a
key of its section. Its shape follows its labels: a number when it has none, ``{source: n}`` for
``("source",)``, ``{reason: n}`` for ``("reason",)`` and ``{source: {reason: n}}`` for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

SOURCES = ("zmq", "http", "graphite")
"""Where samples come from: agents over ZeroMQ, records over HTTP, lines of Graphite plaintext
(each line is one sample with one metric)."""

REJECT_REASONS = MappingProxyType(
    {
        # decoding (ZeroMQ)
        "frames": "the message did not have exactly two frames",
        "format": "unknown format frame",
        "msgpack": "the payload is not valid msgpack",
        "pickle": "refused pickle (a global, a huge memo, or not a pickle)",
        "pickle_disabled": "a pickle.gz message while --accept-pickle is off",
        "gzip": "not a gzip stream, or a truncated one",
        "too_large": "payload over 16 KiB (after decompression), or an HTTP body over the limit",
        # the sample model
        "not_a_map": "the payload is not a map",
        "unknown_field": "a field the sample model does not have",
        "bad_fqdn": "server name not 1-253 of letters, digits, '.', '-', '_'",
        "bad_ts": "ts missing, not a number, or not finite",
        "bad_cpu": "cpu not a number from 0 to 100",
        "bad_ram": "ram not a number from 0 to 100",
        "bad_seq": "seq not a non-negative 64-bit integer",
        "bad_ip": "ip not a list of at most 32 addresses",
        "no_metrics": "neither cpu nor ram",
        # policy
        "future": "ts more than 60 s ahead of the receiving clock",
        "too_old": "ts older than the 24-hour window",
        "server_limit": "a new server name beyond --max-servers",
        # HTTP bodies
        "bad_json": "malformed JSON, NaN or Infinity, duplicate keys, or nesting too deep",
        "not_a_list": "the body of POST /loads is not a JSON array",
        "not_an_object": "an item that is not a JSON object",
        "too_many": "more than 10,000 items in one POST /loads",
        "bad_request": "a request the receiver could not read",
        # Graphite plaintext lines
        "bad_line": "a Graphite line that is not 'path value timestamp' with two numbers",
        "unmapped": "a Graphite path that no rule maps to a server's cpu or ram",
        "nan": "a Graphite point whose value is nan (collectd sends one for a first reading)",
        "line_too_long": "a Graphite line over --graphite-max-line bytes (discarded up to its "
        "newline)",
        "partial_line": "a Graphite half line left when its connection closed",
        "rate_limited": "Graphite lines read past --graphite-rate on a connection, which is then "
        "closed",
    }
)


@dataclass(frozen=True, slots=True)
class Counter:
    """One stat: where it lives, its Prometheus name and what it means."""

    section: str
    key: str
    metric: str
    """Prometheus family name; counters get ``_total`` appended in the exposition."""
    help: str
    kind: str = "counter"
    labels: tuple[str, ...] = ()
    fixed: tuple[tuple[str, str], ...] = ()
    """Labels with a constant value, for stats of several sections in one family."""


def _c(section: str, key: str, metric: str, help_text: str, *labels: str) -> Counter:
    return Counter(section, key, metric, help_text, "counter", labels)


def _g(section: str, key: str, metric: str, help_text: str, *labels: str) -> Counter:
    return Counter(section, key, metric, help_text, "gauge", labels)


def _files_exhausted(section: str) -> Counter:
    return Counter(
        section,
        "files_exhausted",
        "servertrack_open_files_exhausted",
        "Times each ServerTrack process reached its open-files limit (EMFILE) and carried on "
        "without the descriptor it wanted (a connection not accepted, a snapshot or a memory "
        "figure not taken); the log says what.",
        "counter",
        (),
        (("process", section),),
    )


def _rss(section: str) -> Counter:
    return Counter(
        section,
        "rss_bytes",
        "servertrack_process_rss_bytes",
        "Resident memory of each ServerTrack process.",
        "gauge",
        (),
        (("process", section),),
    )


RECEIVER = "receiver"
AGGREGATOR = "aggregator"
API = "api"

COUNTERS: tuple[Counter, ...] = (
    # receiver
    _c(
        RECEIVER,
        "received",
        "servertrack_samples_received",
        "Samples received, by source.",
        "source",
    ),
    _c(
        RECEIVER,
        "accepted",
        "servertrack_samples_accepted",
        "Samples accepted, by source.",
        "source",
    ),
    _c(
        RECEIVER,
        "rejected",
        "servertrack_samples_rejected",
        "Samples refused, by source and reason (see the reasons in the README).",
        "source",
        "reason",
    ),
    _c(RECEIVER, "duplicates", "servertrack_samples_duplicate", "Duplicate samples dropped."),
    _c(
        RECEIVER,
        "lost",
        "servertrack_samples_lost",
        "Samples never received: gaps in the agents' sequence numbers.",
    ),
    _c(
        RECEIVER,
        "seq_resets",
        "servertrack_sequence_resets",
        "Sequence jumps too large for the time elapsed (agent resets), not counted as loss.",
    ),
    _g(
        RECEIVER,
        "name_conflicts",
        "servertrack_servers_name_conflict",
        "Servers whose name two agents use at the same time (interleaved sequences).",
    ),
    _g(RECEIVER, "servers_seen", "servertrack_servers_seen", "Server names the receiver tracks."),
    _c(
        RECEIVER,
        "servers_evicted",
        "servertrack_servers_evicted",
        "Server names the receiver forgot after 25 hours of silence.",
    ),
    _g(
        RECEIVER,
        "dedup_keys",
        "servertrack_dedup_keys",
        "(server, ts) keys of seq-less samples (and (server, ts, metric) keys of Graphite "
        "points) remembered for de-duplication.",
    ),
    _c(
        RECEIVER,
        "dedup_evicted",
        "servertrack_dedup_evicted",
        "De-duplication keys forgotten before the horizon because --dedup-limit was reached.",
    ),
    _c(RECEIVER, "batches", "servertrack_receiver_batches", "Batches sent by the receiver."),
    _c(
        RECEIVER,
        "forward_dropped",
        "servertrack_samples_forward_dropped",
        "Samples of batches the receiver could not hand to the aggregator at once (backlog "
        "full); they stay in its time index for replay.",
    ),
    _c(
        RECEIVER,
        "graphite_clamped",
        "servertrack_graphite_clamped",
        "Graphite values from 100 to 110 taken as 100 (collectd's jiffies mode overshoots).",
    ),
    _c(
        RECEIVER,
        "graphite_connections",
        "servertrack_graphite_connections",
        "Graphite plaintext connections accepted.",
    ),
    _g(
        RECEIVER,
        "graphite_connections_open",
        "servertrack_graphite_connections_open",
        "Graphite plaintext connections open now.",
    ),
    _c(
        RECEIVER,
        "graphite_connections_refused",
        "servertrack_graphite_connections_refused",
        "Graphite connections closed at once because --graphite-max-connections were open.",
    ),
    _c(
        RECEIVER,
        "graphite_connections_closed",
        "servertrack_graphite_connections_closed",
        "Graphite connections that ended, by reason: the client closed it, idle past "
        "--graphite-idle-timeout, a line slower than --graphite-line-timeout, under "
        "--graphite-min-rate, over --graphite-rate, a socket error, or the receiver stopping.",
        "reason",
    ),
    _g(
        RECEIVER,
        "ingest_connections_open",
        "servertrack_ingest_connections_open",
        "Connections open on the agents' ingest port (ZeroMQ), handshaking ones included.",
    ),
    _c(
        RECEIVER,
        "ingest_connections_refused",
        "servertrack_ingest_connections_refused",
        "Connections to the agents' ingest port cut at once because --ingest-max-connections "
        "were open (a refused agent connects again by itself).",
    ),
    _files_exhausted(RECEIVER),
    _rss(RECEIVER),
    # aggregator
    _c(AGGREGATOR, "applied", "servertrack_samples_applied", "Samples applied to the rollups."),
    _c(
        AGGREGATOR,
        "expired",
        "servertrack_samples_expired",
        "Samples whose hour left the window between receiver and aggregator.",
    ),
    _c(
        AGGREGATOR,
        "dropped",
        "servertrack_aggregator_dropped",
        "Samples or batches the aggregator could not apply, by reason.",
        "reason",
    ),
    _c(
        AGGREGATOR,
        "batches",
        "servertrack_aggregator_batches",
        "Batches applied by the aggregator.",
    ),
    _c(
        AGGREGATOR,
        "batches_replayed",
        "servertrack_batches_replayed",
        "Batches the receiver sent again after an aggregator restart.",
    ),
    _c(
        AGGREGATOR,
        "batches_already_applied",
        "servertrack_batches_already_applied",
        "Batches received a second time and skipped (each is applied once).",
    ),
    _c(
        AGGREGATOR,
        "batches_lost",
        "servertrack_batches_lost",
        "Batches a restarted aggregator could no longer get from the receiver.",
    ),
    _c(
        AGGREGATOR,
        "queries_expired",
        "servertrack_queries_expired",
        "Queries skipped because their client had given up (deadline passed).",
    ),
    _c(
        AGGREGATOR,
        "snapshot_errors",
        "servertrack_snapshot_errors",
        "Snapshots that could not be written (the log names the path and errno).",
    ),
    _c(
        AGGREGATOR,
        "snapshots_quarantined",
        "servertrack_snapshots_quarantined",
        "Unreadable snapshots moved aside at start (renamed, never deleted).",
    ),
    _c(
        AGGREGATOR,
        "anomaly_minutes_scored",
        "servertrack_anomaly_scoring_turns",
        "Minutes this aggregator scored, each minute every server's cpu and ram means (in "
        "Redis mode, only while it holds the scoring lease).",
    ),
    _c(
        AGGREGATOR,
        "anomaly_errors",
        "servertrack_anomaly_errors",
        "Scoring turns that failed because the store (Redis) did not answer; tried again at "
        "the next turn.",
    ),
    _g(AGGREGATOR, "servers_tracked", "servertrack_servers_tracked", "Servers with data in 24 h."),
    _g(
        AGGREGATOR,
        "store_pending",
        "servertrack_store_pending_samples",
        "Samples held for the next merge into Redis (0 with the in-memory store).",
    ),
    _c(
        AGGREGATOR,
        "store_dropped",
        "servertrack_store_dropped_samples",
        "Samples dropped while Redis could not be reached for too long (the receiver may still "
        "hold their batches).",
    ),
    _c(
        AGGREGATOR,
        "store_flushes",
        "servertrack_store_flushes",
        "Merges of held batches into Redis that succeeded.",
    ),
    _c(
        AGGREGATOR,
        "store_errors",
        "servertrack_store_errors",
        "Merges into Redis that failed (Redis unreachable, too slow, full, or refusing the "
        "Function calls); retried with backoff.",
    ),
    _g(
        AGGREGATOR,
        "store_flush_seconds",
        "servertrack_store_flush_seconds",
        "Seconds the last merge into Redis took.",
    ),
    *(
        _g(
            AGGREGATOR,
            f"flush_lag_{stat}_seconds",
            f"servertrack_batch_flush_lag_{stat}_seconds",
            f"{label} seconds from the receiver sending a batch to the aggregator applying it, "
            "over the last 60 batches.",
        )
        for stat, label in (("p50", "Median"), ("p99", "99th percentile of"), ("max", "Longest"))
    ),
    _g(
        AGGREGATOR,
        "batch_size_last",
        "servertrack_batch_size_samples",
        "Samples in the last batch applied.",
    ),
    _g(
        AGGREGATOR,
        "batch_size_max",
        "servertrack_batch_size_max_samples",
        "Samples in the largest of the last 60 batches.",
    ),
    _g(
        AGGREGATOR,
        "last_batch_age_seconds",
        "servertrack_last_batch_age_seconds",
        "Seconds since the aggregator applied a batch.",
    ),
    _g(
        AGGREGATOR,
        "snapshot_age_seconds",
        "servertrack_snapshot_age_seconds",
        "Seconds since the aggregator last wrote its snapshot.",
    ),
    _files_exhausted(AGGREGATOR),
    _rss(AGGREGATOR),
    # the API process
    Counter(
        API,
        "rejected",
        "servertrack_samples_rejected",
        "Samples refused, by source and reason (see the reasons in the README).",
        "counter",
        ("reason",),
        (("source", "http"),),
    ),
    _c(
        API,
        "requests_abandoned",
        "servertrack_http_requests_abandoned",
        "Requests not served because their client had gone or waited past the deadline.",
    ),
    _c(
        API,
        "connections_closed",
        "servertrack_http_connections_closed",
        "Connections the API closed itself, by reason: idle keep-alive, a request too slow to "
        "arrive, the oldest idle one evicted at the connection limit, or (granian) a POST that "
        "found every body slot taken.",
        "reason",
    ),
    _c(
        API,
        "read_cache",
        "servertrack_http_read_cache",
        "Server reads by how the read cache served them: hit (the current answer, kept), stale "
        "(the previous answer, at most 0.5 s after a batch, while it is asked for again), miss "
        "(asked of the aggregator).",
        "result",
    ),
    _c(
        API,
        "prometheus_rejected",
        "servertrack_prometheus_requests_rejected",
        "Scrapes of /metrics/servers and remote reads (POST /api/v1/read) refused with a 400, by "
        "reason (see PROMETHEUS_REJECT_REASONS).",
        "reason",
    ),
    _files_exhausted(API),
    _rss(API),
)

STATS_ONLY: MappingProxyType[tuple[str, str], tuple[dict[str, Any], str]] = MappingProxyType(
    {
        (AGGREGATOR, "flush_lag_seconds"): (
            {"type": "number"},
            "Seconds from the receiver sending the last batch to the aggregator applying it.",
        ),
        (AGGREGATOR, "flush_lag_recent_seconds"): (
            {"type": "array", "items": {"type": "number"}},
            "The flush lag of each of the last 60 batches.",
        ),
        (AGGREGATOR, "applied_upto_batch"): (
            {"type": "integer"},
            "Every batch of the current receiver run up to this number has been applied.",
        ),
    }
)
"""Entries of ``/stats`` that are not exported to Prometheus: (section, key) → (schema, help)."""

AGGREGATOR_DROP_REASONS = MappingProxyType(
    {
        "unknown_server": "samples from a receiver id the aggregator could not name",
        "server_limit": "samples of a new server beyond the aggregator's --max-servers (memory "
        "store only: with Redis, only the receiver refuses new servers, before it answers)",
        "corrupt_key": "samples of a server whose keys in Redis are corrupt (a key of the wrong "
        "type, a field of the wrong size): not written; the log names the key",
        "malformed_batch": "batch messages that could not be decoded",
        "batch_error": "batches whose application failed (logged with a traceback)",
    }
)
CLOSE_REASONS = ("idle", "slow_request", "evicted", "body_slots_full")
GRAPHITE_CLOSE_REASONS = MappingProxyType(
    {
        "client": "the client closed the connection",
        "idle": "no byte for --graphite-idle-timeout seconds",
        "slow_line": "a line not whole --graphite-line-timeout seconds after its first byte",
        "slow_rate": "fewer than --graphite-min-rate bytes a second over a --graphite-idle-timeout "
        "window",
        "rate_limited": "more lines than --graphite-rate allows",
        "error": "a socket error (reset by the peer, ...)",
        "stopping": "the receiver stopped",
    }
)


ALERTS = "alerts"
ALERT_DROP_REASONS = MappingProxyType(
    {
        "queue_full": "the Alertmanager's queue held its limit of other alerts: the oldest went",
        "rejected": "the Alertmanager refused the batch as malformed (a 4xx other than 408, 429)",
        "closed": "still queued when the host stopped",
    }
)
ALERT_COUNTERS: tuple[Counter, ...] = (
    _g(
        ALERTS,
        "alerts_pending",
        "servertrack_alerts_pending",
        "Alerts whose condition holds but not yet for the rule's for.",
    ),
    _g(ALERTS, "alerts_firing", "servertrack_alerts_firing", "Alerts firing now."),
    _c(
        ALERTS,
        "alertmanager_sent",
        "servertrack_alerts_sent",
        "Alerts delivered to each Alertmanager (POSTs it answered with 200).",
        "alertmanager",
    ),
    _c(
        ALERTS,
        "alertmanager_failed",
        "servertrack_alerts_send_errors",
        "POSTs to each Alertmanager that failed (no answer, a timeout, a 5xx, 408 or 429); "
        "their alerts are tried again with backoff.",
        "alertmanager",
    ),
    _c(
        ALERTS,
        "alertmanager_dropped",
        "servertrack_alerts_dropped",
        "Alerts never delivered to an Alertmanager, by reason.",
        "alertmanager",
        "reason",
    ),
    _g(
        ALERTS,
        "alertmanager_queued",
        "servertrack_alerts_queue_length",
        "Alerts waiting to be sent to each Alertmanager.",
        "alertmanager",
    ),
)
"""The alerting counters: the evaluator's (``AlertEvaluator.stats``) and the delivery's
(``Alertmanagers.stats``), in the aggregator's ``alerts`` section (the aggregator evaluates the
rules and runs the Alertmanager clients)."""
COUNTERS = (*COUNTERS, *ALERT_COUNTERS)


PROMETHEUS_REJECT_REASONS = MappingProxyType(
    {
        # GET /metrics/servers
        "unknown_parameter": "a query parameter other than match[] and server",
        "bad_selector": "a match[] series selector that does not parse, or whose every matcher "
        "matches the empty string",
        "bad_regex": "a regular expression that RE2 cannot compile (or over 4 KiB)",
        # POST /api/v1/read
        "too_large": "a remote-read body over 1 MiB, compressed or decompressed",
        "bad_encoding": "a remote-read body whose Content-Encoding is not snappy, or whose "
        "Content-Type is not application/x-protobuf",
        "bad_snappy": "a remote-read body that is not one snappy block",
        "bad_protobuf": "a remote-read body that is not a ReadRequest message",
        "bad_matcher": "a remote-read matcher of an unknown type",
        "unsupported_response_type": "a remote-read request accepting only streamed chunks",
        "too_many_queries": "a remote-read request with more queries than the cap",
        "too_many_series": "a remote-read query matching more series than the cap",
        "too_many_samples": "a remote-read query whose answer holds more samples than the cap",
    }
)
"""Why ``GET /metrics/servers`` or ``POST /api/v1/read`` refused a request (a 400 naming it)."""


def declared(section: str) -> dict[str, Counter]:
    """The counters of one section, by key."""
    return {counter.key: counter for counter in COUNTERS if counter.section == section}
