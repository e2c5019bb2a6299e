"""A server's health as its readers see it: the records of every receiver run that reported it,
merged by one rule in both stores.

Each receiver run (a *writer*: one run of one host's receiver) reports per server the totals of
that run (:class:`~servertrack.common.batch.ServerHealth`). A store keeps the newest record of
each writer with the time it was written, and a read merges them: counters add up over writers
(a restarted receiver, or several hosts, never lose what the others counted); addresses and clock
skew are the newest writer's; ``name_conflict`` holds while any writer that wrote within
``CONFLICT_RECENT`` seconds of the newest one sees two agents under the name.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from servertrack.common.batch import ServerHealth

CONFLICT_RECENT = 600.0
"""Seconds a writer's ``name_conflict`` counts after the newest record: a receiver run that
ended long ago no longer speaks for the name."""


@dataclass(frozen=True, slots=True)
class Health:
    ips: tuple[str, ...] = ()
    lost: int = 0
    duplicates: int = 0
    rejected: int = 0
    skew: float | None = None
    seq_resets: int = 0
    name_conflict: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "ip": list(self.ips),
            "lost": self.lost,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "skew_seconds": self.skew,
            "seq_resets": self.seq_resets,
            "name_conflict": self.name_conflict,
        }


NO_HEALTH = Health()


def merge_health(records: Iterable[tuple[float, ServerHealth]]) -> Health:
    """The records ``(written, health)`` of every writer, merged (see the module docstring)."""
    kept = list(records)
    if not kept:
        return NO_HEALTH
    newest_at, newest = kept[0]
    for written, health in kept:
        if written >= newest_at:  # of records written at once, the one given last
            newest_at, newest = written, health
    recent = newest_at - CONFLICT_RECENT
    return Health(
        ips=tuple(newest.ips),
        lost=sum(health.lost for _, health in kept),
        duplicates=sum(health.duplicates for _, health in kept),
        rejected=sum(health.rejected for _, health in kept),
        skew=float(newest.skew),
        seq_resets=sum(health.seq_resets for _, health in kept),
        name_conflict=any(health.name_conflict for written, health in kept if written >= recent),
    )
