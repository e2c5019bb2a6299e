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
    """The keys of recent seq-less samples: a set per server (``ServerState.recent``, ``None``
    when empty, so the lookup is one attribute), and one queue in arrival order to expire them."""

    def __init__(self, horizon: float, limit: int) -> None:
        self.horizon = horizon
        self.limit = limit
        self.evicted = 0
        """Keys forgotten before their horizon because ``limit`` were held."""
        self._order: deque[tuple[float, ServerState, Hashable]] = deque()

    def __len__(self) -> int:
        return len(self._order)

    def is_repeat(self, server: ServerState, key: Hashable, now: float) -> bool:
        """Whether ``key`` was seen from ``server`` within the horizon; remembers it if not."""
        recent = server.recent
        if recent is None:
            recent = server.recent = set()
        elif key in recent:
            return True
        recent.add(key)
        order = self._order
        order.append((now, server, key))
        if len(order) > self.limit:
            _, owner, old = order.popleft()
            if owner.recent is not None:
                owner.recent.discard(old)
            self.evicted += 1
        return False

    def expire(self, now: float) -> None:
        """Forget the keys that arrived more than ``horizon`` seconds before ``now``."""
        horizon = now - self.horizon
        order = self._order
        while order and order[0][0] < horizon:
            _, server, key = order.popleft()
            if server.recent is not None:
                server.recent.discard(key)
                if not server.recent:
                    server.recent = None

    @staticmethod
    def forget(server: ServerState) -> None:
        """Drop a forgotten server's keys (its queue entries expire as nothing)."""
        server.recent = None
