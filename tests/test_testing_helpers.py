"""The comparison every end-to-end check relies on must itself catch differences."""

from __future__ import annotations

import copy

from servertrack.common.oracle import bucket_differences, oracle_buckets

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
