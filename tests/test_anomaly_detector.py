"""The anomaly detector bank: no look-ahead, one series alone or many together score the same, a
snapshot continues exactly, scores stay in [0, 1], the state stays small, and the vectorised
bank agrees with a plain one-value-at-a-time reading of its documented method."""

from __future__ import annotations

import math
import os
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from bench import nab_run, nab_score
from servertrack.anomaly import (
    DEFAULT_PARAMS,
    STANDARD_THRESHOLD,
    WARM_UP,
    DetectorBank,
    Params,
)

SHARED = Path(
    os.environ.get("SERVERTRACK_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared")
)
CORPUS = SHARED / "data" / "nab" / "corpus"
SAMPLE = (
    "realAWSCloudwatch/ec2_cpu_utilization_24ae8d.csv",
    "realKnownCause/nyc_taxi.csv",
    "realTweets/Twitter_volume_UPS.csv",
    "realTraffic/speed_7578.csv",
    "artificialWithAnomaly/art_daily_jumpsdown.csv",
    "realKnownCause/rogue_agent_key_hold.csv",
)
"""Server metrics, a daily and weekly pattern, spiky counts, a short file, a synthetic pattern
change and a series that sits at zero for long spells."""


@cache
def corpus_scores() -> dict[str, np.ndarray]:
    """Every corpus series' scores, NaN kept."""
    return nab_run.detect_corpus(corpus(), nan_as=np.nan)


@cache
def corpus() -> list[nab_score.Series]:
    if not CORPUS.is_dir():
        pytest.fail(f"{CORPUS} not found (set SERVERTRACK_SHARED_DIR)")
    return nab_score.load_corpus(CORPUS)


def sample(rows: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """The sample series' values and timestamps (the first ``rows`` of each)."""
    found = {s.key: s for s in corpus()}
    return [(found[key].values[:rows], nab_run.timestamps_of(found[key])[:rows]) for key in SAMPLE]


def run_alone(
    values: np.ndarray, stamps: np.ndarray, params: Params = DEFAULT_PARAMS
) -> np.ndarray:
    bank = DetectorBank(1, params)
    one = np.ones(1, dtype=bool)
    return np.array([bank.step(values[i : i + 1], one, stamps[i])[0] for i in range(len(values))])


def run_together(series: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    """All series through one bank, one row index a step, finished series absent."""
    longest = max(len(v) for v, _ in series)
    bank = DetectorBank(len(series))
    out = np.full((longest, len(series)), np.nan)
    for i in range(longest):
        present = np.array([i < len(v) for v, _ in series])
        values = np.array([v[i] if i < len(v) else 0.0 for v, _ in series])
        stamps = np.array([t[i] if i < len(t) else 0.0 for _, t in series])
        out[i] = bank.step(values, present, stamps)
    return [out[: len(v), j] for j, (v, _) in enumerate(series)]


def reference(values: np.ndarray, stamps: np.ndarray, p: Params = DEFAULT_PARAMS) -> list[float]:
    """The method of ``servertrack.anomaly.detector``'s docstring, one value at a time in plain
    Python floats: an independent reading to hold the vectorised bank to."""

    def excess(track: float, high: float, low: float) -> float:
        width = high - low
        if not (math.isfinite(width) and width > 0):
            return 0.0
        return max(track - high, low - track, 0.0) / width

    scales = len(p.range_rates)
    level, high, low = [0.0] * scales, [-math.inf] * scales, [math.inf] * scales
    mean = dev = season_level = 0.0
    profile = [math.nan] * 48
    visiting, visit_sum, visit_count = -1, 0.0, 0
    season_high = season_low = 0.0
    since, last = math.inf, 0.0
    out = []
    for count, (x, ts) in enumerate(zip(values.tolist(), stamps.tolist(), strict=True)):
        first = 1.0 / (count + 1)
        for k, rate in enumerate(p.range_rates):
            level[k] += max(rate, first) * (x - level[k])
        range_excess = max(excess(level[k], high[k], low[k]) for k in range(scales))
        for k in range(scales):
            if math.isfinite(high[k]):
                high[k] -= p.range_forget * (high[k] - level[-1])
                low[k] -= p.range_forget * (low[k] - level[-1])
            high[k], low[k] = max(high[k], level[k]), min(low[k], level[k])

        z = abs(x - mean) / (dev + 1e-9 + 1e-6 * abs(mean)) if count > 2 else 0.0
        spike_excess = p.spike_weight * max(z - p.spike_z, 0.0) / p.spike_z
        if count == 0:
            mean, dev = x, 0.0
        else:
            mean += max(p.spike_rate, first) * (x - mean)
            dev += max(p.spike_rate, first) * (abs(x - mean) - dev)

        season_level += max(p.season_rate, first) * (x - season_level)
        day = math.floor(ts / 86400)
        hour = int((ts - day * 86400) // 3600) % 24
        season = hour + (24 if (day + 3) % 7 >= 5 else 0)
        if season != visiting:
            if visiting >= 0 and visit_count:
                done, old = visit_sum / visit_count, profile[visiting]
                profile[visiting] = done if math.isnan(old) else old + p.season_fold * (done - old)
            visit_sum, visit_count = 0.0, 0
        visiting = season
        visit_sum += season_level
        visit_count += 1
        season_excess = 0.0
        if not math.isnan(profile[season]):
            gap = season_level - profile[season]
            season_excess = p.season_weight * excess(gap, season_high, season_low)
            keep = 1.0 - p.season_forget
            season_high, season_low = max(season_high * keep, gap), min(season_low * keep, gap)

        e = max(range_excess, spike_excess, season_excess)
        score = e / (1.0 + e)
        since += 1
        if since > p.refractory or score > p.refractory_factor * last:
            if score > 0:
                since, last = 0, score
        else:
            score = 0.0
        out.append(math.nan if count < p.warm_up else score)
    return out


def test_the_bank_scores_as_the_documented_method_reads() -> None:
    """Value by value, the vectorised bank gives what a plain scalar reading of the method
    gives, on real series of every kind."""
    for values, stamps in sample(3000):
        np.testing.assert_allclose(
            run_alone(values, stamps), reference(values, stamps), rtol=1e-12, atol=0
        )


def test_no_look_ahead_a_prefix_scores_as_the_full_run() -> None:
    """The scores of the first k values do not depend on any value after them: each sample
    series and three of its prefixes go through the benchmark's own runner as series of their
    own, and every prefix scores as the start of the full run."""
    found = {s.key: s for s in corpus()}
    runs = []
    for key in SAMPLE:
        whole = found[key]
        for k in (len(whole.values), WARM_UP + 1, len(whole.values) // 3, len(whole.values) - 1):
            runs.append(nab_score.Series(f"{key}#{k}", whole.timestamps[:k], whole.values[:k], ()))
    scores = nab_run.detect_corpus(runs, nan_as=np.nan)
    for at in range(0, len(runs), 4):
        full = scores[runs[at].key]
        for prefix in runs[at + 1 : at + 4]:
            np.testing.assert_array_equal(scores[prefix.key], full[: len(prefix.values)])


def test_many_series_together_score_as_each_alone() -> None:
    """One bank stepping every series at once (the short ones absent once finished) scores each
    series exactly as a bank of its own does."""
    series = sample(2500)
    for together, (values, stamps) in zip(run_together(series), series, strict=True):
        np.testing.assert_array_equal(together, run_alone(values, stamps))


def test_a_snapshot_mid_series_continues_identically() -> None:
    """The whole state, or one chosen row, saved half-way and restored (into a new bank, or onto
    the end of another) continues with exactly the scores of the run that never stopped."""
    series = sample(1100)  # the shortest sample series has 1,127 rows
    values = np.array([v for v, _ in series]).T
    stamps = np.array([t for _, t in series]).T
    everyone = np.ones(len(series), dtype=bool)
    straight = DetectorBank(len(series))
    expected = np.array([straight.step(values[i], everyone, stamps[i]) for i in range(1100)])

    bank = DetectorBank(len(series))
    for i in range(550):
        bank.step(values[i], everyone, stamps[i])
    restored = DetectorBank.from_bytes(bank.to_bytes())
    other = DetectorBank(2)
    [row] = other.append_bytes(bank.to_bytes([3]))
    assert (restored.rows, row) == (len(series), 2)
    for i in range(550, 1100):
        np.testing.assert_array_equal(restored.step(values[i], everyone, stamps[i]), expected[i])
        alone = other.step(np.array([0.0, 0.0, values[i, 3]]), np.ones(3, bool), stamps[i, 3])
        assert alone[2] == expected[i, 3] or (np.isnan(alone[2]) and np.isnan(expected[i, 3]))


def test_a_foreign_or_damaged_snapshot_is_refused_and_changes_nothing() -> None:
    bank = DetectorBank(3)
    bank.step(np.array([1.0, 2.0, 3.0]), np.ones(3, bool), 1_700_000_000.0)
    blob = bank.to_bytes()
    other = DetectorBank(1, Params(refractory=50))
    before = other.to_bytes()
    for bad in (blob[:-8], blob[:10], b"nope" + blob[4:], blob + b"\0" * 8):
        with pytest.raises(ValueError, match="detector state"):
            DetectorBank.from_bytes(bad)
    with pytest.raises(ValueError, match="other parameters"):
        other.append_bytes(blob)
    assert other.rows == 1 and other.to_bytes() == before


def test_scores_are_in_0_1_and_nan_only_while_warming_up() -> None:
    """Over the whole corpus: NaN for exactly the first WARM_UP values of each series, then a
    finite score in [0, 1]."""
    for key, scores in corpus_scores().items():
        assert np.isnan(scores[:WARM_UP]).all(), key
        rest = scores[WARM_UP:]
        assert np.isfinite(rest).all() and rest.min() >= 0.0 and rest.max() <= 1.0, key


def test_the_state_of_a_series_fits_in_2_kb() -> None:
    bank = DetectorBank(10)
    assert bank.state_bytes_per_row <= 2048
    assert len(bank.to_bytes([4])) - len(bank.to_bytes([])) <= 2048


def test_absent_and_non_finite_values_change_nothing() -> None:
    """A step where a series is absent (or its value is NaN) scores NaN for it and leaves its
    state as it was: the series goes on as if that step had not happened."""
    values, stamps = sample(400)[0]
    expected = run_alone(values, stamps)
    bank = DetectorBank(2)
    got = []
    for i in range(len(values)):
        if i % 7 == 3:
            gap = bank.step(np.array([values[i], 5.0]), np.array([True, False]), stamps[i])
            assert np.isnan(gap[1])
            gap = bank.step(np.array([values[i], np.nan]), np.array([True, True]), stamps[i])
            assert np.isnan(gap[1])
        got.append(bank.step(np.array([values[i], values[i]]), np.ones(2, bool), stamps[i])[1])
    np.testing.assert_array_equal(np.array(got), expected)


def test_rows_can_be_added_removed_and_reset() -> None:
    """Removing a row moves the later rows up with their state; a reset row starts afresh."""
    series = sample(600)[:3]
    values = np.array([v for v, _ in series]).T
    stamps = np.array([t for _, t in series]).T
    alone = [run_alone(v, t) for v, t in series]
    bank = DetectorBank(0)
    assert list(bank.add(3)) == [0, 1, 2]
    for i in range(300):
        bank.step(values[i], np.ones(3, bool), stamps[i])
    bank.remove([1])
    bank.reset([1])  # row 1 now holds the third series, started afresh at step 300
    assert bank.rows == 2
    fresh = run_alone(values[300:, 2], stamps[300:, 2])
    for i in range(300, 600):
        got = bank.step(values[i, [0, 2]], np.ones(2, bool), stamps[i, [0, 2]])
        np.testing.assert_array_equal(got, [alone[0][i], fresh[i - 300]])
    with pytest.raises(IndexError):
        bank.remove([2])


def test_the_exported_threshold_is_the_one_the_standard_sweep_chooses() -> None:
    scorer = nab_score.Scorer(corpus(), nab_score.load_profiles(CORPUS))
    scores = {key: np.nan_to_num(found, nan=0.0) for key, found in corpus_scores().items()}
    standard = next(r for r in scorer.score(scores) if r.profile == "standard")
    assert standard.threshold == STANDARD_THRESHOLD
