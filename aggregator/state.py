"""The aggregator's state as one I/O-free object: receiver ids, the batch ledger, the answers.

:class:`AggregatorState` owns everything the aggregator knows besides its sockets: which row of the
store each receiver id stands for, which receiver batches were applied (each exactly once), each
server's health, the counters, and what goes into and comes out of a snapshot. The daemon around
it only moves bytes and keeps the schedule; every method here takes ``now``.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import numpy as np

from servertrack.aggregator.ledger import BatchLedger
from servertrack.aggregator.rollups import REFUSED
from servertrack.aggregator.store import RollupStore
from servertrack.alerts.columns import fleet_columns
from servertrack.alerts.evaluate import AlertEvaluator, StateError
from servertrack.common.batch import Batch, ServerHealth
from servertrack.common.buckets import Clock, minute_index
from servertrack.common.counters import AGGREGATOR, AGGREGATOR_DROP_REASONS, ALERTS, declared
from servertrack.common.fleet_query import BadFleetQuery, query_from_request
from servertrack.readmodel.answers import (
    encode_answer,
    encode_last_minute,
    servers_answer,
    view_answer,
    views_answers,
)
from servertrack.readmodel.errors import StoreUnavailable
from servertrack.readmodel.fleet import FleetAnswers, last_minute
from servertrack.readmodel.history import encode_histories, histories
from servertrack.readmodel.values import LastMinute

APPLY_SLICE = 32_768
"""Samples applied between two looks at the query socket, so a large batch (or the first sight
of many servers) never holds a query for more than a few milliseconds."""
SHARED_SLICE = 1_024
"""Samples applied per slice while a snapshot writer shares this process's memory: the first
write to each page after the fork copies it (at 250,000 servers, most of 1.3 GB within one
32,768-sample slice, 0.6 s), so the slices are small until most pages are the aggregator's own
again."""
LEARN_SLICE = 8_192
"""New names taken between two looks at the query socket: each new server's rows are made
ready (a few KB of fresh memory each), so 50,000 names at once would hold queries for most of
a second."""
LAG_HISTORY = 60
"""Batches (one a second) over which flush-lag percentiles are reported: the last minute."""
STALE_BATCHES = 10.0
"""Seconds without a batch after which the host reports itself degraded."""
CORRUPT_SHOWN = 60.0
"""Seconds a server whose keys in the store were found corrupt keeps the host degraded after
the last merge that met it."""
SERVERS_NAMED = 3
"""Servers with corrupt keys named in a health problem at most."""
UNKNOWN = -1
COUNTED_HERE = declared(AGGREGATOR)
MAX_VIEWS = 1000
"""Servers one ``views`` query may ask for (the API's read cache refreshes in such groups)."""


def refused(reason: str, message: str) -> dict[str, Any]:
    """The reply to a query that cannot be answered as asked."""
    return {"refused": [reason, message]}


def legacy_health(meta: dict[str, Any], names: dict[int, str]) -> list[tuple[str, dict[str, Any]]]:
    """The health a snapshot written before the store kept it holds in its bookkeeping (the
    earlier receiver runs' totals per name, then the current run's per server), as the records
    the store keeps now: (receiver run, name → health), oldest first."""
    out: list[tuple[str, dict[str, Any]]] = []
    earlier = {
        str(name): ServerHealth(
            lost=int(totals[0]),
            duplicates=int(totals[1]),
            rejected=int(totals[2]),
            seq_resets=int(totals[3]) if len(totals) > 3 else 0,
        )
        for name, totals in meta.get("health_before", {}).items()
    }
    if earlier:
        out.append(("earlier runs", earlier))
    epoch = meta.get("ledger", {}).get("epoch")
    if isinstance(epoch, str) and meta.get("servers"):
        current = {
            names[int(k)]: ServerHealth.from_wire(v) for k, v in meta["servers"] if int(k) in names
        }
        out.append((epoch, current))
    return out


NO_DELIVERY: dict[str, Any] = {
    "alertmanager_sent": {},
    "alertmanager_failed": {},
    "alertmanager_dropped": {},
    "alertmanager_queued": {},
}
"""The delivery counters of a state whose daemon sends alerts nowhere."""


def evaluator_options(evaluator: AlertEvaluator) -> dict[str, Any]:
    """What an evaluator was made with besides its rules, to make its twin from saved state."""
    return {
        "interval": evaluator.interval,
        "resend_delay": evaluator.resend_delay,
        "external_url": evaluator.external_url,
        "anomaly_threshold": evaluator.anomaly_threshold,
        "resolved_retention": evaluator.resolved_retention,
    }


def _percentile(values: deque[float], percent: float) -> float | None:
    return float(np.percentile(values, percent)) if values else None


class ReceiverIds:
    """Translates one receiver run's server ids into store rows."""

    def __init__(self) -> None:
        self.epoch: str | None = None
        self.names: dict[int, str] = {}
        self.id_of: dict[str, int] = {}
        self.rows = np.full(0, UNKNOWN, np.int64)
        self.evictions_seen = 0

    def reset(self, epoch: str) -> None:
        """Start a new receiver run (its ids mean other servers)."""
        self.epoch = epoch
        self.names.clear()
        self.id_of.clear()
        self.rows = np.full(0, UNKNOWN, np.int64)

    def learn(self, pairs: list[tuple[int, str]], store: RollupStore) -> None:
        if not pairs:
            return
        top = max(server_id for server_id, _ in pairs)
        if top >= self.rows.size:
            bigger = np.full(max(top + 1, self.rows.size * 2), UNKNOWN, np.int64)
            bigger[: self.rows.size] = self.rows
            self.rows = bigger
        for server_id, name in pairs:
            previous = self.names.get(server_id)
            if previous is not None and previous != name:  # the receiver reused a freed id
                self.id_of.pop(previous, None)
            self.names[server_id] = name
            self.id_of[name] = server_id
            self.rows[server_id] = store.row_for(name)

    def rebuild(self, store: RollupStore) -> None:
        """Look every row up again (rows are released when a server falls silent)."""
        self.rows[:] = UNKNOWN
        self.learn(list(self.names.items()), store)

    def unknown_in(self, batch: Batch) -> bool:
        """Whether ``batch`` holds ids this map cannot name (the receiver must be asked)."""
        if not len(batch):
            return False
        return bool(batch.ids.max() >= self.rows.size or (self.rows[batch.ids] == UNKNOWN).any())


class AggregatorState:
    """Applies receiver batches to a store, exactly once each, and answers queries over it."""

    def __init__(
        self, store: RollupStore, clock: Clock = time.time, alerts: AlertEvaluator | None = None
    ) -> None:
        self.store = store
        self.clock = clock
        self.ids = ReceiverIds()
        self.ledger = BatchLedger()
        self.counters: Counter[str] = Counter()
        self.receiver_counters: dict[str, Any] = {}
        self.last_batch_sent = 0.0
        self.last_batch_applied = 0.0
        self.flush_lag = 0.0
        self.recent_lags: deque[float] = deque(maxlen=LAG_HISTORY)
        self.recent_sizes: deque[int] = deque(maxlen=LAG_HISTORY)
        self.newest_number = -1
        self.snapshot_taken = 0.0
        self.snapshot_error: str | None = None
        """Why the last snapshot could not be written, until one is written again."""
        self.started = clock()
        self.fleet = FleetAnswers()
        """The dashboard's table, cached between batches."""
        self.store_flush_seconds: float | None = None
        self.store_error: str | None = None
        """Why the last write to the store (Redis) failed, until one succeeds again."""
        self.corrupt_servers: dict[str, tuple[str, float]] = {}
        """Servers the store could not merge because a key of theirs is corrupt: name → (what
        is wrong, when a merge last met it)."""
        self.anomaly_error: str | None = None
        """Why the last scoring turn failed (Redis out of reach), until one succeeds again."""
        self.scores_behind = False
        """The daemon scores on a thread of its own (Redis mode): not in the calls here."""
        self.rss_bytes: int | None = None
        """The process's resident memory, set by the daemon (this object does no I/O)."""
        self.generation = secrets.randbits(62)
        """The number of the state answers are built from: it changes whenever an answer could
        (a batch applied, a new minute, servers released, a snapshot restored). It starts at a
        random number, so two aggregator runs never share one; ``view`` answers carry it, for
        the API's read cache."""
        self._minute = -1
        self._evictions = 0
        self._new_run = False
        """A new receiver run began and no batch of it has been applied yet."""
        self.shared = False
        """A snapshot writer shares the memory (set by the daemon): apply in small slices."""
        self._learned: tuple[str, int] | None = None
        """The batch whose names were taken last (they need not be taken again to apply it)."""
        self.alerts = alerts if alerts is not None else AlertEvaluator(())
        """Every alert rule's state over every server (its daemon says when to evaluate)."""
        self.delivery_stats: Callable[[], dict[str, Any]] | None = None
        """The Alertmanager clients' counters, set by the daemon that runs them."""

    # -- batches ------------------------------------------------------------------------------
    def needs_names(self, batch: Batch) -> bool:
        """True when ``batch`` holds ids never announced here (the daemon then asks the receiver
        for its names). A batch announces only the servers new in it, so this is what the first
        batch a restarted aggregator gets usually holds."""
        for _ in self.learn_in_slices(batch):
            pass
        return self.holds_unknown_ids(batch)

    def holds_unknown_ids(self, batch: Batch) -> bool:
        """Whether ``batch`` holds ids no name was learned for (after :meth:`learn_in_slices`)."""
        return self.ids.unknown_in(batch)

    def learn_in_slices(self, batch: Batch) -> Iterator[None]:
        """Take the names ``batch`` announces (following its receiver run), ``LEARN_SLICE`` at
        a time, yielding between slices so the caller can answer queries in between."""
        self._follow_run(batch.epoch)
        names = batch.names
        for start in range(0, len(names), LEARN_SLICE):
            if start:
                yield
            self.ids.learn(names[start : start + LEARN_SLICE], self.store)
        self._learned = (batch.epoch, batch.number)

    def _follow_run(self, epoch: str) -> None:
        """Switch to receiver run ``epoch`` if it is a new one (its ids mean other servers)."""
        if epoch == self.ids.epoch:
            return
        self.ids.reset(epoch)
        self.newest_number = -1
        self._new_run = True

    def learn_names(self, epoch: str, pairs: list[tuple[int, str]]) -> None:
        """The receiver's full name table, asked for by the daemon."""
        if epoch == self.ids.epoch:
            self.ids.learn(pairs, self.store)

    def apply(self, batch: Batch, now: float | None = None) -> None:
        """Apply ``batch`` at once (see :meth:`apply_in_slices`)."""
        for _ in self.apply_in_slices(batch, now):
            pass

    def apply_in_slices(self, batch: Batch, now: float | None = None) -> Iterator[None]:
        """Apply ``batch`` unless it was applied already, yielding between slices of
        ``APPLY_SLICE`` samples so the caller can answer queries in between."""
        now = self.clock() if now is None else now
        if not self.ledger.admit(batch.epoch, batch.number):
            self.counters["batches_already_applied"] += 1
            return
        ids = self.ids
        self._follow_run(batch.epoch)
        changes = len(batch) > 0 or bool(batch.servers) or self._new_run
        self._new_run = False
        if self._learned != (batch.epoch, batch.number):
            ids.learn(batch.names, self.store)
        if ids.evictions_seen != self.store.evictions:
            ids.rebuild(self.store)
            ids.evictions_seen = self.store.evictions
        known_size = min(ids.rows.size, int(batch.ids.max()) + 1) if len(batch) else 0
        rows = np.full(len(batch), UNKNOWN, np.int64)
        if known_size:
            inside = batch.ids < known_size
            rows[inside] = ids.rows[batch.ids[inside]]
        usable = rows >= 0
        if not usable.all():
            self.counters["unknown_server"] += int(np.count_nonzero(rows == UNKNOWN))
            self.counters["server_limit"] += int(np.count_nonzero(rows == REFUSED))
            rows, ts, cpu, ram = (
                rows[usable],
                batch.ts[usable],
                batch.cpu[usable],
                batch.ram[usable],
            )
            seq = batch.numbered()[usable]
        else:
            ts, cpu, ram, seq = batch.ts, batch.cpu, batch.ram, batch.numbered()
        step = SHARED_SLICE if self.shared else APPLY_SLICE
        for start in range(0, rows.size, step):
            end = start + step
            result = self.store.apply(
                rows[start:end],
                ts[start:end],
                cpu[start:end],
                ram[start:end],
                now,
                seq[start:end],
                origin=(batch.epoch, batch.number),
            )
            self.counters["applied"] += result.applied
            self.counters["expired"] += result.expired
            if end < rows.size:
                yield
        self.counters["batches"] += 1
        self.store.evict_silent(now)  # only now: every row of this batch has its samples
        # After the batch: one sent just after a minute turned still counts in its scores.
        changes = self.score_minutes(now) or changes
        if changes or self.store.evictions != self._evictions:
            # An empty batch with no news of any server changes no answer: the read cache
            # keeps what it has.
            self._evictions = self.store.evictions
            self.generation += 1
        if batch.number < self.newest_number:
            return  # a re-sent batch: its totals are older than those already known
        self.newest_number = batch.number
        if batch.servers:
            changed = {ids.names[i]: h for i, h in batch.servers if i in ids.names}
            self.store.note_health(batch.epoch, changed)
        self.receiver_counters = batch.counters
        self.last_batch_sent = batch.sent
        self.last_batch_applied = now
        self.flush_lag = now - batch.sent
        self.recent_lags.append(self.flush_lag)
        self.recent_sizes.append(len(batch))

    def flush_store(self, now: float) -> None:
        """Write what the store holds back (Redis) on this thread; raises StoreUnavailable,
        keeping what Redis did not take."""
        job = self.take_flush(now)
        if job is None:
            return
        began = time.monotonic()
        error: BaseException | None = None
        try:
            job.run()
        except BaseException as err:
            error = err
            raise
        finally:
            self.settle_flush(job, error, time.monotonic() - began)

    def take_flush(self, now: float) -> Any:
        """What the store holds back, as a job whose ``run()`` may go on another thread (it
        touches nothing of this state); None when there is nothing to write or a job is out."""
        ledger = self.ledger
        upto = None
        if ledger.epoch is not None:  # never past a batch of the receiver's still missing
            upto = (ledger.epoch, -1 if ledger.fresh else ledger.applied_upto)
        return self.store.take(now, upto)

    def settle_flush(self, job: Any, error: BaseException | None, seconds: float) -> None:
        """Count a job's outcome; what it did not write is held again."""
        result = self.store.settle(job)
        self.counters["applied"] += result.applied
        self.counters["expired"] += result.expired
        self.counters["server_limit"] += result.refused
        self.counters["corrupt_key"] += result.corrupt
        self.corrupt_servers = result.corrupt_servers
        if error is not None:
            self.counters["store_errors"] += 1
            self.store_error = str(error) or type(error).__name__
            return
        self.counters["store_flushes"] += 1
        self.store_flush_seconds = seconds
        self.store_error = None

    def housekeeping(self, now: float) -> None:
        """Between batches, about once a second: release servers silent for 24 hours even when
        no batch comes. A new minute or released servers change the answers: a new generation."""
        self.store.evict_silent(now)
        scored = self.score_minutes(now)
        minute = minute_index(now)
        if scored or minute != self._minute or self.store.evictions != self._evictions:
            self._minute, self._evictions = minute, self.store.evictions
            self.generation += 1

    def score_minutes(self, now: float) -> bool:
        """Score the minutes that completed (:meth:`RollupStore.score_minutes`); True when any
        score changed. A store out of reach is tried again at the next call. Nothing here while
        the daemon scores on a thread of its own (:attr:`scores_behind`)."""
        if self.scores_behind:
            return False
        try:
            scored = self.store.score_minutes(now)
        except StoreUnavailable as err:
            self.scoring_failed(err)
            return False
        return self.scoring_done(scored)

    def scoring_done(self, scored: int) -> bool:
        """``scored`` minutes were scored (0: none was due, or another host scores them)."""
        self.anomaly_error = None
        self.counters["anomaly_minutes_scored"] += scored
        return scored > 0

    def scoring_failed(self, error: BaseException) -> None:
        self.counters["anomaly_errors"] += 1
        self.anomaly_error = str(error) or type(error).__name__

    def malformed_batch(self) -> None:
        self.counters["malformed_batch"] += 1

    def batch_error(self) -> None:
        self.counters["batch_error"] += 1

    # -- recovery -----------------------------------------------------------------------------
    def replay_request(self) -> dict[str, Any]:
        """What to ask the receiver for: every retained batch after the last one applied (all
        of them when this aggregator has applied none)."""
        ledger = self.ledger
        epoch = None if ledger.fresh else ledger.epoch
        return {"op": "replay", "epoch": epoch, "after": ledger.applied_upto}

    def replay_answered(self, reply: dict[str, Any]) -> None:
        epoch = reply.get("epoch")
        if not isinstance(epoch, str):
            return
        self.ledger.start(epoch, int(reply.get("first", 0)))  # only when fresh
        if epoch != self.ledger.epoch:
            return  # the receiver restarted: the batches of its previous run are gone
        gone = self.ledger.give_up_below(int(reply.get("first", 0)))
        self.counters["batches_lost"] += gone
        self.counters["batches_replayed"] += int(reply.get("sent", 0))

    # -- snapshots ----------------------------------------------------------------------------
    def snapshot_meta(self, now: float) -> dict[str, Any]:
        """The bookkeeping that goes into a snapshot beside the store's arrays."""
        return {
            "ledger": self.ledger.to_dict(),
            "receiver_names": sorted(self.ids.names.items()),
            "counters": dict(self.counters),
            "newest_number": self.newest_number,
            "taken": now,
            "alerts": self.alerts.to_bytes().decode(),
        }

    def restore(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> str | None:
        """Take the store's content and this state's bookkeeping back from a snapshot (KeyError,
        TypeError or ValueError when it does not fit: nothing is changed then). Its alert state
        is taken back too; when that cannot be read the rest still is, and the reason is
        returned (the alerts start afresh)."""
        ledger = BatchLedger.from_dict(meta["ledger"])
        names = [(int(i), str(n)) for i, n in meta["receiver_names"]]
        legacy = legacy_health(meta, dict(names))
        counters = Counter({str(k): int(v) for k, v in meta["counters"].items()})
        newest, taken = int(meta["newest_number"]), float(meta["taken"])
        self.store.restore(arrays)
        self.fleet = FleetAnswers()
        self.ledger = ledger
        self.ids = ReceiverIds()
        self.ids.epoch = ledger.epoch
        self.ids.learn(names, self.store)
        self.ids.evictions_seen = self.store.evictions
        for epoch, health in legacy:
            self.store.note_health(epoch, health)
        self.counters.update(counters)
        self.newest_number = newest
        self.snapshot_taken = taken
        self.generation += 1
        saved = meta.get("alerts")  # absent from snapshots written before alerts
        return None if saved is None else self.restore_alerts(str(saved).encode())

    def restore_alerts(self, data: bytes) -> str | None:
        """Go on from saved alert state (:meth:`AlertEvaluator.to_bytes`); the reason when it
        cannot be read, and the alerts are left as they are."""
        try:
            self.alerts = AlertEvaluator.from_bytes(
                data, self.alerts.rules, **evaluator_options(self.alerts)
            )
        except StateError as err:
            return str(err)
        return None

    # -- alerts -------------------------------------------------------------------------------
    def last_minute(self, now: float) -> LastMinute:
        """Every server's last complete minute, from the fleet table."""
        return last_minute(self.fleet.table(self.store, now))

    def evaluate_alerts(self, now: float) -> list[dict[str, Any]]:
        """Evaluate every rule over every server at ``now`` and return the alerts to send
        (Alertmanager API v2 objects): see :class:`AlertEvaluator`."""
        if not self.alerts.rules:
            return []
        self.alerts.evaluate(fleet_columns(self.last_minute(now)), now)
        return self.alerts.due(now)

    def snapshot_written(self, taken: float) -> None:
        self.snapshot_taken = taken
        self.snapshot_error = None

    def snapshot_failed(self, why: str) -> None:
        self.counters["snapshot_errors"] += 1
        self.snapshot_error = why

    def snapshot_quarantined(self) -> None:
        self.counters["snapshots_quarantined"] += 1

    # -- answers ------------------------------------------------------------------------------
    def answer(self, request: Any, now: float, wall: float | None = None) -> bytes | None:
        """The msgpack reply to one query (see :meth:`_answer`), or None when its deadline (wall
        clock ``wall``) has passed: the client gave up, so the work is not done and nothing is
        sent. A store out of reach answers ``{"unavailable": why}``."""
        deadline = request.get("deadline") if isinstance(request, dict) else None
        if isinstance(deadline, int | float) and (wall if wall is not None else now) > deadline:
            self.counters["queries_expired"] += 1
            return None
        try:
            return msgpack.packb(self._answer(request, now))
        except StoreUnavailable as err:
            return msgpack.packb({"unavailable": f"the store does not answer: {err}"})

    def _answer(self, request: Any, now: float) -> dict[str, Any]:
        """The reply to one query, by ``op``: ``view`` → ``{"answer", "gen"}`` (an answer
        encoded by :func:`~servertrack.readmodel.answers.encode_answer`); ``views`` →
        ``{"answers", "gen"}``; ``servers``, ``fleet``, ``grid`` → ``{"body": JSON}``;
        ``last_minute`` → every server's last complete minute (``{"last_minute"}``); ``alerts`` →
        the pending and firing alerts as Prometheus lists them (``{"body": JSON}``);
        ``histories`` → some servers' cells over both windows (``{"histories"}``); ``stats``
        → ``{"stats"}``; ``watch`` → ``{"gen"}``; a query that cannot be answered →
        ``{"refused": [reason, message]}``. HTTP statuses are the API's business."""
        op = request.get("op") if isinstance(request, dict) else None
        if op == "view":
            view = self.store.views([str(request.get("name"))], now)[0]
            return {"answer": encode_answer(view_answer(view)), "gen": self.generation}
        if op == "views":
            names = request.get("names")
            if not isinstance(names, list) or len(names) > MAX_VIEWS:
                return refused("bad_request", f"names: a list of at most {MAX_VIEWS}")
            answers = views_answers(self.store, [str(name) for name in names], now)
            return {"answers": [encode_answer(a) for a in answers], "gen": self.generation}
        if op == "histories":
            names = request.get("names")
            if not isinstance(names, list) or len(names) > MAX_VIEWS:
                return refused("bad_request", f"names: a list of at most {MAX_VIEWS}")
            found = histories(self.store, [str(name) for name in names], now)
            return {"histories": encode_histories(found)}
        if op == "watch":
            return {"gen": self.generation}
        if op == "servers":
            limit = request.get("limit")
            after = request.get("after")
            return {
                "body": servers_answer(
                    self.store,
                    after if isinstance(after, str) else None,
                    limit if type(limit) is int and limit > 0 else 1000,
                    now,
                )
            }
        if op == "fleet":
            try:
                query = query_from_request(request)
            except BadFleetQuery as err:
                return refused(err.reason, err.message)
            return {"body": self.fleet.page(self.store, query, now)}
        if op == "grid":
            known = request.get("names")
            known = known if isinstance(known, str) else None
            return {"body": self.fleet.grid(self.store, known, now)}
        if op == "last_minute":
            return {"last_minute": encode_last_minute(self.last_minute(now))}
        if op == "alerts":
            listing = self.alerts.api_alerts()
            return {"body": json.dumps(listing, separators=(",", ":")).encode()}
        if op == "stats":
            return {"stats": self.stats(now)}
        if op == "sequences":
            names, seqs, stamps = self.store.sequences()
            return {"names": names, "seq": seqs.tolist(), "ts": stamps.tolist()}
        if op == "ping":
            return self.ping(now)
        return refused("unknown_op", f"unknown op {op!r}")

    def watch_reply(self) -> bytes:
        """The answer to a ``watch``: the current generation."""
        return msgpack.packb({"gen": self.generation})

    def _server_count(self) -> int | None:
        try:
            return self.store.server_count()
        except Exception:  # a store out of reach: the count is unknown, the rest still shows
            return None

    def problems(self, now: float) -> list[str]:
        """What makes the host degraded: it serves, but something needs attention."""
        found = []
        if self.snapshot_error is not None:
            found.append(f"snapshot: {self.snapshot_error}")
        if self.last_batch_applied and now - self.last_batch_applied > STALE_BATCHES:
            found.append(f"no batch from the receiver for {now - self.last_batch_applied:.0f} s")
        if self.store_error is not None:
            found.append(f"store: merges fail, batches are held: {self.store_error}")
        if self.anomaly_error is not None:
            found.append(f"anomaly scores: not written: {self.anomaly_error}")
        corrupt = sorted(
            (name, what)
            for name, (what, met) in self.corrupt_servers.items()
            if now - met <= CORRUPT_SHOWN
        )
        if corrupt:
            named = "; ".join(f"{name} ({what})" for name, what in corrupt[:SERVERS_NAMED])
            more = (
                f" and {len(corrupt) - SERVERS_NAMED} more" if len(corrupt) > SERVERS_NAMED else ""
            )
            found.append(
                f"store: {len(corrupt)} server(s) not merged, their keys are corrupt "
                f"(samples dropped as corrupt_key): {named}{more}"
            )
        return found

    def ping(self, now: float) -> dict[str, Any]:
        return {
            "ok": True,
            "batch_age": now - self.last_batch_applied if self.last_batch_applied else None,
            "problems": self.problems(now),
        }

    def stats(self, now: float) -> dict[str, Any]:
        counters = {
            key: 0 for key, c in COUNTED_HERE.items() if c.kind == "counter" and not c.labels
        }
        counters.update(self.counters)
        dropped = {reason: counters.pop(reason, 0) for reason in AGGREGATOR_DROP_REASONS}
        return {
            "receiver": self.receiver_counters,
            "aggregator": {
                **counters,
                "dropped": dropped,
                "servers_tracked": self._server_count(),
                "store_pending": getattr(self.store, "held_samples", 0),
                "store_dropped": getattr(self.store, "dropped", 0),
                "store_flush_seconds": self.store_flush_seconds,
                **({"rss_bytes": self.rss_bytes} if self.rss_bytes is not None else {}),
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
            ALERTS: {
                **self.alerts.stats(),
                **(NO_DELIVERY if self.delivery_stats is None else self.delivery_stats()),
            },
        }
