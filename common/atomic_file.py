"""Replacing a file so that a crash at any moment leaves either the old or the new content.

The content goes to a temporary file in the same directory, is flushed to disk, renamed over the
old file, and the directory is flushed too (so the rename itself survives a power cut).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def replace_file(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> None:
    """Make ``path`` hold what ``write`` writes to the open file it is given, atomically;
    OSError (or what ``write`` raises) when that could not be done, with the old file intact."""
    target = Path(path)
    directory = target.parent
    directory.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=directory)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def replace_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Make ``path`` hold ``data``, atomically (see :func:`replace_file`)."""
    replace_file(path, lambda file: file.write(data))
