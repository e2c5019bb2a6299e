"""A warmed-up aggregator snapshot and its oracle, for tests of anomaly scores on a real host.

A detector scores nothing for its first 100 minutes, so a real host would need almost two hours
before it shows a score. Instead, real NAB CloudWatch series are replayed here through the
aggregator's own state with an injected clock, ending in the minute before the wall clock's, and
the snapshot is written where a host started afterwards restores it from (``<data-dir>/
aggregator.npz``): the host shows the scores at once and goes on scoring at each minute turn.
The oracle is independent: brute-force minute means over the raw samples, each series run
through a detector of its own.
"""

from __future__ import annotations

import csv
import functools
import os
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from servertrack.aggregator.rollups import Rollups
from servertrack.aggregator.snapshot import write_snapshot
from servertrack.aggregator.state import AggregatorState
from servertrack.anomaly import DetectorBank
from servertrack.common.batch import Batch
from servertrack.common.oracle import RawSample
from servertrack.testing.hosts import FakeClock, wait_until

SHARED = Path(
    os.environ.get("SERVERTRACK_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared")
)
CLOUDWATCH = SHARED / "data" / "nab" / "corpus" / "data" / "realAWSCloudwatch"
WARM_MINUTES = 150
OFFSETS = (10.0, 40.0)
SERVERS = ("anomaly-a.example", "anomaly-b.example", "anomaly-c.example", "anomaly-d.example")
"""anomaly-a jumps in the last minute (its newest cpu score is the highest), anomaly-d sends no
ram at all."""
Scores = dict[tuple[str, str], dict[int, float]]


def nab_values(name: str, count: int) -> list[float]:
    return list(_series(name)[:count])


@functools.cache
def _series(name: str) -> tuple[float, ...]:
    with (CLOUDWATCH / name).open(newline="") as handle:
        return tuple(float(row["value"]) for row in csv.DictReader(handle))


def warm_samples(first_minute: int, minutes: int = WARM_MINUTES) -> list[RawSample]:
    """Two samples a minute of every server for ``minutes`` minutes from ``first_minute``."""
    a = nab_values("ec2_cpu_utilization_5f5533.csv", minutes)
    b = nab_values("rds_cpu_utilization_e47b3b.csv", minutes)
    c = nab_values("ec2_cpu_utilization_825cc2.csv", minutes)
    samples: list[RawSample] = []
    for k in range(minutes):
        start = (first_minute + k) * 60
        last = k == minutes - 1
        for n, offset in enumerate(OFFSETS):
            ts = start + offset
            wobble = 0.25 * n
            samples += [
                (SERVERS[0], ts, a[k] + wobble + (45.0 if last else 0.0), c[k]),
                (SERVERS[1], ts, b[k] + wobble, a[k]),
                (SERVERS[2], ts, c[k] + wobble, b[k] + wobble),
                (SERVERS[3], ts, 30.0 + b[k] / 4 + wobble, None),
            ]
    return samples


def oracle_scores(samples: Iterable[RawSample], names: Iterable[str] = SERVERS) -> Scores:
    """(server, metric) → minute → score, over brute-force minute means (summed in arrival
    order), each series through a detector of its own; minutes without a sample skipped."""
    values: dict[tuple[str, str, int], list[float]] = {}
    for name, ts, cpu, ram in samples:
        for metric, value in (("cpu", cpu), ("ram", ram)):
            if value is not None:
                values.setdefault((name, metric, int(ts // 60)), []).append(value)
    out: Scores = {}
    for name in names:
        for metric in ("cpu", "ram"):
            bank = DetectorBank(1)
            scores: dict[int, float] = {}
            for minute in sorted(m for (n, k, m) in values if n == name and k == metric):
                total = 0.0
                for value in values[(name, metric, minute)]:
                    total += value
                mean = total / len(values[(name, metric, minute)])
                scores[minute] = float(
                    bank.step(np.array([mean]), np.array([True]), minute * 60.0)[0]
                )
            out[(name, metric)] = scores
    return out


def write_warm_snapshot(path: Path, now: float) -> list[RawSample]:
    """Replay :func:`warm_samples` ending in the minute before ``now``'s through an aggregator
    state (clock injected, one batch per sample time) and write its snapshot at ``path``;
    returns the samples."""
    first = int(now // 60) - WARM_MINUTES
    samples = warm_samples(first)
    clock = FakeClock(first * 60.0)
    state = AggregatorState(Rollups(clock), clock)
    by_time: dict[float, list[RawSample]] = {}
    for sample in samples:
        by_time.setdefault(sample[1], []).append(sample)
    for number, (ts, rows) in enumerate(sorted(by_time.items())):
        clock.set(ts + 0.5)
        state.apply(
            Batch(
                epoch="warm-up",
                number=number,
                sent=clock(),
                ids=np.array([SERVERS.index(r[0]) for r in rows], np.int32),
                ts=np.array([r[1] for r in rows]),
                cpu=np.array([np.nan if r[2] is None else r[2] for r in rows]),
                ram=np.array([np.nan if r[3] is None else r[3] for r in rows]),
                names=list(enumerate(SERVERS)) if number == 0 else [],
            ),
            clock(),
        )
        state.housekeeping(clock())
    clock.set(now)
    state.housekeeping(now)
    arrays = state.store.snapshot()
    assert arrays is not None
    write_snapshot(path, arrays, state.snapshot_meta(now))
    return samples


def now_with_room(room: float) -> float:
    """The wall clock once at least ``room`` seconds of its minute are left: a warmed snapshot
    written then keeps its last minute the host's last complete one for that long (what
    ``/metrics/servers`` and the alert rules look at)."""
    wait_until(lambda: 60.0 - time.time() % 60.0 > room, 60.0, "a minute with room left")
    return time.time()
