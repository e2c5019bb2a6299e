"""Our NAB scorer: it reproduces the published scores of the stored reference results, file by
file, and its vectorised sweep agrees with a direct reading of NAB's rules at every threshold."""

from __future__ import annotations

import csv
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from bench import nab_score
from bench.__main__ import main as bench_main

SHARED = Path(
    os.environ.get("SERVERTRACK_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared")
)
CORPUS = SHARED / "data" / "nab" / "corpus"
RESULTS = CORPUS / "results"
PUBLISHED_WINDOWED_GAUSSIAN = {
    "standard": 39.65,
    "reward_low_FP_rate": 20.87,
    "reward_low_FN_rate": 47.41,
}


@pytest.fixture(scope="module")
def scorer() -> nab_score.Scorer:
    if not CORPUS.is_dir():
        pytest.fail(f"{CORPUS} not found (set SERVERTRACK_SHARED_DIR)")
    return nab_score.Scorer(nab_score.load_corpus(CORPUS), nab_score.load_profiles(CORPUS))


def nab_per_file_table(detector: str, profile: str) -> dict[str, float]:
    """NAB's own per-file scores, stored beside the reference results."""
    path = RESULTS / detector / f"{detector}_{profile}_scores.csv"
    with path.open(newline="") as handle:
        return {row["File"]: float(row["Score"]) for row in csv.DictReader(handle) if row["File"]}


def test_windowed_gaussian_scores_as_published(scorer: nab_score.Scorer) -> None:
    """The stored windowed-Gaussian results score 39.65 / 20.87 / 47.41, and every file scores
    what NAB's own per-file table says at the chosen threshold."""
    scores = nab_score.read_results(RESULTS / "windowedGaussian", scorer.corpus)
    results = {r.profile: r for r in scorer.score(scores)}
    assert set(results) == set(PUBLISHED_WINDOWED_GAUSSIAN)
    for profile, published in PUBLISHED_WINDOWED_GAUSSIAN.items():
        assert results[profile].normalised == pytest.approx(published, abs=0.01)
        table = nab_per_file_table("windowedGaussian", profile)
        assert set(table) == set(results[profile].per_file)
        for key, score in results[profile].per_file.items():
            assert score == pytest.approx(table[key], abs=1e-9), key


def test_the_null_detector_scores_zero(scorer: nab_score.Scorer) -> None:
    scores = nab_score.read_results(RESULTS / "null", scorer.corpus)
    for result in scorer.score(scores):
        assert result.normalised == pytest.approx(0.0, abs=1e-12)
        assert result.windows_detected == 0


def brute_force(
    series: list[nab_score.Series],
    scores: dict[str, np.ndarray],
    profile: nab_score.Profile,
    threshold: float,
) -> float:
    """NAB's rules read literally, row by row, at one threshold: the raw corpus score."""

    def sigmoid(y: float) -> float:
        return -1.0 if y > 3.0 else 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0

    total = 0.0
    for s in series:
        n = len(s.values)
        probation = min(math.floor(0.15 * n), 750)
        best: dict[int, float] = {}
        for w, (_, end) in enumerate(s.windows):
            if end >= probation:
                best[w] = -profile.fn
        previous = None
        for i in range(n):
            window = next((w for w, (a, b) in enumerate(s.windows) if a <= i <= b), None)
            if i >= probation and scores[s.key][i] >= threshold:
                if window is not None:
                    start, end = s.windows[window]
                    width = end - start + 1
                    gain = profile.tp * sigmoid(-(end - i + 1) / width) / sigmoid(-1.0)
                    best[window] = max(best[window], gain)
                elif previous is None:
                    total -= profile.fp
                else:
                    start, end = previous
                    total += profile.fp * sigmoid(abs(end - i) / (end - start))
            if window is not None and i == s.windows[window][1]:
                previous = s.windows[window]
        total += sum(best.values())
    return total


def synthetic_corpus(rng: np.random.Generator) -> tuple[list[nab_score.Series], dict]:
    """Small files with windows anywhere (one in the probation), scores with many ties."""
    series, scores = [], {}
    for f in range(6):
        n = int(rng.integers(120, 400))
        starts = np.sort(
            rng.choice(np.arange(5, n - 30), size=int(rng.integers(0, 4)), replace=False)
        )
        windows, free = [], 0
        for start in starts:
            if start < free:
                continue
            end = min(n - 1, int(start + rng.integers(3, 25)))
            windows.append((int(start), end))
            free = end + 2
        key = f"cat{f % 2}/file{f}.csv"
        stamps = tuple(f"2020-01-01 00:{i // 60:02d}:{i % 60:02d}" for i in range(n))
        series.append(nab_score.Series(key, stamps, np.zeros(n), tuple(windows)))
        scores[key] = np.round(rng.random(n) ** 3, 2)  # few distinct values: ties everywhere
    return series, scores


@pytest.mark.parametrize("seed", range(5))
def test_the_sweep_matches_a_literal_reading_of_the_rules(seed: int) -> None:
    """At every candidate threshold, the vectorised sweep's raw score equals the brute-force
    score; the chosen threshold is the best, the highest among equals."""
    rng = np.random.default_rng(seed)
    series, scores = synthetic_corpus(rng)
    profiles = nab_score.load_profiles(CORPUS)
    scorer = nab_score.Scorer(series, profiles)
    for profile in profiles:
        thresholds, raws = scorer.sweep(scores, profile)
        assert thresholds[0] == nab_score.NO_DETECTION
        assert list(thresholds) == sorted(set(thresholds), reverse=True)
        for threshold, raw in zip(thresholds, raws, strict=True):
            assert raw == pytest.approx(brute_force(series, scores, profile, threshold), abs=1e-9)
        result = next(r for r in scorer.score(scores) if r.profile == profile.name)
        best = raws.max()
        assert result.raw == best
        assert result.threshold == thresholds[np.flatnonzero(raws == best)[0]]
        assert sum(result.per_file.values()) == pytest.approx(best, abs=1e-9)


def test_among_equal_totals_the_highest_threshold_is_chosen() -> None:
    """A second, later detection in an already detected window adds nothing: 0.9 and 0.5 score
    the same, and NAB's stable sort keeps the higher threshold."""
    n = 200
    stamps = tuple(f"2020-01-01 00:{i // 60:02d}:{i % 60:02d}" for i in range(n))
    series = [nab_score.Series("cat/file.csv", stamps, np.zeros(n), ((100, 139),))]
    scores = np.zeros(n)
    scores[100], scores[130] = 0.9, 0.5
    profiles = nab_score.load_profiles(CORPUS)
    for result in nab_score.Scorer(series, profiles).score({"cat/file.csv": scores}):
        assert (result.threshold, result.windows_detected) == (0.9, 1)


def test_results_that_do_not_match_the_corpus_are_refused(
    scorer: nab_score.Scorer, tmp_path: Path
) -> None:
    """A missing file, or a file whose rows are not the data's, is an error, not a score."""
    copy = tmp_path / "windowedGaussian"
    shutil.copytree(RESULTS / "windowedGaussian", copy)
    victim = copy / "realTraffic" / "windowedGaussian_speed_7578.csv"
    lines = victim.read_text().splitlines(keepends=True)
    victim.write_text("".join(lines[:-1]))
    with pytest.raises(ValueError, match=r"not those of realTraffic/speed_7578\.csv"):
        nab_score.read_results(copy, scorer.corpus)
    victim.unlink()
    with pytest.raises(FileNotFoundError, match="speed_7578"):
        nab_score.read_results(copy, scorer.corpus)


def test_bench_score_prints_each_detectors_three_scores(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``python -m bench --only nab --score DIR`` scores every detector folder in DIR."""
    assert bench_main(["--only", "nab", "--score", str(RESULTS)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert (
        "windowedGaussian: standard 39.65 (threshold 1), reward_low_FP_rate 20.87 (threshold 1),"
        " reward_low_FN_rate 47.41 (threshold 1)"
    ) in out
    assert any(line.startswith("null: standard 0.00") for line in out)
