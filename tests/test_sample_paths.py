"""One rule for a valid sample on every path in: the same ts and cpu are judged alike whether they
come from an agent (msgpack over ZeroMQ), an HTTP record (the API's single and batch endpoints,
and the receiver's group-commit intake) or a Graphite line, for a new server (the full
validation) and a known one (the fast paths). The one limit that differs on purpose is
``GRAPHITE_CLAMP``. The store's guard over a batch's columns applies the same rules.

In process: the receiver state, the Falcon app through ``falcon.testing`` over the in-process
backend, and the Graphite intake without its socket; one fake clock for all of them."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest
from falcon import testing

from servertrack.api.app import create_app
from servertrack.common.sample import valid_columns, valid_percent, valid_ts
from servertrack.common.testing import FakeClock
from servertrack.receiver.graphite import GraphiteIntake
from servertrack.store.cells import Samples, fold
from tests.support import InProcessBackend

MINUTE = 60
HOUR = 3600
T0 = 1_699_999_200.0
"""An hour start (2023-11-14T22:00:00Z)."""
NOW = T0 + 30 * MINUTE + 15.0
OLDEST = T0 - 23 * HOUR
"""The start of the oldest hour bucket still inside the 24-hour window at ``NOW``."""

CASES: list[tuple[str, Any, Any, str | None]] = [
    ("inside", NOW - 1.0, 50.0, None),
    ("zero", NOW - 1.0, 0.0, None),
    ("hundred", NOW - 1.0, 100.0, None),
    ("negative-zero", NOW - 1.0, -0.0, None),
    ("int-value", NOW - 1.0, 50, None),
    ("int-ts", int(NOW) - 1, 50.0, None),
    ("over-100", NOW - 1.0, 100.5, "bad_cpu"),
    ("at-the-clamp", NOW - 1.0, 110.0, "bad_cpu"),
    ("over-the-clamp", NOW - 1.0, 110.5, "bad_cpu"),
    ("below-zero", NOW - 1.0, -0.5, "bad_cpu"),
    ("60-s-ahead", NOW + 60.0, 50.0, None),
    ("61-s-ahead", NOW + 61.0, 50.0, "future"),
    ("oldest-hour", OLDEST, 50.0, None),
    ("before-the-oldest-hour", OLDEST - 0.5, 50.0, "too_old"),
    ("1e16", 1e16, 50.0, "future"),
    ("minus-1e16", -1e16, 50.0, "too_old"),
    ("1e300", 1e300, 50.0, "future"),
    ("infinite-ts", math.inf, 50.0, "bad_ts"),
    ("minus-infinite-ts", -math.inf, 50.0, "bad_ts"),
    ("nan-ts", math.nan, 50.0, "bad_ts"),
    ("infinite-value", NOW - 1.0, math.inf, "bad_cpu"),
]
"""(case, ts, cpu, the verdict by the rules: ``None`` when accepted, else the reason)."""
GRAPHITE_VERDICTS = {"over-100": None, "at-the-clamp": None}
"""Where a Graphite line is judged otherwise, on purpose: 100 < value <= ``GRAPHITE_CLAMP`` is
taken as 100."""
NOT_IN_JSON = {"infinite-ts", "minus-infinite-ts", "nan-ts", "infinite-value"}
"""Values JSON cannot carry (the API's parser refuses them as ``bad_json`` before anything)."""


class Paths:
    """Every way a sample comes in, each returning the verdict on one sample."""

    def __init__(self) -> None:
        self.clock = FakeClock(NOW)
        self.backend = InProcessBackend(self.clock)
        self.state = self.backend.state
        self.client = testing.TestClient(create_app(self.backend, self.clock))
        self.graphite = GraphiteIntake(self.state)

    def agent(self, name: str, ts: Any, cpu: Any, seq: int) -> str | None:
        payload = msgpack.packb({"fqdn": name, "ts": ts, "cpu": cpu, "seq": seq})
        return self.state.offer_msgpack(payload, NOW)

    def http_single(self, name: str, ts: Any, cpu: Any, seq: int) -> str | None:
        result = self.client.simulate_post(f"/servers/{name}/loads", json={"cpu": cpu, "ts": ts})
        return None if result.status_code == 202 else result.json["reason"]

    def http_batch(self, name: str, ts: Any, cpu: Any, seq: int) -> str | None:
        body = [{"server": name, "cpu": cpu, "ts": ts}]
        result = self.client.simulate_post("/loads", json=body)
        return None if result.status_code == 202 else result.json["reason"]

    def group_commit(self, name: str, ts: Any, cpu: Any, seq: int) -> str | None:
        verdict: str | None = self.state.record_each([[name, ts, cpu, None]], NOW)["verdicts"][0]
        return verdict

    def graphite_line(self, name: str, ts: Any, cpu: Any, seq: int) -> str | None:
        before = self.state.counters()
        self.graphite.take_lines([f"servertrack.{name}.cpu {cpu!r} {ts!r}".encode()], NOW)
        after = self.state.counters()
        if after["accepted"]["graphite"] > before["accepted"]["graphite"]:
            return None
        was = before["rejected"]["graphite"]
        (reason,) = [r for r, n in after["rejected"]["graphite"].items() if n > was.get(r, 0)]
        return reason


PATHS = ["agent", "http_single", "http_batch", "group_commit", "graphite_line"]


@pytest.fixture(scope="module")
def paths() -> Paths:
    return Paths()


@pytest.mark.parametrize("known", [False, True], ids=["new-server", "known-server"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("case", "ts", "cpu", "verdict"), CASES, ids=[c[0] for c in CASES])
def test_a_sample_is_judged_alike_on_every_path(
    paths: Paths, path: str, known: bool, case: str, ts: Any, cpu: Any, verdict: str | None
) -> None:
    """The same ts and cpu get the same verdict on every path, from a new server (the full
    validation) and from a known one (the fast paths), but for the Graphite clamp."""
    if path.startswith("http") and case in NOT_IN_JSON:
        pytest.skip("JSON has no NaN or infinity")
    offer: Callable[[str, Any, Any, int], str | None] = getattr(paths, path)
    name = f"{case}-{path.replace('_', '-')}-{'known' if known else 'new'}"
    if known:
        assert offer(name, NOW - 5.0, 1.0, 0) is None  # the server is known from here on
    expected = GRAPHITE_VERDICTS.get(case, verdict) if path == "graphite_line" else verdict
    assert offer(name, ts, cpu, 1) == expected


# -- the store's guard --------------------------------------------------------------------------
TS_EDGES = [NOW, 0.0, -1e300, 1e300, math.inf, -math.inf, math.nan]
VALUE_EDGES = [math.nan, 0.0, -0.0, 100.0, 50.5, -1e-9, 100.000001, math.inf, -math.inf]


def test_the_columns_rule_is_the_scalar_rule() -> None:
    """Over every combination of edge values, a batch row passes :func:`valid_columns` exactly
    when its ts passes ``valid_ts`` and each value present (not NaN) passes ``valid_percent``."""
    rows = [(t, c, r) for t in TS_EDGES for c in VALUE_EDGES for r in VALUE_EDGES]
    ts, cpu, ram = (np.array(column, dtype=np.float64) for column in zip(*rows, strict=True))
    got = valid_columns(ts, cpu, ram)
    want = [
        valid_ts(t) and all(math.isnan(v) or valid_percent(v) for v in (c, r)) for t, c, r in rows
    ]
    assert got.tolist() == want


def test_the_store_folds_no_sample_the_receiver_would_refuse() -> None:
    """A batch row the receiver would have refused is ``invalid`` in the store's fold and is
    not folded: a ts that is not finite, or a value outside 0 to 100."""
    rows = [(NOW - 1, 10.0, 20.0), (NOW - 2, 150.0, 20.0), (math.nan, 10.0, np.nan)]
    rows += [(NOW - 3, np.nan, -5.0), (NOW - 4, -0.0, np.nan), (np.inf, 1.0, 1.0)]
    ts, cpu, ram = (np.array(column, dtype=np.float64) for column in zip(*rows, strict=True))
    count = len(rows)
    samples = Samples(
        np.zeros(count, np.int64), ts, cpu, ram, np.full(count, -1), np.zeros(count, np.int64)
    )
    folded = fold(samples, NOW)
    assert (folded.invalid, int(folded.samples.sum())) == (4, 2)
