"""A streaming anomaly detector for many series at once, one value per series per step.

How it scores
-------------
Every value gets a score in [0, 1): how far the series has just gone beyond what it has done
before, relative to the width of what it has done before. Three views of "what it has done":

1. **Range** (the main one). Three tracks of the series: the value itself and its exponential
   means over about 16 and 64 values (``range_rates``). Each track keeps the highest and the
   lowest it has been; this envelope slowly forgets (it relaxes toward the slowest track by
   ``range_forget`` of the gap per value, a half-life of about 7,000 values: five days at one a
   minute). A track that leaves its envelope scores its excess over the envelope's width: a new
   maximum 10 % of the width above the old one is an excess of 0.1.
2. **Season.** The level (the mean over about 4 values) against a profile of it by hour of the
   UTC day, one profile for weekdays and one for weekends: each visit to an hour folds its mean
   level into that hour's profile (``season_fold``), so the profile holds earlier days only. The
   gap between the level and its hour's profile has a forgetting envelope of its own; leaving it
   scores as in (1), times ``season_weight``. This catches a day unlike the days before it,
   inside the overall range. It is why ``step`` takes timestamps.
3. **Spike.** The value against its mean and mean absolute deviation over about 256 values:
   ``z`` beyond ``spike_z`` deviations scores ``spike_weight * (|z| - spike_z) / spike_z``. This
   catches a sharp spike inside a range that an older, bigger spike had widened.

The excess ``e`` is the largest of the three; the score is ``e / (1 + e)``. After a score above
zero, later scores within ``refractory`` values are reported only if more than
``refractory_factor`` times the last one reported; the others read 0, so an episode is reported
once, at its start, and again only if it grows.

The first ``WARM_UP`` values of a series score NaN (their state is learnt all the same).

API
---
``DetectorBank`` holds the state of many series, one row each (68 float64 values, 544 bytes):

- ``bank = DetectorBank(rows=0, params=DEFAULT_PARAMS)``; ``bank.rows``;
- ``bank.add(n) -> np.ndarray`` of the new rows' indices (fresh series, at the end);
- ``bank.remove(rows)`` deletes rows; the rows after them move up, as ``np.delete`` does;
- ``bank.reset(rows)`` makes rows fresh again (a new series reusing a row);
- ``bank.step(values, present, timestamps) -> np.ndarray`` of scores, one step for every row:
  ``values`` (float, one per row), ``present`` (bool, one per row: absent rows are neither
  scored nor changed, and score NaN; so do non-finite values) and ``timestamps`` (Unix seconds
  of the values, one per row or one for all; only the hour of the day and the weekday are used);
- ``bank.to_bytes(rows=None) -> bytes``, the state of all rows or of the chosen ones, and
  ``DetectorBank.from_bytes(data)`` / ``bank.append_bytes(data) -> rows`` to restore them into a
  new bank or onto the end of this one (e.g. one server's state kept in Redis). A state saved
  under other parameters is refused (``ValueError``).

The detector does no I/O and reads no clock: it sees each value once, in order, and its score
depends only on the values and timestamps before and including it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import astuple, dataclass

import numpy as np

from servertrack.anomaly.state import Layout, StateTable

WARM_UP = 100
"""Values of a series scored NaN while its state fills."""

STANDARD_THRESHOLD = 0.02839705217575036
"""A score at or above this is an anomaly: the threshold the NAB sweep chose for the standard
profile over the whole corpus (bench/results/2026-12-06-2159-nab.md)."""

HOURS = 24
SEASONS = 2 * HOURS  # weekday hours, then weekend hours
FAR = 1e18  # "no report yet": more values ago than any refractory period


@dataclass(frozen=True, slots=True)
class Params:
    """One set for every series: what ServerTrack runs with."""

    range_rates: tuple[float, ...] = (1.0, 1 / 16, 1 / 64)
    range_forget: float = 1e-4
    season_rate: float = 1 / 4
    season_fold: float = 0.3
    season_forget: float = 1e-4
    season_weight: float = 0.3
    spike_rate: float = 1 / 256
    spike_z: float = 40.0
    spike_weight: float = 0.09
    refractory: int = 100
    refractory_factor: float = 2.0
    warm_up: int = WARM_UP


DEFAULT_PARAMS = Params()


def _layout(params: Params) -> Layout:
    scales = len(params.range_rates)
    return Layout(
        {
            "count": 1,
            "level": scales,
            "high": scales,
            "low": scales,
            "season_level": 1,
            "spike_mean": 1,
            "spike_dev": 1,
            "profile": SEASONS,
            "visit_season": 1,
            "visit_sum": 1,
            "visit_count": 1,
            "season_high": 1,
            "season_low": 1,
            "since_report": 1,
            "last_report": 1,
        },
        {
            "high": -np.inf,
            "low": np.inf,
            "profile": np.nan,
            "visit_season": -1.0,
            "since_report": FAR,
        },
    )


def _excess(track: np.ndarray, high: np.ndarray, low: np.ndarray) -> np.ndarray:
    """How far ``track`` is beyond ``[low, high]``, in widths of it (0 inside, or with no
    width yet)."""
    width = high - low
    with np.errstate(invalid="ignore", divide="ignore"):
        beyond = np.maximum(track - high, low - track) / width
    return np.where(np.isfinite(beyond) & (width > 0), np.maximum(beyond, 0.0), 0.0)


def _season(timestamps: np.ndarray) -> np.ndarray:
    """The hour of the UTC day, plus 24 on Saturdays and Sundays."""
    days = np.floor_divide(timestamps, 86400.0)
    hour = (np.floor((timestamps - days * 86400.0) / 3600.0)).astype(np.int64) % HOURS
    weekend = ((days.astype(np.int64) + 3) % 7) >= 5  # 1970-01-01 was a Thursday
    season: np.ndarray = hour + HOURS * weekend
    return season


class DetectorBank:
    """The state of many series and one vectorised step over all of them (see the module
    docstring for the method and the API)."""

    def __init__(self, rows: int = 0, params: Params = DEFAULT_PARAMS) -> None:
        self.params = params
        self._table = StateTable(_layout(params), rows)
        self._rates = np.asarray(params.range_rates, dtype=np.float64)[:, None]
        self._fingerprint = self._table.layout.fingerprint(repr(astuple(params)).encode())

    @property
    def rows(self) -> int:
        return self._table.rows

    @property
    def state_bytes_per_row(self) -> int:
        return self._table.layout.width * 8

    def add(self, count: int) -> np.ndarray:
        return self._table.add(count)

    def remove(self, rows: Iterable[int] | np.ndarray) -> None:
        self._table.remove(rows)

    def reset(self, rows: Iterable[int] | np.ndarray) -> None:
        self._table.reset(rows)

    def to_bytes(self, rows: Iterable[int] | np.ndarray | None = None) -> bytes:
        return self._table.to_bytes(self._fingerprint, rows)

    def append_bytes(self, data: bytes) -> np.ndarray:
        return self._table.append_bytes(data, self._fingerprint)

    @classmethod
    def from_bytes(cls, data: bytes, params: Params = DEFAULT_PARAMS) -> DetectorBank:
        bank = cls(0, params)
        bank.append_bytes(data)
        return bank

    def step(
        self,
        values: np.ndarray,
        present: np.ndarray,
        timestamps: np.ndarray | float,
    ) -> np.ndarray:
        """Score one value per row (NaN for absent rows and during warm-up)."""
        rows = self.rows
        values = np.asarray(values, dtype=np.float64)
        present = np.asarray(present, dtype=bool)
        if values.shape != (rows,) or present.shape != (rows,):
            raise ValueError(f"values and present must have shape ({rows},)")
        stamps = np.broadcast_to(np.asarray(timestamps, dtype=np.float64), (rows,))
        present = present & np.isfinite(values)
        scores = np.full(rows, np.nan)
        if present.all():
            scores[:] = self._advance(self._table.data, values, stamps)
        elif 2 * np.count_nonzero(present) >= rows:
            # PERF: most rows present (a few servers silent this minute): one pass over every
            # row, the absent ones put back as they were, costs a gather of the absent ones
            # instead of a gather and a scatter of the present ones (250,000 servers with a
            # tenth absent: 0.09 s instead of 1.1 s). Each row's step depends on that row alone,
            # so the present rows' scores and states are the same either way.
            absent = np.flatnonzero(~present)
            data = self._table.data
            kept = data[:, absent]
            scores[:] = self._advance(data, np.where(present, values, 0.0), stamps)
            data[:, absent] = kept
            scores[absent] = np.nan
        elif present.any():
            index = np.flatnonzero(present)
            block = self._table.data[:, index]
            scores[index] = self._advance(block, values[index], stamps[index])
            self._table.data[:, index] = block
        return scores

    def _advance(self, block: np.ndarray, x: np.ndarray, stamps: np.ndarray) -> np.ndarray:
        """One value for every column of ``block`` (updated in place); their scores."""
        p = self.params
        f = self._table.layout.slices
        count = block[f["count"]][0]
        level, high, low = block[f["level"]], block[f["high"]], block[f["low"]]
        fresh = count == 0

        # 1. Range: each smoothed track against its slowly forgetting envelope.
        rates = np.maximum(self._rates, 1.0 / (count + 1.0))
        level += rates * (x - level)
        range_excess = _excess(level, high, low).max(axis=0)
        slowest = level[-1]
        known = np.isfinite(high)
        high -= p.range_forget * np.where(known, high - slowest, 0.0)
        low -= p.range_forget * np.where(known, low - slowest, 0.0)
        np.maximum(high, level, out=high)
        np.minimum(low, level, out=low)

        # 2. Spike: the value against a slow mean and mean absolute deviation.
        mean, dev = block[f["spike_mean"]][0], block[f["spike_dev"]][0]
        with np.errstate(invalid="ignore", divide="ignore"):
            z = np.abs(x - mean) / (dev + 1e-9 + 1e-6 * np.abs(mean))
        z = np.where(count > 2, z, 0.0)
        spike_excess = p.spike_weight * np.maximum(z - p.spike_z, 0.0) / p.spike_z
        spike_rate = np.maximum(p.spike_rate, 1.0 / (count + 1.0))
        mean += np.where(fresh, x - mean, spike_rate * (x - mean))
        dev += np.where(fresh, -dev, spike_rate * (np.abs(x - mean) - dev))

        # 3. Season: the level against its hour's profile from earlier days.
        season_level = block[f["season_level"]][0]
        season_level += np.maximum(p.season_rate, 1.0 / (count + 1.0)) * (x - season_level)
        season_excess = self._season_excess(block, season_level, stamps)

        excess = np.maximum(np.maximum(range_excess, spike_excess), season_excess)
        score = excess / (1.0 + excess)

        # Report an episode once: quiet for a while after a report unless it grows.
        since = block[f["since_report"]][0]
        last = block[f["last_report"]][0]
        since += 1.0
        reportable = (since > p.refractory) | (score > p.refractory_factor * last)
        reported = reportable & (score > 0.0)
        since[reported] = 0.0
        last[reported] = score[reported]
        score = np.where(reportable, score, 0.0)

        warming = count < p.warm_up
        count += 1.0
        return np.where(warming, np.nan, score)

    def _season_excess(
        self, block: np.ndarray, level: np.ndarray, stamps: np.ndarray
    ) -> np.ndarray:
        p = self.params
        f = self._table.layout.slices
        columns = np.arange(block.shape[1])
        profile = block[f["profile"]]
        visiting = block[f["visit_season"]][0]
        visit_sum, visit_count = block[f["visit_sum"]][0], block[f["visit_count"]][0]
        season = _season(stamps)
        # A visit to an hour ends when the hour changes: fold its mean level into the profile.
        moved = season != visiting
        ended = moved & (visiting >= 0) & (visit_count > 0)
        if ended.any():
            where = columns[ended]
            hour = visiting[ended].astype(np.int64)
            mean = visit_sum[ended] / visit_count[ended]
            old = profile[hour, where]
            profile[hour, where] = np.where(np.isnan(old), mean, old + p.season_fold * (mean - old))
        visit_sum[moved] = 0.0
        visit_count[moved] = 0.0
        visiting[:] = season
        visit_sum += level
        visit_count += 1.0

        expected = profile[season, columns]
        seen = ~np.isnan(expected)
        gap = np.where(seen, level - expected, 0.0)
        high, low = block[f["season_high"]][0], block[f["season_low"]][0]
        excess = _excess(gap, high, low)
        keep = 1.0 - p.season_forget
        high[:] = np.where(seen, np.maximum(high * keep, gap), high)
        low[:] = np.where(seen, np.minimum(low * keep, gap), low)
        return p.season_weight * excess
