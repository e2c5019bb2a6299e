"""A scorer for the Numenta Anomaly Benchmark (NAB), vectorised over the whole corpus.

It follows the rules of NAB's own scorer (``nab/sweeper.py``), as the corpus README states them:

- the first ``min(floor(0.15 * rows), 750)`` rows of a file are probationary and not scored;
- a row is a detection when its score is at or above the threshold;
- a window counts its earliest-weighted best detection, ``tpWeight * S(y) / S(-1)`` with
  ``y = -(r - i + 1) / w``, or ``-fnWeight`` when nothing in it is detected;
- a detection outside every window costs ``fpWeight * S(y)``, ``y = |i - r_prev| / (w_prev - 1)``
  past the previous window (``-fpWeight`` with no window before it, or ``y > 3``);
- one threshold per profile, chosen by trying every distinct score over the corpus (and "above
  every score", which detects nothing); among equal totals the highest threshold wins, as NAB's
  stable sort of its sweep does;
- normalised ``100 * (raw - raw_null) / (raw_perfect - raw_null)`` with ``raw_null =
  -fnWeight * windows`` and ``raw_perfect = tpWeight * windows``.

The sweep is one sort of every scored row plus cumulative sums: a window's best value so far,
as the threshold falls, is a running maximum within the window, and only its increases change
the total. Scoring a detector's results takes about a second.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHARED = Path(
    os.environ.get("SERVERTRACK_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared")
)
CORPUS = SHARED / "data" / "nab" / "corpus"
PROBATION_FRACTION = 0.15
PROBATION_MAX = 750
NO_DETECTION = 1.1
"""NAB's first threshold in its sweep: above every score, so nothing is detected."""


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    tp: float
    fn: float
    fp: float


@dataclass(frozen=True, slots=True)
class Series:
    """One corpus file: its rows and its labelled windows as inclusive row ranges."""

    key: str  # "<category>/<name>.csv"
    timestamps: tuple[str, ...]
    values: np.ndarray
    windows: tuple[tuple[int, int], ...]

    @property
    def category(self) -> str:
        return self.key.split("/")[0]

    @property
    def name(self) -> str:
        return self.key.split("/")[1].removesuffix(".csv")


@dataclass(frozen=True, slots=True)
class ProfileScore:
    profile: str
    threshold: float
    raw: float
    normalised: float
    windows_detected: int
    windows: int
    false_positive_rows: int
    per_file: dict[str, float]


def sigmoid_score(y: np.ndarray) -> np.ndarray:
    """NAB's scaled sigmoid ``2 / (1 + exp(5y)) - 1``, and -1 beyond ``y > 3``."""
    return np.where(y > 3.0, -1.0, 2.0 / (1.0 + np.exp(5.0 * y)) - 1.0)


def probation_rows(rows: int) -> int:
    return min(math.floor(PROBATION_FRACTION * rows), PROBATION_MAX)


def load_profiles(corpus: Path = CORPUS) -> list[Profile]:
    raw = json.loads((corpus / "config" / "profiles.json").read_text())
    return [
        Profile(
            name,
            m["CostMatrix"]["tpWeight"],
            m["CostMatrix"]["fnWeight"],
            m["CostMatrix"]["fpWeight"],
        )
        for name, m in raw.items()
    ]


def _read_csv_columns(path: Path, columns: Sequence[str]) -> dict[str, list[str]]:
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        try:
            where = [header.index(column) for column in columns]
        except ValueError as err:
            raise ValueError(f"{path}: no column {err.args[0].split()[0]} in {header}") from err
        out: dict[str, list[str]] = {column: [] for column in columns}
        for row in reader:
            for column, index in zip(columns, where, strict=True):
                out[column].append(row[index])
    return out


def load_corpus(corpus: Path = CORPUS) -> list[Series]:
    """Every labelled file of the corpus, in a stable order, with its windows as row ranges."""
    windows = json.loads((corpus / "labels" / "combined_windows.json").read_text())
    series = []
    for key in sorted(windows):
        columns = _read_csv_columns(corpus / "data" / key, ("timestamp", "value"))
        stamps = tuple(columns["timestamp"])
        row_of = {stamp: i for i, stamp in enumerate(stamps)}
        ranges = []
        for start, end in windows[key]:
            # Label timestamps carry microseconds ("2014-02-19 10:50:00.000000"); rows do not.
            ranges.append((row_of[start[:19]], row_of[end[:19]]))
        series.append(
            Series(key, stamps, np.array(columns["value"], dtype=np.float64), tuple(ranges))
        )
    return series


class Scorer:
    """The corpus laid out once (every scored row's window and sigmoid weights); then any
    detector's scores are swept per profile in a few vectorised passes."""

    def __init__(self, corpus: Sequence[Series], profiles: Sequence[Profile]) -> None:
        self.corpus = list(corpus)
        self.profiles = list(profiles)
        self.windows = sum(len(s.windows) for s in self.corpus)
        keep, window_of, tp_weight, fp_weight, file_of = [], [], [], [], []
        next_window = 0
        max_tp = float(sigmoid_score(np.array(-1.0)))
        for f, s in enumerate(self.corpus):
            n = len(s.values)
            rows = np.arange(n)
            window = np.full(n, -1)
            tp = np.zeros(n)
            fp = np.full(n, -1.0)  # before any window: -1
            for start, end in s.windows:
                width = end - start + 1
                inside = slice(start, end + 1)
                window[inside] = next_window
                next_window += 1
                tp[inside] = sigmoid_score(-(end - rows[inside] + 1) / width) / max_tp
                after = rows > end
                fp[after] = sigmoid_score(np.abs(end - rows[after]) / (width - 1.0))
            scored = rows >= probation_rows(n)
            keep.append(scored)
            window_of.append(window[scored])
            tp_weight.append(tp[scored])
            fp_weight.append(fp[scored])
            file_of.append(np.full(int(scored.sum()), f))
        self._keep = keep
        self._window = np.concatenate(window_of)
        self._tp = np.concatenate(tp_weight)
        self._fp = np.concatenate(fp_weight)
        self._file = np.concatenate(file_of)
        # Windows with no scored row (wholly probationary) are neither hits nor misses in NAB.
        self._scored_windows = np.unique(self._window[self._window >= 0])

    def _gather(self, scores: Mapping[str, np.ndarray]) -> np.ndarray:
        parts = []
        for s, keep in zip(self.corpus, self._keep, strict=True):
            got = np.asarray(scores[s.key], dtype=np.float64)
            if got.shape != (len(s.values),):
                raise ValueError(f"{s.key}: {got.shape[0]} scores for {len(s.values)} rows")
            parts.append(got[keep])
        return np.concatenate(parts)

    def sweep(
        self, scores: Mapping[str, np.ndarray], profile: Profile
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every candidate threshold (descending, starting with NO_DETECTION) and the raw
        corpus score at each."""
        score = self._gather(scores)
        order = np.argsort(-score, kind="stable")
        ordered = score[order]
        window = self._window[order]
        in_window = window >= 0
        gain = np.where(in_window, 0.0, profile.fp * self._fp[order])
        # Within each window, the running best as the threshold falls; its increases are gains.
        hit = np.flatnonzero(in_window)
        if hit.size:
            win = window[hit]
            value = profile.tp * self._tp[order][hit]
            by_window = np.argsort(win, kind="stable")  # keeps the descending-score order
            w_sorted, v_sorted = win[by_window], value[by_window]
            span = 2.0 * (profile.tp + profile.fn) + 1.0
            lifted = np.maximum(v_sorted, -profile.fn) + w_sorted * span
            best = np.maximum.accumulate(lifted) - w_sorted * span
            first = np.r_[True, w_sorted[1:] != w_sorted[:-1]]
            previous = np.where(first, -profile.fn, np.r_[-profile.fn, best[:-1]])
            increase = np.empty_like(best)
            increase[by_window] = best - previous
            gain[hit] = increase
        total = -profile.fn * self._scored_windows.size + np.cumsum(gain)
        last_of_level = np.r_[ordered[1:] != ordered[:-1], True]
        thresholds = np.r_[NO_DETECTION, ordered[last_of_level]]
        raws = np.r_[-profile.fn * self._scored_windows.size, total[last_of_level]]
        return thresholds, raws

    def per_file(
        self, scores: Mapping[str, np.ndarray], profile: Profile, threshold: float
    ) -> dict[str, float]:
        """Each file's raw score at ``threshold`` (they sum to the corpus score)."""
        score = self._gather(scores)
        detected = score >= threshold
        out = np.zeros(len(self.corpus))
        fp_rows = detected & (self._window < 0)
        np.add.at(out, self._file[fp_rows], profile.fp * self._fp[fp_rows])
        for w in self._scored_windows:
            rows = np.flatnonzero(self._window == w)
            f = self._file[rows[0]]
            hits = rows[detected[rows]]
            out[f] += profile.tp * self._tp[hits].max() if hits.size else -profile.fn
        return {s.key: float(v) for s, v in zip(self.corpus, out, strict=True)}

    def normalise(self, raw: float, profile: Profile) -> float:
        null = -profile.fn * self.windows
        perfect = profile.tp * self.windows
        return 100.0 * (raw - null) / (perfect - null)

    def score(self, scores: Mapping[str, np.ndarray]) -> list[ProfileScore]:
        """Each profile's best threshold over the corpus and what it scores."""
        results = []
        score = self._gather(scores)
        for profile in self.profiles:
            thresholds, raws = self.sweep(scores, profile)
            best = int(np.argmax(raws))  # the first, so the highest threshold among equals
            threshold = float(thresholds[best])
            detected = score >= threshold
            hit_windows = np.unique(self._window[detected & (self._window >= 0)])
            results.append(
                ProfileScore(
                    profile=profile.name,
                    threshold=threshold,
                    raw=float(raws[best]),
                    normalised=self.normalise(float(raws[best]), profile),
                    windows_detected=int(hit_windows.size),
                    windows=self.windows,
                    false_positive_rows=int((detected & (self._window < 0)).sum()),
                    per_file=self.per_file(scores, profile, threshold),
                )
            )
        return results


def read_results(detector_dir: Path, corpus: Sequence[Series]) -> dict[str, np.ndarray]:
    """The ``anomaly_score`` column of every corpus file in a NAB-layout detector folder
    (``<detector>/<category>/<detector>_<name>.csv``), checked row for row against the data."""
    detector = detector_dir.name
    scores = {}
    for s in corpus:
        path = detector_dir / s.category / f"{detector}_{s.name}.csv"
        if not path.is_file():
            raise FileNotFoundError(f"no results for {s.key}: {path} is missing")
        columns = _read_csv_columns(path, ("timestamp", "anomaly_score"))
        if len(columns["timestamp"]) != len(s.timestamps) or (
            columns["timestamp"][0][:19],
            columns["timestamp"][-1][:19],
        ) != (s.timestamps[0], s.timestamps[-1]):
            raise ValueError(f"{path}: its rows are not those of {s.key}")
        scores[s.key] = np.array(columns["anomaly_score"], dtype=np.float64)
    return scores


def detector_dirs(results_dir: Path) -> list[Path]:
    """The detector folders in a results folder, or the folder itself if it is one."""
    categories = {"realAWSCloudwatch", "realKnownCause"}
    if any((results_dir / c).is_dir() for c in categories):
        return [results_dir]
    found = sorted(
        d for d in results_dir.iterdir() if d.is_dir() and any((d / c).is_dir() for c in categories)
    )
    if not found:
        raise FileNotFoundError(f"{results_dir} holds no NAB-layout detector results")
    return found


def published(corpus: Path = CORPUS) -> dict[str, dict[str, float]]:
    """The published normalised scoreboard (``results/final_results.json``)."""
    return json.loads((corpus / "results" / "final_results.json").read_text())
