"""The comparison every end-to-end check relies on must itself catch differences, and the free
ports tests start servers on are never handed to two workers at once."""

from __future__ import annotations

import copy
import socket

from servertrack.common.oracle import bucket_differences, oracle_buckets
from servertrack.testing.hosts import PORT_SPAN, ephemeral_low, free_port, next_free, port_slice

NOW = 1_800_000_000.0
SAMPLES = [("a", NOW - 90, 10.0, None), ("a", NOW - 20, 20.0, 40.0), ("a", NOW - 4000, 5.0, 1.0)]


def test_identical_answers_have_no_differences() -> None:
    """The oracle compared with itself agrees."""
    expected = oracle_buckets(SAMPLES, NOW)
    assert bucket_differences(copy.deepcopy(expected), expected) == []


def test_a_mean_off_in_the_ninth_digit_is_reported() -> None:
    """A mean that differs beyond the tolerance is a difference."""
    expected = oracle_buckets(SAMPLES, NOW)
    view = copy.deepcopy(expected)
    view["hours"][-1]["cpu"] *= 1 + 1e-9
    assert len(bucket_differences(view, expected)) == 1


def test_a_sum_off_or_missing_is_reported() -> None:
    """A sum beyond the tolerance, and a sum given where the oracle has none, are differences."""
    expected = oracle_buckets(SAMPLES, NOW)
    view = copy.deepcopy(expected)
    view["hours"][-1]["cpu_sum"] *= 1 + 1e-9
    assert len(bucket_differences(view, expected)) == 1
    zero = copy.deepcopy(expected)
    next(b for b in zero["minutes"] if b["ram_sum"] is None)["ram_sum"] = 0.0
    assert len(bucket_differences(zero, expected)) == 1


def test_missing_buckets_nulls_and_counts_are_reported() -> None:
    """A missing bucket, a 0 instead of null and a wrong count are all differences."""
    expected = oracle_buckets(SAMPLES, NOW)
    missing = copy.deepcopy(expected)
    missing["hours"].pop(0)
    assert bucket_differences(missing, expected)
    zero = copy.deepcopy(expected)
    first = next(b for b in zero["minutes"] if b["ram"] is None)
    first["ram"] = 0.0
    assert bucket_differences(zero, expected)
    counted = copy.deepcopy(expected)
    counted["minutes"][0]["samples"] += 1
    assert bucket_differences(counted, expected)


def test_parallel_workers_get_disjoint_port_slices_below_the_ephemeral_range() -> None:
    """Each of four workers walks its own ports, all below where the kernel picks its own."""
    slices = [port_slice(f"gw{n}", 4, 32768) for n in range(4)]
    assert all(s is not None for s in slices)
    owned = [set(range(s.low, s.high)) for s in slices if s is not None]
    for index, ports in enumerate(owned):
        assert max(ports) < 32768 and min(ports) >= 32768 - PORT_SPAN
        for other in owned[index + 1 :]:
            assert not ports & other


def test_free_port_skips_a_held_port_and_walks_on() -> None:
    """A port someone holds is passed over; each call hands out the next free one."""
    ports = port_slice("gw0", 1, ephemeral_low())
    assert ports is not None
    with socket.socket() as held:
        held.bind(("127.0.0.1", ports.next))
        taken = ports.next
        first = next_free(ports)
        second = next_free(ports)
    assert first is not None and second is not None
    assert first != taken and second != first
    assert ports.low <= first < ports.high and ports.low <= second < ports.high


def test_the_walk_wraps_around_its_slice() -> None:
    """Past the end of its slice the walk starts again at its beginning."""
    ports = port_slice("gw1", 2, ephemeral_low())
    assert ports is not None
    ports.next = ports.high - 1
    handed = [next_free(ports) for _ in range(2)]
    assert all(port is not None and ports.low <= port < ports.high for port in handed)
    assert ports.next < ports.high - 1


def test_free_port_is_never_in_the_ephemeral_range() -> None:
    low = ephemeral_low()
    assert all(free_port() < low for _ in range(50))
