"""A table of per-series state: named float64 fields, one column per series.

The table is struct-of-arrays (``fields x rows``), so that one step over every series is a few
whole-row numpy operations. Rows are added at the end, deleted with the rows after them moving
up (as ``np.delete`` does), and serialised row by row, so that the state of chosen series can be
stored alone (in Redis, say) and put back later, in this process or another one.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping

import numpy as np

MAGIC = b"STAD"
HEADER = struct.Struct("<4sHHI8s")  # magic, format version, fields, rows, layout fingerprint
FORMAT_VERSION = 1


class Layout:
    """Named fields, each a block of one or more float64 values per series."""

    def __init__(self, blocks: Mapping[str, int], initial: Mapping[str, float]) -> None:
        self.slices: dict[str, slice] = {}
        start = 0
        for name, width in blocks.items():
            self.slices[name] = slice(start, start + width)
            start += width
        self.width = start
        self.initial = np.zeros(start)
        for name, value in initial.items():
            self.initial[self.slices[name]] = value

    def fingerprint(self, salt: bytes) -> bytes:
        """Eight bytes that change with the layout or with ``salt`` (the parameters)."""
        text = repr(sorted((k, v.start, v.stop) for k, v in self.slices.items())).encode()
        return hashlib.blake2b(text + salt, digest_size=8).digest()


class StateTable:
    """``layout.width`` float64 values per row, stored as ``(width, capacity)``."""

    def __init__(self, layout: Layout, rows: int = 0) -> None:
        self.layout = layout
        self._data = np.empty((layout.width, max(rows, 16)))
        self.rows = 0
        self.add(rows)

    @property
    def data(self) -> np.ndarray:
        """The live part, ``(width, rows)``: a view, so writes go to the table."""
        return self._data[:, : self.rows]

    def add(self, count: int) -> np.ndarray:
        """``count`` fresh rows at the end; their indices."""
        if count < 0:
            raise ValueError(f"cannot add {count} rows")
        needed = self.rows + count
        if needed > self._data.shape[1]:
            grown = np.empty((self.layout.width, max(needed, 2 * self._data.shape[1])))
            grown[:, : self.rows] = self.data
            self._data = grown
        new = np.arange(self.rows, needed)
        self._data[:, self.rows : needed] = self.layout.initial[:, None]
        self.rows = needed
        return new

    def check_rows(self, rows: Iterable[int] | np.ndarray) -> np.ndarray:
        index = np.asarray(rows, dtype=np.int64).reshape(-1)
        if index.size and (index.min() < 0 or index.max() >= self.rows):
            raise IndexError(f"rows must be in [0, {self.rows}), got {index.min()}..{index.max()}")
        return index

    def remove(self, rows: Iterable[int] | np.ndarray) -> None:
        """Delete ``rows``; the rows after each one move up (``np.delete`` order)."""
        index = np.unique(self.check_rows(rows))
        keep = np.ones(self.rows, dtype=bool)
        keep[index] = False
        remaining = int(keep.sum())
        self._data[:, :remaining] = self.data[:, keep]
        self.rows = remaining

    def reset(self, rows: Iterable[int] | np.ndarray) -> None:
        """Put ``rows`` back to the fresh state (a new series in an old row)."""
        index = self.check_rows(rows)
        self._data[:, index] = self.layout.initial[:, None]

    def to_bytes(self, fingerprint: bytes, rows: Iterable[int] | np.ndarray | None = None) -> bytes:
        index = np.arange(self.rows) if rows is None else self.check_rows(rows)
        body = np.ascontiguousarray(self._data[:, index].T, dtype="<f8").tobytes()
        return HEADER.pack(MAGIC, FORMAT_VERSION, self.layout.width, index.size, fingerprint) + body

    def append_bytes(self, data: bytes, fingerprint: bytes) -> np.ndarray:
        """Append the rows serialised in ``data``; their new indices. Nothing changes if
        ``data`` is not a state of this layout and these parameters."""
        if len(data) < HEADER.size:
            raise ValueError("detector state: too short for its header")
        magic, version, width, rows, found = HEADER.unpack_from(data)
        if magic != MAGIC or version != FORMAT_VERSION:
            raise ValueError("detector state: not a detector state of this format version")
        if width != self.layout.width or found != fingerprint:
            raise ValueError("detector state: saved with another layout or other parameters")
        if len(data) != HEADER.size + rows * width * 8:
            raise ValueError(f"detector state: {len(data)} bytes do not hold {rows} rows")
        values = np.frombuffer(data, dtype="<f8", offset=HEADER.size).reshape(rows, width)
        new = self.add(rows)
        self._data[:, new] = values.T
        return new
