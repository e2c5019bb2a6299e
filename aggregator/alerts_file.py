"""The alert state's own file, for an aggregator without a snapshot (a Redis store).

Written atomically (a temporary file in the same directory, fsync, rename, fsync of the
directory), so after a crash the file holds either the old or the new state, never a mix.
"""

from __future__ import annotations

import os
from pathlib import Path

from servertrack.common.atomic_file import replace_bytes

MAX_SIZE = 256 * 2**20
"""Larger than the state of every one of 250,000 servers alerting on five rules."""


class AlertsFile:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    def load(self) -> bytes | None:
        """The saved state, or None when there is none yet; OSError when it cannot be read."""
        try:
            with self.path.open("rb") as file:
                data = file.read(MAX_SIZE + 1)
        except FileNotFoundError:
            return None
        if len(data) > MAX_SIZE:
            raise OSError(f"{self.path} is over {MAX_SIZE} bytes: not an alert state")
        return data

    def save(self, data: bytes) -> None:
        """Replace the file with ``data``; OSError when that could not be done."""
        replace_bytes(self.path, data)
