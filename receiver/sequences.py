"""Following one server's sequence numbers: pure, with no batches, counters or clock of its own.

An agent numbers its samples (``seq``) from 0 on each run, and ZeroMQ delivers one connection's
messages in order. A *stream* is what one agent run has delivered so far: its first sample
(seq, ts), its newest one, and when the newest arrived. A server has a newest stream (the one its
latest numbered sample went to) and at most ``MAX_STREAMS - 1`` older ones; an older stream is
forgotten ``STREAM_IDLE`` seconds after its newest sample arrived, or, when there are too many,
the one fed least recently (the one that became older first, among equals).

A sample ``(seq, ts)`` arriving at ``now`` is, in this order:

1. a **duplicate** when a stream has delivered it already: the stream's newest sample exactly
   (the same seq and ts), an older seq whose ts fits the stream's cadence (the mean interval from
   its first sample to its newest, within 2 % of it but at least 10 ms), or a seq below its first
   with a ts not after the first's;
2. else it continues the stream whose newest seq is the highest below ``seq`` (among equals the
   newest stream, else the one that became older first), if the gap ``seq - last - 1`` is one the
   agent could have left in the time elapsed: at most ``MAX_SAMPLE_RATE`` samples a second since
   that stream's newest sample arrived, plus ``GAP_SLACK`` (for a stream taken over from a
   previous receiver run, whose arrival is unknown, the time between the two ts). Then it is
   - the **next** sample when that is the newest stream. The gap is **lost**, unless the server
     is flagged for a name conflict (which agent missed what cannot be told apart);
   - a **name conflict** when that is an older stream: it carries on beside the newest one, so
     two agents report under one name. The server is flagged for ``CONFLICT_HOLD`` seconds from
     now, no gap counts as lost, and that stream becomes the newest;
3. else a **new stream** (the agent restarted, or another agent's first sample under this name),
   and the newest stream becomes an older one. It is a **reset** as well when the sample is above
   every stream and too far above the highest (step 2's gap): a corrupt or hostile counter,
   counted once and never as billions of lost samples.

Another agent's sample fits none of step 1's cases, but for its very first one at most.
"""

from __future__ import annotations

from typing import NamedTuple

from servertrack.common.sample import INF, MAX_SEQ

MAX_SAMPLE_RATE = 1000.0
"""Samples per second no agent exceeds: a seq jump beyond this rate times the time elapsed (plus
``GAP_SLACK``) cannot be loss."""
GAP_SLACK = 1000
STREAM_IDLE = 600.0
"""Seconds an agent's previous stream is remembered after its newest sample arrived."""
CONFLICT_HOLD = 600.0
"""Seconds a server stays flagged for a name conflict after the last interleaved sample."""
MAX_STREAMS = 4
"""Streams remembered per server: the newest and three older ones."""

NEXT = "next"
DUPLICATE = "duplicate"
CONFLICT = "conflict"
NEW_STREAM = "new_stream"
RESET = "reset"


class Step(NamedTuple):
    """What one sample was to its server's streams."""

    kind: str
    """:data:`NEXT`, :data:`DUPLICATE`, :data:`CONFLICT`, :data:`NEW_STREAM` or :data:`RESET`
    (a reset starts a new stream too)."""
    lost: int = 0
    """Samples missing just before this one that count as lost."""


NEXT_STEP = Step(NEXT)
"""The common case: the next sample of the newest stream, nothing lost."""
_DUPLICATE_STEP = Step(DUPLICATE)
_NEW_STREAM_STEP = Step(NEW_STREAM)
_RESET_STEP = Step(RESET)
_CONFLICT_STEP = Step(CONFLICT)


class SequenceStream:
    """What one agent run has delivered: its first and newest (seq, ts), and when the newest
    arrived (``-inf`` for a stream taken over from a previous receiver run)."""

    __slots__ = ("arrival", "first", "first_ts", "last", "last_ts")

    def __init__(self, seq: int, ts: float, arrival: float) -> None:
        self.first = self.last = seq
        self.first_ts = self.last_ts = ts
        self.arrival = arrival

    def delivered(self, seq: int, ts: float) -> bool:
        """Whether ``(seq, ts)`` is a sample this stream has delivered (step 1)."""
        if seq > self.last:
            return False
        if seq == self.last:
            return ts == self.last_ts
        if seq >= self.first:
            interval = (self.last_ts - self.first_ts) / (self.last - self.first)
            expected = self.last_ts - (self.last - seq) * interval
            return abs(ts - expected) <= max(0.01, 0.02 * abs(interval))
        return ts <= self.first_ts

    def could_reach(self, seq: int, ts: float, now: float) -> bool:
        """Whether an agent could have gone from this stream's newest seq to ``seq`` in the time
        elapsed (step 2)."""
        elapsed = now - self.arrival if self.arrival > -INF else ts - self.last_ts
        return seq - self.last - 1 <= MAX_SAMPLE_RATE * max(elapsed, 0.0) + GAP_SLACK


class SequenceTracker:
    """The streams of one server, and until when it is flagged for a name conflict."""

    __slots__ = ("conflict_until", "newest", "older")

    def __init__(self) -> None:
        self.newest: SequenceStream | None = None
        self.older: list[SequenceStream] | None = None
        """The older streams, in the order they became older; ``None`` when there are none (the
        common case: the fast path tests one attribute, and a server holds no empty list)."""
        self.conflict_until = -INF

    def resume(self, seq: int, ts: float) -> None:
        """Take over the newest (seq, ts) a previous receiver run saw, so that samples lost while
        no receiver ran show up as a gap. For a server this run has not seen."""
        self.newest = SequenceStream(seq, ts, -INF)

    def in_conflict(self, now: float) -> bool:
        return now < self.conflict_until

    def follow(self, seq: int, ts: float, now: float) -> Step:
        """Take one sample (see the module docstring) and say what it was."""
        newest = self.newest
        if self.older is None and newest is not None and seq == newest.last + 1:
            newest.last, newest.last_ts, newest.arrival = seq, ts, now  # the common case
            return NEXT_STEP
        older = [s for s in self.older if now - s.arrival <= STREAM_IDLE] if self.older else []
        streams = [newest, *older] if newest is not None else older
        if any(stream.delivered(seq, ts) for stream in streams):
            self.older = older or None
            return _DUPLICATE_STEP
        best = None  # the stream this sample would continue: the highest one below it
        for stream in streams:
            if stream.last < seq and (best is None or stream.last > best.last):
                best = stream
        if best is not None and best.could_reach(seq, ts, now):
            return self._continue(best, seq, ts, now, older)
        reset = best is not None and all(stream.last < seq for stream in streams)
        if newest is not None:
            older.append(newest)
            if len(older) >= MAX_STREAMS:
                older.remove(min(older, key=lambda stream: stream.arrival))
        self.newest = SequenceStream(seq, ts, now)
        self.older = older or None
        return _RESET_STEP if reset else _NEW_STREAM_STEP

    def _continue(
        self, stream: SequenceStream, seq: int, ts: float, now: float, older: list[SequenceStream]
    ) -> Step:
        """``seq`` continues ``stream`` (step 2)."""
        gap = seq - stream.last - 1
        step = NEXT_STEP
        if stream is not self.newest:  # an older stream carries on beside the newest: two agents
            older.remove(stream)
            if self.newest is not None:
                older.append(self.newest)
            self.newest = stream
            self.conflict_until = now + CONFLICT_HOLD
            step = _CONFLICT_STEP
        elif gap > 0 and now >= self.conflict_until:
            step = Step(NEXT, gap)
        stream.last, stream.last_ts, stream.arrival = seq, ts, now
        self.older = older or None
        return step

    def _check(self) -> None:
        """Assert the invariants of the streams (for tests)."""
        newest, older = self.newest, self.older
        assert older is None or older, "no older streams is None, not an empty list"
        if newest is None:
            assert older is None, "older streams without a newest one"
            return
        streams = [newest, *(older or ())]
        assert len(streams) <= MAX_STREAMS, f"{len(streams)} streams remembered"
        assert len({id(stream) for stream in streams}) == len(streams), "a stream held twice"
        for stream in streams:
            assert 0 <= stream.first <= stream.last <= MAX_SEQ, (stream.first, stream.last)
            assert stream.arrival < INF, "an arrival in the infinite future"
