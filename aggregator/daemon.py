"""The aggregator daemon: applies receiver batches to the rollups and answers API queries.

One thread owns the rollups; it polls the batch socket and the query socket in turn, so no lock
is ever taken on the hot path.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
import psutil
import zmq

from servertrack.aggregator.fleet import FleetAnswers
from servertrack.aggregator.ledger import BatchLedger
from servertrack.aggregator.rollups import Rollups
from servertrack.aggregator.snapshot import read_snapshot, write_snapshot
from servertrack.aggregator.store import RollupStore
from servertrack.common import rpc
from servertrack.common.batch import Batch, MalformedBatch
from servertrack.common.buckets import Clock, iso_utc
from servertrack.common.lifecycle import Ticker

log = logging.getLogger(__name__)
APPLY_SLICE = 32_768
"""Samples applied between two looks at the query socket, so a large batch (or the first sight
of many servers) never holds a query for more than a few milliseconds."""
MAX_BATCH_BYTES = 512 * 2**20
"""Largest batch message accepted: a second of 10M samples at 36 bytes each."""
REPLAY_PAUSE = 2.0
"""Seconds between two replay requests while a batch is missing."""
LAG_HISTORY = 60
"""Batches (one a second) over which flush-lag percentiles are reported: the last minute."""


def _percentile(values: deque[float], percent: float) -> float | None:
    return float(np.percentile(values, percent)) if values else None


@dataclass(slots=True)
class AggregatorConfig:
    batches: str = "ipc:///tmp/servertrack-batches"
    query: str = "ipc:///tmp/servertrack-query"
    receiver_control: str = "ipc:///tmp/servertrack-receiver-control"
    receiver_timeout: float = 1.0
    snapshot: str | None = None
    snapshot_interval: float = 30.0


class ReceiverIds:
    """Translates one receiver run's server ids into rollup rows."""

    def __init__(self) -> None:
        self.epoch: str | None = None
        self.names: dict[int, str] = {}
        self.id_of: dict[str, int] = {}
        self.rows = np.full(0, -1, np.int64)
        self.evictions_seen = 0
        self.servers: dict[int, tuple[list[str], int, int, float, int]] = {}
        """Receiver id → (ips, lost, duplicates, skew, rejected) of the current receiver run."""

    def reset(self, epoch: str) -> dict[str, tuple[int, int, int]]:
        """Start a new receiver run; returns the finished run's (lost, duplicates, rejected) by
        name."""
        finished = {
            self.names[server_id]: (lost, duplicates, rejected)
            for server_id, (_, lost, duplicates, _, rejected) in self.servers.items()
            if server_id in self.names
        }
        self.epoch = epoch
        self.names.clear()
        self.id_of.clear()
        self.servers.clear()
        self.rows = np.full(0, -1, np.int64)
        return finished

    def learn(self, pairs: list[tuple[int, str]], store: RollupStore) -> None:
        if not pairs:
            return
        top = max(server_id for server_id, _ in pairs)
        if top >= self.rows.size:
            bigger = np.full(max(top + 1, self.rows.size * 2), -1, np.int64)
            bigger[: self.rows.size] = self.rows
            self.rows = bigger
        for server_id, name in pairs:
            self.names[server_id] = name
            self.id_of[name] = server_id
            self.rows[server_id] = store.row_for(name)

    def rebuild(self, store: RollupStore) -> None:
        """Look every row up again (rows are released when a server falls silent)."""
        self.rows[:] = -1
        self.learn(list(self.names.items()), store)


class AggregatorDaemon:
    """Owns the sockets around one :class:`RollupStore`."""

    def __init__(
        self,
        config: AggregatorConfig,
        store: RollupStore | None = None,
        context: zmq.Context | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.config = config
        self.clock = clock
        self.store: RollupStore = store if store is not None else Rollups(clock)
        self.context = context or zmq.Context.instance()
        self.ids = ReceiverIds()
        self.stop = threading.Event()
        self.receiver_counters: dict[str, Any] = {}
        self.counters: Counter[str] = Counter()
        self.last_batch_sent = 0.0
        self.last_batch_applied = 0.0
        self.flush_lag = 0.0
        self.recent_lags: deque[float] = deque(maxlen=LAG_HISTORY)
        self.recent_sizes: deque[int] = deque(maxlen=LAG_HISTORY)
        self.started = clock()
        self.ledger = BatchLedger()
        self.fleet = FleetAnswers()
        self.newest_number = -1
        self.health_before: dict[str, tuple[int, ...]] = {}
        """Lost, duplicate and rejected counts of earlier receiver runs, by server name."""
        self.snapshot_taken = 0.0
        self.replay_asked = float("-inf")
        self._query: zmq.Socket | None = None
        self._process = psutil.Process()
        self._writer_pid = 0
        self._writer_taken = 0.0
        self.receiver = rpc.RpcClient(
            self.context, config.receiver_control, config.receiver_timeout
        )

    def run(self) -> None:
        self.restore()
        pull = self.context.socket(zmq.PULL)
        query = None
        try:
            pull.setsockopt(zmq.LINGER, 0)
            pull.setsockopt(zmq.RCVHWM, 8)
            pull.setsockopt(zmq.MAXMSGSIZE, MAX_BATCH_BYTES)
            pull.bind(self.config.batches)
            query = rpc.bind_router(self.context, self.config.query)
            log.info(
                "aggregator ready: batches on %s, queries on %s",
                self.config.batches,
                self.config.query,
            )
            if self.ledger.epoch is not None:
                self.ask_replay()
            self._loop(pull, query)
        finally:
            self.save_snapshot(wait=True)
            self.receiver.close()
            for sock in (pull, query):
                if sock is not None:
                    sock.close(linger=0)
            log.info("aggregator stopped")

    def _loop(self, pull: zmq.Socket, query: zmq.Socket) -> None:
        self._query = query
        poller = zmq.Poller()
        poller.register(pull, zmq.POLLIN)
        poller.register(query, zmq.POLLIN)
        snapshots = Ticker(self.config.snapshot_interval)
        while not self.stop.is_set():
            if snapshots.due():
                self.save_snapshot()
            self.reap_snapshot()
            if self.ledger.missing() and time.monotonic() - self.replay_asked > REPLAY_PAUSE:
                self.ask_replay()
            ready = dict(poller.poll(timeout=200))
            if pull in ready:
                try:
                    frames = pull.recv_multipart(zmq.NOBLOCK, copy=True)
                except zmq.Again:
                    frames = None
                if frames is not None:
                    try:
                        self.handle_batch(frames)
                    except Exception:  # a bad batch must never stop the aggregator
                        self.counters["batch_errors"] += 1
                        log.exception("could not apply a batch")
            if query in ready:
                self.serve_queries()

    def serve_queries(self) -> None:
        """Answer the queries waiting now (also called between slices of a large batch)."""
        query = self._query
        if query is None:
            return
        for _ in range(256):
            if not query.poll(0, zmq.POLLIN):
                break
            rpc.serve_one(query, self.answer)

    # -- batches ------------------------------------------------------------------------------
    def handle_batch(self, frames: list[bytes]) -> None:
        try:
            batch = Batch.decode(frames)
        except MalformedBatch as err:
            self.counters["malformed_batches"] += 1
            log.warning("dropped malformed batch: %s", err)
            return
        self.apply(batch)

    def apply(self, batch: Batch) -> None:
        if not self.ledger.admit(batch.epoch, batch.number):
            self.counters["batches_already_applied"] += 1
            return
        ids = self.ids
        if batch.epoch != ids.epoch:
            for name, counts in ids.reset(batch.epoch).items():
                before = self.health_before.get(name, (0, 0, 0))
                self.health_before[name] = tuple(a + b for a, b in zip(before, counts, strict=True))
            self.newest_number = -1
        ids.learn(batch.names, self.store)
        if ids.evictions_seen != self.store.evictions:
            ids.rebuild(self.store)
            ids.evictions_seen = self.store.evictions
        if len(batch) and (batch.ids.max() >= ids.rows.size or (ids.rows[batch.ids] < 0).any()):
            self._fetch_names()
        rows = ids.rows[batch.ids] if ids.rows.size else np.full(len(batch), -1, np.int64)
        known = rows >= 0
        unknown = len(batch) - int(np.count_nonzero(known))
        if unknown:
            self.counters["unknown_server"] += unknown
            log.warning("dropped %d samples from servers the receiver could not name", unknown)
            rows, ts, cpu, ram = rows[known], batch.ts[known], batch.cpu[known], batch.ram[known]
            seq = batch.numbered()[known]
        else:
            ts, cpu, ram, seq = batch.ts, batch.cpu, batch.ram, batch.numbered()
        now = self.clock()
        for start in range(0, rows.size, APPLY_SLICE):
            end = start + APPLY_SLICE
            result = self.store.apply(
                rows[start:end],
                ts[start:end],
                cpu[start:end],
                ram[start:end],
                now,
                seq[start:end],
            )
            self.counters["applied"] += result.applied
            self.counters["expired"] += result.expired
            if end < rows.size:
                self.serve_queries()
        self.counters["batches"] += 1
        if batch.number < self.newest_number:
            return  # a re-sent batch: its totals are older than those already known
        self.newest_number = batch.number
        for server_id, *health in batch.servers:
            ids.servers[server_id] = tuple(health)  # type: ignore[assignment]
        self.receiver_counters = batch.counters
        self.last_batch_sent = batch.sent
        self.last_batch_applied = now
        self.flush_lag = self.clock() - batch.sent
        self.recent_lags.append(self.flush_lag)
        self.recent_sizes.append(len(batch))

    # -- recovery -----------------------------------------------------------------------------
    def ask_replay(self) -> None:
        """Ask the receiver to send again every retained batch after the last one applied."""
        self.replay_asked = time.monotonic()
        request = {"op": "replay", "epoch": self.ledger.epoch, "after": self.ledger.applied_upto}
        try:
            reply = self.receiver.call(request)
        except rpc.Unavailable as err:
            log.warning("cannot ask for a replay: %s", err)
            return
        if reply.get("epoch") != self.ledger.epoch:
            return  # the receiver restarted: what it held of the old run is gone
        gone = self.ledger.give_up_below(int(reply.get("first", 0)))
        if gone:
            self.counters["batches_lost"] += gone
            log.warning("%d batches are no longer held by the receiver", gone)
        self.counters["batches_replayed"] += int(reply.get("sent", 0))

    def save_snapshot(self, wait: bool = False) -> None:
        """Write a snapshot from a forked child, as Redis' BGSAVE does: the child sees the
        rollups frozen at the fork (copy-on-write) and writes them while this process goes on,
        so a large fleet's file (~5 KB a server) holds up neither batches nor queries, and the
        writer takes no share of this process's interpreter lock. The child touches no socket
        and leaves with ``os._exit``. ``wait`` writes in this process instead (at shutdown)."""
        if not self.config.snapshot or not isinstance(self.store, Rollups):
            return
        self.reap_snapshot(block=wait)
        if self._writer_pid:
            return  # the previous one is still being written
        meta = {
            "ledger": self.ledger.to_dict(),
            "receiver_names": sorted(self.ids.names.items()),
            "servers": sorted((k, list(v)) for k, v in self.ids.servers.items()),
            "health_before": self.health_before,
            "counters": dict(self.counters),
            "newest_number": self.newest_number,
            "taken": self.clock(),
        }
        if wait:
            size = write_snapshot(self.config.snapshot, self.store, meta)
            self.snapshot_taken = meta["taken"]
            log.info("snapshot of %d servers written (%d bytes)", self.store.server_count(), size)
            return
        pid = os.fork()
        if pid == 0:  # the child: write and leave at once, running no cleanup of the parent's
            code = 1
            try:
                write_snapshot(self.config.snapshot, self.store, meta)
                code = 0
            finally:
                os._exit(code)
        self._writer_pid, self._writer_taken = pid, meta["taken"]

    def reap_snapshot(self, block: bool = False) -> None:
        """Collect a finished snapshot child and note its outcome."""
        if not self._writer_pid:
            return
        pid, status = os.waitpid(self._writer_pid, 0 if block else os.WNOHANG)
        if pid == 0:
            return
        self._writer_pid = 0
        if os.waitstatus_to_exitcode(status) == 0:
            self.snapshot_taken = self._writer_taken
        else:
            self.counters["snapshot_errors"] += 1
            log.error("the snapshot writer failed (status %d)", status)

    def restore(self) -> None:
        if not self.config.snapshot:
            return
        loaded = read_snapshot(self.config.snapshot, self.clock)
        if loaded is None:
            return
        self.store, meta = loaded
        self.ledger = BatchLedger.from_dict(meta["ledger"])
        self.ids.epoch = self.ledger.epoch
        self.ids.learn([(int(i), str(n)) for i, n in meta["receiver_names"]], self.store)
        self.ids.evictions_seen = self.store.evictions
        self.ids.servers = {int(k): tuple(v) for k, v in meta["servers"]}  # type: ignore[misc]
        self.health_before = {k: tuple(v) for k, v in meta["health_before"].items()}
        self.counters.update(meta["counters"])
        self.newest_number = int(meta["newest_number"])
        self.snapshot_taken = float(meta["taken"])
        log.info(
            "restored %d servers from %s (taken %.1f s ago), applied up to batch %d",
            self.store.server_count(),
            self.config.snapshot,
            self.clock() - self.snapshot_taken,
            self.ledger.applied_upto,
        )

    def _fetch_names(self) -> None:
        try:
            reply = self.receiver.call({"op": "names"})
        except rpc.Unavailable as err:
            log.warning("cannot fetch server names: %s", err)
            return
        if reply.get("epoch") == self.ids.epoch:
            self.ids.learn([(int(i), str(n)) for i, n in reply["names"]], self.store)

    # -- queries ------------------------------------------------------------------------------
    def answer(self, request: Any) -> bytes:
        op = request.get("op") if isinstance(request, dict) else None
        now = self.clock()
        if op == "view":
            view = self.store.view(str(request.get("name")), now)
            if view is None:
                return msgpack.packb({"status": 404})
            view["health"] = self._server_health(view["server"])
            return msgpack.packb({"status": 200, "body": json.dumps(view).encode()})
        if op == "servers":
            servers = [
                {"server": name, "last_seen": iso_utc(seen)}
                for name, seen in self.store.servers(now)
            ]
            return msgpack.packb({"status": 200, "body": json.dumps({"servers": servers}).encode()})
        if op in ("fleet", "grid"):
            return self.fleet.answer(op, self.store, request, now)
        if op == "stats":
            return msgpack.packb({"status": 200, "body": json.dumps(self.stats(now)).encode()})
        if op == "sequences":
            names, seqs, stamps = self.store.sequences()
            return msgpack.packb({"names": names, "seq": seqs.tolist(), "ts": stamps.tolist()})
        if op == "ping":
            return msgpack.packb({"ok": True, "batch_age": now - self.last_batch_applied})
        return msgpack.packb({"status": 400, "message": f"unknown op {op!r}"})

    def _server_health(self, name: str) -> dict[str, Any]:
        lost, duplicates, rejected = self.health_before.get(name, (0, 0, 0))
        known = self.ids.servers.get(self.ids.id_of.get(name, -1))
        ips: list[str] = []
        skew = None
        if known is not None:
            ips, now_lost, now_duplicates, skew, now_rejected = known
            lost, duplicates, rejected = (
                lost + now_lost,
                duplicates + now_duplicates,
                rejected + now_rejected,
            )
        return {
            "ip": ips,
            "lost": lost,
            "duplicates": duplicates,
            "rejected": rejected,
            "skew_seconds": skew,
        }

    def stats(self, now: float) -> dict[str, Any]:
        return {
            "receiver": self.receiver_counters,
            "aggregator": {
                **self.counters,
                "servers_tracked": self.store.server_count(),
                "rss_bytes": self._process.memory_info().rss,
                "flush_lag_seconds": self.flush_lag,
                "flush_lag_p50_seconds": _percentile(self.recent_lags, 50),
                "flush_lag_p99_seconds": _percentile(self.recent_lags, 99),
                "flush_lag_max_seconds": max(self.recent_lags, default=None),
                "flush_lag_recent_seconds": [round(lag, 4) for lag in self.recent_lags],
                "batch_size_last": self.recent_sizes[-1] if self.recent_sizes else 0,
                "batch_size_max": max(self.recent_sizes, default=0),
                "snapshot_age_seconds": now - self.snapshot_taken if self.snapshot_taken else None,
                "applied_upto_batch": self.ledger.applied_upto,
                "last_batch_age_seconds": now - self.last_batch_applied
                if self.last_batch_applied
                else None,
            },
        }
