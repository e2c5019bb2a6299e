"""The receiver's I/O-free state: validation, de-duplication, loss counting and batching."""

from __future__ import annotations

import collections
import gc
import gzip
import math
import pickle
import random
from typing import Any

import msgpack
import numpy as np
import pytest

from servertrack.common import wire
from servertrack.common.batch import Batch, MalformedBatch, ServerHealth
from servertrack.common.sample import InvalidSample, Sample, sample_from_mapping
from servertrack.common.testing import FakeClock
from servertrack.receiver.graphite import GraphiteIntake
from servertrack.receiver.state import ReceiverState

T0 = 1_699_999_200.0
"""An hour start (2023-11-14T22:00:00Z); the receiver's clock starts here."""
HOUR = 3600
NAN = float("nan")


# -- helpers ------------------------------------------------------------------------------------
def frames_for(
    fqdn: str = "web-1.example",
    ts: float = T0,
    cpu: float | None = 10.0,
    ram: float | None = 20.0,
    seq: int | None = None,
    ip: tuple[str, ...] = (),
    fmt: str = "msgpack",
) -> list[bytes]:
    """The frames an agent would send for one sample."""
    return wire.encode(Sample(fqdn, ts, cpu, ram, seq, ip), fmt)


def raw_map(pairs: list[tuple[str, Any]]) -> bytes:
    """A msgpack map16 of ``pairs`` as given, repeated keys included (``packb`` cannot do that)."""
    body = b"".join(msgpack.packb(key) + msgpack.packb(value) for key, value in pairs)
    return b"\xde" + len(pairs).to_bytes(2, "big") + body


def packed(data: Any) -> list[bytes]:
    """A msgpack message carrying ``data`` as it is (no validation on the way out)."""
    return [wire.MSGPACK, msgpack.packb(data)]


def valid_map(**changes: Any) -> dict[str, Any]:
    """A valid wire map with ``changes`` applied (a value of ``...`` removes the key)."""
    data: dict[str, Any] = {"fqdn": "web-1.example", "ts": T0, "cpu": 10.0, "ram": 20.0, "seq": 0}
    for key, value in changes.items():
        if value is ...:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def gz_pickle(data: Any) -> bytes:
    return gzip.compress(pickle.dumps(data, protocol=4), mtime=0)


def rows(batch: Batch) -> list[tuple[str, float, float, float]]:
    """The batch's rows as ``(fqdn, ts, cpu, ram)``, resolving ids through all names seen."""
    return [
        (NAMES[int(i)], float(t), float(c), float(r))
        for i, t, c, r in zip(batch.ids, batch.ts, batch.cpu, batch.ram, strict=True)
    ]


NAMES: dict[int, str] = {}
"""Filled by :func:`cut` from the ``names`` announcements, as an aggregator would."""


def cut(state: ReceiverState, now: float) -> Batch:
    """Flush ``state`` and learn the names it announces."""
    batch = state.flush(now)
    NAMES.update(dict(batch.names))
    return batch


@pytest.fixture(autouse=True)
def _fresh_names() -> None:
    NAMES.clear()


def entries(batch: Batch) -> dict[int, ServerHealth]:
    """``batch.servers`` keyed by server id."""
    return dict(batch.servers)


def nonzero(counts: dict[str, int]) -> dict[str, int]:
    """A by-source counter without its zero entries."""
    return {key: value for key, value in counts.items() if value}


def same_floats(got: list[float], want: list[float]) -> bool:
    """Element-wise equality where NaN equals NaN."""
    return len(got) == len(want) and all(
        (math.isnan(a) and math.isnan(b)) or a == b for a, b in zip(got, want, strict=True)
    )


def total_rejected(state: ReceiverState) -> int:
    return sum(sum(counts.values()) for counts in state.rejected.values())


# -- accepted samples ---------------------------------------------------------------------------
def test_accepted_samples_appear_in_flushed_batch() -> None:
    """Accepted samples come out of ``flush`` with server id, ts, cpu and ram (NaN if absent)."""
    clock = FakeClock(T0 + 5)
    state = ReceiverState(clock=clock)
    assert state.offer_frames(frames_for("a.example", T0 + 1, 11.5, 21.25, seq=0), clock()) is None
    assert state.offer_frames(frames_for("b.example", T0 + 2, 33.0, None, seq=0), clock()) is None
    assert state.offer_frames(frames_for("a.example", T0 + 3, None, 44.0, seq=1), clock()) is None
    assert state.pending() == 3

    batch = cut(state, clock())

    got = rows(batch)
    assert [(name, ts) for name, ts, _, _ in got] == [
        ("a.example", T0 + 1),
        ("b.example", T0 + 2),
        ("a.example", T0 + 3),
    ]
    assert same_floats([row[2] for row in got], [11.5, 33.0, NAN])
    assert same_floats([row[3] for row in got], [21.25, NAN, 44.0])
    assert batch.ids.dtype == np.int32 and batch.ts.dtype == np.float64
    assert state.pending() == 0
    assert nonzero(state.counters()["accepted"]) == {"zmq": 3}


def test_flush_after_flush_is_empty() -> None:
    """A sample is forwarded in exactly one batch: the next flush does not repeat it."""
    state = ReceiverState()
    state.offer_frames(frames_for(seq=0), T0)
    assert len(cut(state, T0)) == 1
    assert len(cut(state, T0 + 1)) == 0


def test_batch_numbers_increase_by_one_and_keep_epoch() -> None:
    """Successive flushes are numbered 0, 1, 2, ... under one epoch, with ``sent`` = flush time."""
    state = ReceiverState(epoch="epoch-under-test")
    batches = [cut(state, T0 + n) for n in range(4)]
    assert [batch.number for batch in batches] == [0, 1, 2, 3]
    assert {batch.epoch for batch in batches} == {"epoch-under-test"}
    assert [batch.sent for batch in batches] == [T0, T0 + 1, T0 + 2, T0 + 3]
    assert state.counters()["batches"] == 4


def test_names_announced_only_in_first_batch_of_server() -> None:
    """A server's (id, name) appears only in the batch where the server is first seen."""
    state = ReceiverState()
    state.offer_frames(frames_for("a.example", T0, seq=0), T0)
    first = cut(state, T0)
    state.offer_frames(frames_for("a.example", T0 + 1, seq=1), T0 + 1)
    state.offer_frames(frames_for("b.example", T0 + 1, seq=0), T0 + 1)
    second = cut(state, T0 + 1)
    state.offer_frames(frames_for("a.example", T0 + 2, seq=2), T0 + 2)
    state.offer_frames(frames_for("b.example", T0 + 2, seq=1), T0 + 2)
    third = cut(state, T0 + 2)

    assert [name for _, name in first.names] == ["a.example"]
    assert [name for _, name in second.names] == ["b.example"]
    assert third.names == []
    assert first.names[0][0] != second.names[0][0]
    assert [name for name, *_ in rows(third)] == ["a.example", "b.example"]
    assert state.counters()["servers_seen"] == 2


def test_server_entry_carries_ips_and_skew() -> None:
    """The first batch of a server reports its addresses and the clock skew (now - ts)."""
    state = ReceiverState()
    state.offer_frames(frames_for(ts=T0, seq=0, ip=("10.0.0.7", "fe80::1")), T0 + 3)
    batch = cut(state, T0 + 3)
    ((_, health),) = batch.servers
    assert health.ips == ("10.0.0.7", "fe80::1")
    assert health.skew == pytest.approx(3.0)


# -- sequence numbers ---------------------------------------------------------------------------
def test_seq_gap_counts_lost_in_total_and_per_server() -> None:
    """A jump in seq counts the skipped samples as lost, in the counters and the server entry."""
    state = ReceiverState()
    for seq in (0, 1, 4):  # 2 and 3 never arrive
        assert state.offer_frames(frames_for("a.example", T0 + seq, seq=seq), T0 + 10) is None
    for seq in (0, 1, 2):
        assert state.offer_frames(frames_for("b.example", T0 + seq, seq=seq), T0 + 10) is None
    first = cut(state, T0 + 10)
    ids = {name: server_id for server_id, name in first.names}

    assert state.counters()["lost"] == 2
    assert first.counters["lost"] == 2
    assert entries(first)[ids["a.example"]].lost == 2
    assert entries(first)[ids["b.example"]].lost == 0

    assert state.offer_frames(frames_for("a.example", T0 + 20, seq=10), T0 + 20) is None
    second = cut(state, T0 + 20)
    assert state.counters()["lost"] == 7
    assert entries(second)[ids["a.example"]].lost == 7  # running total for the server
    assert ids["b.example"] not in entries(second)  # b did not change
    assert len(first) == 6 and len(second) == 1


def test_agent_restart_is_accepted_not_duplicate() -> None:
    """Seq falling back to 0 with a later ts is a new agent run: accepted, no duplicate, no loss."""
    state = ReceiverState()
    for seq in range(6):
        state.offer_frames(frames_for(ts=T0 + seq, seq=seq), T0 + 10)
    assert state.offer_frames(frames_for(ts=T0 + 8, seq=0, cpu=77.0), T0 + 10) is None
    assert state.offer_frames(frames_for(ts=T0 + 9, seq=1, cpu=78.0), T0 + 10) is None

    batch = cut(state, T0 + 10)
    counters = state.counters()
    assert counters["duplicates"] == 0
    assert counters["lost"] == 0
    assert nonzero(counters["accepted"]) == {"zmq": 8}
    assert [row[1] for row in rows(batch)][-2:] == [T0 + 8, T0 + 9]
    assert [row[2] for row in rows(batch)][-2:] == [77.0, 78.0]


def test_exact_duplicate_is_counted_and_not_forwarded() -> None:
    """The same (seq, ts) twice is a duplicate: counted in total and per server, forwarded once."""
    state = ReceiverState()
    message = frames_for(ts=T0, seq=0)
    assert state.offer_frames(message, T0) is None
    assert state.offer_frames(list(message), T0 + 1) == "duplicate"
    batch = cut(state, T0 + 1)

    assert len(batch) == 1
    assert state.counters()["duplicates"] == 1
    assert batch.counters["duplicates"] == 1
    ((_, health),) = batch.servers
    assert health.duplicates == 1
    assert nonzero(state.counters()["received"]) == {"zmq": 2}
    assert nonzero(state.counters()["accepted"]) == {"zmq": 1}


def test_older_seq_with_older_ts_is_duplicate() -> None:
    """A sample older than the last one in both seq and ts (a late repeat) is a duplicate."""
    state = ReceiverState()
    state.offer_frames(frames_for(ts=T0 + 1, seq=1), T0 + 5)
    state.offer_frames(frames_for(ts=T0 + 2, seq=2), T0 + 5)
    assert state.offer_frames(frames_for(ts=T0 + 1, seq=1), T0 + 5) == "duplicate"
    assert len(cut(state, T0 + 5)) == 2


# -- samples without seq ------------------------------------------------------------------------
def test_seqless_samples_deduplicated_by_server_and_ts_until_horizon() -> None:
    """Without seq, a repeated (fqdn, ts) is a duplicate until ``dedup_horizon`` s after arrival."""
    state = ReceiverState(dedup_horizon=30.0)
    assert state.offer_frames(frames_for("a.example", T0, seq=None), T0) is None
    assert state.offer_frames(frames_for("a.example", T0, seq=None), T0 + 5) == "duplicate"
    assert state.offer_frames(frames_for("b.example", T0, seq=None), T0 + 5) is None
    assert state.offer_frames(frames_for("a.example", T0 + 1, seq=None), T0 + 5) is None
    assert len(cut(state, T0 + 10)) == 3

    assert state.offer_frames(frames_for("a.example", T0, seq=None), T0 + 20) == "duplicate"
    assert len(cut(state, T0 + 45)) == 0  # arrival at T0 is now past the 30 s horizon

    assert state.offer_frames(frames_for("a.example", T0, seq=None, cpu=55.0), T0 + 46) is None
    batch = cut(state, T0 + 46)
    assert [(name, ts, cpu) for name, ts, cpu, _ in rows(batch)] == [("a.example", T0, 55.0)]
    assert state.counters()["duplicates"] == 2


def test_offer_many_deduplicates_seqless_samples() -> None:
    """offer_many reports how many samples it accepted and how many were duplicates."""
    state = ReceiverState()
    samples = [Sample("h.example", T0 + n, 1.0, 2.0) for n in range(3)]
    assert state.offer_many(samples, T0 + 5) == {"accepted": 3, "duplicates": 0}
    assert state.offer_many([*samples[1:], Sample("h.example", T0 + 9, 1.0, None)], T0 + 10) == {
        "accepted": 1,
        "duplicates": 2,
    }
    assert nonzero(state.counters()["accepted"]) == {"http": 4}
    assert nonzero(state.counters()["received"]) == {"http": 6}
    assert len(cut(state, T0 + 10)) == 4


# -- the time window ----------------------------------------------------------------------------
def test_future_and_too_old_samples_rejected_by_reason() -> None:
    """Samples > 60 s ahead are ``future``, those before the 24-hour window ``too_old``."""
    now = T0 + 30 * 60  # mid-hour
    oldest = T0 - 23 * HOUR  # start of the oldest hour bucket still in the window
    state = ReceiverState()
    cases = [
        ("future", now + 61, 0),
        ("future", now + 3600, 1),
        (None, now + 60, 2),
        (None, now, 3),
        (None, oldest, 4),
        ("too_old", oldest - 0.5, 5),
        ("too_old", now - 30 * HOUR, 6),
    ]
    for expected, ts, seq in cases:
        assert state.offer_frames(frames_for(ts=ts, seq=seq), now) == expected, ts
    batch = cut(state, now)

    assert state.counters()["rejected"]["zmq"] == {"future": 2, "too_old": 2}
    assert sorted(row[1] for row in rows(batch)) == [oldest, now, now + 60]


def test_offer_many_is_all_or_nothing() -> None:
    """One future sample makes offer_many refuse every sample, forwarding and remembering none."""
    state = ReceiverState()
    now = T0 + 100
    samples = [
        Sample("m.example", now - 3, 1.0, 2.0),
        Sample("n.example", now - 2, 3.0, 4.0),
        Sample("m.example", now + 120, 5.0, 6.0),
        Sample("m.example", now - 1, 7.0, 8.0),
    ]
    assert state.offer_many(samples, now) == {"error": "future", "index": 2}
    batch = cut(state, now)
    assert len(batch) == 0
    assert batch.names == []
    assert state.counters()["servers_seen"] == 0
    assert nonzero(state.counters()["accepted"]) == {}
    assert nonzero(state.counters()["received"]) == {"http": 4}
    assert state.counters()["rejected"] == {"zmq": {}, "http": {"future": 4}, "graphite": {}}

    # nothing was remembered for de-duplication either: the valid ones go through afterwards
    assert state.offer_many([samples[0], samples[1], samples[3]], now) == {
        "accepted": 3,
        "duplicates": 0,
    }
    assert len(cut(state, now)) == 3


def test_offer_many_refuses_all_for_too_old() -> None:
    """One too_old sample anywhere in the list refuses the whole list with its index."""
    state = ReceiverState()
    samples = [Sample("m.example", T0, 1.0, 2.0), Sample("m.example", T0 - 48 * HOUR, 1.0, 2.0)]
    assert state.offer_many(samples, T0) == {"error": "too_old", "index": 1}
    assert len(cut(state, T0)) == 0


# -- malformed messages -------------------------------------------------------------------------
VALID_PAYLOAD = msgpack.packb(valid_map())

MALFORMED: list[tuple[str, list[bytes], str]] = [
    ("no frames", [], "frames"),
    ("one frame", [wire.MSGPACK], "frames"),
    ("three frames", [wire.MSGPACK, VALID_PAYLOAD, b""], "frames"),
    ("unknown format", [b"json", VALID_PAYLOAD], "format"),
    ("empty format", [b"", VALID_PAYLOAD], "format"),
    ("msgpack reserved byte", [wire.MSGPACK, b"\xc1"], "msgpack"),
    ("msgpack truncated", [wire.MSGPACK, VALID_PAYLOAD[:-3]], "msgpack"),
    ("msgpack extra data", [wire.MSGPACK, VALID_PAYLOAD + b"\x01"], "msgpack"),
    ("msgpack empty", [wire.MSGPACK, b""], "msgpack"),
    ("msgpack int key", packed({1: 2, "ts": T0}), "msgpack"),
    ("oversized payload", [wire.MSGPACK, b"\x00" * (wire.MAX_PAYLOAD + 1)], "too_large"),
    ("pickle when disabled", [wire.PICKLE_GZ, gz_pickle(valid_map())], "pickle_disabled"),
    ("not a map", packed([1, 2, 3]), "not_a_map"),
    ("a string", packed("web-1 10 20"), "not_a_map"),
    ("unknown key", packed(valid_map(host="x")), "unknown_field"),
    ("missing ts", packed(valid_map(ts=...)), "bad_ts"),
    ("ts nan", packed(valid_map(ts=NAN)), "bad_ts"),
    ("ts inf", packed(valid_map(ts=float("inf"))), "bad_ts"),
    ("ts bool", packed(valid_map(ts=True)), "bad_ts"),
    ("ts string", packed(valid_map(ts=str(T0))), "bad_ts"),
    ("ts null", packed(valid_map(ts=None)), "bad_ts"),
    ("cpu 101", packed(valid_map(cpu=101)), "bad_cpu"),
    ("cpu negative", packed(valid_map(cpu=-0.5)), "bad_cpu"),
    ("cpu nan", packed(valid_map(cpu=NAN)), "bad_cpu"),
    ("cpu bool", packed(valid_map(cpu=True)), "bad_cpu"),
    ("cpu string", packed(valid_map(cpu="5")), "bad_cpu"),
    ("ram 100.5", packed(valid_map(ram=100.5)), "bad_ram"),
    ("ram nan", packed(valid_map(ram=NAN)), "bad_ram"),
    ("ram bool", packed(valid_map(ram=False)), "bad_ram"),
    ("no metrics", packed(valid_map(cpu=..., ram=...)), "no_metrics"),
    ("null metrics", packed(valid_map(cpu=None, ram=None)), "no_metrics"),
    ("missing fqdn", packed(valid_map(fqdn=...)), "bad_fqdn"),
    ("empty fqdn", packed(valid_map(fqdn="")), "bad_fqdn"),
    ("fqdn with space", packed(valid_map(fqdn="web 1")), "bad_fqdn"),
    ("fqdn too long", packed(valid_map(fqdn="a" * 254)), "bad_fqdn"),
    ("fqdn number", packed(valid_map(fqdn=7)), "bad_fqdn"),
    ("seq negative", packed(valid_map(seq=-1)), "bad_seq"),
    ("seq float", packed(valid_map(seq=1.0)), "bad_seq"),
    ("seq bool", packed(valid_map(seq=True)), "bad_seq"),
    ("seq above int64", packed(valid_map(seq=2**63)), "bad_seq"),
    ("ip string", packed(valid_map(ip="10.0.0.1")), "bad_ip"),
    ("ip number", packed(valid_map(ip=[10])), "bad_ip"),
    ("ip garbage", packed(valid_map(ip=["10.0.0.1; rm -rf"])), "bad_ip"),
    ("too many ips", packed(valid_map(ip=[f"10.0.0.{n}" for n in range(33)])), "bad_ip"),
    ("ip float", packed(valid_map(ip=["10.0.0.1", 1.5])), "bad_ip"),
    ("extra key null", packed(valid_map(note=None)), "unknown_field"),
    # wire.decode's msgpack limits: no bin, no ext, maps of at most 16 entries
    ("msgpack bin value", packed(valid_map(fqdn=b"web-1.example")), "msgpack"),
    ("msgpack ext value", packed(valid_map(ts=msgpack.Timestamp(int(T0)))), "msgpack"),
    ("msgpack map over 16", [wire.MSGPACK, raw_map(list(valid_map().items()) * 4)], "msgpack"),
]


@pytest.mark.parametrize(
    ("frames", "reason"),
    [pytest.param(frames, reason, id=name) for name, frames, reason in MALFORMED],
)
def test_malformed_message_counted_by_reason_and_not_forwarded(
    frames: list[bytes], reason: str
) -> None:
    """Each malformed message is refused with its reason, counted once, and nothing is forwarded."""
    state = ReceiverState(accept_pickle=False)
    assert state.offer_frames(frames, T0) == reason
    counters = state.counters()
    assert nonzero(counters["received"]) == {"zmq": 1}
    assert counters["rejected"]["zmq"] == {reason: 1}
    assert nonzero(counters["accepted"]) == {}
    assert counters["servers_seen"] == 0
    batch = cut(state, T0)
    assert len(batch) == 0 and batch.names == [] and batch.servers == []


@pytest.mark.parametrize(
    ("frames", "reason"),
    [pytest.param(frames, reason, id=name) for name, frames, reason in MALFORMED],
)
def test_malformed_from_known_server_refused_alike(frames: list[bytes], reason: str) -> None:
    """A server already seen gets the same verdict for a malformed message as an unknown one."""
    state = ReceiverState(accept_pickle=False)
    assert state.offer_frames(frames_for("web-1.example", T0 - 10, seq=0), T0) is None
    cut(state, T0)
    assert state.offer_frames(frames, T0) == reason
    assert state.counters()["rejected"]["zmq"] == {reason: 1}
    assert nonzero(state.counters()["accepted"]) == {"zmq": 1}
    batch = cut(state, T0)
    assert len(batch) == 0 and batch.servers == []


def test_known_server_messages_accepted_like_first_one() -> None:
    """Later messages of a known server are accepted with int ts, one metric, or new addresses."""
    state = ReceiverState()
    assert state.offer_frames(frames_for(ts=T0, seq=0, ip=("10.0.0.1",)), T0) is None
    cut(state, T0)
    assert state.offer_frames(packed(valid_map(ts=int(T0) + 1, seq=1, ip=["10.0.0.1"])), T0) is None
    assert state.offer_frames(packed(valid_map(ts=T0 + 2, seq=2, cpu=...)), T0 + 2) is None
    assert state.offer_frames(packed(valid_map(ts=T0 + 3, seq=3, cpu=0, ram=100)), T0 + 3) is None
    unchanged = cut(state, T0 + 3)
    assert [row[1:] for row in rows(unchanged)] == [
        (T0 + 1, 10.0, 20.0),
        (T0 + 2, pytest.approx(NAN, nan_ok=True), 20.0),
        (T0 + 3, 0.0, 100.0),
    ]
    assert unchanged.servers == []  # same addresses, no loss: nothing to report

    assert state.offer_frames(packed(valid_map(ts=T0 + 4, seq=4, ip=["10.0.0.2"])), T0 + 4) is None
    moved = cut(state, T0 + 4)
    assert [health.ips for _, health in moved.servers] == [("10.0.0.2",)]


@pytest.mark.parametrize(
    ("ts", "seq", "reason"),
    [
        pytest.param(T0 - 48 * HOUR, 5, "too_old", id="too_old"),
        pytest.param(T0 + 3600, 5, "future", id="future"),
        pytest.param(T0, 0, "duplicate", id="duplicate"),
    ],
)
def test_refused_sample_does_not_change_server_addresses(ts: float, seq: int, reason: str) -> None:
    """A refused sample (out of window or duplicate) leaves the server's addresses unchanged."""
    state = ReceiverState()
    assert state.offer_frames(frames_for(ts=T0, seq=0, ip=("10.0.0.1",)), T0) is None
    cut(state, T0)
    assert state.offer_frames(frames_for(ts=ts, seq=seq, ip=("10.9.9.9",)), T0) == reason
    batch = cut(state, T0 + 1)
    assert len(batch) == 0
    assert all(health.ips == ("10.0.0.1",) for _, health in batch.servers), batch.servers
    assert state.servers["web-1.example"].ips == ("10.0.0.1",)


PICKLE_MALFORMED: list[tuple[str, bytes, str]] = [
    ("not gzip", b"definitely not gzip", "gzip"),
    ("truncated gzip", gz_pickle(valid_map())[:-6], "gzip"),
    ("gzip of non-pickle", gzip.compress(b"hello world"), "pickle"),
    ("pickle with a global", gz_pickle(collections.OrderedDict(valid_map())), "pickle"),
    ("gzip bomb", gzip.compress(b"\x00" * (wire.MAX_PAYLOAD * 8)), "too_large"),
    ("pickle of a list", gz_pickle([1, 2]), "not_a_map"),
    ("pickle cpu 101", gz_pickle(valid_map(cpu=101)), "bad_cpu"),
    ("pickle int key", gz_pickle({**valid_map(), 3: 4}), "unknown_field"),
]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [pytest.param(payload, reason, id=name) for name, payload, reason in PICKLE_MALFORMED],
)
def test_malformed_pickle_counted_by_reason(payload: bytes, reason: str) -> None:
    """With pickle enabled, a bad pickle.gz payload is refused by reason and nothing forwarded."""
    state = ReceiverState(accept_pickle=True)
    assert state.offer_frames([wire.PICKLE_GZ, payload], T0) == reason
    assert state.counters()["rejected"]["zmq"] == {reason: 1}
    assert len(cut(state, T0)) == 0


def test_pickle_ts_too_large_for_a_float_is_rejected_as_bad_ts() -> None:
    """A pickled integer ts beyond float range is refused as ``bad_ts`` instead of raising."""
    state = ReceiverState(accept_pickle=True)
    frames = [wire.PICKLE_GZ, gz_pickle(valid_map(ts=10**400))]
    assert state.offer_frames(frames, T0) == "bad_ts"
    assert state.counters()["rejected"]["zmq"] == {"bad_ts": 1}


def test_pickle_gz_accepted_when_enabled() -> None:
    """With ``accept_pickle=True`` the legacy pickle.gz format is decoded and accepted."""
    state = ReceiverState(accept_pickle=True)
    frames = frames_for("legacy.example", T0 - 4, 12.0, None, seq=3, fmt="pickle.gz")
    assert frames[0] == wire.PICKLE_GZ
    assert state.offer_frames(frames, T0) is None
    batch = cut(state, T0)
    got = rows(batch)
    assert got[0][:3] == ("legacy.example", T0 - 4, 12.0)
    assert math.isnan(got[0][3])
    assert state.counters()["rejected"]["zmq"] == {}


# -- batches on the wire and the replay index ---------------------------------------------------
def test_batch_encode_decode_round_trip() -> None:
    """A flushed batch survives encode/decode with every field and column intact (NaN included)."""
    state = ReceiverState(epoch="e-1")
    state.offer_frames(frames_for("a.example", T0, 1.5, None, seq=0, ip=("10.1.1.1",)), T0 + 2)
    state.offer_frames(frames_for("a.example", T0 + 1, None, 2.5, seq=3), T0 + 2)
    state.offer_frames(frames_for("b.example", T0 + 1.25, 99.0, 100.0, seq=0), T0 + 2)
    state.offer_frames(frames_for("b.example", T0 + 1.25, 99.0, 100.0, seq=0), T0 + 2)
    state.offer_frames(frames_for("b.example", T0 + 90, 99.0, 100.0, seq=1), T0 + 2)
    batch = state.flush(T0 + 2.5)

    frames = batch.encode()
    assert frames[0] == b"batch" and len(frames) == 7
    back = Batch.decode(frames)

    assert (back.epoch, back.number, back.sent) == ("e-1", 0, T0 + 2.5)
    np.testing.assert_array_equal(back.ids, batch.ids)
    np.testing.assert_array_equal(back.ts, batch.ts)
    np.testing.assert_array_equal(back.cpu, batch.cpu)
    np.testing.assert_array_equal(back.ram, batch.ram)
    np.testing.assert_array_equal(back.seq, [0, 3, 0])
    assert len(back) == 3
    assert back.names == batch.names
    assert back.servers == batch.servers
    assert back.counters == batch.counters
    assert back.counters["lost"] == 2 and back.counters["duplicates"] == 1
    assert back.counters["rejected"]["zmq"] == {"future": 1}
    assert back.full_names is False


def test_batch_round_trip_of_hand_built_batch_with_full_names() -> None:
    """``full_names`` and non-contiguous columns survive encode/decode."""
    values = np.array([1.0, NAN, 2.0, NAN, 3.0, NAN])
    batch = Batch(
        epoch="x",
        number=41,
        sent=T0,
        ids=np.array([5, 6, 7], dtype=np.int64),
        ts=values[::2] + T0,
        cpu=values[::2],
        ram=values[1::2],
        names=[(5, "a"), (6, "b"), (7, "c")],
        full_names=True,
    )
    back = Batch.decode(batch.encode())
    assert back.full_names is True and back.number == 41
    assert back.ids.tolist() == [5, 6, 7]
    assert back.ts.tolist() == [T0 + 1, T0 + 2, T0 + 3]
    assert back.cpu.tolist() == [1.0, 2.0, 3.0]
    assert np.isnan(back.ram).all() and len(back.ram) == 3
    assert back.names == [(5, "a"), (6, "b"), (7, "c")]


def _header(**changes: Any) -> bytes:
    header = {
        "epoch": "e",
        "number": 0,
        "sent": T0,
        "names": [],
        "full_names": False,
        "servers": [],
        "counters": {},
    }
    for key, value in changes.items():
        if value is ...:
            del header[key]
        else:
            header[key] = value
    return msgpack.packb(header)


@pytest.mark.parametrize(
    "frames",
    [
        pytest.param([b"batch", b"", b"", b""], id="four frames"),
        pytest.param([b"batc", _header(), b"", b"", b"", b""], id="wrong kind"),
        pytest.param([b"batch", b"\xc1", b"", b"", b"", b""], id="header not msgpack"),
        pytest.param([b"batch", _header(), b"\x00" * 3, b"", b"", b""], id="ids not int32"),
        pytest.param([b"batch", _header(), b"\x00" * 4, b"", b"", b""], id="columns differ"),
        pytest.param([b"batch", msgpack.packb([1, 2]), b"", b"", b"", b""], id="header a list"),
        pytest.param([b"batch", _header(number=...), b"", b"", b"", b""], id="header no number"),
        pytest.param([b"batch", _header(names=[[1]]), b"", b"", b"", b""], id="bad names"),
    ],
)
def test_batch_decode_refuses_malformed_messages(frames: list[bytes]) -> None:
    """Any batch message not following the format raises MalformedBatch (and nothing else)."""
    with pytest.raises(MalformedBatch):
        Batch.decode(frames)


def test_time_index_keeps_batches_for_retention_and_replays_later_ones() -> None:
    """Batches are kept ``retention`` s and ``batches_after(n)`` gives the later ones in order."""
    state = ReceiverState(retention=10.0)
    for step in range(6):  # flushed at T0, T0+4, ..., T0+20
        now = T0 + 4 * step
        state.offer_frames(frames_for(ts=now, seq=step), now)
        batch = state.flush(now)
        state.remember(batch, batch.encode(), now)

    def numbers(after: int) -> list[int]:
        return [Batch.decode(frames).number for frames in state.batches_after(after)]

    assert numbers(-1) == [3, 4, 5]  # flushed at T0+12, +16, +20; T0+8 is past 10 s at T0+20
    assert numbers(0) == [3, 4, 5]
    assert numbers(3) == [4, 5]
    assert numbers(4) == [5]
    assert numbers(5) == []
    assert [Batch.decode(f).ts.tolist() for f in state.batches_after(3)] == [[T0 + 16], [T0 + 20]]


def test_time_index_keeps_batch_exactly_at_retention() -> None:
    """A batch remembered exactly ``retention`` seconds ago is still replayable."""
    state = ReceiverState(retention=10.0)
    for now in (T0, T0 + 10):
        batch = state.flush(now)
        state.remember(batch, batch.encode(), now)
    assert len(state.batches_after(-1)) == 2
    batch = state.flush(T0 + 10.5)
    state.remember(batch, batch.encode(), T0 + 10.5)
    assert [Batch.decode(f).number for f in state.batches_after(-1)] == [1, 2]


# -- fuzz ---------------------------------------------------------------------------------------
FUZZ_KEYS = ["fqdn", "ts", "ip", "cpu", "ram", "seq", "x", ""]


def random_scalar(rng: random.Random, now: float) -> Any:
    kind = rng.randrange(12)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.randint(-(2**63), 2**64 - 1)
    if kind == 3:
        return rng.randint(-5, 200)
    if kind == 4:
        return rng.choice([NAN, float("inf"), -float("inf"), -0.0, 1e308, -1e308, 5e-324])
    if kind == 5:
        return rng.uniform(-10, 110)
    if kind == 6:
        return now + rng.uniform(-30 * HOUR, 2 * 60)
    if kind == 7:
        return "".join(rng.choice("ab.-_ %\x00é9") for _ in range(rng.randrange(0, 12)))
    if kind == 8:
        return rng.choice(["web-1.example", "db.example", "10.0.0.1", "fe80::1%eth0"])
    if kind == 9:
        return rng.randbytes(rng.randrange(0, 4))
    if kind == 10:
        return rng.randrange(0, 30)
    return rng.uniform(0, 100)


def random_object(rng: random.Random, now: float, depth: int = 0) -> Any:
    kind = rng.randrange(10) if depth < 3 else 0
    if kind <= 4:
        return random_scalar(rng, now)
    if kind <= 6:
        return [random_object(rng, now, depth + 1) for _ in range(rng.randrange(0, 5))]
    return {
        rng.choice(FUZZ_KEYS): random_object(rng, now, depth + 1) for _ in range(rng.randrange(7))
    }


def plausible_map(rng: random.Random, now: float) -> dict[str, Any]:
    """A sample map that is often valid, sometimes a repeat, a gap or an out-of-window ts."""
    data: dict[str, Any] = {
        "fqdn": rng.choice(["a.example", "b.example", "c.example"]),
        "ts": float(round(now - rng.choice([0, 1, 2, 3, 120, 25 * HOUR, -61, -30]))),
        "cpu": round(rng.uniform(0, 100), 1),
        "ram": round(rng.uniform(0, 100), 1),
        "seq": rng.randrange(0, 8),
        "ip": ["10.0.0.1"],
    }
    for key in rng.sample(sorted(data), rng.randrange(0, 3)):
        if rng.random() < 0.5:
            del data[key]
        else:
            data[key] = random_scalar(rng, now)
    return data


def random_frames(rng: random.Random, now: float) -> list[bytes]:
    kind = rng.randrange(7)
    if kind == 0:
        return [rng.randbytes(rng.randrange(0, 40)) for _ in range(rng.randrange(0, 4))]
    if kind == 1:
        return [wire.MSGPACK, rng.randbytes(rng.randrange(0, 80))]
    if kind == 2:
        return [wire.PICKLE_GZ, rng.randbytes(rng.randrange(0, 80))]
    if kind == 3:
        return [wire.PICKLE_GZ, gz_pickle(random_object(rng, now))]
    if kind == 4:
        return [wire.PICKLE_GZ, gz_pickle(plausible_map(rng, now))]
    if kind == 5:
        return [wire.MSGPACK, msgpack.packb(random_object(rng, now))]
    return [wire.MSGPACK, msgpack.packb(plausible_map(rng, now))]


def reference_verdict(frames: list[bytes], accept_pickle: bool) -> str | None:
    """What the documented decoder and validator say of ``frames``: ``None`` if valid."""
    try:
        sample_from_mapping(wire.decode(frames, accept_pickle))
    except (wire.MalformedMessage, InvalidSample) as err:
        return err.reason
    return None


@pytest.mark.parametrize("accept_pickle", [False, True])
@pytest.mark.parametrize("seed", [20241122, 7])
def test_fuzz_every_message_is_counted_and_never_raises(seed: int, accept_pickle: bool) -> None:
    """5,000 random messages never raise; each is counted once: accepted, rejected or duplicate."""
    rng = random.Random(seed)
    clock = FakeClock(T0)
    state = ReceiverState(clock=clock, accept_pickle=accept_pickle, dedup_horizon=20.0)
    outcomes: collections.Counter[str | None] = collections.Counter()
    forwarded = 0
    for step in range(5000):
        frames = random_frames(rng, clock())
        if frames and rng.random() < 0.1:  # corrupt one byte of some messages
            payload = bytearray(frames[-1] or b"\x00")
            payload[rng.randrange(len(payload))] = rng.randrange(256)
            frames[-1] = bytes(payload)
        reference = reference_verdict(frames, accept_pickle)
        outcome = state.offer_frames(frames, clock())
        assert outcome is None or isinstance(outcome, str)
        if reference is None:  # valid: only the time window or de-duplication may refuse it
            assert outcome in (None, "duplicate", "future", "too_old"), (frames, outcome)
        else:
            assert outcome not in (None, "duplicate", "future", "too_old"), (frames, reference)
        outcomes[outcome] += 1
        if step % 97 == 0:
            forwarded += len(cut(state, clock()))
            clock.advance(rng.choice([0.5, 1.0, 7.0]))
    forwarded += len(cut(state, clock()))

    counters = state.counters()
    received = sum(counters["received"].values())
    accepted = sum(counters["accepted"].values())
    assert received == 5000
    rejected = counters["rejected"]["zmq"]
    assert received == accepted + sum(rejected.values()) + counters["duplicates"]
    assert accepted == outcomes[None] == forwarded
    assert counters["duplicates"] == outcomes["duplicate"]
    assert rejected == {
        reason: count for reason, count in outcomes.items() if reason not in (None, "duplicate")
    }
    # the generator reaches the interesting paths, so the invariant is not vacuous
    assert accepted > 100 and counters["duplicates"] > 10 and counters["lost"] > 0
    assert {"msgpack", "frames", "bad_ts", "future", "too_old"} <= set(rejected)
    assert ("pickle_disabled" in rejected) is not accept_pickle


def test_time_window_refusals_are_counted_per_server() -> None:
    """A known server's future and too-old samples count in its own ``rejected`` total."""
    state = ReceiverState()
    assert state.offer_frames(frames_for(ts=T0, seq=0), T0) is None
    cut(state, T0)
    assert state.offer_frames(frames_for(ts=T0 + 3600, seq=1), T0) == "future"
    assert state.offer_frames(frames_for(ts=T0 - 48 * HOUR, seq=2), T0) == "too_old"
    ((_, health),) = cut(state, T0 + 1).servers
    assert health.rejected == 2


def test_remembered_keys_and_path_mappings_give_the_collector_nothing_to_scan() -> None:
    """De-duplication keys and Graphite path mappings are plain tuples of plain values, which
    the garbage collector stops tracking: what a full collection scans grows with the servers,
    not with the samples remembered (a million keys, each naming its server's object, made
    every full collection take seconds at 250,000 servers)."""
    state = ReceiverState()
    intake = GraphiteIntake(state)
    stream = intake.open(0.0)

    def second(tick: int) -> None:
        lines = b"".join(
            b"servertrack.s%d.%s %d %d\n" % (index, metric, index % 100, T0 + tick)
            for index in range(1000)
            for metric in (b"cpu", b"ram")
        )
        assert intake.feed(stream, lines, T0 + tick, float(tick))
        cut(state, T0 + tick)

    second(0)  # every server and path is new here
    gc.collect()
    tracked = len(gc.get_objects())
    for tick in range(1, 10):
        second(tick)
    gc.collect()
    assert state.counters()["dedup_keys"] == 20_000
    assert len(gc.get_objects()) - tracked < 1_000  # not one per key (18,000 more)
    assert not any(gc.is_tracked(target) for target in intake.mapper.cache.values())
