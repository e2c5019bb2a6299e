"""The receiver's state as one I/O-free object: validation, de-duplication, loss and batching.

De-duplication: an agent numbers its samples (``seq``) from 0 on each run and ZeroMQ delivers one
connection's messages in order, so per server it is enough to keep the last seq and its ts:
- ``seq > last``: new; ``seq - last - 1`` samples are counted as lost;
- ``seq <= last`` with a later ts: the agent restarted, a new run begins;
- ``seq <= last`` otherwise: a duplicate.
Samples without seq (HTTP, other sources) are de-duplicated by (server, ts) over ``dedup_horizon``
seconds of arrivals.
"""

from __future__ import annotations

import time
import uuid
from array import array
from collections import Counter, deque
from collections.abc import Iterable
from typing import Any

import numpy as np
from sortedcontainers import SortedDict

from servertrack.common import wire
from servertrack.common.batch import Batch
from servertrack.common.buckets import (
    MAX_FUTURE_SECONDS,
    Clock,
    oldest_accepted_ts,
    time_verdict,
)
from servertrack.common.sample import MAX_SEQ, InvalidSample, Sample, sample_from_mapping

NAN = float("nan")
SOURCES = ("zmq", "http")


def _nonzero(counts: Counter[str], **more: int) -> dict[str, int]:
    return {key: value for key, value in {**counts, **more}.items() if value}


class ServerState:
    """What the receiver remembers of one server."""

    __slots__ = (
        "duplicates",
        "id",
        "ips",
        "ips_raw",
        "last_seq",
        "last_seq_ts",
        "lost",
        "recent_ts",
        "recent_ts_order",
        "rejected",
        "skew",
    )

    def __init__(self, server_id: int) -> None:
        self.id = server_id
        self.last_seq = -1
        self.last_seq_ts = float("-inf")
        self.lost = 0
        self.duplicates = 0
        self.rejected = 0
        """Samples of this server refused by the time window (future, too_old)."""
        self.skew = 0.0
        self.ips: tuple[str, ...] = ()
        self.ips_raw: list[str] | None = None
        self.recent_ts: set[float] = set()
        self.recent_ts_order: deque[tuple[float, float]] = deque()


class ReceiverState:
    """Accepts samples, counts every drop by reason, and cuts them into numbered batches."""

    def __init__(
        self,
        clock: Clock = time.time,
        accept_pickle: bool = False,
        retention: float = 300.0,
        dedup_horizon: float = 600.0,
        epoch: str | None = None,
    ) -> None:
        self.clock = clock
        self.accept_pickle = accept_pickle
        self.retention = retention
        self.dedup_horizon = dedup_horizon
        self.epoch = epoch or uuid.uuid4().hex
        self.servers: dict[str, ServerState] = {}
        self.names: list[str] = []
        self.new_names: list[tuple[int, str]] = []
        self.changed: set[int] = set()
        self.with_recent_ts: set[int] = set()
        self.received: Counter[str] = Counter()
        self.accepted: Counter[str] = Counter()
        self.zmq_received = 0
        self.zmq_accepted = 0
        """The hot path's counters, kept apart from the Counters (a plain int is cheapest)."""
        self.rejected: Counter[str] = Counter()
        self.duplicates = 0
        self.lost = 0
        self.batches = 0
        self.forward_dropped = 0
        self._ids = array("i")
        self._ts = array("d")
        self._cpu = array("d")
        self._ram = array("d")
        self._seq = array("q")
        self._window_now = float("nan")
        self._oldest = 0.0
        self.index: SortedDict = SortedDict()
        """Recent batches: number → (flush time, frames), kept ``retention`` seconds for replay."""

    # -- intake -------------------------------------------------------------------------------
    def offer_frames(self, frames: list[bytes], now: float) -> str | None:
        """Take one agent message; returns ``None`` if accepted, else the reason it was not.

        PERF: a msgpack map from a known server whose fields are plainly valid is admitted
        without building a :class:`Sample` (~2 µs instead of ~6 µs). Anything else takes the
        full path through :func:`sample_from_mapping`, which gives the exact verdict; the fast
        path only ever accepts what the full path accepts (see tests).
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
                self.rejected["msgpack"] += 1
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
                    and (cpu is None or (type(cpu) is float and 0.0 <= cpu <= 100.0))
                    and (ram is None or (type(ram) is float and 0.0 <= ram <= 100.0))
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
            self.rejected[err.reason] += 1
            return err.reason
        return self._admit(sample, now, "zmq")

    def check(self, sample: Sample, now: float) -> str | None:
        """The reason ``sample`` would be refused by the time policy, if any."""
        return time_verdict(sample.ts, now)

    def offer_many(self, samples: Iterable[Sample], now: float, source: str = "http") -> dict:
        """All-or-nothing intake of validated samples (HTTP): any outside the window refuses all."""
        samples = list(samples)
        for index, sample in enumerate(samples):
            reason = self.check(sample, now)
            if reason is not None:
                self.received[source] += len(samples)
                self.rejected[reason] += len(samples)
                return {"error": reason, "index": index}
        self.received[source] += len(samples)
        outcome = Counter(self._admit(sample, now, source) for sample in samples)
        return {"accepted": outcome[None], "duplicates": outcome["duplicate"]}

    def _admit(self, sample: Sample, now: float, source: str) -> str | None:
        """Admit a validated sample: register its server and note a change of addresses."""
        server = self.servers.get(sample.fqdn)
        if server is None:
            reason = time_verdict(sample.ts, now)
            if reason is not None:
                self.rejected[reason] += 1
                return reason
            server = self._register(sample.fqdn)
        verdict = self._admit_known(
            server, sample.ts, sample.cpu, sample.ram, sample.seq, now, source
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
    ) -> str | None:
        if now != self._window_now:
            self._window_now = now
            self._oldest = oldest_accepted_ts(now)
        if ts > now + MAX_FUTURE_SECONDS:
            return self._out_of_window(server, "future")
        if ts < self._oldest:
            return self._out_of_window(server, "too_old")
        if seq is not None:
            last = server.last_seq
            if seq > last:
                if last >= 0 and seq > last + 1:
                    gap = seq - last - 1
                    server.lost += gap
                    self.lost += gap
                    self.changed.add(server.id)
            elif ts <= server.last_seq_ts:
                return self._duplicate(server)
            server.last_seq = seq
            server.last_seq_ts = ts
        else:
            if ts in server.recent_ts:
                return self._duplicate(server)
            server.recent_ts.add(ts)
            server.recent_ts_order.append((now, ts))
            self.with_recent_ts.add(server.id)
        server.skew = now - ts
        self._ids.append(server.id)
        self._ts.append(ts)
        self._cpu.append(NAN if cpu is None else cpu)
        self._ram.append(NAN if ram is None else ram)
        self._seq.append(-1 if seq is None else seq)
        if source == "zmq":
            self.zmq_accepted += 1
        else:
            self.accepted[source] += 1
        return None

    def _out_of_window(self, server: ServerState, reason: str) -> str:
        self.rejected[reason] += 1
        server.rejected += 1
        self.changed.add(server.id)
        return reason

    def _duplicate(self, server: ServerState) -> str:
        server.duplicates += 1
        self.duplicates += 1
        self.changed.add(server.id)
        return "duplicate"

    def _register(self, fqdn: str) -> ServerState:
        server = ServerState(len(self.names))
        self.servers[fqdn] = server
        self.names.append(fqdn)
        self.new_names.append((server.id, fqdn))
        self.changed.add(server.id)
        return server

    # -- output -------------------------------------------------------------------------------
    def pending(self) -> int:
        return len(self._ids)

    def counters(self) -> dict[str, Any]:
        return {
            "received": _nonzero(self.received, zmq=self.zmq_received),
            "accepted": _nonzero(self.accepted, zmq=self.zmq_accepted),
            "rejected": dict(self.rejected),
            "duplicates": self.duplicates,
            "lost": self.lost,
            "servers_seen": len(self.names),
            "batches": self.batches,
            "forward_dropped": self.forward_dropped,
        }

    def flush(self, now: float) -> Batch:
        """Cut everything accepted since the last flush into the next numbered batch."""
        servers = []
        for server_id in sorted(self.changed):
            server = self.servers[self.names[server_id]]
            servers.append(
                (
                    server_id,
                    list(server.ips),
                    server.lost,
                    server.duplicates,
                    server.skew,
                    server.rejected,
                )
            )
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
        self._expire_recent_ts(now)
        return batch

    def remember(self, batch: Batch, frames: list[bytes], now: float) -> None:
        """Keep a sent batch in the time index for replay, and drop what is past retention."""
        self.index[batch.number] = (now, frames)
        while self.index and self.index.peekitem(0)[1][0] < now - self.retention:
            self.index.popitem(0)

    def batches_after(self, number: int) -> list[list[bytes]]:
        """Frames of the retained batches numbered above ``number``, oldest first."""
        return [self.index[key][1] for key in self.index.irange(minimum=number + 1)]

    def resume_sequences(self, names: list[str], seqs: list[int], stamps: list[float]) -> int:
        """Take over the newest seq of servers not seen yet in this run (from the aggregator),
        so that samples lost while no receiver ran show up as seq gaps. Returns how many."""
        taken = 0
        for name, seq, ts in zip(names, seqs, stamps, strict=True):
            if name in self.servers:
                continue  # this run has seen it already: its own state is newer
            server = self._register(name)
            server.last_seq, server.last_seq_ts = int(seq), float(ts)
            taken += 1
        return taken

    def all_names(self) -> list[tuple[int, str]]:
        return list(enumerate(self.names))

    def _expire_recent_ts(self, now: float) -> None:
        horizon = now - self.dedup_horizon
        for server_id in list(self.with_recent_ts):
            server = self.servers[self.names[server_id]]
            order = server.recent_ts_order
            while order and order[0][0] < horizon:
                server.recent_ts.discard(order.popleft()[1])
            if not order:
                self.with_recent_ts.discard(server_id)
