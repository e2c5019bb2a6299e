"""Two real hosts on one real redis-server: the host scoring the fleet dies (SIGKILL of its whole
process group) and the other one takes the scoring over within 2 minutes, from the detectors
the first one left, so the scores both before and after equal the oracle's; or it stops cleanly
and gives the lease back, and the other one takes it at its next try.

Slow (real minutes pass, and the lease has to expire): ``make test-faults``. The detectors start
warmed up (a state written into Redis as a holder leaves it), so real minutes get real scores.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import pytest

from servertrack.anomaly import DetectorBank
from servertrack.anomaly.fleet_scores import FleetScores
from servertrack.store.anomaly_records import (
    LEASE,
    RETRY,
    SCORE_DELAY,
    STATE,
    STATE_TTL_MS,
    encode_state,
)
from servertrack.testing.hosts import HostUnderTest, http_json, wait_until
from servertrack.testing.redis import RedisServer
from tests.anomaly_support import nab_values

pytestmark = [pytest.mark.e2e, pytest.mark.faults]
NAMES = ("take-1.example", "take-2.example")
WARM = 130
MINUTE_DUE = 60.0
"""Seconds at most before a minute is due (``SCORE_DELAY`` s into it) from any moment."""
GAP_LIMIT = 120.0
"""Seconds scoring may stop when the host scoring dies."""


def value(name: str, metric: str, minute: int) -> float:
    series = nab_values("ec2_cpu_utilization_825cc2.csv", 4000)
    base = series[minute % len(series)]
    return 0.5 * base + NAMES.index(name) * 7.0 + (13.0 if metric == "ram" else 0.0)


def warm_state(last: int) -> tuple[bytes, dict[tuple[str, str], DetectorBank]]:
    """The detectors after the warm minutes ``last - WARM + 1 .. last`` (one value each), as
    a holder leaves them in Redis; and the oracle's own detectors after the same values."""
    scores = FleetScores(len(NAMES))
    oracle = {(n, m): DetectorBank(1) for n in NAMES for m in ("cpu", "ram")}
    for minute in range(last - WARM + 1, last + 1):
        cpu = np.array([value(n, "cpu", minute) for n in NAMES])
        ram = np.array([value(n, "ram", minute) for n in NAMES])
        scores.score(minute, cpu, ram)
        for k, name in enumerate(NAMES):
            for metric, column in (("cpu", cpu), ("ram", ram)):
                oracle[(name, metric)].step(column[k : k + 1], np.array([True]), minute * 60.0)
    return encode_state(last, list(NAMES), scores.bank), oracle


def scored_minutes(host: HostUnderTest, name: str) -> dict[int, tuple[float, float]]:
    status, view = http_json("GET", f"{host.api}/servers/{name}/loads")
    if status != 200:
        return {}
    out = {}
    for bucket in view["minutes"]:
        if bucket["cpu_anomaly"] is not None:
            minute = int(np.datetime64(bucket["start"].rstrip("Z"), "s").astype(np.int64)) // 60
            out[minute] = (bucket["cpu_anomaly"], bucket["ram_anomaly"])
    return out


def scoring(host: HostUnderTest) -> int:
    status, stats = http_json("GET", f"{host.api}/stats")
    return int(stats["aggregator"].get("anomaly_minutes_scored", 0)) if status == 200 else 0


@pytest.mark.timeout(480)  # up to two minutes for the first scores, two for the takeover
def test_the_other_host_takes_the_scoring_over_within_two_minutes(
    start_host: Callable[..., HostUnderTest], redis_server: RedisServer
) -> None:
    now = time.time()
    state, oracle = warm_state(int(now // 60) - 1)
    redis_server.client().set(STATE, state, px=STATE_TTL_MS)
    hosts = [start_host("--no-agent", "--store", redis_server.url) for _ in range(2)]
    sent: dict[tuple[str, int], list[tuple[float, float]]] = {}

    def post(host: HostUnderTest) -> None:
        ts = time.time()
        minute = int(ts // 60)
        body = []
        for name in NAMES:
            cpu, ram = value(name, "cpu", minute), value(name, "ram", minute)
            body.append({"server": name, "ts": ts, "cpu": cpu, "ram": ram})
            sent.setdefault((name, minute), []).append((cpu, ram))
        status, answer = host.post("/loads", body)
        assert status == 202, answer

    def until(what: str, deadline: float, done: Callable[[], object], through: HostUnderTest):
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            post(through)
            found = done()
            if found:
                return found
            time.sleep(1.0)  # one sample a second: the pace of an agent
        raise AssertionError(f"timed out after {deadline} s waiting for {what}")

    holder = until("a host to score", 150, lambda: [h for h in hosts if scoring(h)], hosts[1])[0]
    other = hosts[1 - hosts.index(holder)]
    until("a second scored minute", 90, lambda: scoring(holder) >= 2, other)
    before = scored_minutes(other, NAMES[0])
    assert before, "no minute has a score: the detectors left in Redis were not used"
    last_by_holder = max(before)
    holder.process.kill_group()  # the host dies: no clean stop, the lease is left to expire
    stopped = (last_by_holder + 1) * 60 + SCORE_DELAY  # about when it last scored
    after = until(
        "the other host to score",
        GAP_LIMIT + 30,
        lambda: max(scored_minutes(other, NAMES[0]), default=0) > last_by_holder,
        other,
    )
    assert after
    took = time.time() - stopped
    assert took <= GAP_LIMIT + 5.0, f"scoring stopped for {took:.0f} s"
    assert scoring(other) >= 1
    # Every score shown equals the oracle's detectors stepped over the scored minutes only.
    shown = {name: scored_minutes(other, name) for name in NAMES}
    for name in NAMES:
        for minute in sorted(shown[name]):
            values = sent[(name, minute)]
            for k, metric in enumerate(("cpu", "ram")):
                total = 0.0
                for pair in values:
                    total += pair[k]
                mean = total / len(values)
                bank = oracle[(name, metric)]
                want = float(bank.step(np.array([mean]), np.array([True]), minute * 60.0)[0])
                got = shown[name][minute][k]
                assert got == want or (math.isnan(want) and got is None), (name, minute, metric)
    assert len(shown[NAMES[0]]) >= 3


def test_a_host_that_stops_cleanly_gives_the_lease_back_and_the_other_takes_it_at_once(
    start_host: Callable[..., HostUnderTest], redis_server: RedisServer
) -> None:
    """A planned stop of the host holding the lease deletes it (its own id, nothing else), so
    the other host holds it at its next try once a minute is due, not 75 s later."""
    client = redis_server.client()
    first = start_host("--no-agent", "--store", redis_server.url)
    taken = wait_until(lambda: client.get(LEASE), MINUTE_DUE + 30, "the first host to take it")
    second = start_host("--no-agent", "--store", redis_server.url)
    assert client.get(LEASE) == taken  # the only host that tried before: the first
    first.process.stop()
    assert client.get(LEASE) != taken
    # The second host tries every RETRY s while a minute is due (from SCORE_DELAY s into it):
    # well within the 75 s the lease would otherwise have lived on.
    wait = SCORE_DELAY + RETRY + 3.0
    holder = wait_until(lambda: client.get(LEASE), wait, "the second host to take it")
    assert holder != taken
    assert client.pttl(LEASE) > 60_000
    assert second.process.stop() < 10.0
    assert client.get(LEASE) is None
