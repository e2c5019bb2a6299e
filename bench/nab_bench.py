"""Bench section ``nab``: ServerTrack's anomaly detector over the whole NAB corpus, scored by our
scorer beside the published scoreboard, and what the detector costs.

    python -m bench --only nab                       # run, write results to a temp dir, score
    python -m bench --only nab --nab-results DIR     # keep the NAB-layout results in DIR
    python -m bench --only nab --score DIR           # score any detector's NAB-layout results
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from bench import nab_run, nab_score
from servertrack.anomaly import DEFAULT_PARAMS, STANDARD_THRESHOLD

TARGETS = {"standard": 70.1, "reward_low_FP_rate": 63.2, "reward_low_FN_rate": 74.4}
"""Numenta HTM's published scores, which the detector has to beat."""
REFERENCES = {"numenta": "Numenta HTM", "ARTime": "ARTime"}
TUNING_NOTES = Path(__file__).resolve().parent / "nab_tuning.md"
STATE_BUDGET_BYTES = 2048


def _scores(results: list[nab_score.ProfileScore]) -> dict[str, dict[str, Any]]:
    return {
        r.profile: {
            "normalised": round(r.normalised, 2),
            "raw": round(r.raw, 3),
            "threshold": r.threshold,
            "windows_detected": r.windows_detected,
            "windows": r.windows,
            "false_positive_rows": r.false_positive_rows,
        }
        for r in results
    }


def score_dir(results_dir: Path, corpus_dir: Path = nab_score.CORPUS) -> dict[str, Any]:
    """Every detector found in a NAB-layout results folder, scored on the three profiles."""
    corpus = nab_score.load_corpus(corpus_dir)
    scorer = nab_score.Scorer(corpus, nab_score.load_profiles(corpus_dir))
    found = {}
    for detector_dir in nab_score.detector_dirs(results_dir):
        started = time.perf_counter()
        scores = nab_score.read_results(detector_dir, corpus)
        found[detector_dir.name] = _scores(scorer.score(scores))
        found[detector_dir.name]["seconds"] = round(time.perf_counter() - started, 2)
    return found


def score_lines(found: dict[str, Any]) -> str:
    lines = []
    for detector, profiles in found.items():
        parts = [
            f"{name} {figures['normalised']:.2f} (threshold {figures['threshold']:.6g})"
            for name, figures in profiles.items()
            if isinstance(figures, dict)
        ]
        lines.append(f"{detector}: " + ", ".join(parts))
    return "\n".join(lines)


def measure(results_dir: Path | None, corpus_dir: Path = nab_score.CORPUS) -> dict[str, Any]:
    """Run the detector over the corpus, write and score its results, measure its cost."""
    with tempfile.TemporaryDirectory(prefix="servertrack-nab-") as tmp:
        out = results_dir or Path(tmp)
        corpus = nab_score.load_corpus(corpus_dir)
        wall, cpu = time.perf_counter(), time.process_time()
        scores = nab_run.detect_corpus(corpus)
        detect = {
            "wall_s": round(time.perf_counter() - wall, 2),
            "cpu_s": round(time.process_time() - cpu, 2),
        }
        wall = time.perf_counter()
        nab_run.write_results(out, corpus, scores)
        written = round(time.perf_counter() - wall, 2)
        wall = time.perf_counter()
        found = score_dir(out / nab_run.DETECTOR, corpus_dir)[nab_run.DETECTOR]
        scored = round(time.perf_counter() - wall, 2)
    return {
        "series": len(corpus),
        "rows": sum(len(s.values) for s in corpus),
        "results_dir": str(results_dir) if results_dir else "(a temporary directory)",
        "detect": detect,
        "write_s": written,
        "score_s": scored,
        "scores": found,
        "published": nab_score.published(corpus_dir),
        "standard_threshold_constant": STANDARD_THRESHOLD,
        "params": {k: getattr(DEFAULT_PARAMS, k) for k in DEFAULT_PARAMS.__slots__},
        "cost": nab_run.measure_cost(),
        "fleet_cost": nab_run.measure_fleet_cost(),
    }


def _verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    met = value >= target if higher_is_better else value <= target
    return "met" if met else "**not met**"


def rows(nab: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The bench table's rows: the three normalised scores and the cost."""
    out = []
    for profile, target in TARGETS.items():
        got = nab["scores"][profile]
        out.append(
            (
                f"NAB {profile}, normalised (threshold {got['threshold']:.4g}, "
                f"{got['windows_detected']}/{got['windows']} windows, "
                f"{got['false_positive_rows']} false-positive rows)",
                f"≥ {target}",
                f"{got['normalised']:.2f}",
                _verdict(got["normalised"], target),
            )
        )
    cost = nab["cost"]
    detect = nab["detect"]
    out += [
        (
            f"NAB: the whole corpus ({nab['series']} series, {nab['rows']:,} rows) through one "
            "bank, wall s (CPU s)",
            "≤ 60",
            f"{detect['wall_s']} ({detect['cpu_s']})",
            _verdict(detect["wall_s"], 60, False),
        ),
        (
            "anomaly detector state per series (bytes)",
            f"≤ {STATE_BUDGET_BYTES:,}",
            f"{cost['state_bytes_per_series']}",
            _verdict(cost["state_bytes_per_series"], STATE_BUDGET_BYTES, False),
        ),
        (
            f"anomaly: one step over {cost['series']:,} series, CPU s (median of "
            f"{cost['steps']}; a tenth absent)",
            f"≤ {cost['budget_s']}",
            f"{cost['step_cpu_s_median']} (max {cost['step_cpu_s_max']}; "
            f"{cost['step_cpu_s_median_90pct_present']})",
            _verdict(cost["step_cpu_s_median"], cost["budget_s"], False),
        ),
    ]
    fleet = nab.get("fleet_cost")
    if fleet:
        out.append(
            (
                f"anomaly: scoring a minute of {fleet['servers']:,} servers in the aggregator "
                f"(means, step, scores kept), CPU s (median; a tenth absent; the first minute)",
                f"≤ {fleet['budget_s']}",
                f"{fleet['minute_cpu_s_median']} ({fleet['minute_cpu_s_median_90pct_present']}; "
                f"{fleet['first_minute_cpu_s']})",
                _verdict(
                    max(fleet["minute_cpu_s_median"], fleet["minute_cpu_s_median_90pct_present"]),
                    fleet["budget_s"],
                    False,
                ),
            )
        )
    return out


def scoreboard(nab: dict[str, Any]) -> list[str]:
    """Our three scores in the published scoreboard, best first by the standard profile."""
    board = dict(nab["published"])
    board.pop("null", None)
    ours = {p: nab["scores"][p]["normalised"] for p in TARGETS}
    board["**ServerTrack**"] = ours
    order = sorted(board, key=lambda name: -board[name]["standard"])
    lines = [
        "| detector | standard | reward low FP | reward low FN |",
        "|---|---|---|---|",
    ]
    for name in order:
        s = board[name]
        label = REFERENCES.get(name, name)
        lines.append(
            f"| {label} | {s['standard']:.2f} | {s['reward_low_FP_rate']:.2f} "
            f"| {s['reward_low_FN_rate']:.2f} |"
        )
    return lines


def section(nab: dict[str, Any]) -> list[str]:
    """The results file's NAB section: the scoreboard, the thresholds, how the parameters
    were chosen."""
    thresholds = ", ".join(f"{p} {nab['scores'][p]['threshold']:.6g}" for p in TARGETS)
    lines = [
        "## NAB: the scoreboard with ServerTrack in it",
        "",
        "Published scores from the corpus's `results/final_results.json`; ours scored by "
        "`bench/nab_score.py` from the results files this run wrote. Thresholds chosen by the "
        f"sweep: {thresholds}.",
        "",
        *scoreboard(nab),
        "",
    ]
    if TUNING_NOTES.is_file():
        lines += [TUNING_NOTES.read_text().rstrip(), ""]
    return lines
