"""The load generator's vectorised encoding gives the very messages an agent sends."""

from __future__ import annotations

import numpy as np
import pytest

from servertrack.common import wire
from servertrack.common.sample import Sample, sample_from_mapping
from servertrack.loadgen.encoding import name_block, pack_many


def test_every_record_decodes_to_the_sample_it_stands_for() -> None:
    rng = np.random.default_rng(4)
    names = [f"lg-{index:06d}.loadgen" for index in range(500)]
    ts = 1_800_000_000.0 + rng.uniform(0, 60, 500)
    cpu, ram = rng.uniform(0, 100, 500), rng.uniform(0, 100, 500)
    seq = rng.integers(0, 2**62, 500).astype(np.uint64)
    buffer, width = pack_many(name_block(names), ts, cpu, ram, seq)
    assert len(buffer) == width * len(names)
    for index, name in enumerate(names):
        record = buffer[index * width : (index + 1) * width]
        got = sample_from_mapping(wire.decode([wire.MSGPACK, record]))
        want = Sample(name, float(ts[index]), float(cpu[index]), float(ram[index]), int(seq[index]))
        assert got == want
        assert wire.decode(wire.encode(want)) == wire.decode([wire.MSGPACK, record])


def test_names_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="same length"):
        name_block(["a.example", "bb.example"])
