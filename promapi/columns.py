"""The read model's typed values as the inputs of :mod:`servertrack.promapi`: every server's
last complete minute (:class:`~servertrack.readmodel.values.LastMinute`) as the columns of the
exposition, and some servers' cells over both windows
(:class:`~servertrack.readmodel.values.Histories`) as the remote read's history.

A mean is the cell's ``sum / count``, the very division ``GET /servers/{name}/loads`` makes, so
Prometheus holds the same float64; a metric without samples in a bucket is NaN (no sample).
"""

from __future__ import annotations

import numpy as np

from servertrack.common.buckets import HOUR, MINUTE
from servertrack.promapi.exposition import ServerMinutes
from servertrack.promapi.remote_read import SeriesHistory
from servertrack.readmodel.cells import METRICS, means
from servertrack.readmodel.fleet import ages_and_ranks
from servertrack.readmodel.values import Histories, LastMinute


def figures(cells: np.ndarray) -> dict[str, np.ndarray]:
    """Mean, lowest and highest of cpu and ram per cell (``cpu``, ``cpu_min``, ...), NaN where
    the cell has no sample of that metric."""
    out: dict[str, np.ndarray] = {}
    for metric in METRICS:
        held = cells[f"{metric}_count"] > 0
        out[metric] = means(cells, metric)
        for extreme in ("min", "max"):
            out[f"{metric}_{extreme}"] = np.where(held, cells[f"{metric}_{extreme}"], np.nan)
    return out


def server_minutes(last: LastMinute, now: float) -> ServerMinutes:
    """The exposition's columns: each server's last complete minute, its anomaly scores, and
    its last-seen age and status at ``now``."""
    _, ranks = ages_and_ranks(last.last_seen, now)
    return ServerMinutes(
        names=last.names,
        minute_start=float(last.minute * MINUTE),
        samples=last.cells["samples"].astype(float),
        cpu_anomaly=np.asarray(last.cpu_anomaly, dtype=float),
        ram_anomaly=np.asarray(last.ram_anomaly, dtype=float),
        last_seen=np.asarray(last.last_seen, dtype=float),
        now=now,
        status=ranks.astype(float),
        **figures(last.cells),
    )


def _family_of(figure: str) -> str:
    metric, _, extreme = figure.partition("_")
    return f"servertrack_server_{metric}{'_' + extreme if extreme else ''}_percent"


def series_history(found: Histories) -> SeriesHistory:
    """The remote read's history of the servers of ``found``, in its order."""
    minute_figures = figures(found.minutes)
    hour_figures = figures(found.hours)
    minutes = {_family_of(key): value for key, value in minute_figures.items()}
    hours = {_family_of(key): value for key, value in hour_figures.items()}
    width_m, width_h = found.minutes.shape[1], found.hours.shape[1]
    return SeriesHistory(
        minute_starts=(found.first_minute + np.arange(width_m, dtype=np.int64)) * MINUTE,
        hour_starts=(found.first_hour + np.arange(width_h, dtype=np.int64)) * HOUR,
        minutes=minutes,
        hours=hours,
    )
