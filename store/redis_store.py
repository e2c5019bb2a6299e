"""The rollup store in Redis (one redis-server or a Redis Cluster): exact, idempotent, with TTL.

Several monitoring hosts may write one Redis and any number of API replicas read it. The data
model (keys, cells, Function, TTL, index) is described in ``docs/redis-store.md``; in short:
per server a minute ring (a string of 61 packed cells), an hour hash (25 cells, the meta and the
per-writer guards) and a health hash, all under the hash tag ``{<name>}``; merges run in the
Redis Function library ``servertrack`` (``redis_functions.lua``), loaded at :meth:`open` with
``FUNCTION LOAD REPLACE`` when the version in Redis differs.

Exactly once, without cross-slot transactions
---------------------------------------------
Batches come from receivers. Each receiver run has a fresh random ``epoch`` (the *writer*) and
numbers its batches 0, 1, 2, ... After an aggregator is killed, the receiver re-sends the batches
it retains and a new aggregator (a new :class:`RedisStore`) folds them again, so the guard must
live where the data lives, not in the aggregator: each server's hour hash remembers, per writer,
the highest batch number applied to that server (``w:<writer>``).

A server's merge (one of up to 16 in a Function call) carries the writer, the range
``[first, last]`` of the batch numbers it folds and the cells. The Function, atomically with the
cells it writes:

- ``last <= applied``: everything was applied before; nothing is written (a re-send);
- ``first > applied``: applies the cells and sets ``applied = last``;
- otherwise (a partial overlap) applies nothing and answers ``applied``; the store re-folds that
  server from the batches numbered above ``applied`` and calls again.

Each server's merges are applied in batch order and atomically, so the batches applied to a key
are always a prefix of the writer's batches for it, and "above ``applied``" is exactly what is
missing. The caller must therefore hand one writer's batches over in increasing order (a batch
is only given again together with everything after it that was given before, as a re-send does);
within one call the store sorts them. Guards of writers silent for 25 hours are pruned.

Failures
--------
:meth:`RedisStore.merge` either confirms every server (a :class:`MergeResult`) or raises
:class:`StoreUnavailable`; the caller keeps the batches and gives them again later: what was
applied before the failure is skipped by the guards. A call Redis refuses (a full Redis, a
foreign library) fails the merge only once every reply has been read, so the writer's connection
never falls out of step with its replies. A server whose keys are corrupt (the wrong type, a
damaged field) is not a failure: its samples are counted as ``corrupt`` and the rest is merged;
reading it raises :class:`CorruptKey`, and reading many answers it in its place.

With ``wait_replicas=N`` a merge is confirmed only after ``WAIT N`` on every master it wrote
to, so a failover loses nothing confirmed (a re-sent batch that finds its guard already set
rewrites the guard, so that the ``WAIT`` covers the earlier write). Reads raise
:class:`StoreUnavailable` within ``timeout``.

Threads: one thread merges; any number of threads read (each node's client has a connection
pool).
"""

from __future__ import annotations

import logging
import re
import struct
import time
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

import numpy as np
import redis
from redis.exceptions import AskError, ClusterDownError, MovedError, ResponseError, TryAgainError

from servertrack.common.buckets import (
    HOUR,
    HOUR_WINDOW,
    MINUTE,
    Clock,
    oldest_accepted_ts,
)
from servertrack.readmodel.cells import unpack_cells
from servertrack.readmodel.errors import CorruptKey, StoreUnavailable
from servertrack.store.calls import GROUP_SIZE, Call, Group, MergeCalls, MergeResult
from servertrack.store.cells import (
    BatchColumns,
    Samples,
    concat,
    fold,
)
from servertrack.store.health import ServerHealth
from servertrack.store.keys import CHANGES, SHARDS, on_shard, server_keys, shard_keys, slot_of
from servertrack.store.redis_nodes import (
    CONNECTION_ERRORS,
    Node,
    NodeKey,
    NodeWork,
    Topology,
    pack,
    run_pipelines,
)
from servertrack.store.redis_url import parse_store_url
from servertrack.store.roster import Roster

log = logging.getLogger(__name__)

LIBRARY = resources.files(__package__).joinpath("redis_functions.lua").read_text()
_version = re.search(r"^local VERSION = '([^']+)'", LIBRARY, re.MULTILINE)
assert _version is not None, "redis_functions.lua declares its VERSION"
LIBRARY_VERSION = _version.group(1)

DEFAULT_MAX_SERVERS = 250_000
SUMMARY_INTERVAL = 5.0
"""Seconds between two rewrites of a server's summary record."""
FORGET_AFTER = 2 * HOUR
"""The writer forgets (from its cache) servers it has not written for this long."""
MERGE_CHUNK = 32
"""Merge calls (of up to 16 servers each) per write to a node."""
MAX_ROUNDS = 8
"""Rounds of redirected, re-folded or retried calls in one merge before giving up."""
TOUCH_CHUNK = 1000
"""Records per st_touch call: Lua's unpack() takes at most ~8000 values."""
CHANGES_TTL_MS = (HOUR_WINDOW + 2) * HOUR * 1000
"""The change counter outlives every bucket a reader could have cached."""

META = struct.Struct("<dddII")
ASKING = pack("ASKING")


class RedisStore:
    """Rollups in Redis. ``open()`` before use, ``close()`` after (or use ``with``)."""

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        clock: Clock = time.time,
        max_servers: int | None = DEFAULT_MAX_SERVERS,
        wait_replicas: int = 0,
        timeout: float = 1.0,
        summary_interval: float = SUMMARY_INTERVAL,
    ) -> None:
        if wait_replicas < 0:
            raise ValueError("wait_replicas must be 0 or more")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.address = parse_store_url(url, password)
        self.clock = clock
        self.max_servers = max_servers
        self.wait_replicas = wait_replicas
        self.timeout = timeout
        self.summary_interval = summary_interval
        self.topology = Topology(self.address, timeout)
        self.roster = Roster()
        self.library_loads = 0
        self.opened = False
        """True once :meth:`open` succeeded (a flush opens its store on first use)."""
        self._prune_shard = 0
        self._forgotten_at = float("-inf")
        self._corrupt: dict[str, tuple[CorruptKey, float]] = {}
        """Servers whose keys were corrupt when last merged: the problem and when it was
        last met (``now`` of that merge); logged once, forgotten once they merge again."""

    # -- lifecycle ----------------------------------------------------------------------------
    def open(self) -> None:
        """Connect and make sure every master runs this version of the Function library."""
        try:
            self.topology.open()
            for node in self.topology.masters():
                self._ensure_library(node)
        except CONNECTION_ERRORS as err:
            raise StoreUnavailable(f"{self.address.describe()}: {err}") from err
        log.info(
            "redis store at %s: %d master(s), function library version %s",
            self.address.describe(),
            len(self.topology.masters()),
            LIBRARY_VERSION,
        )
        self.opened = True

    def close(self) -> None:
        self.topology.close()

    def __enter__(self) -> RedisStore:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ensure_library(self, node: Node, force: bool = False) -> bool:
        """Load the library on ``node`` unless it already runs this version."""
        try:
            if not force:
                try:
                    loaded = node.client.fcall_ro("st_version", 0)
                except ResponseError:
                    loaded = None  # no library yet ("Function not found")
                if loaded == LIBRARY_VERSION.encode():
                    return False
            node.client.function_load(LIBRARY, replace=True)
        except (*CONNECTION_ERRORS, ResponseError) as err:
            raise StoreUnavailable(f"loading the function library on {node.name}: {err}") from err
        self.library_loads += 1
        log.info("loaded function library version %s on %s", LIBRARY_VERSION, node.name)
        return True

    def ping(self) -> None:
        """Every master answers a PING within the timeout, or StoreUnavailable."""
        for node in self.topology.masters():
            try:
                node.client.ping()
            except CONNECTION_ERRORS as err:
                raise StoreUnavailable(f"redis at {node.name}: {err}") from err

    def library_version(self) -> str | None:
        """The library version the first master runs (None when it has none)."""
        node = self.topology.masters()[0]
        try:
            loaded = node.client.fcall_ro("st_version", 0)
        except ResponseError:
            return None
        except CONNECTION_ERRORS as err:
            raise StoreUnavailable(f"redis at {node.name}: {err}") from err
        return loaded.decode() if isinstance(loaded, bytes) else str(loaded)

    # -- writes -------------------------------------------------------------------------------
    def merge(
        self,
        writer: str,
        batches: Sequence[BatchColumns],
        names: Sequence[str],
        health: Mapping[str, ServerHealth] | None = None,
        now: float | None = None,
    ) -> MergeResult:
        """Fold ``batches`` of ``writer`` (one receiver run) into Redis, one merge per server.

        ``names`` are the server names the batches' rows index; ``health`` the health (totals
        of this writer) of servers whose health changed. Returns the counts, or raises
        :class:`StoreUnavailable` (call again later with the same batches: nothing is applied
        twice) or ValueError for malformed columns.
        """
        if not writer:
            raise ValueError("the writer (receiver epoch) must not be empty")
        now = self.clock() if now is None else float(now)
        batches = list(batches)
        result = MergeResult()
        samples = concat(batches, len(names))
        top = max((batch.number for batch in batches), default=-1)
        samples = self._apply_limit(samples, names, result)
        folded = fold(samples, now)
        result.expired += folded.expired
        result.invalid += folded.invalid
        self.roster.spark.advance(int(now // MINUTE))
        calls = MergeCalls(
            self.roster,
            self.topology,
            writer,
            now,
            top,
            health or {},
            names,
            confirm=self.wait_replicas > 0,
        )
        pending = calls.calls(folded)
        pending.extend(calls.health_calls(set(folded.servers.tolist())))
        if not pending:
            self._maintain(now, calls)
            return result
        try:
            try:
                touched = self._run(pending, calls, samples, result)
                if self.wait_replicas and touched:
                    self._wait(touched)
            finally:
                self._note_corrupt(calls, now)
        except BaseException as err:
            if isinstance(err, StoreUnavailable):
                err.applied = result.applied
            self._note_change(failed=True)  # some merges may have been applied
            raise
        self._note_change()
        self._note_healed(calls)
        try:
            self._maintain(now, calls)
        except StoreUnavailable as err:
            err.applied = result.applied
            raise
        return result

    def _note_corrupt(self, calls: MergeCalls, now: float) -> None:
        """Remember the servers whose keys are corrupt, logging each once."""
        for name, problem in calls.corrupt.items():
            if name not in self._corrupt:
                log.error(
                    "server %s is not merged: its key %s is corrupt (%s); its samples are "
                    "dropped and counted as corrupt_key until the key is repaired or deleted",
                    name,
                    problem.key,
                    problem.why,
                )
            self._corrupt[name] = (problem, now)

    def _note_healed(self, calls: MergeCalls) -> None:
        """Forget the corrupt servers this merge wrote to (their keys were repaired)."""
        if not self._corrupt:
            return
        done = set(calls.done)
        for name in list(self._corrupt):
            row = self.roster.row_of.get(name)
            if row is not None and row in done and name not in calls.corrupt:
                del self._corrupt[name]
                log.info("server %s is merged again: its keys are readable", name)

    def corrupt_servers(self) -> dict[str, tuple[str, float]]:
        """Servers whose keys were corrupt when last merged: name → (the key and what is wrong
        with it, when it was last met)."""
        return {name: (str(problem), met) for name, (problem, met) in self._corrupt.items()}

    def _note_change(self, failed: bool = False) -> None:
        """Raise the change counter after merges, so readers' caches ask again. A failure is
        logged, not raised: the merges it follows were applied, and readers cut off from Redis
        do not serve from their cache. After a failed merge (Redis down, most likely) it is only
        tried."""
        try:
            node = self.topology.node_for_slot(slot_of(CHANGES))
            command = pack("FCALL", "st_changed", 1, CHANGES, CHANGES_TTL_MS)
            self._run_simple([NodeWork(node, [command])], "change counter")
        except StoreUnavailable as err:
            log.log(logging.DEBUG if failed else logging.WARNING, "change counter: %s", err)

    def note_change(self) -> None:
        """Raise the change counter after a write other than a merge (anomaly scores)."""
        self._note_change()

    def changes(self) -> int:
        """The change counter: it moves after every merge of any writer (0 when none wrote for
        26 hours)."""
        (count,) = self.read_keys([(slot_of(CHANGES), ("GET", CHANGES))])
        return int(count) if count else 0

    def server_count(self) -> int:
        """Servers in the index (a server silent for the whole window leaves it within about a
        minute of merges)."""
        replies = self.read_keys([on_shard(k, "ZCARD", 0) for k in range(SHARDS)])
        return int(sum(replies))

    def _apply_limit(self, samples: Samples, names: Sequence[str], result: MergeResult) -> Samples:
        """Refuse the samples of new servers beyond ``max_servers``."""
        if self.max_servers is None or len(samples) == 0:
            return samples
        present = np.unique(samples.rows).tolist()
        unknown = [k for k in present if names[k] not in self.roster.row_of]
        if not unknown:
            return samples
        count = self.server_count()
        if count + len(unknown) <= self.max_servers:
            return samples
        exists = self.read_keys(
            [
                (slot_of(server_keys(names[k])[1]), ("EXISTS", server_keys(names[k])[1]))
                for k in unknown
            ]
        )
        new = [k for k, found in zip(unknown, exists, strict=True) if not found]
        refused = new[max(0, self.max_servers - count) :]
        if not refused:
            return samples
        keep = ~np.isin(samples.rows, np.asarray(refused, np.int64))
        result.refused += int(keep.size - np.count_nonzero(keep))
        result.refused_servers += len(refused)
        log.warning("refused %d new servers beyond max_servers %d", len(refused), self.max_servers)
        return samples.select(keep)

    def _run(
        self, pending: list[Call], calls: MergeCalls, samples: Samples, result: MergeResult
    ) -> dict[NodeKey, Node]:
        """Send the calls, following redirections and re-folding partial overlaps, until every
        one is answered; returns the nodes written to."""
        touched: dict[NodeKey, Node] = {}
        connection_failures = 0
        rounds = 0
        while pending:
            rounds += 1
            if rounds > MAX_ROUNDS:
                raise StoreUnavailable(
                    f"{len(pending)} server(s) not merged after {MAX_ROUNDS} rounds"
                )
            answered = _Round(calls, result)
            works, answered.sent = self._grouped(pending, calls)
            run_pipelines(works.values(), chunk=MERGE_CHUNK, on_reply=answered.account)
            failure: Exception | None = None
            for key, work in works.items():
                touched[key] = work.node
                for item in answered.sent[key][len(work.replies) :]:  # cut short: unanswered
                    if item is not None:
                        answered.retry.extend(item.calls if isinstance(item, Group) else [item])
                if work.error is not None:
                    failure = work.error
            for node in answered.reload.values():
                self._ensure_library(node, force=True)
            if answered.failed:
                # Only now, with every reply read. A library of another version answers what
                # this one never would: once replaced, the calls are sent again.
                replaced = [self._ensure_library(node) for node in answered.failed_nodes.values()]
                if not any(replaced):
                    raise StoreUnavailable(
                        f"redis refused the merges of {len(answered.failed)} server(s): "
                        f"{calls.failures[-1]}"
                    )
                answered.retry.extend(answered.failed)
            if failure is not None:
                connection_failures += 1
                if connection_failures > 1 or not self._transient(failure):
                    raise StoreUnavailable(f"redis did not answer: {failure}") from failure
                self.topology.refresh()
            if answered.unsettled:
                time.sleep(0.05)
                self.topology.refresh()
            if answered.partial:
                answered.retry.extend(calls.refold(samples, answered.partial, result))
            pending = answered.retry
        return touched

    def _grouped(
        self, pending: list[Call], calls: MergeCalls
    ) -> tuple[dict[NodeKey, NodeWork], dict[NodeKey, list[Group | Call | None]]]:
        """The calls as commands per node: merges in groups (one slot per group in a cluster,
        after ASKING when a slot answered ASK), health calls alone. ``sent`` mirrors each
        node's commands (None for an ASKING)."""
        buckets: dict[tuple[NodeKey, int, bool], list[Call]] = {}
        works: dict[NodeKey, NodeWork] = {}
        sent: dict[NodeKey, list[Group | Call | None]] = {}
        cluster = self.topology.cluster
        for call in pending:
            node = call.node or self.topology.node_for_slot(call.slot)
            if node.key not in works:
                works[node.key] = NodeWork(node, [])
                sent[node.key] = []
            asked = call.node is not None
            call.node = None
            if call.row < 0:
                if asked:
                    works[node.key].commands.append(ASKING)
                    sent[node.key].append(None)
                works[node.key].commands.append(call)
                sent[node.key].append(call)
                continue
            bucket = (node.key, call.slot if cluster else 0, asked)
            buckets.setdefault(bucket, []).append(call)
        for (key, _, asked), members in buckets.items():
            for start in range(0, len(members), GROUP_SIZE):
                group = Group(calls, members[start : start + GROUP_SIZE])
                if asked:
                    works[key].commands.append(ASKING)
                    sent[key].append(None)
                works[key].commands.append(group)
                sent[key].append(group)
        return works, sent

    @staticmethod
    def _transient(error: Exception) -> bool:
        """A broken connection is tried once more at once; a timeout is not (the caller asked
        for an answer within ``timeout``)."""
        return not isinstance(error, redis.TimeoutError | TimeoutError)

    def _wait(self, nodes: dict[NodeKey, Node]) -> None:
        """``WAIT`` for the replicas of every master written to."""
        # Redis answers WAIT by its own deadline, a little before the socket's
        command = pack("WAIT", self.wait_replicas, max(1, int(self.timeout * 800)))
        works = [NodeWork(node, [command]) for node in nodes.values()]
        run_pipelines(works)
        for work in works:
            if work.error is not None or not work.replies:
                raise StoreUnavailable(f"WAIT on {work.node.name} failed: {work.error}")
            confirmed = work.replies[0]
            if isinstance(confirmed, Exception) or int(confirmed) < self.wait_replicas:
                raise StoreUnavailable(
                    f"{work.node.name}: {confirmed} of {self.wait_replicas} replicas confirmed "
                    f"within {self.timeout} s"
                )

    def _maintain(self, now: float, calls: MergeCalls) -> None:
        """After the merges: the index entries, the summary records, and the slow chores."""
        roster = self.roster
        if calls.spark_rows:
            rows, cells = calls.spark_update()
            roster.spark.note(rows, unpack_cells(cells))
        done = np.unique(np.asarray(calls.done, np.int64))
        roster.active[done] = now
        # an index entry always comes with a record, which needs the server's last-seen time
        done = done[np.isfinite(roster.last_seen[done])]
        if done.size:
            minute = int(now // MINUTE)
            index = done[roster.touched[done] < minute]
            due = np.union1d(done[roster.summary_due[done] <= now], index)
            self._touch(now, index, due)
            roster.touched[index] = minute
            stagger = 1.0 + (due % 16) / 16.0
            roster.summary_due[due] = now + self.summary_interval * stagger
        self._prune_one_shard(now)
        if now - self._forgotten_at >= MINUTE:
            self._forgotten_at = now
            roster.forget_idle(now - FORGET_AFTER)

    def _touch(self, now: float, index: np.ndarray, due: np.ndarray) -> None:
        """Index entries (``index``) and summary records (``due``), one st_touch per shard."""
        roster = self.roster
        if index.size == 0 and due.size == 0:
            return
        records = roster.spark.records(due, roster.last_seen[due])
        ttl = int(((int(now // HOUR) + HOUR_WINDOW + 2) * HOUR - now) * 1000)
        per_shard: dict[int, tuple[list[bytes], list[bytes]]] = {}
        for row in index.tolist():
            per_shard.setdefault(int(roster.shard[row]), ([], []))[0].append(
                (roster.names[row] or "").encode()
            )
        for k, row in enumerate(due.tolist()):
            pairs = per_shard.setdefault(int(roster.shard[row]), ([], []))[1]
            pairs.append((roster.names[row] or "").encode())
            pairs.append(records[k].tobytes())
        works: dict[NodeKey, NodeWork] = {}
        for shard, (names, pairs) in per_shard.items():
            idx, summary = shard_keys(shard)
            node = self.topology.node_for_slot(slot_of(idx))
            work = works.setdefault(node.key, NodeWork(node, []))
            for start in range(0, max(len(names), len(pairs) // 2), TOUCH_CHUNK):
                part = names[start : start + TOUCH_CHUNK]
                record_part = pairs[2 * start : 2 * (start + TOUCH_CHUNK)]
                work.commands.append(
                    pack("FCALL", "st_touch", 2, idx, summary, ttl, len(part), *part, *record_part)
                )
        self._run_simple(list(works.values()), "index update")

    def _prune_one_shard(self, now: float) -> None:
        """One shard a merge, so every shard once in 64 merges."""
        shard = self._prune_shard
        self._prune_shard = (shard + 1) % SHARDS
        self._prune_shard_now(shard, now)

    def prune(self, now: float | None = None) -> int:
        """Drop the index entries and summary records of servers silent for the whole window,
        in every shard; returns how many went. Merges do this one shard at a time."""
        now = self.clock() if now is None else float(now)
        return sum(self._prune_shard_now(shard, now) for shard in range(SHARDS))

    def _prune_shard_now(self, shard: int, now: float) -> int:
        idx, summary = shard_keys(shard)
        members, records = self.read_keys(
            [(slot_of(idx), ("ZRANGE", idx, 0, -1)), (slot_of(idx), ("HGETALL", summary))]
        )
        oldest = oldest_accepted_ts(now)
        gone = [
            name
            for name in members
            if len(records.get(name, b"")) < 8
            or struct.unpack_from("<d", records[name])[0] < oldest
        ]
        indexed = set(members)
        gone.extend(name for name in records if name not in indexed)
        if gone:
            node = self.topology.node_for_slot(slot_of(idx))
            work = NodeWork(node, [pack("FCALL", "st_prune", 2, idx, summary, repr(oldest), *gone)])
            self._run_simple([work], "index prune")
            return int(work.replies[0])
        return 0

    def _run_simple(self, works: list[NodeWork], what: str) -> None:
        """Commands whose only expected trouble is a connection or a moved slot: after a moved
        slot the map is read again and the commands sent once more to the new owners."""
        for attempt in range(2):
            run_pipelines(works)
            moved: list[bytes] = []
            for work in works:
                if work.error is not None:
                    raise StoreUnavailable(f"{what} on {work.node.name}: {work.error}")
                for command, reply in zip(work.commands, work.replies, strict=True):
                    if isinstance(reply, AskError | ClusterDownError | TryAgainError):
                        moved.append(command)
                    elif isinstance(reply, ResponseError):
                        raise StoreUnavailable(f"{what} refused by {work.node.name}: {reply}")
            if not moved:
                return
            if attempt == 0:
                self.topology.refresh()
                works = self._regroup(moved)
        raise StoreUnavailable(f"{what}: the cluster keeps moving the slots written")

    def _regroup(self, commands: list[bytes]) -> list[NodeWork]:
        """Commands (FCALL st_touch / st_prune, whose first key names the slot) per owner."""
        works: dict[NodeKey, NodeWork] = {}
        for command in commands:
            node = self.topology.node_for_slot(slot_of(_first_key(command)))
            works.setdefault(node.key, NodeWork(node, [])).commands.append(command)
        return list(works.values())

    # -- reads --------------------------------------------------------------------------------
    def read_keys(
        self, commands: list[tuple[int, tuple[Any, ...]]], in_place: bool = False
    ) -> list[Any]:
        """Run read commands ``(slot, args)`` pipelined per node; replies in order. A command
        answered ASK is sent to the importing node after ASKING; a slot that moved makes the
        map be read again and the commands run once more. Any other error reply raises
        StoreUnavailable, or with ``in_place`` is returned in its place (a key of the wrong
        type is one server's problem, not the reader's)."""
        for attempt in range(2):
            groups: dict[NodeKey, tuple[Node, list[int]]] = {}
            for k, (slot, _) in enumerate(commands):
                node = self.topology.node_for_slot(slot)
                groups.setdefault(node.key, (node, []))[1].append(k)
            out: list[Any] = [None] * len(commands)
            moved = False
            asked: dict[NodeKey, list[int]] = {}
            for node, positions in groups.values():
                for k, reply in zip(
                    positions, self._pipeline(node, commands, positions), strict=True
                ):
                    if isinstance(reply, MovedError | ClusterDownError | TryAgainError):
                        moved = True
                    elif isinstance(reply, AskError):
                        asked.setdefault((reply.host, int(reply.port)), []).append(k)
                    out[k] = reply
            for key, positions in asked.items():
                node = self.topology.node(key)
                replies = self._pipeline(node, commands, positions, asking=True)
                for k, reply in zip(positions, replies, strict=True):
                    moved = moved or isinstance(reply, AskError | ClusterDownError | TryAgainError)
                    out[k] = reply
            if not moved:
                for reply in out:
                    if isinstance(reply, ResponseError) and not in_place:
                        raise StoreUnavailable(f"redis refused a read: {reply}")
                return out
            if attempt == 0:
                self.topology.refresh()
        raise StoreUnavailable("the cluster keeps moving the slots read")

    @staticmethod
    def _pipeline(
        node: Node,
        commands: list[tuple[int, tuple[Any, ...]]],
        positions: list[int],
        asking: bool = False,
    ) -> list[Any]:
        """The commands at ``positions`` on ``node`` in one round trip (HGETALL answers as
        dicts), each after ``ASKING`` when asked to."""
        parts = []
        for k in positions:
            if asking:
                parts.append(ASKING)
            parts.append(pack(*commands[k][1]))
        try:
            replies = node.request(b"".join(parts), len(parts))
        except CONNECTION_ERRORS as err:
            raise StoreUnavailable(f"redis at {node.name}: {err}") from err
        if asking:
            replies = replies[1::2]
        for n, k in enumerate(positions):
            if commands[k][1][0] == "HGETALL" and isinstance(replies[n], list):
                flat = replies[n]
                replies[n] = dict(zip(flat[::2], flat[1::2], strict=True))
        return replies


def _first_key(command: bytes) -> bytes:
    """The first key of a packed ``FCALL name numkeys key ...`` command."""
    parts = command.split(b"\r\n")
    return parts[8]


class _Round:
    """The answers of one round of merge calls, taken as they are read."""

    def __init__(self, calls: MergeCalls, result: MergeResult) -> None:
        self.calls = calls
        self.result = result
        self.sent: dict[NodeKey, list[Group | Call | None]] = {}
        self.retry: list[Call] = []
        self.partial: dict[int, tuple[int, int]] = {}
        self.reload: dict[NodeKey, Node] = {}
        self.failed: list[Call] = []
        self.failed_nodes: dict[NodeKey, Node] = {}
        self.unsettled = False

    def account(self, work: NodeWork, k: int, reply: Any) -> None:
        """One reply, as it is read. Never raises (the pipeline must read every reply)."""
        item = self.sent[work.node.key][k]
        if item is None:  # the answer to ASKING
            return
        if not isinstance(item, Group):
            members, answers = [item], [reply]
        elif isinstance(reply, list) and len(reply) == len(item.calls):
            members, answers = item.calls, reply
        elif isinstance(reply, ResponseError):  # for the whole call (MOVED, OOM, ...)
            members, answers = item.calls, [reply] * len(item.calls)
        else:
            members = item.calls
            answers = [ResponseError(f"{len(members)} merges answered {reply!r:.200}")] * len(
                members
            )
        for call, answer in zip(members, answers, strict=True):
            outcome = self.calls.outcome(call, answer, self.result, self.partial)
            if outcome == "failed":
                self.failed.append(call)
                self.failed_nodes[work.node.key] = work.node
            elif outcome != "done":
                self.retry.append(call)
                self.unsettled = self.unsettled or outcome == "unsettled"
                if outcome == "reload":
                    self.reload[work.node.key] = work.node
