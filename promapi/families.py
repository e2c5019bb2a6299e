"""The metric families ServerTrack shows Prometheus, declared once.

Every series has the labels ``__name__`` and ``server`` and nothing else. cpu and ram are
separate families, and so are a minute's mean, minimum and maximum: ``avg(...)``, ``topk(...)``
and ``max by (server) (...)`` then mean what they say, with no ``stat`` label to forget. The
families with history (``history=True``) are served by the remote read as well, under the
same names: minute values for the last hour, hour values for the day before.

Units follow Prometheus' naming rules (the unit is the name's last word; ``# UNIT`` in
OpenMetrics): cpu and ram are in percent, as ServerTrack records and answers them, so the
numbers Prometheus stores are the very numbers of ``GET /servers/{name}/loads``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family: its name, help, OpenMetrics unit and the column that feeds it."""

    name: str
    help: str
    column: str
    """The attribute of :class:`~servertrack.promapi.exposition.ServerMinutes` it shows."""
    unit: str = ""
    integer: bool = False
    """Values are whole numbers, written without a fraction."""
    minute: bool = True
    """A figure of the last complete minute, stamped with the minute's start; otherwise a
    reading at scrape time, without a timestamp."""
    history: bool = False
    """Served by the remote read (minute values, then hour values further back)."""


def _gauge(
    name: str,
    help_text: str,
    column: str,
    unit: str = "",
    integer: bool = False,
    minute: bool = True,
    history: bool = False,
) -> Family:
    return Family(f"servertrack_server_{name}", help_text, column, unit, integer, minute, history)


FAMILIES: tuple[Family, ...] = (
    _gauge(
        "cpu_percent",
        "Mean cpu use of the server over the minute, in percent.",
        "cpu",
        unit="percent",
        history=True,
    ),
    _gauge(
        "cpu_min_percent",
        "Lowest cpu sample of the server in the minute, in percent.",
        "cpu_min",
        unit="percent",
        history=True,
    ),
    _gauge(
        "cpu_max_percent",
        "Highest cpu sample of the server in the minute, in percent.",
        "cpu_max",
        unit="percent",
        history=True,
    ),
    _gauge(
        "ram_percent",
        "Mean ram use of the server over the minute, in percent.",
        "ram",
        unit="percent",
        history=True,
    ),
    _gauge(
        "ram_min_percent",
        "Lowest ram sample of the server in the minute, in percent.",
        "ram_min",
        unit="percent",
        history=True,
    ),
    _gauge(
        "ram_max_percent",
        "Highest ram sample of the server in the minute, in percent.",
        "ram_max",
        unit="percent",
        history=True,
    ),
    _gauge(
        "minute_samples",
        "Samples the server sent in the minute.",
        "samples",
        integer=True,
    ),
    _gauge(
        "cpu_anomaly_score",
        "How unusual the server's cpu was in the minute, from 0 (usual) to 1.",
        "cpu_anomaly",
    ),
    _gauge(
        "ram_anomaly_score",
        "How unusual the server's ram was in the minute, from 0 (usual) to 1.",
        "ram_anomaly",
    ),
    _gauge(
        "last_seen_age_seconds",
        "Seconds since the server's newest sample.",
        "age",
        unit="seconds",
        minute=False,
    ),
    _gauge(
        "status",
        "Server status: 2 live (a sample in the last 120 s), 1 stale (120 s to 600 s), "
        "0 down (longer).",
        "status",
        integer=True,
        minute=False,
    ),
)
BY_NAME = {family.name: family for family in FAMILIES}
HISTORY_FAMILIES: tuple[Family, ...] = tuple(f for f in FAMILIES if f.history)
