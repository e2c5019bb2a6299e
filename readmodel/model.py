"""The read model: what every store answers about servers, in typed values.

Two stores implement it: the aggregator's in-memory rollups
(:class:`servertrack.aggregator.rollups.Rollups`) and the Redis reader
(:class:`servertrack.store.reader.RedisReader`). What is made of the answers (the JSON of each
endpoint, the read cache, the HTTP status) is written once over this protocol, in
:mod:`servertrack.readmodel.answers`, :mod:`servertrack.readmodel.render` and ``api/``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Protocol

from servertrack.readmodel.errors import CorruptKey
from servertrack.readmodel.fleet import FleetTable
from servertrack.readmodel.values import ServersPage, ServerView


class ReadModel(Protocol):
    """Reads of one store at ``now`` (its clock, for the windows). Each raises
    :class:`~servertrack.readmodel.errors.StoreUnavailable` when the store is out of reach."""

    def view(self, name: str, now: float | None = None) -> ServerView | None:
        """A server's buckets and health; None without data in the window. Raises
        :class:`~servertrack.readmodel.errors.CorruptKey` when its data cannot be read."""
        ...

    def views(
        self, names: Sequence[str], now: float | None = None
    ) -> list[ServerView | CorruptKey | None]:
        """:meth:`view` of each name, a server whose data cannot be read answered with its
        :class:`CorruptKey` in its place."""
        ...

    def servers_page(self, after: str | None, limit: int, now: float | None = None) -> ServersPage:
        """Up to ``limit`` servers by name after ``after``, and the total tracked."""
        ...

    def fleet_version(self, now: float) -> Hashable:
        """Changes whenever :meth:`fleet_table` would answer differently."""
        ...

    def fleet_table(self, now: float) -> FleetTable:
        """Every tracked server's row of the overview."""
        ...
