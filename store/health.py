"""A server's health as one writer (one receiver run) reported it, and its merge over writers."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgpack

HEAD = struct.Struct("<ddd")
"""Prefix the Redis Function puts before each record: batch number, hour and time written."""


@dataclass(slots=True, frozen=True)
class ServerHealth:
    """Totals of one receiver run for one server."""

    ip: tuple[str, ...] = ()
    lost: int = 0
    duplicates: int = 0
    rejected: int = 0
    skew_seconds: float | None = None
    seq_resets: int = 0
    name_conflict: bool = False

    def encode(self) -> bytes:
        return msgpack.packb(
            [
                list(self.ip),
                int(self.lost),
                int(self.duplicates),
                int(self.rejected),
                self.skew_seconds,
                int(self.seq_resets),
                bool(self.name_conflict),
            ]
        )

    @classmethod
    def decode(cls, raw: bytes) -> ServerHealth:
        ip, lost, duplicates, rejected, skew, resets, conflict = msgpack.unpackb(raw)
        return cls(
            tuple(str(a) for a in ip),
            int(lost),
            int(duplicates),
            int(rejected),
            None if skew is None else float(skew),
            int(resets),
            bool(conflict),
        )


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
            health = ServerHealth.decode(raw[HEAD.size :])
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
        "ip": list(newest.ip),
        "lost": lost,
        "duplicates": duplicates,
        "rejected": rejected,
        "skew_seconds": newest.skew_seconds,
        "seq_resets": resets,
        "name_conflict": conflict,
    }
