"""A server's sequence streams (``receiver.sequences``) under seeded random interleavings of agents
that restart, lose, repeat and jump, one or two under one name, checked step by step against a
brute-force restatement of the module docstring's rules, with the invariants checked after every
step; and, for one well-behaved agent, against what really happened."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import pytest

from servertrack.common.sample import MAX_SEQ
from servertrack.receiver.sequences import (
    CONFLICT,
    CONFLICT_HOLD,
    DUPLICATE,
    GAP_SLACK,
    MAX_SAMPLE_RATE,
    MAX_STREAMS,
    NEW_STREAM,
    NEXT,
    RESET,
    STREAM_IDLE,
    SequenceTracker,
    Step,
)

T0 = 1_700_000_000.0


# -- the rules, restated over every sample each stream delivered --------------------------------
@dataclass
class OracleStream:
    """Every sample one stream delivered, oldest first: ``(seq, ts, arrival)``."""

    samples: list[tuple[int, float, float]]
    retired: int = -1
    """When it became an older stream (a running count; -1 while it is the newest)."""

    @property
    def last(self) -> int:
        return self.samples[-1][0]

    def summary(self) -> tuple[int, float, int, float, float]:
        """(first seq, first ts, newest seq, newest ts, newest arrival)."""
        first_seq, first_ts, _ = self.samples[0]
        last_seq, last_ts, arrival = self.samples[-1]
        return first_seq, first_ts, last_seq, last_ts, arrival


@dataclass
class Oracle:
    """The docstring's rules, step by step, by scanning whole histories."""

    newest: OracleStream | None = None
    older: list[OracleStream] = field(default_factory=list)
    flagged_until: float = -math.inf
    retirements: int = 0

    def resume(self, seq: int, ts: float) -> None:
        self.newest = OracleStream([(seq, ts, -math.inf)])

    def delivered(self, stream: OracleStream, seq: int, ts: float) -> bool:
        first_seq, first_ts, _ = stream.samples[0]
        last_seq, last_ts, _ = stream.samples[-1]
        if seq == last_seq:
            return ts == last_ts  # its newest sample exactly
        if first_seq <= seq < last_seq:  # an older seq at the stream's cadence
            cadence = (last_ts - first_ts) / (last_seq - first_seq)
            return abs(ts - (first_ts + (seq - first_seq) * cadence)) <= max(
                0.01, 0.02 * abs(cadence)
            )
        return seq < first_seq and ts <= first_ts

    def retire(self, stream: OracleStream) -> None:
        stream.retired = self.retirements
        self.retirements += 1
        self.older.append(stream)

    def take(self, seq: int, ts: float, now: float) -> tuple[str, int]:
        """What the sample is (and the samples lost before it), by the rules in their order."""
        self.older = [s for s in self.older if now - s.samples[-1][2] <= STREAM_IDLE]
        streams = ([self.newest] if self.newest else []) + sorted(
            self.older, key=lambda s: s.retired
        )
        if any(self.delivered(stream, seq, ts) for stream in streams):
            return DUPLICATE, 0
        below = [stream for stream in streams if stream.last < seq]
        reset = False
        if below:
            top = max(stream.last for stream in below)
            best = next(stream for stream in below if stream.last == top)  # newest, else oldest
            arrival = best.samples[-1][2]
            elapsed = now - arrival if arrival != -math.inf else ts - best.samples[-1][1]
            gap = seq - top - 1
            if gap <= MAX_SAMPLE_RATE * max(elapsed, 0.0) + GAP_SLACK:
                kind, lost = NEXT, gap if now >= self.flagged_until else 0
                if best is not self.newest:
                    kind, lost = CONFLICT, 0
                    self.flagged_until = now + CONFLICT_HOLD
                    self.older.remove(best)
                    assert self.newest is not None
                    self.retire(self.newest)
                    best.retired = -1
                    self.newest = best
                best.samples.append((seq, ts, now))
                return kind, lost
            reset = len(below) == len(streams)
        if self.newest is not None:
            self.retire(self.newest)
        while len(self.older) > MAX_STREAMS - 1:  # the least recently fed goes first
            self.older.remove(min(self.older, key=lambda s: (s.samples[-1][2], s.retired)))
        self.newest = OracleStream([(seq, ts, now)])
        return (RESET if reset else NEW_STREAM), 0

    def summaries(self) -> list[tuple[int, float, int, float, float]]:
        older = sorted(self.older, key=lambda s: s.retired)
        return [s.summary() for s in ([self.newest] if self.newest else []) + older]


def tracker_summaries(tracker: SequenceTracker) -> list[tuple[int, float, int, float, float]]:
    streams = [tracker.newest, *(tracker.older or [])] if tracker.newest else []
    return [(s.first, s.first_ts, s.last, s.last_ts, s.arrival) for s in streams]


# -- agents -------------------------------------------------------------------------------------
@dataclass
class Agent:
    """One agent run after another: seq counts up from ``seq`` at a steady cadence."""

    seq: int
    ts: float
    cadence: float
    sent: list[tuple[int, float]] = field(default_factory=list)

    def next(self, skipped: int = 0) -> tuple[int, float]:
        """The next sample after ``skipped`` lost ones."""
        if self.seq + 1 + skipped > MAX_SEQ:
            return self.restart(0)
        self.seq += 1 + skipped
        self.ts += (1 + skipped) * self.cadence
        self.sent.append((self.seq, self.ts))
        return self.seq, self.ts

    def jump(self, seq: int) -> tuple[int, float]:
        """A counter gone wrong: ``seq`` next, one cadence later."""
        self.seq = seq - 1
        return self.next()

    def restart(self, seq: int) -> tuple[int, float]:
        self.seq = seq
        self.ts += self.cadence * 3
        self.sent = [(seq, self.ts)]
        return seq, self.ts


def hostile_step(rng: random.Random, agent: Agent) -> tuple[int, float]:
    """What an agent sends next: mostly the next sample, sometimes after a loss, a repeat, a
    restart, or a jump no agent could make."""
    roll = rng.random()
    if roll < 0.70 or not agent.sent:
        return agent.next()
    if roll < 0.78:
        return agent.next(rng.randint(1, 5))
    if roll < 0.80:
        return agent.jump(agent.seq + rng.randint(10, 5000))
    if roll < 0.85:
        return agent.sent[-1]
    if roll < 0.90:
        return rng.choice(agent.sent)
    if roll < 0.95:
        return agent.restart(rng.choice((0, 0, 1, rng.randint(0, agent.seq + 10))))
    if roll < 0.97:
        return agent.jump(rng.choice((agent.seq + 2**40, MAX_SEQ // 2, MAX_SEQ)))
    return rng.randint(0, agent.seq + 5), agent.ts + rng.uniform(-30, 60)  # anything at all


def edge_time(rng: random.Random, oracle: Oracle, now: float) -> float:
    """An arrival exactly on a boundary ahead: when the flag clears, or when an older stream
    is forgotten."""
    edges = [oracle.flagged_until] + [s.samples[-1][2] + STREAM_IDLE for s in oracle.older]
    ahead = [edge for edge in edges if now <= edge < math.inf]
    return rng.choice(ahead) if ahead else now


def edge_sample(rng: random.Random, oracle: Oracle, agent: Agent, now: float) -> tuple[int, float]:
    """A sample on a boundary of the rules: a jump by exactly the largest gap the time elapsed
    allows (or one more), a seq inside a stream a little inside or outside its cadence's
    tolerance, or a seq below a stream's first with exactly the first's ts."""
    roll = rng.random()
    streams = oracle.summaries()
    if roll < 0.5 or not streams:
        if oracle.newest is None:
            return agent.next()
        last_seq, last_ts, arrival = oracle.newest.samples[-1]
        ts = agent.ts + agent.cadence if rng.random() < 0.7 else last_ts - rng.uniform(0, 5)
        elapsed = now - arrival if arrival != -math.inf else ts - last_ts
        allowed = math.floor(MAX_SAMPLE_RATE * max(elapsed, 0.0) + GAP_SLACK)
        seq = min(last_seq + 1 + allowed + rng.choice((0, 1)), MAX_SEQ)
        agent.seq, agent.ts = seq, ts
        agent.sent.append((seq, ts))
        return seq, ts
    first_seq, first_ts, last_seq, last_ts, _ = rng.choice(streams)
    if roll < 0.75 and first_seq < last_seq:
        seq = rng.randrange(first_seq, last_seq)
        cadence = (last_ts - first_ts) / (last_seq - first_seq)
        tolerance = max(0.01, 0.02 * abs(cadence))
        return seq, first_ts + (seq - first_seq) * cadence + rng.choice(
            (-1.1, -0.9, 0.9, 1.1)
        ) * tolerance
    return (rng.randrange(first_seq), first_ts) if first_seq else agent.next()


def check_against_oracle(seed: int, steps: int) -> dict[str, int]:
    """Run one seeded scenario; every step's outcome, flag and streams must match the oracle."""
    rng = random.Random(seed)
    tracker, oracle = SequenceTracker(), Oracle()
    first = Agent(rng.randint(0, 50), T0, rng.choice((1.0, 10.0, 0.25)))
    agents = [first]
    if rng.random() < 0.3:  # a previous receiver run saw this server
        tracker.resume(first.seq, first.ts)
        oracle.resume(first.seq, first.ts)
    now = T0
    kinds: dict[str, int] = {}
    for step in range(steps):
        roll = rng.random()
        if roll < 0.01:
            now += rng.choice((STREAM_IDLE + 1, CONFLICT_HOLD / 2, 3 * STREAM_IDLE))
        elif roll < 0.04:
            now = edge_time(rng, oracle, now)
        elif roll < 0.08:
            pass  # the same arrival time as the previous sample
        else:
            now += rng.uniform(0.0, 2.0)
        if len(agents) == 1 and rng.random() < 0.01:  # a second agent under the same name
            offset = rng.uniform(0.1, 0.9) * first.cadence
            agents.append(Agent(rng.randint(0, first.seq + 20), first.ts + offset, first.cadence))
        elif len(agents) == 2 and rng.random() < 0.005:
            agents.pop()
        agent = rng.choice(agents)
        resumed = oracle.newest is not None and oracle.newest.samples[-1][2] == -math.inf
        if rng.random() < (0.5 if resumed else 0.04):
            seq, ts = edge_sample(rng, oracle, agent, now)
        else:
            seq, ts = hostile_step(rng, agent)
        got = tracker.follow(seq, ts, now)
        kind, lost = oracle.take(seq, ts, now)
        where = f"seed {seed} step {step}: ({seq}, {ts}) at {now}"
        assert (got.kind, got.lost) == (kind, lost), where
        tracker._check()
        assert tracker.in_conflict(now) == (now < oracle.flagged_until), where
        assert tracker_summaries(tracker) == oracle.summaries(), where
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


@pytest.mark.parametrize("seed", range(40))
def test_random_interleavings_follow_the_documented_rules(seed: int) -> None:
    """Agents that restart, lose, repeat and jump, sometimes two under one name, with pauses
    past ``STREAM_IDLE``: each sample is judged as the rules restated by brute force judge it,
    the flag and the remembered streams agree with them, and the invariants hold throughout."""
    check_against_oracle(20261122 + seed, 400)


def test_the_scenarios_reach_every_outcome() -> None:
    """The random scenarios are not all easy: together they reach every outcome many times."""
    totals: dict[str, int] = {}
    for seed in range(40):
        for kind, count in check_against_oracle(20261122 + seed, 400).items():
            totals[kind] = totals.get(kind, 0) + count
    assert all(totals.get(kind, 0) >= 20 for kind in (NEXT, DUPLICATE, CONFLICT, NEW_STREAM, RESET))


# -- what really happened -----------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(20))
def test_one_agent_losses_and_repeats_are_counted_exactly(seed: int) -> None:
    """One agent at a steady cadence that loses runs of samples, repeats any sample it sent and
    restarts: every repeat is a duplicate, every fresh sample is taken, and the samples counted
    lost are exactly those it skipped. No conflict, no reset. (After a restart it loses nothing
    until it is past the previous run: a run that jumps over its predecessor's newest seq looks
    like the old run carrying on.)"""
    rng = random.Random(7_000 + seed)
    tracker = SequenceTracker()
    agent = Agent(rng.randint(0, 1000), T0, rng.choice((1.0, 10.0, 0.5)))
    highest_before = -1  # the highest seq of the runs before this one
    previous: list[tuple[int, float]] = []  # the previous run, while it is remembered
    previous_end = -math.inf
    skipped = lost = repeats = 0
    now = T0
    for _ in range(600):
        now += agent.cadence
        if now - previous_end > STREAM_IDLE:
            previous = []
        roll = rng.random()
        repeat = roll < 0.1 and bool(agent.sent or previous)
        if repeat:
            seq, ts = rng.choice(agent.sent + previous)
            repeats += 1
        elif roll < 0.13:
            highest_before = max(highest_before, agent.seq)
            previous, previous_end = agent.sent, now - agent.cadence
            seq, ts = agent.restart(0)
        elif roll < 0.25 and agent.sent and agent.seq > highest_before:
            gap = rng.randint(1, 20)
            seq, ts = agent.next(gap)
            skipped += gap
        else:
            seq, ts = agent.next()
        step = tracker.follow(seq, ts, now)
        tracker._check()
        assert step.kind in ((DUPLICATE,) if repeat else (NEXT, NEW_STREAM)), (seed, seq, ts)
        assert not tracker.in_conflict(now)
        lost += step.lost
    assert lost == skipped and repeats > 20


def test_each_outcome_once() -> None:
    """The outcomes of the docstring, one by one, for a server that saw seq 10 at T0."""
    tracker = SequenceTracker()
    assert tracker.follow(10, T0, T0).kind == NEW_STREAM
    assert tracker.follow(11, T0 + 1, T0 + 1) == Step(NEXT)
    assert tracker.follow(14, T0 + 4, T0 + 4) == Step(NEXT, lost=2)
    assert tracker.follow(14, T0 + 4, T0 + 5) == Step(DUPLICATE)  # the newest, exactly
    assert tracker.follow(12, T0 + 2, T0 + 5) == Step(DUPLICATE)  # at the stream's cadence
    assert tracker.follow(2**62, T0 + 5, T0 + 5) == Step(RESET)
    assert tracker.follow(0, T0 + 6, T0 + 6) == Step(NEW_STREAM)  # below every stream
    assert tracker.follow(15, T0 + 6.5, T0 + 7) == Step(CONFLICT)  # the seq-14 stream goes on
    assert tracker.in_conflict(T0 + 7 + CONFLICT_HOLD - 1)
    assert tracker.follow(20, T0 + 12, T0 + 8) == Step(NEXT)  # a gap, but flagged: not lost
    assert not tracker.in_conflict(T0 + 7 + CONFLICT_HOLD)
    tracker._check()
