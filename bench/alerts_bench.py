"""One alert evaluation over a large fleet with the default rules (section ``alerts``).

A synthetic fleet with a realistic mix: most servers live and cool; 0.5 % silent for minutes to
an hour (ServerSilent firing), 0.3 % silent under two minutes (nothing yet); 2 % with cpu and
1 % with ram above 90 %, since 0 to 12 minutes (some pending, some firing); anomaly scores for
80 % of servers, 0.3 % at or above the threshold. Twelve minutes of evaluations every 15 s build
the state first; then the time of ``AlertEvaluator.evaluate`` is taken over the next 20
evaluations (the read model's last minute is built beforehand, as the store builds it), and
beside it the time of turning that into the evaluator's columns (``alerts/columns.py``, as the
aggregator does before each evaluation), of ``due`` and of ``api_alerts``.

    python -m bench.alerts_bench --servers 100000
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np

from servertrack.alerts.columns import fleet_columns
from servertrack.alerts.evaluate import AlertEvaluator, FleetColumns
from servertrack.alerts.rules import DEFAULT_RULES
from servertrack.readmodel.cells import empty_cells
from servertrack.readmodel.values import LastMinute

NOW = 1_800_000_000.0
STEP = 15.0
WARM_UP_MINUTES = 12
MEASURED = 20
TARGET_MS = 200.0


class Fleet:
    """The synthetic fleet's columns at any time, the same servers throughout."""

    def __init__(self, servers: int, seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        self.rng = rng
        self.count = servers
        self.names = [f"server-{i:07d}.example.com" for i in range(servers)]
        kind = rng.random(servers)
        self.silent_since = np.full(servers, np.inf)
        long_silent = kind < 0.005
        short_silent = (kind >= 0.005) & (kind < 0.008)
        self.silent_since[long_silent] = NOW - rng.uniform(150, 3600, long_silent.sum())
        self.silent_since[short_silent] = NOW + rng.uniform(
            -100, 60 * WARM_UP_MINUTES, short_silent.sum()
        )
        self.cpu_hot_from = self._spell(rng, 0.02)
        self.ram_hot_from = self._spell(rng, 0.01)
        self.scored = rng.random(servers) < 0.8
        self.odd = rng.random(servers) < 0.003

    def _spell(self, rng: np.random.Generator, share: float) -> np.ndarray:
        """When each server's hot spell began (inf: never), spread over the last 12 minutes."""
        start = np.full(self.count, np.inf)
        hot = rng.random(self.count) < share
        start[hot] = NOW - 300 + rng.uniform(-60 * WARM_UP_MINUTES, 60 * WARM_UP_MINUTES, hot.sum())
        return start

    def at(self, now: float) -> FleetColumns:
        rng = self.rng
        minute = now - now % 60 - 60
        sample = now - rng.uniform(0, 10, self.count)
        silent = self.silent_since <= now
        last_seen = np.where(silent, np.minimum(self.silent_since, sample), sample)
        cpu = np.where(
            self.cpu_hot_from <= minute,
            rng.uniform(91, 100, self.count),
            rng.uniform(5, 80, self.count),
        )
        ram = np.where(
            self.ram_hot_from <= minute,
            rng.uniform(91, 100, self.count),
            rng.uniform(20, 80, self.count),
        )
        no_data = silent & (self.silent_since < minute)
        cpu[no_data] = np.nan
        ram[no_data] = np.nan
        scores = np.where(
            self.odd, rng.uniform(0.5, 1.0, self.count), rng.beta(1, 8, self.count) * 0.5
        )
        scores[~self.scored] = np.nan
        return FleetColumns(self.names, last_seen, cpu, ram, scores, scores[::-1].copy(), minute)


def last_minute_of(columns: FleetColumns) -> LastMinute:
    """The read model's answer the aggregator turns into ``columns`` (six samples a minute)."""
    cells = empty_cells(len(columns), stamp=int(columns.minute // 60))
    for metric in ("cpu", "ram"):
        values = getattr(columns, metric)
        seen = ~np.isnan(values)
        cells[f"{metric}_count"] = np.where(seen, 6, 0)
        cells[f"{metric}_sum"] = np.where(seen, values * 6, 0.0)
    return LastMinute(
        int(columns.minute // 60),
        list(columns.names),
        columns.last_seen,
        cells,
        columns.cpu_anomaly,
        columns.ram_anomaly,
    )


def measure(servers: int = 100_000) -> dict[str, Any]:
    fleet = Fleet(servers)
    evaluator = AlertEvaluator(DEFAULT_RULES, interval=STEP)
    now = NOW - 60 * WARM_UP_MINUTES
    while now < NOW:
        evaluator.evaluate(fleet.at(now), now)
        evaluator.due(now)
        now += STEP
    evaluate_s, due_s, listing_s, columns_s = [], [], [], []
    for _ in range(MEASURED):
        last = last_minute_of(fleet.at(now))
        began = time.perf_counter()
        snapshot = fleet_columns(last)  # what the aggregator does before each evaluation
        columns_s.append(time.perf_counter() - began)
        began = time.perf_counter()
        evaluator.evaluate(snapshot, now)
        evaluate_s.append(time.perf_counter() - began)
        began = time.perf_counter()
        evaluator.due(now)
        due_s.append(time.perf_counter() - began)
        began = time.perf_counter()
        evaluator.api_alerts()
        listing_s.append(time.perf_counter() - began)
        now += STEP
    began = time.perf_counter()
    state = evaluator.to_bytes()
    save_ms = round((time.perf_counter() - began) * 1e3, 1)
    stats = evaluator.stats()
    return {
        "servers": servers,
        "rules": len(DEFAULT_RULES),
        "evaluations": MEASURED,
        "evaluate_ms_median": round(statistics.median(evaluate_s) * 1e3, 1),
        "evaluate_ms_max": round(max(evaluate_s) * 1e3, 1),
        "columns_ms_median": round(statistics.median(columns_s) * 1e3, 1),
        "due_ms_median": round(statistics.median(due_s) * 1e3, 1),
        "api_alerts_ms_median": round(statistics.median(listing_s) * 1e3, 1),
        "pending": stats["alerts_pending"],
        "firing": stats["alerts_firing"],
        "state_bytes": len(state),
        "to_bytes_ms": save_ms,
        "target_ms": TARGET_MS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--servers", type=int, default=100_000)
    args = parser.parse_args()
    print(json.dumps(measure(args.servers)))


if __name__ == "__main__":
    main()
