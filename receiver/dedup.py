"""De-duplication of samples without seq (HTTP records, Graphite points).

A seq-less sample is a repeat when its key was seen from the same server in the last ``horizon``
seconds of arrivals: its ts for an HTTP record, (ts, metric) for a Graphite point, which carries
one metric. At most ``limit`` keys are remembered in all; past that the oldest are forgotten early
and counted (``evicted``): the horizon shrinks, nothing is dropped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable

from servertrack.receiver.registry import ServerState


class RecentKeys:
    """The keys of recent seq-less samples, as (server id, key) in one set, and one queue in
    arrival order to expire them.

    PERF: servers by id, in one set, not a set per server holding the server's object: tuples of
    plain values are no longer tracked by the garbage collector, and a million keys (and a set
    per server) kept each full collection busy for seconds at 250,000 servers. An id is given to
    another server only after 25 hours of silence, long after its keys left (``horizon``)."""

    def __init__(self, horizon: float, limit: int) -> None:
        self.horizon = horizon
        self.limit = limit
        self.evicted = 0
        """Keys forgotten before their horizon because ``limit`` were held."""
        self._keys: set[tuple[int, Hashable]] = set()
        self._order: deque[tuple[float, tuple[int, Hashable]]] = deque()

    def __len__(self) -> int:
        return len(self._order)

    def is_repeat(self, server: ServerState, key: Hashable, now: float) -> bool:
        """Whether ``key`` was seen from ``server`` within the horizon; remembers it if not."""
        held = (server.id, key)
        keys = self._keys
        if held in keys:
            return True
        keys.add(held)
        order = self._order
        order.append((now, held))
        if len(order) > self.limit:
            keys.discard(order.popleft()[1])
            self.evicted += 1
        return False

    def expire(self, now: float) -> None:
        """Forget the keys that arrived more than ``horizon`` seconds before ``now``."""
        horizon = now - self.horizon
        keys, order = self._keys, self._order
        while order and order[0][0] < horizon:
            keys.discard(order.popleft()[1])

    @staticmethod
    def forget(server: ServerState) -> None:
        """A forgotten server: its keys left with the horizon long before (25 hours of silence),
        so nothing is held for it any more."""
