"""A server's health as one writer (one receiver run) stored it in Redis: the batch's
:class:`~servertrack.common.batch.ServerHealth` behind the Function's head. Reads merge the
records of every writer with the one rule of :func:`servertrack.readmodel.health.merge_health`."""

from __future__ import annotations

import struct
from collections.abc import Iterable

import msgpack

from servertrack.common.batch import ServerHealth

__all__ = ["HEAD", "ServerHealth", "decode", "encode", "records"]

HEAD = struct.Struct("<ddd")
"""Prefix the Redis Function puts before each record: batch number, hour and time written."""


def encode(health: ServerHealth) -> bytes:
    """One writer's record of a server's health, as the Function stores it."""
    return msgpack.packb(health.to_wire())


def decode(raw: bytes) -> ServerHealth:
    return ServerHealth.from_wire(msgpack.unpackb(raw))


def records(stored: Iterable[bytes]) -> list[tuple[float, ServerHealth]]:
    """The stored records as ``(written, health)``; an unreadable one is left out."""
    out = []
    for raw in stored:
        if len(raw) <= HEAD.size:
            continue
        _, _, written = HEAD.unpack_from(raw)
        try:
            out.append((written, decode(raw[HEAD.size :])))
        except (ValueError, TypeError, msgpack.UnpackException):
            continue
    return out
