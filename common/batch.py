"""Receiver → aggregator batch: one multipart message per second, columns as raw arrays.

Frames: ``[b"batch", header, ids, ts, cpu, ram, seq]``. The header is a msgpack map; the columns
are little-endian ``int32``/``float64``/``int64`` arrays of equal length (NaN = metric absent,
seq -1 = none). Ids are the
receiver's own server numbers; ``names`` announces the ids first seen in this batch (or all of
them when ``full_names``), so the common case carries no strings at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

KIND = b"batch"
ID_DTYPE = np.dtype("<i4")
VALUE_DTYPE = np.dtype("<f8")
SEQ_DTYPE = np.dtype("<i8")


class MalformedBatch(ValueError):
    """A batch message that does not follow the format above."""


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
    servers: list[tuple[int, list[str], int, int, float, int]] = field(default_factory=list)
    """Per-server state that changed: ``(id, ips, lost, duplicates, skew_seconds, rejected)``,
    totals of the receiver run."""
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
            "servers": self.servers,
            "counters": self.counters,
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
                    (int(i), [str(a) for a in ips], int(lost), int(dup), float(skew), int(rej))
                    for i, ips, lost, dup, skew, rej in header["servers"]
                ],
                counters=dict(header["counters"]),
            )
        except Exception as err:  # any malformed part is one kind of error
            raise MalformedBatch(f"undecodable batch: {err}") from err
