"""The store interface the aggregator talks to: any store that keeps the rollups implements it.

The in-memory :class:`~servertrack.aggregator.rollups.Rollups` is one,
:class:`~servertrack.aggregator.redis_rollups.RedisRollups` the other. Its reads are the read
model (:class:`~servertrack.readmodel.model.ReadModel`); the rest is how batches go in. A store
that keeps its data itself (and needs no snapshot) answers ``None`` from
:meth:`RollupStore.snapshot`.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from servertrack.aggregator.rollups import ApplyResult
from servertrack.common.batch import ServerHealth
from servertrack.readmodel.model import ReadModel


class RollupStore(ReadModel, Protocol):
    evictions: int
    """Bumped whenever rows are released; rows cached by callers must then be looked up again."""
    writes_behind: bool
    """Whether it holds batches back for a writer thread (:meth:`take`), as Redis does."""

    def row_for(self, name: str) -> int:
        """The row of ``name``, created on first sight; ``REFUSED`` beyond the server cap."""
        ...

    def advance(self, now: float | None = None) -> float: ...

    def evict_silent(self, now: float | None = None) -> int:
        """Release the servers silent for 24 hours; called between batches, never inside one."""
        ...

    def apply(
        self,
        rows: np.ndarray,
        ts: np.ndarray,
        cpu: np.ndarray,
        ram: np.ndarray,
        now: float | None = None,
        seq: np.ndarray | None = None,
        origin: tuple[str, int] | None = None,
    ) -> ApplyResult:
        """Add samples (or hold them: then ``flush`` writes them and counts them applied).
        ``origin`` is the batch's (receiver epoch, batch number)."""
        ...

    def score_minutes(self, now: float | None = None) -> int:
        """Give every server's cpu and ram means of each minute completed since the last call
        their anomaly scores (:mod:`servertrack.anomaly.fleet_scores`); how many minutes were
        scored (0 when none is due, or another host scores them)."""
        ...

    def note_health(self, epoch: str, health: dict[str, ServerHealth]) -> None:
        """The health of servers as receiver run ``epoch`` reports it: kept per run, merged at
        each read by :func:`~servertrack.readmodel.health.merge_health`."""
        ...

    def take(self, now: float | None = None, upto: tuple[str, int] | None = None) -> Any:
        """What is held back, as a job whose ``run()`` writes it out (raising
        ``StoreUnavailable`` when the store cannot be reached); ``None`` when nothing is held
        (always, for a store that applies everything at once). With ``upto`` (epoch, number),
        batches of that writer numbered above it stay held: a store that guards by the highest
        batch applied must never see a batch before an earlier one that is still missing."""
        ...

    def settle(self, job: Any) -> Any:
        """After ``job.run()``, whether it succeeded or not: what it did not write is held
        again. Returns the counts of what it wrote (``applied``, ``expired``, ``refused``)."""
        ...

    def sequences(self) -> tuple[list[str], np.ndarray, np.ndarray]: ...

    def tracks(self, name: str) -> bool: ...

    def server_count(self) -> int: ...

    def snapshot(self) -> dict[str, np.ndarray] | None:
        """The store's content as plain arrays for a snapshot file, or None when it needs none."""
        ...

    def restore(self, arrays: dict[str, np.ndarray]) -> None:
        """Load what :meth:`snapshot` returned (ValueError or KeyError if it does not fit)."""
        ...
