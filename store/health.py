"""A server's health as one writer (one receiver run) reported it (the batch's
:class:`~servertrack.common.batch.ServerHealth`), stored per writer, and merged over writers."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

import msgpack

from servertrack.common.batch import ServerHealth

__all__ = ["HEAD", "NO_HEALTH", "ServerHealth", "decode", "encode", "merged_health"]

HEAD = struct.Struct("<ddd")
"""Prefix the Redis Function puts before each record: batch number, hour and time written."""


def encode(health: ServerHealth) -> bytes:
    """One writer's record of a server's health, as the Function stores it."""
    return msgpack.packb(health.to_wire())


def decode(raw: bytes) -> ServerHealth:
    return ServerHealth.from_wire(msgpack.unpackb(raw))


NO_HEALTH = ServerHealth()


def merged_health(records: Iterable[bytes]) -> dict[str, Any]:
    """Stored per-writer records merged: ``ip`` and ``skew_seconds`` of the newest writer,
    counters summed, ``name_conflict`` if any writer saw one. Unreadable records are skipped."""
    newest_at = float("-inf")
    newest = NO_HEALTH
    lost = duplicates = rejected = resets = 0
    conflict = False
    for raw in records:
        if len(raw) <= HEAD.size:
            continue
        _, _, written = HEAD.unpack_from(raw)
        try:
            health = decode(raw[HEAD.size :])
        except (ValueError, TypeError, msgpack.UnpackException):
            continue
        if written >= newest_at:
            newest_at, newest = written, health
        lost += health.lost
        duplicates += health.duplicates
        rejected += health.rejected
        resets += health.seq_resets
        conflict = conflict or health.name_conflict
    return {
        "ip": list(newest.ips),
        "lost": lost,
        "duplicates": duplicates,
        "rejected": rejected,
        "skew_seconds": newest.skew if newest_at > float("-inf") else None,
        "seq_resets": resets,
        "name_conflict": conflict,
    }
