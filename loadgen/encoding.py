"""Many agent messages at once: the load generator encodes a whole tick of a simulated fleet
with a few numpy operations. Each record decodes exactly as :func:`servertrack.common.wire.encode`
would have encoded it (the tests check), so the receiver sees ordinary agent messages.
"""

from __future__ import annotations

import numpy as np


def name_block(names: list[str]) -> np.ndarray:
    """Server names as a ``(count, width)`` byte array for :func:`pack_many` (equal lengths)."""
    encoded = np.frombuffer(b"".join(name.encode() for name in names), np.uint8)
    width = encoded.size // len(names) if names else 0
    if names and (width * len(names) != encoded.size or not 0 < width <= 255):
        raise ValueError("names must all have the same length, 1 to 255 bytes")
    return encoded.reshape(len(names), width)


def pack_many(
    names: np.ndarray, ts: np.ndarray, cpu: np.ndarray, ram: np.ndarray, seq: np.ndarray
) -> tuple[bytes, int]:
    """msgpack payloads for many samples at once, as one buffer of equal-length records.

    ``names`` comes from :func:`name_block`. Each record is the map ``{fqdn, ts, cpu, ram, seq}``
    with float64 values and a uint64 seq, so it decodes exactly as :func:`encode` would. Returns
    ``(buffer, record_length)``. PERF: a load generator builds a whole tick of messages with a
    few numpy operations (~0.2 µs a sample) instead of one ``packb`` per sample (~1 µs).
    """
    count, width = names.shape
    name_header = bytes([0xA0 | width]) if width < 32 else bytes([0xD9, width])
    parts: list[tuple[bytes, np.ndarray]] = [
        (b"\x85\xa4fqdn" + name_header, names),
        (b"\xa2ts\xcb", np.asarray(ts, ">f8").reshape(count, 1).view(np.uint8)),
        (b"\xa3cpu\xcb", np.asarray(cpu, ">f8").reshape(count, 1).view(np.uint8)),
        (b"\xa3ram\xcb", np.asarray(ram, ">f8").reshape(count, 1).view(np.uint8)),
        (b"\xa3seq\xcf", np.asarray(seq, ">u8").reshape(count, 1).view(np.uint8)),
    ]
    columns: list[np.ndarray] = []
    for fixed, variable in parts:
        columns.append(np.broadcast_to(np.frombuffer(fixed, np.uint8), (count, len(fixed))))
        columns.append(variable)
    records = np.concatenate(columns, axis=1)
    return records.tobytes(), records.shape[1]
