"""What the HTTP API needs from the monitoring host: the read answers of
:mod:`servertrack.readmodel.answers`, records, counters and health.

Two implementations: :class:`~servertrack.api.daemons_backend.DaemonsBackend` asks the host's
aggregator (whose in-memory rollups make the answers) and receiver over ZeroMQ;
:class:`~servertrack.api.store_backend.StoreBackend` makes the same answers itself from Redis,
recording through a receiver when it has one. Neither starts a thread: the generation source
and the group commit they use are started and closed by
:class:`~servertrack.api.read_path.ReadPath`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from servertrack.api.generation import Current
from servertrack.common.fleet_query import FleetQuery
from servertrack.common.rpc import Unavailable
from servertrack.common.sample import Sample
from servertrack.readmodel.answers import Answer
from servertrack.readmodel.errors import CorruptKey
from servertrack.readmodel.values import Histories, LastMinute

__all__ = ["Backend", "Kept", "Threaded", "Unavailable"]

Kept = tuple[int | None, Answer | CorruptKey | None]
"""An answer with the generation it belongs to (None: not to be kept)."""


class Threaded(Protocol):
    """A part that runs a thread: started and closed by its owner, never on first use."""

    def start(self) -> None: ...

    def close(self) -> None: ...


class Backend(Protocol):
    """Each call raises :class:`Unavailable` when the part it needs does not answer in time;
    ``deadline`` (wall clock) is when the answer stops being useful."""

    def view(self, name: str, deadline: float | None = None) -> Kept:
        """A server's answer: None without data, its ``CorruptKey`` when unreadable."""
        ...

    def views(self, names: Sequence[str]) -> tuple[int | None, list[Answer | CorruptKey | None]]:
        """Many servers' answers at once, with the generation they all belong to."""
        ...

    def servers(self, after: str | None, limit: int, deadline: float | None = None) -> bytes:
        """The JSON of a page of ``GET /servers``."""
        ...

    def fleet(self, query: FleetQuery, deadline: float | None = None) -> bytes:
        """The JSON of a page of ``GET /fleet`` (``BadFleetQuery`` when the store refuses it)."""
        ...

    def grid(self, known: str | None, deadline: float | None = None) -> bytes:
        """The JSON of ``GET /fleet/grid``."""
        ...

    def last_minute(self, deadline: float | None = None) -> LastMinute:
        """Every server's last complete minute."""
        ...

    def alerts(self, deadline: float | None = None) -> bytes:
        """The JSON of ``GET /alerts``: the pending and firing alerts the aggregator evaluates,
        as Prometheus' ``GET /api/v1/alerts`` lists them."""
        ...

    def histories(self, names: Sequence[str], deadline: float | None = None) -> Histories:
        """The minute and hour cells of each of ``names``, in that order (empty cells for a
        server without data)."""
        ...

    def stats(self, deadline: float | None = None) -> dict[str, Any]:
        """The receiver's and aggregator's counters (empty sections when there are none)."""
        ...

    def ping(self) -> dict[str, Any]:
        """Each part's health: ``{part: {"ok": bool, "problems": [...], ...}}``."""
        ...

    def record(self, samples: list[Sample]) -> dict[str, Any]:
        """The receiver's verdict on ``samples`` (one: through the group commit)."""
        ...

    def generation(self) -> Current | None:
        """Which state answers come from now (None: unknown, nothing may be kept)."""
        ...

    def threads(self) -> list[Threaded]:
        """The parts it holds that run threads (a generation source, a group commit), for
        their owner to start and close."""
        ...

    def close(self) -> None:
        """Close its sockets and connections (its threads are stopped before, by their owner)."""
        ...
