"""Run ServerTrack's anomaly detector over the whole NAB corpus, write NAB-layout results, and
measure what the detector costs.

Every series goes through one :class:`DetectorBank`, one row index at a time: step ``i`` gives
each series its ``i``-th value (``present`` is false for the series that have ended), so each
series sees its values once, in order, exactly as ServerTrack's minute loop would feed them.
"""

from __future__ import annotations

import csv
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.nab_score import Series
from servertrack.anomaly import DEFAULT_PARAMS, DetectorBank, Params

DETECTOR = "servertrack"
COST_SERIES = 200_000
COST_STEPS = 7
COST_BUDGET_S = 3.0
"""One step over 200,000 series (100,000 servers x cpu and ram) within 5 % of a core-minute."""


def timestamps_of(series: Series) -> np.ndarray:
    return np.array(series.timestamps, dtype="datetime64[s]").astype(np.int64).astype(np.float64)


def detect_corpus(
    corpus: Sequence[Series], params: Params = DEFAULT_PARAMS, nan_as: float = 0.0
) -> dict[str, np.ndarray]:
    """Every series' scores, with warm-up's NaN as ``nan_as`` (NAB wants scores in [0, 1])."""
    longest = max(len(s.values) for s in corpus)
    values = np.zeros((longest, len(corpus)))
    stamps = np.zeros((longest, len(corpus)))
    present = np.zeros((longest, len(corpus)), dtype=bool)
    for j, s in enumerate(corpus):
        values[: len(s.values), j] = s.values
        stamps[: len(s.values), j] = timestamps_of(s)
        present[: len(s.values), j] = True
    bank = DetectorBank(len(corpus), params)
    scores = np.empty((longest, len(corpus)))
    for i in range(longest):
        scores[i] = bank.step(values[i], present[i], stamps[i])
    scores = np.where(np.isnan(scores), nan_as, scores)
    return {s.key: scores[: len(s.values), j] for j, s in enumerate(corpus)}


def write_results(
    out_dir: Path, corpus: Sequence[Series], scores: dict[str, np.ndarray], detector: str = DETECTOR
) -> Path:
    """NAB's layout: ``<out>/<detector>/<category>/<detector>_<name>.csv`` with
    ``timestamp,value,anomaly_score,label`` (label 1 inside a window, as NAB writes it)."""
    root = out_dir / detector
    for s in corpus:
        label = np.zeros(len(s.values), dtype=int)
        for start, end in s.windows:
            label[start : end + 1] = 1
        path = root / s.category / f"{detector}_{s.name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["timestamp", "value", "anomaly_score", "label"])
            for row in zip(s.timestamps, s.values, scores[s.key], label, strict=True):
                stamp, value, score, flag = row
                writer.writerow([stamp, repr(float(value)), repr(float(score)), int(flag)])
    return root


def measure_cost(
    series: int = COST_SERIES, steps: int = COST_STEPS, seed: int = 7
) -> dict[str, Any]:
    """State bytes per series, and the CPU time of one step over ``series`` series (median of
    ``steps``, after a warm-up), with every series present and with a tenth of them absent."""
    rng = np.random.default_rng(seed)
    bank = DetectorBank(series)
    load = rng.uniform(5.0, 60.0, series)
    now = 1_700_000_000.0

    def one(present: np.ndarray) -> float:
        nonlocal load, now
        load = np.clip(load + rng.normal(0.0, 2.0, series), 0.0, 100.0)
        now += 60.0
        started = time.process_time()
        bank.step(load, present, now)
        return time.process_time() - started

    everyone = np.ones(series, dtype=bool)
    for _ in range(3):
        one(everyone)
    full = [one(everyone) for _ in range(steps)]
    partial_mask = rng.random(series) >= 0.1
    partial = [one(partial_mask) for _ in range(steps)]
    return {
        "series": series,
        "state_bytes_per_series": bank.state_bytes_per_row,
        "snapshot_bytes_per_series": len(bank.to_bytes([0])),
        "step_cpu_s_median": round(statistics.median(full), 4),
        "step_cpu_s_max": round(max(full), 4),
        "step_cpu_s_median_90pct_present": round(statistics.median(partial), 4),
        "steps": steps,
        "budget_s": COST_BUDGET_S,
    }


FLEET_SERVERS = 100_000
FLEET_MINUTES = 5
FLEET_BUDGET_S = 0.2
"""The aggregator scores a minute in its loop: at 100,000 servers it must not hold ingest up for
more than a fraction of a second."""


def measure_fleet_cost(
    servers: int = FLEET_SERVERS, minutes: int = FLEET_MINUTES
) -> dict[str, Any]:
    """CPU seconds of scoring a minute of ``servers`` servers in the aggregator's rollups (the
    minute means read from the ring, one step, the scores kept): the first minute, then the
    median of ``minutes`` with every server present and of ``minutes`` with a tenth absent."""
    from servertrack.aggregator.rollups import Rollups  # the bench's only use of the daemons

    start = 1_800_000_000.0
    clock_now = [start]
    rollups = Rollups(lambda: clock_now[0], max_servers=servers)
    rows = np.array([rollups.row_for(f"s{k:06d}.example") for k in range(servers)], np.int64)
    rng = np.random.default_rng(3)
    costs = []
    for minute in range(2 * minutes + 1):
        sending = rows if minute <= minutes else rows[rng.random(servers) >= 0.1]
        now = clock_now[0] = start + minute * 60 + 10
        cpu, ram = rng.uniform(0, 100, sending.size), rng.uniform(0, 100, sending.size)
        rollups.apply(sending, np.full(sending.size, now - 5), cpu, ram, now)
        now = clock_now[0] = start + (minute + 1) * 60 + 1
        began = time.process_time()
        rollups.score_minutes(now)
        costs.append(time.process_time() - began)
    return {
        "servers": servers,
        "first_minute_cpu_s": round(costs[0], 3),
        "minute_cpu_s_median": round(statistics.median(costs[1 : minutes + 1]), 4),
        "minute_cpu_s_median_90pct_present": round(statistics.median(costs[minutes + 1 :]), 4),
        "budget_s": FLEET_BUDGET_S,
    }
