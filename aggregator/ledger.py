"""Which receiver batches have been applied, so that each is applied exactly once.

Batches are numbered from 0 by each receiver run (its ``epoch``). They normally arrive in order,
but a restarted aggregator also receives re-sent batches from the receiver's time index while
new ones keep coming, so the ledger keeps a watermark (every batch up to it is applied) plus the
numbers applied beyond it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class BatchLedger:
    epoch: str | None = None
    applied_upto: int = -1
    applied_beyond: set[int] = field(default_factory=set)
    fresh: bool = True
    """Nothing restored and no replay answered yet: where this aggregator's batches begin is not
    known (the receiver's oldest retained batch, learned from its replay answer)."""

    def start(self, epoch: str, first: int) -> None:
        """A fresh ledger begins at batch ``first`` of ``epoch`` (the oldest the receiver still
        holds): batches before it were never this aggregator's to apply, and are not counted
        as lost. Batches admitted before (live ones that came first) stay admitted."""
        if not self.fresh:
            return
        self.fresh = False
        if self.epoch not in (None, epoch):
            self.applied_beyond = set()
        self.epoch = epoch
        self.applied_upto = max(self.applied_upto, first - 1)
        self.applied_beyond = {n for n in self.applied_beyond if n > self.applied_upto}
        while self.applied_upto + 1 in self.applied_beyond:
            self.applied_upto += 1
            self.applied_beyond.discard(self.applied_upto)

    def admit(self, epoch: str, number: int) -> bool:
        """True if batch ``number`` of ``epoch`` is new (and records it as applied)."""
        if self.epoch is None:
            self.epoch = epoch
        elif epoch != self.epoch:
            self.epoch, self.applied_upto, self.applied_beyond = epoch, -1, set()
        if number <= self.applied_upto or number in self.applied_beyond:
            return False
        self.applied_beyond.add(number)
        while self.applied_upto + 1 in self.applied_beyond:
            self.applied_upto += 1
            self.applied_beyond.discard(self.applied_upto)
        return True

    def missing(self) -> bool:
        """Some batch below one already applied has not been seen (or, fresh, the receiver has
        not said yet where this aggregator's batches begin)."""
        return self.fresh or bool(self.applied_beyond)

    def give_up_below(self, first_available: int) -> int:
        """The receiver no longer holds batches below ``first_available``: stop waiting for
        them. Returns how many batch numbers were given up."""
        lost = 0
        while self.applied_upto + 1 < first_available:
            if self.applied_upto + 1 not in self.applied_beyond:
                lost += 1
            self.applied_upto += 1
            self.applied_beyond.discard(self.applied_upto)
        while self.applied_upto + 1 in self.applied_beyond:
            self.applied_upto += 1
            self.applied_beyond.discard(self.applied_upto)
        return lost

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "applied_upto": self.applied_upto,
            "applied_beyond": sorted(self.applied_beyond),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchLedger:
        """A restored ledger is not fresh: it knows where it stands."""
        applied = int(data["applied_upto"])
        return cls(data["epoch"], applied, set(data["applied_beyond"]), fresh=False)
