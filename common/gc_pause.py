"""Holding the cyclic garbage collector off while a daemon builds or reads one large message.

A batch that announces tens of thousands of new servers is built (receiver) and read
(aggregator) as as many small containers, all alive until the step ends: each young collection
during the step finds them alive, promotes them, and soon makes the collector scan every object
the daemon holds, several times per batch (0.3 s of a 0.4 s flush, measured for 50,000 new
servers). None of them forms a reference cycle, so reference counting frees them when the step
is over; the collector runs again from there.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No automatic collection inside the block (the state it found is restored after)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
