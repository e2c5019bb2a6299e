"""The replay index: the batches sent lately, by number, for an aggregator that missed some.

A batch is kept ``retention`` seconds after it was sent. An aggregator that restarted asks for the
batches after the last one it applied and gets those still kept, oldest first.
"""

from __future__ import annotations

from sortedcontainers import SortedDict


class ReplayIndex:
    """Sent batches: number → (time sent, frames), kept ``retention`` seconds."""

    def __init__(self, retention: float) -> None:
        self.retention = retention
        self._sent: SortedDict[int, tuple[float, list[bytes]]] = SortedDict()

    def __len__(self) -> int:
        return len(self._sent)

    def remember(self, number: int, frames: list[bytes], now: float) -> None:
        """Keep a batch sent at ``now``, and drop those sent more than ``retention`` before."""
        sent = self._sent
        sent[number] = (now, frames)
        while sent and sent.peekitem(0)[1][0] < now - self.retention:
            sent.popitem(0)

    def after(self, number: int) -> list[list[bytes]]:
        """Frames of the kept batches numbered above ``number``, oldest first."""
        return [self._sent[key][1] for key in self._sent.irange(minimum=number + 1)]

    def oldest(self, default: int) -> int:
        """The number of the oldest batch kept, ``default`` when none is."""
        return self._sent.peekitem(0)[0] if self._sent else default
