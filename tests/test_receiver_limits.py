"""The receiver state against hostile or unlucky senders: sequence numbers that overflow or jump,
two agents under one name, more names than the cap, and more seq-less keys than the de-duplication
memory holds. Nothing raises, every counter stays encodable, and nothing is lost silently."""

from __future__ import annotations

import msgpack
import pytest

from servertrack.common import wire
from servertrack.common.batch import COUNTER_MAX, Batch, ServerHealth
from servertrack.common.sample import MAX_SEQ, Sample
from servertrack.receiver.registry import SERVER_IDLE
from servertrack.receiver.sequences import CONFLICT_HOLD, GAP_SLACK, MAX_SAMPLE_RATE
from servertrack.receiver.state import ReceiverState

T0 = 1_699_999_200.0
NAME = "web-1.example"


def message(seq: int, ts: float, name: str = NAME, cpu: float = 10.0) -> list[bytes]:
    return wire.encode(Sample(name, ts, cpu, 20.0, seq))


def health_of(batch: Batch, state: ReceiverState, name: str = NAME) -> ServerHealth:
    return dict(batch.servers)[state.servers[name].id]


def round_trip(batch: Batch) -> Batch:
    """The batch as the aggregator gets it: encoding must never fail, whatever came in."""
    return Batch.decode(batch.encode())


# -- sequence numbers ---------------------------------------------------------------------------
def test_overflowing_sequences_never_break_a_batch() -> None:
    """seq 0, then seq 2**63-1 three times: no loss of quintillions, the batch still encodes."""
    state = ReceiverState()
    assert state.offer_frames(message(0, T0), T0) is None
    for step in range(1, 4):
        state.offer_frames(message(MAX_SEQ, T0 + step), T0 + step)
    batch = round_trip(state.flush(T0 + 4))
    assert batch.counters["lost"] == 0
    assert batch.counters["seq_resets"] == 1
    assert health_of(batch, state).lost == 0
    assert 0 <= batch.counters["lost"] <= COUNTER_MAX


def test_an_impossible_jump_is_a_reset_not_a_loss() -> None:
    """One message with seq 2**62 one second after seq 10 adds nothing to ``lost``: no agent
    sends that much in a second. It counts once in ``seq_resets``, fleet-wide and per server."""
    state = ReceiverState()
    for seq in range(11):
        state.offer_frames(message(seq, T0 + seq), T0 + seq)
    assert state.offer_frames(message(2**62, T0 + 11), T0 + 11) is None
    assert state.offer_frames(message(2**62 + 1, T0 + 12), T0 + 12) is None
    batch = state.flush(T0 + 12)
    assert (batch.counters["lost"], batch.counters["seq_resets"]) == (0, 1)
    assert health_of(batch, state).seq_resets == 1
    assert len(batch) == 13  # every sample was still accepted


def test_a_plausible_gap_is_still_counted_as_loss() -> None:
    """A gap the agent could have produced in the time elapsed is loss, as before."""
    state = ReceiverState()
    state.offer_frames(message(0, T0), T0)
    state.offer_frames(message(5, T0 + 5), T0 + 5)
    gap = int(MAX_SAMPLE_RATE * 10 + GAP_SLACK)  # the most 10 seconds can explain
    state.offer_frames(message(5 + gap + 1, T0 + 15), T0 + 15)
    batch = state.flush(T0 + 15)
    assert batch.counters["lost"] == 4 + gap
    assert batch.counters["seq_resets"] == 0


def test_counters_saturate_instead_of_failing_to_encode() -> None:
    """Whatever a counter holds, the batch header encodes, clamped to 2**63-1."""
    state = ReceiverState()
    state.offer_frames(message(0, T0), T0)
    state.lost = 2**70
    state.servers[NAME].lost = 2**70
    state.changed.add(state.servers[NAME].id)
    back = round_trip(state.flush(T0 + 1))
    assert back.counters["lost"] == COUNTER_MAX
    assert health_of(back, state).lost == COUNTER_MAX


# -- two agents, one name -----------------------------------------------------------------------
def interleave(state: ReceiverState, count: int, start_b: int, offset: float) -> list[str | None]:
    """Agent A (seq from 100) and agent B (seq from ``start_b``) send ``count`` samples each,
    one a second, B ``offset`` seconds after A; their messages alternate."""
    verdicts = []
    for step in range(count):
        now = T0 + step
        verdicts.append(state.offer_frames(message(100 + step, now, cpu=1.0), now))
        verdicts.append(state.offer_frames(message(start_b + step, now + offset, cpu=2.0), now))
    return verdicts


@pytest.mark.parametrize(
    ("start_b", "offset"),
    [(0, 0.5), (0, -0.2), (100, 0.3), (5, 0.0)],
    ids=["b-later", "b-stamped-earlier", "same-seqs", "same-ts"],
)
def test_two_agents_under_one_name_are_flagged_not_counted_as_loss(
    start_b: int, offset: float
) -> None:
    """Interleaved sequence streams under one name: every sample of both agents is accepted,
    none counts as lost or duplicate, and the server is flagged ``name_conflict``."""
    state = ReceiverState()
    verdicts = interleave(state, 37, start_b, offset)
    batch = state.flush(T0 + 40)
    assert verdicts.count(None) >= 2 * 37 - 1  # at most B's very first sample may look old
    assert batch.counters["lost"] == 0
    assert batch.counters["duplicates"] == verdicts.count("duplicate") <= 1
    assert batch.counters["name_conflicts"] == 1
    assert health_of(batch, state).name_conflict is True


def test_a_conflict_flag_clears_after_the_second_agent_stops() -> None:
    state = ReceiverState()
    interleave(state, 10, 0, 0.5)
    state.flush(T0 + 11)
    later = T0 + 11 + CONFLICT_HOLD + 1
    state.offer_frames(message(500, later), later)
    batch = state.flush(later)
    assert batch.counters["name_conflicts"] == 0
    assert health_of(batch, state).name_conflict is False


def test_an_agent_restart_is_not_a_conflict() -> None:
    """seq falls back to 0 with a later ts and carries on from there: one agent, no flag."""
    state = ReceiverState()
    for seq in range(20):
        state.offer_frames(message(seq, T0 + seq), T0 + seq)
    for seq in range(30):
        state.offer_frames(message(seq, T0 + 30 + seq), T0 + 30 + seq)
    batch = state.flush(T0 + 60)
    assert (batch.counters["lost"], batch.counters["duplicates"]) == (0, 0)
    assert batch.counters["name_conflicts"] == 0 and len(batch) == 50


def test_an_exact_repeat_is_still_a_duplicate_during_a_conflict() -> None:
    state = ReceiverState()
    interleave(state, 5, 0, 0.5)
    assert state.offer_frames(message(104, T0 + 4), T0 + 6) == "duplicate"
    assert state.offer_frames(message(4, T0 + 4.5), T0 + 6) == "duplicate"


# -- the server cap and eviction ----------------------------------------------------------------
def test_new_names_beyond_the_cap_are_refused_known_ones_carry_on() -> None:
    state = ReceiverState(max_servers=3)
    for index in range(3):
        assert state.offer_frames(message(0, T0, f"s{index}"), T0) is None
    assert state.offer_frames(message(0, T0, "s9"), T0) == "server_limit"
    assert state.offer_frames(message(1, T0 + 1, "s0"), T0 + 1) is None
    samples = [Sample("s1", T0 + 2, 1.0, None), Sample("s8", T0 + 2, 1.0, None)]
    assert state.offer_many(samples, T0 + 2) == {"error": "server_limit", "index": 1}
    counters = state.flush(T0 + 2).counters
    assert counters["rejected"] == {
        "zmq": {"server_limit": 1},
        "http": {"server_limit": 2},
        "graphite": {},
    }
    assert counters["servers_seen"] == 3


def test_silent_servers_are_forgotten_and_their_ids_reused() -> None:
    """A server silent for ``SERVER_IDLE`` is forgotten; its id goes to the next new name, which
    the batch announces again (the aggregator learns the new pairing)."""
    state = ReceiverState(max_servers=2)
    state.offer_frames(message(0, T0, "old"), T0)
    old_id = state.servers["old"].id
    state.flush(T0)
    later = T0 + SERVER_IDLE + 120
    state.offer_frames(message(0, later - 10, "other"), later)
    state.flush(later)  # the eviction sweep runs here
    assert "old" not in state.servers
    assert state.offer_frames(message(0, later, "new"), later) is None
    batch = state.flush(later + 1)
    assert (old_id, "new") in batch.names
    assert batch.counters["servers_evicted"] == 1 and batch.counters["servers_seen"] == 2


# -- de-duplication memory ----------------------------------------------------------------------
def test_dedup_memory_is_bounded_and_what_it_forgets_is_counted() -> None:
    state = ReceiverState(dedup_limit=100)
    for index in range(250):
        state.offer_frames(wire.encode(Sample("h", T0 + index * 0.01, 1.0, None)), T0 + 1)
    counters = state.flush(T0 + 1).counters
    assert counters["dedup_keys"] == 100
    assert counters["dedup_evicted"] == 150
    # the newest keys are still remembered, the oldest are not
    assert state.offer_frames(wire.encode(Sample("h", T0 + 2.49, 1.0, None)), T0 + 2) == (
        "duplicate"
    )
    assert state.offer_frames(wire.encode(Sample("h", T0, 1.0, None)), T0 + 2) is None


def test_a_batch_header_of_many_servers_decodes_to_named_health() -> None:
    state = ReceiverState()
    state.offer_frames(message(0, T0), T0)
    header = msgpack.unpackb(state.flush(T0).encode()[1])
    (entry,) = header["servers"]
    assert len(entry) == 1 + len(ServerHealth._fields)
