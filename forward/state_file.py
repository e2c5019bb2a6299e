"""The forwarder's only persistent state: the end of the last window handled (``done_until``).

Written atomically (a temporary file in the same directory, fsync, rename, fsync of the
directory), so after a crash the file holds either the old or the new value, never a mix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from servertrack.common.atomic_file import replace_bytes

VERSION = 1
LATEST = 253_402_300_799
"""9999-12-31T23:59:59Z, the last second a date can name: a larger ``done_until`` is no time."""
MAX_SIZE = 4096
"""A state file is some 40 bytes; more than this is not one (and is not read whole)."""


MOVE_AWAY = "move it away to start afresh (windows up to --backfill back are then sent again)"


class StateFileError(ValueError):
    """A state file that exists but cannot be used."""


class StateFile:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> int | None:
        """``done_until`` from the file, or None when there is no file yet. Anything else than
        a JSON object whose ``done_until`` is a whole number of seconds from 0 to
        :data:`LATEST` raises :class:`StateFileError` with a message saying what is wrong."""
        try:
            with self.path.open("rb") as file:
                raw = file.read(MAX_SIZE + 1)
        except FileNotFoundError:
            return None
        except OSError as err:
            raise StateFileError(f"cannot read state file {self.path}: {err}") from err
        try:
            if len(raw) > MAX_SIZE:
                raise ValueError(f"over {MAX_SIZE} bytes")
            data = json.loads(raw.decode("utf-8"))
            value = data["done_until"]
        except (ValueError, TypeError, KeyError, IndexError, RecursionError) as err:
            raise StateFileError(
                f"state file {self.path} is not a forwarder state ({type(err).__name__}: "
                f"{str(err)[:200]}); {MOVE_AWAY}"
            ) from err
        if type(value) is not int or not 0 <= value <= LATEST:
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
            raise StateFileError(
                f"state file {self.path}: done_until is {shown}, not a time in seconds from "
                f"0 to {LATEST}; {MOVE_AWAY}"
            )
        return value

    def save(self, done_until: int) -> None:
        """Replace the file with ``done_until``; raises OSError if that could not be done."""
        replace_bytes(
            self.path, json.dumps({"version": VERSION, "done_until": done_until}).encode()
        )
