"""What a read (or a write) of any store can fail with: the store as a whole is out of reach,
or one server's data cannot be read."""

from __future__ import annotations


class StoreUnavailable(Exception):
    """The store did not answer (in time), refused a command, or not everything could be
    confirmed: nothing is lost, the caller keeps what it wanted to write and tries again later
    with the same batches."""

    applied = 0
    """Samples of a failed merge that the store applied before the failure (the next try finds
    them applied and counts them as ``already_applied``)."""


class CorruptKey(Exception):
    """One server's data in the store has the wrong type or a field of the wrong size (written
    by something else, or damaged): that server cannot be read or merged; every other can."""

    def __init__(self, key: str, why: str) -> None:
        super().__init__(f"{key}: {why}")
        self.key = key
        self.why = why
