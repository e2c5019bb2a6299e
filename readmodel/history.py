"""Many servers' cells over both windows at once, as one typed value: what the remote read of
Prometheus asks for.

:func:`histories` reads them from any :class:`~servertrack.readmodel.model.ReadModel` (the
in-memory rollups in the aggregator, the Redis reader in an API over Redis) and lays each server's
cells out on the windows' grid, so a caller indexes a minute or an hour by its position instead
of searching stamps. :func:`encode_histories` and :func:`decode_histories` carry the value over
the aggregator's query socket as the cells' own bytes (no JSON).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from servertrack.common.buckets import HOUR_WINDOW, MINUTE_WINDOW, hour_index, minute_index
from servertrack.readmodel.cells import CELL_SIZE, empty_cells, unpack_cells
from servertrack.readmodel.model import ReadModel
from servertrack.readmodel.values import Histories, ServerView


def _place(row: np.ndarray, cells: np.ndarray, first: int) -> None:
    """Put ``cells`` in ``row`` at their stamp's position (those outside the row are left out)."""
    columns = cells["stamp"].astype(np.int64) - first
    inside = (columns >= 0) & (columns < row.size)
    row[columns[inside]] = cells[inside]


def histories_of(views: Sequence[ServerView | Any], names: Sequence[str], now: float) -> Histories:
    """The :class:`Histories` of ``names`` from their views at ``now`` (a view that is not a
    :class:`ServerView`, such as None or a ``CorruptKey``, counts as a server without data)."""
    first_minute = minute_index(now) - MINUTE_WINDOW + 1
    first_hour = hour_index(now) - HOUR_WINDOW + 1
    minutes = empty_cells((len(names), MINUTE_WINDOW))
    hours = empty_cells((len(names), HOUR_WINDOW))
    for row, view in enumerate(views):
        if isinstance(view, ServerView):
            _place(minutes[row], view.minutes, first_minute)
            _place(hours[row], view.hours, first_hour)
    return Histories(first_minute, first_hour, list(names), minutes, hours)


def histories(model: ReadModel, names: Sequence[str], now: float) -> Histories:
    """The minute and hour cells of each of ``names`` in ``model`` at ``now``."""
    return histories_of(model.views(names, now), names, now)


def encode_histories(value: Histories) -> dict[str, Any]:
    """A :class:`Histories` as msgpack-ready values (the cells as their bytes)."""
    return {
        "first_minute": value.first_minute,
        "first_hour": value.first_hour,
        "names": value.names,
        "minutes": np.ascontiguousarray(value.minutes).tobytes(),
        "hours": np.ascontiguousarray(value.hours).tobytes(),
    }


def decode_histories(raw: Any) -> Histories:
    """What :func:`encode_histories` made (ValueError for anything else)."""
    try:
        names = [str(name) for name in raw["names"]]
        shaped = []
        for key, width in (("minutes", MINUTE_WINDOW), ("hours", HOUR_WINDOW)):
            data = raw[key]
            if not isinstance(data, bytes) or len(data) != len(names) * width * CELL_SIZE:
                raise ValueError(f"{key}: not {len(names)} rows of {width} cells")
            shaped.append(unpack_cells(data).reshape(len(names), width))
        return Histories(int(raw["first_minute"]), int(raw["first_hour"]), names, *shaped)
    except (KeyError, TypeError) as err:
        raise ValueError(f"not histories: {err}") from err


def joined(parts: Sequence[Histories]) -> Histories:
    """Parts read at the same windows, one after the other (ValueError when their windows
    differ: a minute turned between them)."""
    if not parts:
        raise ValueError("nothing to join")
    first = parts[0]
    for part in parts[1:]:
        if (part.first_minute, part.first_hour) != (first.first_minute, first.first_hour):
            raise ValueError("the parts were read in different minutes")
    return Histories(
        first.first_minute,
        first.first_hour,
        [name for part in parts for name in part.names],
        np.concatenate([part.minutes for part in parts]),
        np.concatenate([part.hours for part in parts]),
    )
