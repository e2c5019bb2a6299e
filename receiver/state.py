"""The receiver's state as one I/O-free object: validation, de-duplication, loss and batching.

Sequences: an agent numbers its samples (``seq``) from 0 on each run and ZeroMQ delivers one
connection's messages in order, so per server the receiver follows the *stream* of sequence numbers:
- ``seq`` one above the last: the next sample (the fast path);
- a larger jump: ``seq - last - 1`` samples were lost, unless the jump is more than the agent could
  have sent in the time since its last sample (``MAX_SAMPLE_RATE``): that is an agent reset (a
  corrupt or hostile counter), counted as ``seq_resets``, never as billions of lost samples;
- ``seq`` not above the last with a later ts: a new stream (the agent restarted);
- otherwise a duplicate.
An agent that restarted leaves its old stream behind for ``STREAM_IDLE`` seconds. If an old stream
carries on while a newer one does too, two agents report under one name: the server is flagged
``name_conflict`` for ``CONFLICT_HOLD`` seconds, every sample of both is accepted, and no gap is
counted as loss meanwhile (which agent missed what cannot be told apart).

Samples without seq (HTTP, other sources) are de-duplicated by (server, ts) over ``dedup_horizon``
seconds of arrivals, in at most ``dedup_limit`` remembered keys; past that the oldest are forgotten
early and counted as ``dedup_evicted``. A Graphite point carries one metric, so its key is
(server, ts, metric), kept in the same bounded memory.

Memory is bounded by configuration: at most ``max_servers`` names (a new name beyond it is refused
and counted as ``server_limit``), servers silent for ``SERVER_IDLE`` seconds are forgotten, and the
time index keeps ``retention`` seconds of batches.
"""

from __future__ import annotations

import time
import uuid
from array import array
from collections import Counter, deque
from collections.abc import Hashable, Iterable
from typing import Any

import numpy as np
from sortedcontainers import SortedDict

from servertrack.common import wire
from servertrack.common.batch import Batch, ServerHealth
from servertrack.common.buckets import (
    HOUR,
    HOUR_WINDOW,
    MAX_FUTURE_SECONDS,
    Clock,
    oldest_accepted_ts,
    time_verdict,
)
from servertrack.common.counters import SOURCES
from servertrack.common.limits import DEFAULT_DEDUP_LIMIT, DEFAULT_MAX_SERVERS
from servertrack.common.sample import (
    MAX_SEQ,
    InvalidSample,
    Sample,
    make_sample,
    sample_from_mapping,
    valid_percent,
)

NAN = float("nan")
INF = float("inf")
MAX_SAMPLE_RATE = 1000.0
"""Samples per second no agent exceeds: a seq jump beyond this rate times the time elapsed (plus
``GAP_SLACK``) cannot be loss."""
GAP_SLACK = 1000
STREAM_IDLE = 600.0
"""Seconds an agent's previous sequence stream is remembered after it stopped."""
CONFLICT_HOLD = 600.0
"""Seconds a server stays flagged ``name_conflict`` after the last interleaved sample."""
MAX_STREAMS = 4
SERVER_IDLE = (HOUR_WINDOW + 1) * HOUR
"""A server silent this long has nothing left in any window: the receiver forgets it."""
EVICT_EVERY = 60.0
GRAPHITE_CLAMP = 110.0
"""A Graphite value above 100 and up to this is taken as 100 and counted (``graphite_clamped``):
collectd's cpu plugin in jiffies mode reports a little over 100 (100.998 was captured). Beyond it,
or below 0, the point is refused as ``bad_cpu`` / ``bad_ram``."""
METRICS = ("cpu", "ram")


def _seen(stream: list[Any], seq: int, ts: float) -> bool:
    """Whether ``(seq, ts)`` is a sample ``stream`` (``[last seq, last ts, arrival, first seq,
    first ts]``) has already delivered: its newest one exactly, an older one at the stream's own
    cadence (within 2 %), or one from before anything seen of it. Another agent's sample under the
    same name fits none of these (but for its very first one, at most)."""
    last, last_ts, _, first, first_ts = stream
    if seq > last:
        return False
    if seq == last:
        return ts == last_ts
    if first <= seq and first < last:
        interval = (last_ts - first_ts) / (last - first)
        expected = last_ts - (last - seq) * interval
        return abs(ts - expected) <= max(0.01, 0.02 * abs(interval))
    return ts <= first_ts


class ServerState:
    """What the receiver remembers of one server."""

    __slots__ = (
        "conflict_until",
        "duplicates",
        "first_seq",
        "first_seq_ts",
        "id",
        "ips",
        "ips_raw",
        "last_arrival",
        "last_seq",
        "last_seq_ts",
        "lost",
        "rejected",
        "seen",
        "seq_resets",
        "skew",
        "streams",
    )

    def __init__(self, server_id: int, now: float) -> None:
        self.id = server_id
        self.last_seq = -1
        self.last_seq_ts = float("-inf")
        self.last_arrival = float("-inf")
        """Arrival of the newest numbered sample (``-inf`` when resumed from the aggregator)."""
        self.first_seq = -1
        self.first_seq_ts = float("-inf")
        """Where the newest stream began (to tell an old repeat from another agent's sample)."""
        self.streams: list[list[Any]] | None = None
        """Earlier sequence streams still remembered, each ``[seq, ts, arrival, first seq, first
        ts]``."""
        self.lost = 0
        self.duplicates = 0
        self.rejected = 0
        """Samples of this server refused by the time window (future, too_old)."""
        self.seq_resets = 0
        self.conflict_until = float("-inf")
        self.skew = 0.0
        self.seen = now
        self.ips: tuple[str, ...] = ()
        self.ips_raw: list[str] | None = None


class ReceiverState:
    """Accepts samples, counts every drop by reason, and cuts them into numbered batches."""

    def __init__(
        self,
        clock: Clock = time.time,
        accept_pickle: bool = False,
        retention: float = 300.0,
        dedup_horizon: float = 600.0,
        epoch: str | None = None,
        max_servers: int = DEFAULT_MAX_SERVERS,
        dedup_limit: int = DEFAULT_DEDUP_LIMIT,
    ) -> None:
        self.clock = clock
        self.accept_pickle = accept_pickle
        self.retention = retention
        self.dedup_horizon = dedup_horizon
        self.max_servers = max_servers
        self.dedup_limit = dedup_limit
        self.epoch = epoch or uuid.uuid4().hex
        self.servers: dict[str, ServerState] = {}
        self.names: list[str | None] = []
        self.free_ids: list[int] = []
        self.new_names: list[tuple[int, str]] = []
        self.changed: set[int] = set()
        self.conflicted: set[ServerState] = set()
        self.received: Counter[str] = Counter()
        self.accepted: Counter[str] = Counter()
        self.zmq_received = 0
        self.zmq_accepted = 0
        self.graphite_received = 0
        self.graphite_accepted = 0
        """The hot paths' counters, kept apart from the Counters (a plain int is cheapest)."""
        self.rejected: dict[str, Counter[str]] = {source: Counter() for source in SOURCES}
        self.duplicates = 0
        self.lost = 0
        self.seq_resets = 0
        self.evicted = 0
        self.dedup_evicted = 0
        self.batches = 0
        self.forward_dropped = 0
        self.graphite_clamped = 0
        self.graphite_connections = 0
        self.graphite_connections_open = 0
        self.graphite_connections_refused = 0
        self.graphite_connections_closed: Counter[str] = Counter()
        """Kept here by the Graphite listener, so that they travel with every batch."""
        self.ingest_connections_open = 0
        self.ingest_connections_refused = 0
        """Kept here by the ingest port's connection cap (``receiver.ingest_limit``)."""
        self.files_exhausted = 0
        """Set by the daemon: the times it ran out of file descriptors and carried on."""
        self._keys: set[tuple[int, Hashable]] = set()
        """De-duplication keys of recent seq-less samples: (server id, key)."""
        self._recent: deque[tuple[float, tuple[int, Hashable]]] = deque()
        """The same keys in arrival order, with their arrival.

        PERF: servers by id, in one set, not a set per server holding the object: tuples of
        plain values are no longer tracked by the garbage collector, and a million keys (with a
        set per server) kept each full collection busy for seconds. An id is given to another
        server only after 25 hours of silence, long after its keys left (``dedup_horizon``)."""
        self._ids = array("i")
        self._ts = array("d")
        self._cpu = array("d")
        self._ram = array("d")
        self._seq = array("q")
        self._window_now = float("nan")
        self._oldest = 0.0
        self._next_evict = float("-inf")
        self.index: SortedDict = SortedDict()
        """Recent batches: number → (flush time, frames), kept ``retention`` seconds for replay."""

    # -- intake -------------------------------------------------------------------------------
    def offer_frames(self, frames: list[bytes], now: float) -> str | None:
        """Take one agent message; returns ``None`` if accepted, else the reason it was not.

        PERF: a msgpack map from a known server whose fields are plainly valid is admitted
        without building a :class:`Sample` (~2 µs instead of ~6 µs). Anything else takes the
        full path through :func:`sample_from_mapping`, which gives the exact verdict; the fast
        path only ever accepts what the full path accepts (see tests). Both check cpu and ram
        with the one :func:`valid_percent`: calling it here instead of an inline comparison
        measured within noise (1.51 µs a message, best of 8, either way).
        """
        if len(frames) == 2 and frames[0] == wire.MSGPACK:
            return self.offer_msgpack(frames[1], now)
        self.zmq_received += 1
        return self._offer_slow(frames, None, now)

    def offer_msgpack(self, payload: bytes, now: float) -> str | None:
        """:meth:`offer_frames` for a message whose format frame says msgpack."""
        self.zmq_received += 1
        if len(payload) <= wire.MAX_PAYLOAD:
            try:
                data = wire.unpack_limited(payload)
            except Exception:  # every msgpack failure is one reason
                self.rejected["zmq"]["msgpack"] += 1
                return "msgpack"
            if type(data) is dict:
                get = data.get
                fqdn = get("fqdn")
                server = self.servers.get(fqdn) if type(fqdn) is str else None
                ts, cpu, ram, seq, ip = get("ts"), get("cpu"), get("ram"), get("seq"), get("ip")
                if (
                    server is not None
                    and len(data)
                    == 2
                    + (cpu is not None)
                    + (ram is not None)
                    + (seq is not None)
                    + (ip is not None)
                    and type(ts) is float
                    and -1e15 < ts < 1e15
                    and (cpu is None or valid_percent(cpu))
                    and (ram is None or valid_percent(ram))
                    and (cpu is not None or ram is not None)
                    and (seq is None or (type(seq) is int and 0 <= seq <= MAX_SEQ))
                    and (ip is None or ip == server.ips_raw)
                ):
                    return self._admit_known(server, ts, cpu, ram, seq, now, "zmq")
            return self._offer_slow(None, data, now)
        return self._offer_slow([wire.MSGPACK, payload], None, now)

    def _offer_slow(self, frames: list[bytes] | None, data: Any, now: float) -> str | None:
        """The full decode and validation, which names the exact reason for a refusal."""
        try:
            if frames is not None:
                data = wire.decode(frames, self.accept_pickle)
            sample = sample_from_mapping(data)
        except (wire.MalformedMessage, InvalidSample) as err:
            self.rejected["zmq"][err.reason] += 1
            return err.reason
        return self._admit(sample, now, "zmq")

    def reject(self, reason: str, count: int = 1, source: str = "zmq") -> None:
        """Count ``count`` samples refused for ``reason`` before they reached the state."""
        if source == "zmq":
            self.zmq_received += count
        elif source == "graphite":
            self.graphite_received += count
        else:
            self.received[source] += count
        self.rejected[source][reason] += count

    def record(self, rows: Any, now: float) -> dict[str, Any]:
        """A record from the API: ``[[fqdn, ts, cpu, ram], ...]``, validated again here (the
        receiver trusts no peer) and taken all or nothing with :meth:`offer_many`."""
        if not isinstance(rows, list):
            self.reject("bad_request", 1, "http")
            return {"error": "bad_request", "message": "samples must be a list"}
        try:
            samples = [make_sample(*row) for row in rows]
        except (InvalidSample, TypeError) as err:
            reason = getattr(err, "reason", "bad_request")
            self.reject(reason, len(rows), "http")
            return {"error": reason, "message": str(err)}
        return self.offer_many(samples, now)

    def record_each(self, rows: Any, now: float) -> dict[str, Any]:
        """Single records from the API's group commit, ``[[fqdn, ts, cpu, ram], ...]``, each taken
        or refused on its own (one client's bad record must not refuse another's): the reply's
        ``verdicts`` hold, item by item, None (accepted), ``"duplicate"`` or the refusal reason.

        PERF: the API validated each record already; a record of a known server whose values are
        plainly valid is checked here without :func:`make_sample` (the name was checked when the
        server was registered). Anything else takes the full validation: the receiver trusts no
        peer.
        """
        if not isinstance(rows, list):
            self.reject("bad_request", 1, "http")
            return {"error": "bad_request", "message": "samples must be a list"}
        self.received["http"] += len(rows)
        servers = self.servers
        verdicts: list[str | None] = []
        for row in rows:
            if (
                type(row) is list
                and len(row) == 4
                and type(row[0]) is str
                and row[0] in servers
                and type(row[1]) is float
                and -INF < row[1] < INF
                and (row[2] is None or valid_percent(row[2]))
                and (row[3] is None or valid_percent(row[3]))
                and (row[2] is not None or row[3] is not None)
            ):
                sample = Sample(row[0], row[1], row[2], row[3])
            else:
                try:
                    sample = make_sample(*row)
                except (InvalidSample, TypeError) as err:
                    reason = getattr(err, "reason", "bad_request")
                    self.rejected["http"][reason] += 1
                    verdicts.append(reason)
                    continue
            verdicts.append(self._record_one(sample, now))
        return {"verdicts": verdicts}

    def _record_one(self, sample: Sample, now: float) -> str | None:
        """:meth:`offer_many` for one sample, without the bookkeeping of a list."""
        reason = time_verdict(sample.ts, now)
        if (
            reason is None
            and sample.fqdn not in self.servers
            and len(self.servers) >= self.max_servers
        ):
            reason = "server_limit"
        if reason is not None:
            self.rejected["http"][reason] += 1
            return reason
        return self._admit(sample, now, "http")

    def offer_many(self, samples: Iterable[Sample], now: float, source: str = "http") -> dict:
        """All-or-nothing intake of validated samples (HTTP): any sample outside the time window
        or from a server beyond ``max_servers`` refuses all of them."""
        samples = list(samples)
        self.received[source] += len(samples)
        new_names = set()
        for index, sample in enumerate(samples):
            reason = time_verdict(sample.ts, now)
            if reason is None and sample.fqdn not in self.servers:
                new_names.add(sample.fqdn)
                if len(self.servers) + len(new_names) > self.max_servers:
                    reason = "server_limit"
            if reason is not None:
                self.rejected[source][reason] += len(samples)
                return {"error": reason, "index": index}
        outcome = Counter(self._admit(sample, now, source) for sample in samples)
        return {"accepted": outcome[None], "duplicates": outcome["duplicate"]}

    def offer_graphite(
        self, name: str, metric: str, value: float, ts: float, now: float
    ) -> str | None:
        """One Graphite point, ``value`` of ``metric`` (``cpu`` or ``ram``) of server ``name`` at
        ``ts``: a sample with that one metric, validated like any other, in the same time window
        and under the same ``max_servers``, de-duplicated by (server, ts, metric). Returns
        ``None`` if accepted, else the reason it was not.

        PERF: a point of a known server with a plainly valid value and ts skips building a
        :class:`Sample` (the slow path gives the exact verdict for everything else).
        """
        self.graphite_received += 1
        if 100.0 < value <= GRAPHITE_CLAMP:
            value = 100.0
            self.graphite_clamped += 1
        if metric == "cpu":
            cpu, ram = value, None
        elif metric == "ram":
            cpu, ram = None, value
        else:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        server = self.servers.get(name)
        if server is not None and valid_percent(value) and -1e15 < ts < 1e15:
            return self._admit_known(server, ts, cpu, ram, None, now, "graphite", (ts, metric))
        try:
            sample = make_sample(name, ts, cpu, ram)
        except InvalidSample as err:
            self.rejected["graphite"][err.reason] += 1
            return err.reason
        return self._admit(sample, now, "graphite", (sample.ts, metric))

    def _admit(
        self, sample: Sample, now: float, source: str, key: Hashable | None = None
    ) -> str | None:
        """Admit a validated sample: register its server and note a change of addresses.
        ``key`` de-duplicates a seq-less sample (its ts when not given)."""
        server = self.servers.get(sample.fqdn)
        if server is None:
            reason = time_verdict(sample.ts, now)
            if reason is None and len(self.servers) >= self.max_servers:
                reason = "server_limit"
            if reason is not None:
                self.rejected[source][reason] += 1
                return reason
            server = self._register(sample.fqdn, now)
        verdict = self._admit_known(
            server, sample.ts, sample.cpu, sample.ram, sample.seq, now, source, key
        )
        if verdict is None and sample.ip and sample.ip != server.ips:
            server.ips = sample.ip
            server.ips_raw = list(sample.ip)
            self.changed.add(server.id)
        return verdict

    def _admit_known(
        self,
        server: ServerState,
        ts: float,
        cpu: float | None,
        ram: float | None,
        seq: int | None,
        now: float,
        source: str,
        key: Hashable | None = None,
    ) -> str | None:
        if now != self._window_now:
            self._window_now = now
            self._oldest = oldest_accepted_ts(now)
        if ts > now + MAX_FUTURE_SECONDS:
            return self._out_of_window(server, "future", source)
        if ts < self._oldest:
            return self._out_of_window(server, "too_old", source)
        if seq is not None:
            if seq == server.last_seq + 1 and seq and server.streams is None:
                server.last_seq = seq
                server.last_seq_ts = ts
                server.last_arrival = now
            elif self._sequence(server, seq, ts, now):
                return self._duplicate(server)
        else:
            held = (server.id, ts if key is None else key)
            if held in self._keys:
                return self._duplicate(server)
            self._keys.add(held)
            self._remember_key(held, now)
        server.skew = now - ts
        server.seen = now
        self._ids.append(server.id)
        self._ts.append(ts)
        self._cpu.append(NAN if cpu is None else cpu + 0.0)  # + 0.0: -0.0 is stored as 0.0
        self._ram.append(NAN if ram is None else ram + 0.0)
        self._seq.append(-1 if seq is None else seq)
        if source == "zmq":
            self.zmq_accepted += 1
        elif source == "graphite":
            self.graphite_accepted += 1
        else:
            self.accepted[source] += 1
        return None

    def _sequence(self, server: ServerState, seq: int, ts: float, now: float) -> bool:
        """The slow path of sequence numbers (see the module docstring); True for a duplicate."""
        others = server.streams or []
        if others:
            others[:] = [s for s in others if now - s[2] <= STREAM_IDLE]
        newest = [server.last_seq, server.last_seq_ts, server.last_arrival]
        newest += [server.first_seq, server.first_seq_ts]
        streams = [newest, *others] if server.last_seq >= 0 else others
        if any(_seen(stream, seq, ts) for stream in streams):
            return True
        best = None  # the stream this sample continues: the highest one below it
        for stream in streams:
            if stream[0] < seq and (best is None or stream[0] > best[0]):
                best = stream
        if best is not None:
            gap = seq - best[0] - 1
            elapsed = now - best[2] if best[2] > float("-inf") else ts - best[1]
            if gap <= MAX_SAMPLE_RATE * max(elapsed, 0.0) + GAP_SLACK:
                if best is not newest:  # an older stream carries on beside the newest: two agents
                    others.remove(best)
                    if server.last_seq >= 0:
                        others.append(newest)
                    server.conflict_until = now + CONFLICT_HOLD
                    if server not in self.conflicted:
                        self.conflicted.add(server)
                        self.changed.add(server.id)
                if gap > 0 and now >= server.conflict_until:
                    server.lost += gap
                    self.lost += gap
                    self.changed.add(server.id)
                self._set_newest(server, seq, ts, now, others, best[3], best[4])
                return False
            if not any(stream[0] >= seq for stream in streams):  # past every stream: a reset
                server.seq_resets += 1
                self.seq_resets += 1
                self.changed.add(server.id)
        if server.last_seq >= 0:  # the agent restarted, or another one uses this name
            others.append(newest)
            if len(others) >= MAX_STREAMS:
                others.remove(min(others, key=lambda stream: stream[2]))
        self._set_newest(server, seq, ts, now, others, seq, ts)
        return False

    @staticmethod
    def _set_newest(
        server: ServerState,
        seq: int,
        ts: float,
        now: float,
        others: list[list[Any]],
        first_seq: int,
        first_ts: float,
    ) -> None:
        server.last_seq, server.last_seq_ts, server.last_arrival = seq, ts, now
        server.first_seq, server.first_seq_ts = first_seq, first_ts
        server.streams = others or None

    def _remember_key(self, held: tuple[int, Hashable], now: float) -> None:
        recent = self._recent
        recent.append((now, held))
        if len(recent) > self.dedup_limit:
            self._keys.discard(recent.popleft()[1])
            self.dedup_evicted += 1

    def _out_of_window(self, server: ServerState, reason: str, source: str) -> str:
        self.rejected[source][reason] += 1
        server.rejected += 1
        self.changed.add(server.id)
        return reason

    def _duplicate(self, server: ServerState) -> str:
        server.duplicates += 1
        self.duplicates += 1
        self.changed.add(server.id)
        return "duplicate"

    def _register(self, fqdn: str, now: float) -> ServerState:
        if self.free_ids:
            server = ServerState(self.free_ids.pop(), now)
            self.names[server.id] = fqdn
        else:
            server = ServerState(len(self.names), now)
            self.names.append(fqdn)
        self.servers[fqdn] = server
        self.new_names.append((server.id, fqdn))
        self.changed.add(server.id)
        return server

    # -- output -------------------------------------------------------------------------------
    def pending(self) -> int:
        return len(self._ids)

    def counters(self) -> dict[str, Any]:
        received = {**self.received, "zmq": self.zmq_received, "graphite": self.graphite_received}
        accepted = {**self.accepted, "zmq": self.zmq_accepted, "graphite": self.graphite_accepted}
        return {
            "received": {source: received.get(source, 0) for source in SOURCES},
            "accepted": {source: accepted.get(source, 0) for source in SOURCES},
            "rejected": {source: dict(counts) for source, counts in self.rejected.items()},
            "duplicates": self.duplicates,
            "lost": self.lost,
            "seq_resets": self.seq_resets,
            "name_conflicts": len(self.conflicted),
            "servers_seen": len(self.servers),
            "servers_evicted": self.evicted,
            "dedup_keys": len(self._recent),
            "dedup_evicted": self.dedup_evicted,
            "batches": self.batches,
            "forward_dropped": self.forward_dropped,
            "graphite_clamped": self.graphite_clamped,
            "graphite_connections": self.graphite_connections,
            "graphite_connections_open": self.graphite_connections_open,
            "graphite_connections_refused": self.graphite_connections_refused,
            "graphite_connections_closed": dict(self.graphite_connections_closed),
            "ingest_connections_open": self.ingest_connections_open,
            "ingest_connections_refused": self.ingest_connections_refused,
            "files_exhausted": self.files_exhausted,
        }

    def health(self, server: ServerState, now: float) -> ServerHealth:
        return ServerHealth(
            server.ips,
            server.lost,
            server.duplicates,
            server.rejected,
            server.skew,
            server.seq_resets,
            now < server.conflict_until,
        )

    def flush(self, now: float) -> Batch:
        """Cut everything accepted since the last flush into the next numbered batch."""
        for server in [s for s in self.conflicted if now >= s.conflict_until]:
            self.conflicted.discard(server)
            if self.names[server.id] is not None:
                self.changed.add(server.id)
        servers = []
        for server_id in sorted(self.changed):
            name = self.names[server_id]
            if name is not None:
                servers.append((server_id, self.health(self.servers[name], now)))
        batch = Batch(
            epoch=self.epoch,
            number=self.batches,
            sent=now,
            ids=np.frombuffer(self._ids, np.int32).copy() if self._ids else np.empty(0, np.int32),
            ts=np.frombuffer(self._ts, np.float64).copy(),
            cpu=np.frombuffer(self._cpu, np.float64).copy(),
            ram=np.frombuffer(self._ram, np.float64).copy(),
            seq=np.frombuffer(self._seq, np.int64).copy(),
            names=self.new_names,
            servers=servers,
            counters=self.counters(),
        )
        self.batches += 1
        self.new_names = []
        self.changed = set()
        self._ids, self._ts, self._cpu, self._ram = array("i"), array("d"), array("d"), array("d")
        self._seq = array("q")
        self._expire_recent(now)
        if now >= self._next_evict:
            self._next_evict = now + EVICT_EVERY
            self._evict_silent(now)
        return batch

    def remember(self, batch: Batch, frames: list[bytes], now: float) -> None:
        """Keep a sent batch in the time index for replay, and drop what is past retention."""
        self.index[batch.number] = (now, frames)
        while self.index and self.index.peekitem(0)[1][0] < now - self.retention:
            self.index.popitem(0)

    def batches_after(self, number: int) -> list[list[bytes]]:
        """Frames of the retained batches numbered above ``number``, oldest first."""
        return [self.index[key][1] for key in self.index.irange(minimum=number + 1)]

    def resume_sequences(
        self, names: list[str], seqs: list[int], stamps: list[float], now: float | None = None
    ) -> int:
        """Take over the newest seq of servers not seen yet in this run (from the aggregator),
        so that samples lost while no receiver ran show up as seq gaps. Returns how many."""
        now = self.clock() if now is None else now
        taken = 0
        for name, seq, ts in zip(names, seqs, stamps, strict=True):
            if name in self.servers or len(self.servers) >= self.max_servers:
                continue  # this run has seen it already: its own state is newer
            server = self._register(name, now)
            server.last_seq, server.last_seq_ts = int(seq), float(ts)
            server.first_seq, server.first_seq_ts = int(seq), float(ts)
            taken += 1
        return taken

    def all_names(self) -> list[tuple[int, str]]:
        return [(server_id, name) for server_id, name in enumerate(self.names) if name is not None]

    def _expire_recent(self, now: float) -> None:
        horizon = now - self.dedup_horizon
        recent = self._recent
        keys = self._keys
        while recent and recent[0][0] < horizon:
            keys.discard(recent.popleft()[1])

    def _evict_silent(self, now: float) -> None:
        """Forget servers that sent nothing accepted for ``SERVER_IDLE`` seconds; their ids are
        given to new names later (announced again in that batch's ``names``)."""
        cutoff = now - SERVER_IDLE
        silent = [name for name, server in self.servers.items() if server.seen < cutoff]
        for name in silent:
            server = self.servers.pop(name)
            self.conflicted.discard(server)
            self.names[server.id] = None
            self.free_ids.append(server.id)
            self.changed.discard(server.id)
        self.evicted += len(silent)
