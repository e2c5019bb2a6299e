"""Receiver → aggregator batch: one multipart message per second, columns as raw arrays.

Frames: ``[b"batch", header, ids, ts, cpu, ram, seq]``. The header is a msgpack map; the columns
are little-endian ``int32``/``float64``/``int64`` arrays of equal length (NaN = metric absent,
seq -1 = none). Ids are the
receiver's own server numbers; ``names`` announces the ids first seen in this batch (or all of
them when ``full_names``), so the common case carries no strings at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgpack
import numpy as np

KIND = b"batch"
ID_DTYPE = np.dtype("<i4")
VALUE_DTYPE = np.dtype("<f8")
SEQ_DTYPE = np.dtype("<i8")


COUNTER_MAX = 2**63 - 1
"""Counters saturate here: whatever arrives, a batch always encodes (msgpack stops at 2**64 - 1)."""


class MalformedBatch(ValueError):
    """A batch message that does not follow the format above."""


def saturate(value: int) -> int:
    """``value`` clamped to ``0..COUNTER_MAX``."""
    return 0 if value < 0 else min(value, COUNTER_MAX)


def saturated(counters: Any) -> Any:
    """A copy of a (nested) counters mapping with every integer clamped by :func:`saturate`."""
    if isinstance(counters, dict):
        return {key: saturated(value) for key, value in counters.items()}
    if type(counters) is int:
        return saturate(counters)
    return counters


class ServerHealth(NamedTuple):
    """What the receiver knows of one server in its current run (totals of that run)."""

    ips: tuple[str, ...] = ()
    lost: int = 0
    """Samples missing from the agent's sequence numbers."""
    duplicates: int = 0
    rejected: int = 0
    """Samples refused by the time window (future, too_old)."""
    skew: float = 0.0
    """Arrival time minus the sample's ts of the newest sample, in seconds."""
    seq_resets: int = 0
    """Sequence jumps too large for the time elapsed: counted here instead of as loss."""
    name_conflict: bool = False
    """Two agents interleave their sequences under this name right now."""

    def to_wire(self) -> list[Any]:
        return [
            list(self.ips),
            saturate(self.lost),
            saturate(self.duplicates),
            saturate(self.rejected),
            float(self.skew),
            saturate(self.seq_resets),
            bool(self.name_conflict),
        ]

    @classmethod
    def from_wire(cls, raw: Any) -> ServerHealth:
        ips, lost, duplicates, rejected, skew, resets, conflict = raw
        return cls(
            tuple(str(a) for a in ips),
            int(lost),
            int(duplicates),
            int(rejected),
            float(skew),
            int(resets),
            bool(conflict),
        )


@dataclass(slots=True)
class Batch:
    epoch: str
    number: int
    sent: float
    ids: np.ndarray
    ts: np.ndarray
    cpu: np.ndarray
    ram: np.ndarray
    seq: np.ndarray = field(default_factory=lambda: np.empty(0, SEQ_DTYPE))
    names: list[tuple[int, str]] = field(default_factory=list)
    full_names: bool = False
    servers: list[tuple[int, ServerHealth]] = field(default_factory=list)
    """Per-server state that changed, as ``(id, health)``: totals of the receiver run."""
    counters: dict[str, Any] = field(default_factory=dict)
    """The receiver's running totals, so the aggregator can report them."""

    def __len__(self) -> int:
        return int(self.ids.size)

    def numbered(self) -> np.ndarray:
        """The seq column, all -1 when the batch was built without one."""
        return self.seq if self.seq.size == self.ids.size else np.full(self.ids.size, -1)

    def encode(self) -> list[bytes]:
        header = {
            "epoch": self.epoch,
            "number": self.number,
            "sent": self.sent,
            "names": self.names,
            "full_names": self.full_names,
            "servers": [[server_id, *health.to_wire()] for server_id, health in self.servers],
            "counters": saturated(self.counters),
        }
        return [
            KIND,
            msgpack.packb(header),
            np.ascontiguousarray(self.ids, ID_DTYPE).tobytes(),
            np.ascontiguousarray(self.ts, VALUE_DTYPE).tobytes(),
            np.ascontiguousarray(self.cpu, VALUE_DTYPE).tobytes(),
            np.ascontiguousarray(self.ram, VALUE_DTYPE).tobytes(),
            np.ascontiguousarray(self.numbered(), SEQ_DTYPE).tobytes(),
        ]

    @classmethod
    def decode(cls, frames: list[bytes]) -> Batch:
        if len(frames) != 7 or bytes(frames[0]) != KIND:
            raise MalformedBatch(f"expected 7 frames starting with {KIND!r}")
        try:
            header = msgpack.unpackb(frames[1])
            ids = np.frombuffer(frames[2], ID_DTYPE)
            columns = [np.frombuffer(frame, VALUE_DTYPE) for frame in frames[3:6]]
            columns.append(np.frombuffer(frames[6], SEQ_DTYPE))
            if any(column.size != ids.size for column in columns):
                raise ValueError("batch columns differ in length")
            return cls(
                epoch=str(header["epoch"]),
                number=int(header["number"]),
                sent=float(header["sent"]),
                ids=ids,
                ts=columns[0],
                cpu=columns[1],
                ram=columns[2],
                seq=columns[3],
                names=[(int(i), str(n)) for i, n in header["names"]],
                full_names=bool(header["full_names"]),
                servers=[
                    (int(entry[0]), ServerHealth.from_wire(entry[1:]))
                    for entry in header["servers"]
                ],
                counters=dict(header["counters"]),
            )
        except Exception as err:  # any malformed part is one kind of error
            raise MalformedBatch(f"undecodable batch: {err}") from err
