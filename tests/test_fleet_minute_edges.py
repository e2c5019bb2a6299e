"""Fleet-scale batches across minute edges, through the real receiver and aggregator states with
an injected clock: every server's buckets equal the oracle's.

A batch larger than one apply slice that both moves the minute window and brings new servers used
to release the rows of the servers in its later slices (their last-seen time was still unset when
the first slice moved the window), so their samples landed in rows other servers were given next.
"""

from __future__ import annotations

import numpy as np

from servertrack.aggregator.rollups import Rollups
from servertrack.aggregator.state import APPLY_SLICE, AggregatorState
from servertrack.common.batch import Batch
from servertrack.common.oracle import RawSample, bucket_differences, oracle_buckets
from servertrack.loadgen.encoding import name_block, pack_many
from servertrack.receiver.state import ReceiverState
from servertrack.testing.hosts import FakeClock
from tests.support import document

SERVERS = 3 * APPLY_SLICE + 1000
"""Enough servers for a first batch of four slices."""
CHECKED = range(0, SERVERS, 97)


def test_batches_across_minute_edges_match_the_oracle_for_every_checked_server() -> None:
    clock = FakeClock(1_800_000_000.0 - 1.5)  # the first batch crosses a minute edge
    receiver = ReceiverState(clock=clock)
    aggregator = AggregatorState(Rollups(clock), clock)
    rng = np.random.default_rng(7)
    names = [f"edge-{index:06d}.example" for index in range(SERVERS)]
    block = name_block(names)
    seq = np.zeros(SERVERS, np.uint64)
    offsets = (np.arange(SERVERS) % 997) / 997  # samples spread over the second, some ahead
    sent: dict[int, list[RawSample]] = {index: [] for index in CHECKED}
    for tick in range(6):
        if tick == 3:  # later servers join at the next edge, in the batch's last slices
            clock.advance(57.0)
        now = clock()
        live = SERVERS if tick else SERVERS - 5000
        cpu = np.round(rng.uniform(0, 100, SERVERS), 1)
        ram = np.round(rng.uniform(0, 100, SERVERS), 1)
        stamps = now + offsets
        buffer, width = pack_many(block, stamps, cpu, ram, seq)
        seq += 1
        for index in range(live):
            receiver.offer_msgpack(buffer[index * width : (index + 1) * width], now)
        for index in CHECKED:
            if index < live:
                sent[index].append((names[index], stamps[index], cpu[index], ram[index]))
        clock.advance(1.0)
        batch = receiver.flush(clock())
        aggregator.apply(Batch.decode(batch.encode()), clock())
    now = clock()
    wrong = []
    for index, samples in sent.items():
        view = document(aggregator.store.view(names[index], now))
        assert view is not None, names[index]
        differences = bucket_differences(view, oracle_buckets(samples, now))
        if differences:
            wrong.append((names[index], differences[:2]))
    assert wrong == []
    assert aggregator.stats(now)["aggregator"]["applied"] == 6 * SERVERS - 5000
