"""The answers of the read endpoints over any :class:`~servertrack.readmodel.model.ReadModel`.

A server's answer is its JSON (:mod:`servertrack.readmodel.render`) with the time it is as of;
the fleet's come from :class:`~servertrack.readmodel.fleet.FleetAnswers`. The aggregator answers
the API's queries with these over its rollups, and an API reading Redis makes the same ones over
the Redis reader: one code path for both modes. HTTP statuses are the API's business: here a
server without data is ``None`` and one whose data cannot be read is its ``CorruptKey``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from servertrack.common.buckets import iso_utc
from servertrack.readmodel.cells import CELL_SIZE, unpack_cells
from servertrack.readmodel.errors import CorruptKey
from servertrack.readmodel.model import ReadModel
from servertrack.readmodel.render import servers_json, view_json
from servertrack.readmodel.values import LastMinute, ServerView


@dataclass(frozen=True, slots=True)
class Answer:
    """A server's answer: its JSON and the time it is as of (the store's clock when it was
    read, ISO 8601; every batch applied by then is in it)."""

    body: bytes
    as_of: str


def view_answer(view: ServerView | CorruptKey | None) -> Answer | CorruptKey | None:
    if view is None or isinstance(view, CorruptKey):
        return view
    return Answer(view_json(view), iso_utc(view.as_of))


def views_answers(
    model: ReadModel, names: Sequence[str], now: float
) -> list[Answer | CorruptKey | None]:
    return [view_answer(view) for view in model.views(names, now)]


def servers_answer(model: ReadModel, after: str | None, limit: int, now: float) -> bytes:
    return servers_json(model.servers_page(after, limit, now))


def encode_answer(answer: Answer | CorruptKey | None) -> Any:
    """An answer as msgpack-ready values, for the aggregator's query socket."""
    if answer is None:
        return None
    if isinstance(answer, CorruptKey):
        return {"corrupt": [answer.key, answer.why]}
    return [answer.body, answer.as_of]


def decode_answer(raw: Any) -> Answer | CorruptKey | None:
    """What :func:`encode_answer` made (ValueError for anything else)."""
    if raw is None:
        return None
    if isinstance(raw, dict) and "corrupt" in raw:
        key, why = raw["corrupt"]
        return CorruptKey(str(key), str(why))
    if isinstance(raw, list | tuple) and len(raw) == 2:
        body, as_of = raw
        if isinstance(body, bytes) and isinstance(as_of, str):
            return Answer(body, as_of)
    raise ValueError(f"not an answer: {raw!r:.100}")


def encode_last_minute(columns: LastMinute) -> dict[str, Any]:
    """The last complete minute as msgpack-ready values (arrays as their bytes)."""
    return {
        "minute": columns.minute,
        "names": columns.names,
        "last_seen": np.ascontiguousarray(columns.last_seen, np.float64).tobytes(),
        "cells": np.ascontiguousarray(columns.cells).tobytes(),
        "cpu_anomaly": np.ascontiguousarray(columns.cpu_anomaly, np.float64).tobytes(),
        "ram_anomaly": np.ascontiguousarray(columns.ram_anomaly, np.float64).tobytes(),
    }


def decode_last_minute(raw: Any) -> LastMinute:
    """What :func:`encode_last_minute` made (ValueError for anything else)."""
    try:
        names = [str(name) for name in raw["names"]]
        last_seen = np.frombuffer(raw["last_seen"], np.float64)
        cells = unpack_cells(raw["cells"])
        cpu = np.frombuffer(raw["cpu_anomaly"], np.float64)
        ram = np.frombuffer(raw["ram_anomaly"], np.float64)
        if len(raw["cells"]) % CELL_SIZE or not (
            len(names) == last_seen.size == cells.size == cpu.size == ram.size
        ):
            raise ValueError("columns of different lengths")
        return LastMinute(int(raw["minute"]), names, last_seen, cells, cpu, ram)
    except (KeyError, TypeError) as err:
        raise ValueError(f"not a last minute: {err}") from err
