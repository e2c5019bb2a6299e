"""The ``histories`` read: many servers' cells laid out on both windows, over the aggregator's
socket as the cells' bytes."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from servertrack.common.buckets import MINUTE
from servertrack.common.sample import make_sample
from servertrack.readmodel.history import decode_histories, encode_histories, joined
from tests.support import Clock, InProcessBackend

NOW = 1_800_000_030.0


def test_histories_place_each_cell_at_its_minute_and_hour() -> None:
    """A server's samples show at their minute's and hour's positions; an unknown server's row
    is empty; the value crosses the aggregator's socket unchanged."""
    clock = Clock(NOW)
    backend = InProcessBackend(clock)
    backend.record([make_sample("web-1", NOW - 125, 10.0, 20.0)])
    backend.record([make_sample("web-1", NOW - 120, 30.0, None)])
    found = backend.histories(["nobody", "web-1"])
    assert found.names == ["nobody", "web-1"]
    assert found.minutes.shape == (2, 60) and found.hours.shape == (2, 24)
    assert not found.minutes[0]["samples"].any() and not found.hours[0]["samples"].any()
    column = int((NOW - 125) // MINUTE) - found.first_minute
    cell = found.minutes[1][column]
    assert (cell["samples"], cell["cpu_sum"], cell["ram_count"]) == (2, 40.0, 1)
    hour = int((NOW - 125) // 3600) - found.first_hour
    assert found.minutes[1]["samples"].sum() == 2 and found.hours[1]["samples"][hour] == 2
    again = decode_histories(msgpack.unpackb(msgpack.packb(encode_histories(found))))
    assert np.array_equal(again.minutes, found.minutes) and again.names == found.names


def test_histories_refuse_torn_or_mismatched_parts() -> None:
    """Cells of the wrong size are refused, and parts read in different minutes are not joined."""
    found = InProcessBackend(Clock(NOW)).histories(["a", "b"])
    raw = encode_histories(found)
    with pytest.raises(ValueError, match="minutes"):
        decode_histories({**raw, "minutes": raw["minutes"][:-1]})
    later = InProcessBackend(Clock(NOW + 60)).histories(["c"])
    with pytest.raises(ValueError, match="different minutes"):
        joined([found, later])
    assert joined([found, InProcessBackend(Clock(NOW)).histories(["c"])]).names == ["a", "b", "c"]
