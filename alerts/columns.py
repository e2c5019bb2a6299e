"""The read model's last complete minute as the columns the evaluator reads."""

from __future__ import annotations

import numpy as np

from servertrack.alerts.evaluate import FleetColumns
from servertrack.common.buckets import MINUTE
from servertrack.readmodel.values import LastMinute


def minute_means(cells: np.ndarray, metric: str) -> np.ndarray:
    """Each cell's mean of ``metric`` over its raw samples; NaN where it has none."""
    counts = cells[f"{metric}_count"]
    means = np.full(counts.shape, np.nan)
    np.divide(cells[f"{metric}_sum"], counts, out=means, where=counts > 0)
    return means


def fleet_columns(last: LastMinute) -> FleetColumns:
    """What every rule is evaluated over: each server's last sample, the means of its last
    complete minute and that minute's anomaly scores."""
    return FleetColumns(
        names=last.names,
        last_seen=np.asarray(last.last_seen, np.float64),
        cpu=minute_means(last.cells, "cpu"),
        ram=minute_means(last.cells, "ram"),
        cpu_anomaly=np.asarray(last.cpu_anomaly, np.float64),
        ram_anomaly=np.asarray(last.ram_anomaly, np.float64),
        minute=float(last.minute * MINUTE),
    )
