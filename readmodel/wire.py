"""Read-model values over the aggregator's query socket: plain msgpack-ready lists, cells as
their raw bytes (64 bytes a bucket, so a full view is about 5.5 KB on the wire).

Only the API decodes these, from a daemon it trusts; a value that does not fit is still refused
with :class:`MalformedValue` rather than rendered half right.
"""

from __future__ import annotations

from typing import Any

from servertrack.readmodel.cells import CELL_SIZE, unpack_cells
from servertrack.readmodel.health import Health
from servertrack.readmodel.values import ServersPage, ServerView


class MalformedValue(ValueError):
    """A read-model value on the wire that does not follow this module's shapes."""


def encode_health(health: Health) -> list[Any]:
    return [
        list(health.ips),
        health.lost,
        health.duplicates,
        health.rejected,
        health.skew,
        health.seq_resets,
        health.name_conflict,
    ]


def decode_health(raw: Any) -> Health:
    try:
        ips, lost, duplicates, rejected, skew, resets, conflict = raw
        return Health(
            tuple(str(ip) for ip in ips),
            int(lost),
            int(duplicates),
            int(rejected),
            None if skew is None else float(skew),
            int(resets),
            bool(conflict),
        )
    except (TypeError, ValueError) as err:
        raise MalformedValue(f"health: {err}") from err


def encode_view(view: ServerView | None) -> list[Any] | None:
    if view is None:
        return None
    return [
        view.name,
        view.minutes.tobytes(),
        view.hours.tobytes(),
        view.last_seen,
        view.as_of,
        encode_health(view.health),
    ]


def _cells(raw: Any, what: str) -> Any:
    if not isinstance(raw, bytes) or len(raw) % CELL_SIZE:
        raise MalformedValue(f"{what}: not whole cells")
    return unpack_cells(raw)


def decode_view(raw: Any) -> ServerView | None:
    if raw is None:
        return None
    try:
        name, minutes, hours, last_seen, as_of, health = raw
        return ServerView(
            str(name),
            _cells(minutes, "minutes"),
            _cells(hours, "hours"),
            float(last_seen),
            float(as_of),
            decode_health(health),
        )
    except (TypeError, ValueError) as err:
        if isinstance(err, MalformedValue):
            raise
        raise MalformedValue(f"view: {err}") from err


def encode_page(page: ServersPage) -> list[Any]:
    return [[list(row) for row in page.servers], page.total, page.next_cursor]


def decode_page(raw: Any) -> ServersPage:
    try:
        rows, total, following = raw
        servers = [(str(name), float(seen)) for name, seen in rows]
        return ServersPage(servers, int(total), None if following is None else str(following))
    except (TypeError, ValueError) as err:
        raise MalformedValue(f"servers page: {err}") from err
