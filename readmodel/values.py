"""The typed values every store answers with (see :class:`~servertrack.readmodel.model.ReadModel`).

A :class:`ServerView` holds cells (:mod:`servertrack.readmodel.cells`), not JSON: the renderer
(:mod:`servertrack.readmodel.render`) makes the API's answer from them, the same way whichever
store they came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from servertrack.readmodel.cells import CELL_DTYPE
from servertrack.readmodel.health import NO_HEALTH, Health


@dataclass(frozen=True, slots=True)
class ServerView:
    """A server's buckets inside the windows, as of ``as_of`` (the store's clock when it was
    read: every batch applied by then is in it)."""

    name: str
    minutes: np.ndarray
    """The minute cells holding samples, oldest first (``CELL_DTYPE``)."""
    hours: np.ndarray
    """The hour cells holding samples, oldest first."""
    last_seen: float
    as_of: float
    health: Health = NO_HEALTH
    cpu_anomaly: np.ndarray | None = None
    """The anomaly score of each minute's cpu mean, one per minute cell (NaN = none: not scored
    yet, the detector warming up, or no cpu sample); None when the store keeps no scores."""
    ram_anomaly: np.ndarray | None = None

    def __post_init__(self) -> None:
        for cells in (self.minutes, self.hours):
            if cells.dtype != CELL_DTYPE:
                raise TypeError(f"cells of dtype {cells.dtype}, not CELL_DTYPE")
        for scores in (self.cpu_anomaly, self.ram_anomaly):
            if scores is not None and scores.shape != self.minutes.shape:
                raise ValueError("one anomaly score per minute cell")


@dataclass(frozen=True, slots=True)
class ServersPage:
    """Up to ``limit`` servers by name after a cursor, with their last-seen time."""

    servers: list[tuple[str, float]] = field(default_factory=list)
    total: int = 0
    next_cursor: str | None = None


@dataclass(frozen=True, slots=True)
class LastMinute:
    """Every tracked server's last complete minute (the one before the current minute: its
    means are final), in name order: what alerts are evaluated on and Prometheus scrapes."""

    minute: int
    """The minute's number (``ts // 60`` of its start)."""
    names: list[str]
    last_seen: np.ndarray
    cells: np.ndarray
    """Each server's cell of that minute (``CELL_DTYPE``); ``samples`` 0 when it sent none."""
    cpu_anomaly: np.ndarray
    """Each server's anomaly score of that minute's cpu mean, in [0, 1]; NaN while its detector
    warms up or when it has no score."""
    ram_anomaly: np.ndarray

    def __len__(self) -> int:
        return len(self.names)


@dataclass(frozen=True, slots=True)
class Histories:
    """Some servers' cells over both windows, one row per server in the order they were asked
    for: ``minutes[i, j]`` is server ``i``'s cell of minute ``first_minute + j`` (the 60 minutes
    up to and including the current one), ``hours[i, j]`` its cell of hour ``first_hour + j``
    (the 24 hours up to the current one). A bucket without samples is an empty cell
    (``samples`` 0)."""

    first_minute: int
    first_hour: int
    names: list[str]
    minutes: np.ndarray
    """Shape ``(servers, 60)``, ``CELL_DTYPE``."""
    hours: np.ndarray
    """Shape ``(servers, 24)``, ``CELL_DTYPE``."""

    def __post_init__(self) -> None:
        for cells in (self.minutes, self.hours):
            if cells.dtype != CELL_DTYPE or cells.ndim != 2 or len(cells) != len(self.names):
                raise ValueError("cells must be CELL_DTYPE rows, one per name")

    def __len__(self) -> int:
        return len(self.names)
