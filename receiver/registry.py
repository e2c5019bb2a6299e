"""Server ids: the receiver's number for each server name it tracks, and what it keeps of each.

A batch carries ids, not names: a name is announced (in the batch's ``names``) once, in the first
batch after it got its id. At most ``max_servers`` names are tracked; the caller refuses a new one
beyond that (``server_limit``). A server that sent nothing accepted for ``SERVER_IDLE`` seconds is
forgotten (looked for every ``EVICT_EVERY`` seconds), and its id goes to a later new name, which
is announced in its turn.
"""

from __future__ import annotations

from servertrack.common.batch import ServerHealth
from servertrack.common.buckets import HOUR, HOUR_WINDOW
from servertrack.receiver.sequences import SequenceTracker

SERVER_IDLE = (HOUR_WINDOW + 1) * HOUR
"""A server silent this long has nothing left in any window: the receiver forgets it."""
EVICT_EVERY = 60.0


class ServerState:
    """What the receiver keeps of one server: its sequence streams, its addresses and the
    counters of its health."""

    __slots__ = (
        "duplicates",
        "id",
        "ips",
        "ips_raw",
        "lost",
        "rejected",
        "seen",
        "seq_resets",
        "sequence",
        "skew",
    )

    def __init__(self, server_id: int, now: float) -> None:
        self.id = server_id
        self.sequence = SequenceTracker()
        self.lost = 0
        self.duplicates = 0
        self.rejected = 0
        """Samples of this server refused by the time window (future, too_old)."""
        self.seq_resets = 0
        self.skew = 0.0
        self.seen = now
        """When it was registered or last sent a sample that was accepted."""
        self.ips: tuple[str, ...] = ()
        self.ips_raw: list[str] | None = None
        """``ips`` as the list an agent message carries, to compare on the fast path."""

    def health(self, now: float) -> ServerHealth:
        return ServerHealth(
            self.ips,
            self.lost,
            self.duplicates,
            self.rejected,
            self.skew,
            self.seq_resets,
            self.sequence.in_conflict(now),
        )


class ServerRegistry:
    """Names to ids and back, at most ``max_servers`` of them."""

    def __init__(self, max_servers: int) -> None:
        self.max_servers = max_servers
        self.servers: dict[str, ServerState] = {}
        self.names: list[str | None] = []
        """By id; ``None`` for an id free to give again."""
        self.free_ids: list[int] = []
        self.new_names: list[tuple[int, str]] = []
        """``(id, name)`` given since the last batch, to announce in the next one."""
        self.evicted = 0
        self._next_evict = float("-inf")

    def __len__(self) -> int:
        return len(self.servers)

    def has_room(self, more: int = 1) -> bool:
        """Whether ``more`` new names would still be within ``max_servers``."""
        return len(self.servers) + more <= self.max_servers

    def register(self, name: str, now: float) -> ServerState:
        """A new server named ``name``, with a free id or the next one."""
        if self.free_ids:
            server = ServerState(self.free_ids.pop(), now)
            self.names[server.id] = name
        else:
            server = ServerState(len(self.names), now)
            self.names.append(name)
        self.servers[name] = server
        self.new_names.append((server.id, name))
        return server

    def name_of(self, server_id: int) -> str | None:
        return self.names[server_id]

    def take_new_names(self) -> list[tuple[int, str]]:
        """The names to announce in the next batch; from now on they count as announced."""
        names, self.new_names = self.new_names, []
        return names

    def all_names(self) -> list[tuple[int, str]]:
        return [(server_id, name) for server_id, name in enumerate(self.names) if name is not None]

    def evict_silent(self, now: float) -> list[ServerState]:
        """Forget the servers that sent nothing accepted for ``SERVER_IDLE`` seconds (at most
        once every ``EVICT_EVERY`` seconds); their ids are free from now on. Returns them."""
        if now < self._next_evict:
            return []
        self._next_evict = now + EVICT_EVERY
        cutoff = now - SERVER_IDLE
        silent = [name for name, server in self.servers.items() if server.seen < cutoff]
        forgotten = []
        for name in silent:
            server = self.servers.pop(name)
            self.names[server.id] = None
            self.free_ids.append(server.id)
            forgotten.append(server)
        self.evicted += len(forgotten)
        return forgotten
