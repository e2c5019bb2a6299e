"""The store interface the aggregator daemon talks to, so another backend can replace the
in-memory :class:`~servertrack.aggregator.rollups.Rollups`."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from servertrack.aggregator.rollups import ApplyResult


class RollupStore(Protocol):
    evictions: int
    """Bumped whenever rows are released; rows cached by callers must then be looked up again."""

    def row_for(self, name: str) -> int: ...

    def apply(
        self,
        rows: np.ndarray,
        ts: np.ndarray,
        cpu: np.ndarray,
        ram: np.ndarray,
        now: float | None = None,
        seq: np.ndarray | None = None,
    ) -> ApplyResult: ...

    def sequences(self) -> tuple[list[str], np.ndarray, np.ndarray]: ...

    def view(self, name: str, now: float | None = None) -> dict[str, Any] | None: ...

    def servers(self, now: float | None = None) -> list[tuple[str, float]]: ...

    def server_count(self) -> int: ...
