"""Aggregator snapshots: every rollup plus the bookkeeping needed to resume exactly.

A snapshot is one ``.npz`` file of plain arrays (loaded with ``allow_pickle=False``) and a JSON
``meta`` entry. It is written to a temporary file in the same directory, flushed to disk and
renamed over the old one, so a crash at any moment leaves either the old or the new snapshot.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from servertrack.aggregator.rollups import Rollups, restore_rollups, rollup_arrays
from servertrack.common.buckets import Clock


def write_snapshot(path: str | Path, rollups: Rollups, meta: dict[str, Any]) -> int:
    """Write atomically; returns the file's size in bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # one per writer process
    arrays = rollup_arrays(rollups)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    with temporary.open("wb") as handle:
        np.savez(handle, **arrays)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return path.stat().st_size


def read_snapshot(path: str | Path, clock: Clock) -> tuple[Rollups, dict[str, Any]] | None:
    """The rollups and meta of the snapshot at ``path``, or ``None`` if there is none."""
    path = Path(path)
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    meta = json.loads(bytes(arrays.pop("meta")).decode())
    return restore_rollups(arrays, clock), meta
