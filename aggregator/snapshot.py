"""Aggregator snapshots: every rollup plus the bookkeeping needed to resume exactly.

A snapshot is one ``.npz`` file of plain arrays (loaded with ``allow_pickle=False``) and a JSON
``meta`` entry. It is written to a temporary file in the same directory, flushed to disk and
renamed over the old one, so a crash at any moment leaves either the old or the new snapshot.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from servertrack.common.atomic_file import replace_file


def write_snapshot(path: str | Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> int:
    """Write atomically; returns the file's size in bytes."""
    path = Path(path)
    arrays = {**arrays, "meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)}
    # keys name arrays, never numpy's allow_pickle option
    replace_file(path, lambda handle: np.savez(handle, **arrays))  # type: ignore[arg-type]
    return path.stat().st_size


def read_snapshot(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """The store arrays and meta of the snapshot at ``path``, or ``None`` if there is none.
    Raises (ValueError, OSError, KeyError, ...) when the file cannot be read whole."""
    path = Path(path)
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    meta = json.loads(bytes(arrays.pop("meta")).decode())
    if not isinstance(meta, dict):
        raise ValueError("snapshot meta is not an object")
    return arrays, meta
