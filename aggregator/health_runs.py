"""Each receiver run's newest health record of each server, as the in-memory store keeps them.

A receiver run (a *writer*) reports, in each batch, the health of the servers whose health
changed (:class:`~servertrack.common.batch.ServerHealth`, the totals of that run). Redis keeps
each writer's record per server; in memory they are kept per writer too, one dict per run, so
that a read merges them with the one rule of
:func:`servertrack.readmodel.health.merge_health`.

PERF: every reporting server's record changes with every batch (its clock skew moves), so a
batch's records go in with one ``dict.update`` of its run's dict (250,000 servers: ~15 ms)
rather than one small object per server and run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from servertrack.common.batch import ServerHealth


class HealthRuns:
    """Receiver run → (when it last wrote, server name → its newest record in that run)."""

    def __init__(self) -> None:
        self.runs: dict[str, tuple[float, dict[str, ServerHealth]]] = {}

    def note(self, epoch: str, written: float, health: Mapping[str, ServerHealth]) -> None:
        """Run ``epoch``'s records of these servers, written at ``written``."""
        records = self.runs[epoch][1] if epoch in self.runs else {}
        records.update(health)
        self.runs[epoch] = (written, records)

    def records(self, name: str) -> list[tuple[float, ServerHealth]]:
        """``(written, health)`` of every run that reported ``name``."""
        return [
            (written, records[name]) for written, records in self.runs.values() if name in records
        ]

    def forget(self, names: Iterable[str], older_than: float) -> None:
        """Drop the records of ``names`` (servers released), and runs that wrote nothing since
        ``older_than`` (every server they reported has been released since)."""
        gone = list(names)
        for epoch, (written, records) in list(self.runs.items()):
            if written < older_than:
                del self.runs[epoch]
                continue
            for name in gone:
                records.pop(name, None)

    def keep_only(self, names: set[str] | dict[str, Any]) -> None:
        """Drop every record of a server not in ``names``."""
        for _, records in self.runs.values():
            for name in [name for name in records if name not in names]:
                del records[name]

    def to_wire(self) -> list[Any]:
        return [
            [epoch, written, [[name, record.to_wire()] for name, record in records.items()]]
            for epoch, (written, records) in self.runs.items()
        ]

    @classmethod
    def from_wire(cls, raw: Any) -> HealthRuns:
        """What :meth:`to_wire` made (TypeError or ValueError when it does not fit)."""
        book = cls()
        for epoch, written, records in raw:
            book.runs[str(epoch)] = (
                float(written),
                {str(name): ServerHealth.from_wire(record) for name, record in records},
            )
        return book
