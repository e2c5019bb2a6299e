"""What one writer remembers of the servers it writes: all of it is a cache that Redis can
rebuild, bounded by forgetting servers it has not written for a while.

Per server: a local row, the RESP bytes of its three keys (so a merge call is assembled without
re-encoding them), its cluster slot and index shard, the minute its index entry was last
touched, when its summary record is next due, whether its minute means were read back from
Redis yet (``seeded``), its last-seen time and when this writer last wrote it. The minute means
themselves are in :class:`~servertrack.store.summary.SparkRing`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from servertrack.store.keys import server_keys, shard_of, slot_of
from servertrack.store.summary import SparkRing


def bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


class Roster:
    def __init__(self, capacity: int = 1024) -> None:
        self.row_of: dict[str, int] = {}
        self.names: list[str | None] = []
        self.keys: list[bytes] = []
        """RESP of the server's three keys, as a Function call takes them."""
        self.free: list[int] = []
        self.slot = np.zeros(capacity, np.int32)
        self.shard = np.zeros(capacity, np.int16)
        self.touched = np.full(capacity, -1, np.int64)
        self.summary_due = np.full(capacity, np.inf)
        self.seeded = np.zeros(capacity, bool)
        self.last_seen = np.full(capacity, -np.inf)
        self.active = np.full(capacity, -np.inf)
        self.spark = SparkRing(capacity)

    def __len__(self) -> int:
        return len(self.row_of)

    @property
    def capacity(self) -> int:
        return int(self.slot.size)

    def _grow(self, capacity: int) -> None:
        for name, empty in (
            ("slot", 0),
            ("shard", 0),
            ("touched", -1),
            ("summary_due", np.inf),
            ("seeded", False),
            ("last_seen", -np.inf),
            ("active", -np.inf),
        ):
            old = getattr(self, name)
            bigger = np.full(capacity, empty, old.dtype)
            bigger[: old.size] = old
            setattr(self, name, bigger)
        self.spark.grow(capacity)

    def rows_for(self, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Local rows of ``names``, creating the missing ones; and which were created."""
        rows = np.empty(len(names), np.int64)
        created = np.zeros(len(names), bool)
        row_of = self.row_of
        for k, name in enumerate(names):
            row = row_of.get(name)
            if row is None:
                row = self._add(name)
                created[k] = True
            rows[k] = row
        return rows, created

    def _add(self, name: str) -> int:
        if self.free:
            row = self.free.pop()
        else:
            row = len(self.names)
            if row >= self.capacity:
                self._grow(self.capacity * 2)
            self.names.append(None)
            self.keys.append(b"")
        keys = server_keys(name)
        self.names[row] = name
        self.keys[row] = b"".join(bulk(key) for key in keys)
        self.row_of[name] = row
        self.slot[row] = slot_of(keys[0])
        self.shard[row] = shard_of(name)
        self.touched[row] = -1
        self.summary_due[row] = -np.inf
        self.seeded[row] = False
        self.last_seen[row] = -np.inf
        self.active[row] = -np.inf
        self.spark.clear_rows(np.array([row]))
        return row

    def forget_idle(self, before: float) -> int:
        """Forget servers this writer has not written since ``before``; returns how many."""
        used = len(self.names)
        idle = np.flatnonzero(self.active[:used] < before)
        gone = [row for row in idle.tolist() if self.names[row] is not None]
        for row in gone:
            name = self.names[row]
            assert name is not None
            del self.row_of[name]
            self.names[row] = None
            self.keys[row] = b""
            self.free.append(row)
        if gone:
            rows = np.asarray(gone)
            self.active[rows] = -np.inf
            self.spark.clear_rows(rows)
        return len(gone)
