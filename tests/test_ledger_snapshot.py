"""Exactly-once batch bookkeeping and snapshot round trips (no sockets)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import zmq

from servertrack.aggregator.daemon import AggregatorConfig, AggregatorDaemon
from servertrack.aggregator.ledger import BatchLedger
from servertrack.aggregator.rollups import Rollups
from servertrack.aggregator.snapshot import read_snapshot, write_snapshot
from servertrack.aggregator.state import AggregatorState
from servertrack.common.batch import Batch
from servertrack.common.testing import FakeClock
from servertrack.receiver.state import ReceiverState


def test_each_batch_is_admitted_once_whatever_the_order() -> None:
    """Re-sent and out-of-order batches are admitted exactly once each."""
    ledger = BatchLedger(fresh=False)
    order = [0, 1, 4, 2, 4, 1, 3, 5, 0]
    admitted = [number for number in order if ledger.admit("e", number)]
    assert sorted(admitted) == [0, 1, 2, 3, 4, 5]
    assert (ledger.applied_upto, ledger.missing()) == (5, False)


def test_a_gap_is_missing_until_filled_or_given_up() -> None:
    """A gap shows as missing; giving up below the receiver's oldest batch counts the gap."""
    ledger = BatchLedger(fresh=False)
    for number in (0, 1, 5, 6):
        ledger.admit("e", number)
    assert ledger.missing()
    assert ledger.give_up_below(3) == 1  # batch 2 is gone; 3 and 4 may still come
    assert ledger.applied_upto == 2 and ledger.missing()
    ledger.admit("e", 3)
    ledger.admit("e", 4)
    assert (ledger.applied_upto, ledger.missing()) == (6, False)


def test_a_new_receiver_run_starts_a_new_ledger() -> None:
    """Batch numbers of a new epoch are admitted even if the old epoch had them."""
    ledger = BatchLedger(fresh=False)
    assert ledger.admit("old", 0) and ledger.admit("old", 1)
    assert ledger.admit("new", 0)
    assert BatchLedger.from_dict(ledger.to_dict()) == ledger


def test_a_fresh_ledger_begins_where_the_receiver_says_and_counts_no_loss() -> None:
    """A new aggregator may see live batches before the receiver answers its replay request:
    they stay admitted, the replayed older ones are admitted too, and batches older than the
    receiver's oldest were never this aggregator's (not lost)."""
    ledger = BatchLedger()
    assert ledger.missing()  # until the receiver says where to begin
    assert ledger.admit("e", 41) and ledger.admit("e", 42)
    ledger.start("e", 38)
    assert ledger.give_up_below(38) == 0
    assert [n for n in (38, 39, 40, 41) if ledger.admit("e", n)] == [38, 39, 40]
    assert (ledger.applied_upto, ledger.missing()) == (42, False)
    assert not ledger.fresh and BatchLedger.from_dict(ledger.to_dict()).fresh is False


def test_a_new_aggregator_asks_for_the_names_its_first_batch_does_not_announce() -> None:
    """A batch names only the servers new in it: an aggregator started after the receiver
    (a restart, a kill -9) gets ids it cannot name in its very first batch. It must ask for
    the names rather than drop the samples as ``unknown_server``."""
    clock = FakeClock()
    receiver = ReceiverState(clock=clock)
    first = AggregatorState(Rollups(clock), clock)
    assert "error" not in receiver.record([["steady", clock.now, 5.0, 1.0]], clock.now)
    batch = Batch.decode(receiver.flush(clock.advance(1)).encode())
    assert not first.needs_names(batch)  # it announces "steady"
    first.apply(batch)
    assert "error" not in receiver.record([["steady", clock.now, 7.0, 1.0]], clock.now)
    batch = Batch.decode(receiver.flush(clock.advance(1)).encode())
    assert batch.names == [] and len(batch) == 1

    restarted = AggregatorState(Rollups(clock), clock)
    assert restarted.needs_names(batch)
    restarted.learn_names(batch.epoch, receiver.all_names())
    assert not restarted.needs_names(batch)
    restarted.apply(batch)
    assert restarted.counters["unknown_server"] == 0
    view = json.loads(restarted.view("steady", clock.now)["body"])
    assert [minute["cpu_sum"] for minute in view["minutes"]] == [7.0]


def test_snapshot_round_trip_keeps_every_bucket(tmp_path: Path) -> None:
    """A restored snapshot answers every view exactly as the original."""
    clock = FakeClock(1_800_000_000.0)
    rollups = Rollups(clock)
    rng = random.Random(11)
    names = [f"s{i}.example" for i in range(50)]
    rows = np.array([rollups.row_for(name) for name in names])
    for _ in range(40):
        picks = np.array([rng.randrange(50) for _ in range(100)])
        ts = np.array([clock() - rng.uniform(0, 86_000) for _ in picks])
        rollups.apply(
            rows[picks],
            ts,
            np.array([rng.uniform(0, 100) for _ in picks]),
            np.where(picks % 3, 50.0, np.nan),
        )
    clock.advance(3600)
    rollups.advance()
    path = tmp_path / "agg.npz"
    size = write_snapshot(path, rollups.snapshot(), {"note": "x"})
    assert size == path.stat().st_size and list(tmp_path.iterdir()) == [path]
    loaded = read_snapshot(path)
    assert loaded is not None
    arrays, meta = loaded
    assert meta == {"note": "x"}
    restored = Rollups(clock)
    restored.restore(arrays)
    restored._check()
    assert restored.servers() == rollups.servers()
    for name in names:
        assert restored.view(name) == rollups.view(name)


def test_missing_snapshot_reads_as_none(tmp_path: Path) -> None:
    """No file, no snapshot."""
    assert read_snapshot(tmp_path / "none.npz") is None


def test_batches_are_applied_in_small_slices_while_a_writer_shares_the_memory() -> None:
    """While a snapshot writer shares the memory (each page's first write is then a copy),
    a batch is applied 1,024 samples at a time, with a chance to answer queries after each."""
    clock = FakeClock(1_800_000_000.0)
    state = AggregatorState(Rollups(clock), clock)
    names = [(index, f"s{index}") for index in range(5000)]
    for number, shared in ((0, False), (1, True)):
        batch = Batch(
            epoch="e",
            number=number,
            sent=clock(),
            ids=np.arange(5000, dtype=np.int32),
            ts=np.full(5000, clock() - number),
            cpu=np.full(5000, 10.0),
            ram=np.full(5000, 20.0),
            names=names if number == 0 else [],
        )
        state.shared = shared
        pauses = sum(1 for _ in state.apply_in_slices(batch, clock()))
        assert pauses == (4 if shared else 0), shared
    assert state.counters["applied"] == 10_000


def test_a_snapshot_waits_for_the_minute_turn_it_would_overlap(tmp_path: Path) -> None:
    """A new minute writes a column of every server's buckets: with a writer alive every page
    would be copied at once. A snapshot that would still be writing at the turn waits for it."""
    clock = FakeClock(1_800_000_000.0)  # a minute's start
    config = AggregatorConfig(
        batches=f"ipc://{tmp_path}/batches",
        query=f"ipc://{tmp_path}/query",
        receiver_control=f"ipc://{tmp_path}/control",
    )
    context = zmq.Context()
    daemon = AggregatorDaemon(config, context=context, clock=clock)
    try:
        daemon.writer_seconds = 5.0
        assert not daemon.minute_turns_soon()
        clock.advance(53.9)
        assert not daemon.minute_turns_soon()
        clock.advance(0.2)  # 5.9 s to the turn: a 5 s writer and its margin do not fit
        assert daemon.minute_turns_soon()
        clock.advance(6.0)  # the turn has passed
        assert not daemon.minute_turns_soon()
        daemon.writer_seconds = 45.0  # most of a minute: waiting would not help
        clock.advance(59.0)
        assert not daemon.minute_turns_soon()
    finally:
        daemon.receiver.close()
        context.destroy(linger=0)
