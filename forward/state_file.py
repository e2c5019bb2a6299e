"""The forwarder's only persistent state: the end of the last window handled (``done_until``).

Written atomically (a temporary file in the same directory, fsync, rename, fsync of the
directory), so after a crash the file holds either the old or the new value, never a mix.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

VERSION = 1


class StateFileError(ValueError):
    """A state file that exists but cannot be used."""


class StateFile:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> int | None:
        """``done_until`` from the file, or None when there is no file yet."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as err:
            raise StateFileError(f"cannot read state file {self.path}: {err}") from err
        try:
            data = json.loads(text)
            value = data["done_until"]
        except (ValueError, TypeError, KeyError) as err:
            raise StateFileError(
                f"state file {self.path} is not a forwarder state ({err!r}); move it away to "
                "start afresh (windows up to --backfill back are then sent again)"
            ) from err
        if type(value) is not int or value < 0:
            raise StateFileError(f"state file {self.path}: done_until is {value!r}")
        return value

    def save(self, done_until: int) -> None:
        """Replace the file with ``done_until``; raises OSError if that could not be done."""
        directory = self.path.parent
        payload = json.dumps({"version": VERSION, "done_until": done_until}).encode()
        handle, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=directory)
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(payload)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
