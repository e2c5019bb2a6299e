"""The Function calls of one merge: packed from folded cells when they are sent, and their
answers turned into counts, redirections and re-folds (no I/O here)."""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)

from servertrack.readmodel.cells import CELL_SIZE
from servertrack.readmodel.errors import CorruptKey
from servertrack.store.cells import HEAD_DTYPE, Folded, Samples, fold
from servertrack.store.health import ServerHealth
from servertrack.store.health import encode as encode_health
from servertrack.store.keys import server_keys, slot_of
from servertrack.store.redis_nodes import CORRUPT, Node, Topology, bulk, corrupt_key, pack
from servertrack.store.roster import Roster

APPLIED_HEAD = struct.Struct("<Id")
"""Start of an applied answer: hour samples refused as older than the ring, last_seen."""
FLAG_SEED, FLAG_CONFIRM, FLAG_HEALTH = 1, 2, 4
GROUP_SIZE = 16
"""Servers per st_merge call at most."""
NO_HEALTH = b"$0\r\n\r\n"
CONTROL = struct.Struct("<dddd")
"""A server's scalars in a merge call: first, last, flags, health batch number (the head
follows: last_seen, seq, seq_ts)."""
HEAD_SIZE = HEAD_DTYPE.itemsize


@dataclass(slots=True)
class MergeResult:
    """Sample counts of one merge: every sample given is in exactly one of ``applied``,
    ``already_applied``, ``expired``, ``refused``, ``corrupt`` and ``invalid``."""

    applied: int = 0
    already_applied: int = 0
    """Samples of batches Redis had applied before (a re-send), skipped."""
    expired: int = 0
    """Samples whose hour left the 24-hour window (or whose hour slot holds a newer hour)."""
    refused: int = 0
    """Samples of new servers beyond ``max_servers`` (reason ``server_limit``)."""
    refused_servers: int = 0
    corrupt: int = 0
    """Samples of servers whose keys in Redis are corrupt (a key of the wrong type, a field of
    the wrong size): nothing of them is written (reason ``corrupt_key``)."""
    invalid: int = 0
    """Samples with a non-finite ts or an infinite value."""
    servers: int = 0
    """Servers written (one Function call each)."""
    refolded: int = 0
    """Servers folded again after a partial overlap with what Redis had applied."""
    redirects: int = 0
    health: int = 0
    """Health records sent."""


class Call:
    """One server's part of an st_merge call (``row`` >= 0), or an st_health call (``row`` =
    -1, sent on its own)."""

    __slots__ = (
        "_packed",
        "first",
        "health",
        "index",
        "last",
        "node",
        "row",
        "samples",
        "seed",
        "server",
        "slot",
        "source",
    )

    def __init__(
        self,
        row: int,
        slot: int,
        source: FoldCalls | None = None,
        index: int = 0,
        packed: bytes | None = None,
    ) -> None:
        self.row = row
        self.slot = slot
        self.source = source
        self.index = index
        self._packed = packed
        self.first = self.last = self.samples = 0
        self.seed = self.health = False
        self.server = ""
        """The server of an st_health call."""
        self.node: Node | None = None
        """The node an ASK redirection named, for the next round only."""

    def packed(self) -> bytes:
        """The whole command of an st_health call."""
        assert self._packed is not None
        return self._packed

    def parts(self) -> tuple[bytes, bytes]:
        """This server's keys and arguments in an st_merge call."""
        assert self.source is not None
        return self.source.parts(self.index)


class Group:
    """Up to :data:`GROUP_SIZE` servers' merges in one st_merge call, packed when sent.
    PERF: per call Redis spends ~3 µs parsing the command and entering the Function, a third
    of a one-server merge; a group pays it once. Groups stay small so that a reader waits
    behind one for a few hundred microseconds at most."""

    __slots__ = ("calls", "merge")

    def __init__(self, merge: MergeCalls, calls: list[Call]) -> None:
        self.merge = merge
        self.calls = calls

    def packed(self) -> bytes:
        keys, args = [], []
        for call in self.calls:
            key_part, arg_part = call.parts()
            keys.append(key_part)
            args.append(arg_part)
        count = len(self.calls)
        head = b"*%d\r\n$5\r\nFCALL\r\n$8\r\nst_merge\r\n%s" % (
            3 + 7 * count + 2,
            bulk(b"%d" % (3 * count)),
        )
        return b"".join((head, *keys, self.merge.writer_arg, self.merge.now_arg, *args))


class FoldCalls:
    """Packs server ``k``'s keys and arguments of one fold, on demand."""

    def __init__(self, merge: MergeCalls, folded: Folded, rows: np.ndarray) -> None:
        self.merge = merge
        self.rows = rows.tolist()
        self.minute_raw = folded.minute_cells.tobytes()
        self.hour_raw = folded.hour_cells.tobytes()
        self.head_raw = folded.head.tobytes()
        self.minute_bounds = folded.minute_bounds.tolist()
        self.hour_bounds = folded.hour_bounds.tolist()
        self.first = folded.first.tolist()
        self.last = folded.last.tolist()
        self.flags: list[int] = []
        self.health_args: list[bytes] = []

    def parts(self, k: int) -> tuple[bytes, bytes]:
        merge = self.merge
        mb, hb = self.minute_bounds, self.hour_bounds
        control = (
            CONTROL.pack(self.first[k], self.last[k], self.flags[k], merge.top)
            + self.head_raw[k * HEAD_SIZE : (k + 1) * HEAD_SIZE]
        )
        args = b"".join(
            (
                bulk(control),
                bulk(self.minute_raw[mb[k] * CELL_SIZE : mb[k + 1] * CELL_SIZE]),
                bulk(self.hour_raw[hb[k] * CELL_SIZE : hb[k + 1] * CELL_SIZE]),
                self.health_args[k],
            )
        )
        return merge.roster.keys[self.rows[k]], args


class MergeCalls:
    """One merge's calls and what their answers said."""

    def __init__(
        self,
        roster: Roster,
        topology: Topology,
        writer: str,
        now: float,
        top: int,
        health: Mapping[str, ServerHealth],
        names: Sequence[str],
        confirm: bool,
    ) -> None:
        self.roster = roster
        self.topology = topology
        self.writer = writer
        self.now = now
        self.top = top
        self.health = health
        self.names = names
        self.writer_arg = bulk(writer.encode())
        self.now_arg = bulk(repr(now).encode())
        self.confirm = FLAG_CONFIRM if confirm else 0
        self._numbers: dict[int, bytes] = {}
        self.done: list[int] = []
        """Roster rows Redis answered for (applied or already applied)."""
        self.corrupt: dict[str, CorruptKey] = {}
        """Servers Redis could not merge because a key of theirs is corrupt, by name."""
        self.failures: list[str] = []
        """Why Redis refused calls (each refused call's reason): the merge fails once every
        reply has been read."""
        self.spark_rows: list[int] = []
        self.spark_cells: list[bytes] = []
        """Minute cells Redis answered, as merged (``spark_rows[k]`` owns ``spark_cells[k]``,
        which may hold several cells)."""

    def number(self, value: int) -> bytes:
        packed = self._numbers.get(value)
        if packed is None:
            packed = self._numbers[value] = bulk(b"%d" % value)
        return packed

    def calls(self, folded: Folded) -> list[Call]:
        """One st_merge call per folded server (packed when sent)."""
        roster = self.roster
        names = self.names
        servers = [names[k] for k in folded.servers.tolist()]
        rows, _ = roster.rows_for(servers)
        source = FoldCalls(self, folded, rows)
        seeded = roster.seeded[rows].tolist()
        slots = roster.slot[rows].tolist()
        counts = folded.samples.tolist()
        out = []
        for k, row in enumerate(source.rows):
            call = Call(row, slots[k], source, k)
            call.first, call.last, call.samples = source.first[k], source.last[k], counts[k]
            flags = self.confirm
            if not seeded[k]:
                flags |= FLAG_SEED
                call.seed = True
            record = self.health.get(servers[k]) if self.health else None
            if record is not None:
                flags |= FLAG_HEALTH
                call.health = True
                source.health_args.append(bulk(encode_health(record)))
            else:
                source.health_args.append(NO_HEALTH)
            source.flags.append(flags)
            out.append(call)
        return out

    def health_calls(self, merged: set[int]) -> list[Call]:
        """st_health for servers whose health changed but that sent no sample in the batches."""
        with_samples = {self.names[k] for k in merged}
        out = []
        for name, record in self.health.items():
            if name in with_samples:
                continue
            _, hours_key, health_key = server_keys(name)
            command = pack(
                "FCALL",
                "st_health",
                2,
                hours_key,
                health_key,
                self.writer,
                self.top,
                repr(self.now),
                encode_health(record),
            )
            call = Call(-1, slot_of(hours_key), packed=command)
            call.health = True
            call.server = name
            out.append(call)
        return out

    def outcome(
        self, call: Call, reply: Any, result: MergeResult, refold: dict[int, tuple[int, int]]
    ) -> str:
        """Account for one answer: ``done``, or why the call must be sent again (``retry``
        elsewhere, ``unsettled`` cluster, ``reload`` the library), or ``failed`` (Redis refused
        it, or answered what this library never answers: the reason is in :attr:`failures`).
        A server whose keys are corrupt is ``done``: its samples are counted as ``corrupt`` and
        the key is in :attr:`corrupt`. Never raises: every reply of a pipeline must be read."""
        if isinstance(reply, ResponseError) and str(reply).startswith(CORRUPT):
            damaged = corrupt_key(str(reply))
            self.corrupt[self._name(call)] = damaged
            result.corrupt += call.samples
            return "done"
        if isinstance(reply, MovedError):
            self.topology.moved(reply.slot_id, reply.host, reply.port)
            result.redirects += 1
            return "retry"
        if isinstance(reply, AskError):
            call.node = self.topology.node((reply.host, int(reply.port)))
            result.redirects += 1
            return "retry"
        if isinstance(reply, TryAgainError | ClusterDownError | ReadOnlyError):
            return "unsettled"
        if isinstance(reply, ResponseError):
            if "function not found" in str(reply).lower():
                return "reload"
            self.failures.append(f"{type(reply).__name__}: {reply}")
            return "failed"
        if call.row < 0:
            if isinstance(reply, int):
                result.health += reply
                return "done"
        elif isinstance(reply, bytes):
            cells = len(reply) - APPLIED_HEAD.size
            if cells >= 0 and cells % CELL_SIZE == 0:
                stale, seen = APPLIED_HEAD.unpack_from(reply)
                result.applied += call.samples - stale
                result.expired += stale
                result.servers += 1
                result.health += call.health
                self._note(call, seen, reply[APPLIED_HEAD.size :])
                return "done"
        elif _applied_before(reply, call):
            applied = reply if isinstance(reply, int) else int(reply[0])
            if isinstance(reply, list):
                seen = struct.unpack_from("<d", reply[1])[0]
                self._note(call, seen, reply[1][8:])
            else:
                self.done.append(call.row)
            result.health += call.health
            if call.last <= applied:
                result.already_applied += call.samples
            else:
                refold[call.row] = (applied, call.samples)
            return "done"
        self.failures.append(f"an answer this library never gives: {reply!r:.200}")
        return "failed"

    def _name(self, call: Call) -> str:
        if call.row >= 0:
            return self.roster.names[call.row] or ""
        return call.server

    def _note(self, call: Call, seen: float, cells: bytes) -> None:
        row = call.row
        roster = self.roster
        self.done.append(row)
        if seen > roster.last_seen[row]:
            roster.last_seen[row] = seen
        if call.seed:
            roster.seeded[row] = True
        if len(cells) >= CELL_SIZE:
            self.spark_rows.append(row)
            self.spark_cells.append(cells)

    def spark_update(self) -> tuple[np.ndarray, bytes]:
        """Rows and packed cells of every minute cell answered, one row per cell."""
        counts = [len(cells) // CELL_SIZE for cells in self.spark_cells]
        rows = np.repeat(np.asarray(self.spark_rows, np.int64), counts)
        pairs = zip(self.spark_cells, counts, strict=True)
        cells = b"".join(cells[: n * CELL_SIZE] for cells, n in pairs)
        return rows, cells

    def refold(
        self, samples: Samples, partial: dict[int, tuple[int, int]], result: MergeResult
    ) -> list[Call]:
        """Calls for the servers that overlapped partially, folded from the batches numbered
        above what Redis has applied to each; the rest of their samples were applied before."""
        roster = self.roster
        index = {name: k for k, name in enumerate(self.names)}
        threshold = np.full(len(self.names), np.iinfo(np.int64).max, np.int64)
        for row, (applied, _) in partial.items():
            name = roster.names[row]
            if name is not None:
                threshold[index[name]] = applied
        folded = fold(samples.select(samples.number > threshold[samples.rows]), self.now)
        calls = self.calls(folded)
        again = {call.row: call.samples for call in calls}
        for row, (_, given) in partial.items():
            result.already_applied += given - again.get(row, 0)
        result.refolded += len(calls)
        return calls


def _applied_before(reply: Any, call: Call) -> bool:
    """Whether ``reply`` is st_merge's answer that (some of) the call's batches were applied
    before: the highest batch applied, at least the call's first (or with the ring, a list of
    it and the last-seen time and ring)."""
    if isinstance(reply, list):
        if len(reply) != 2 or not isinstance(reply[1], bytes) or len(reply[1]) < 8:
            return False
        if (len(reply[1]) - 8) % CELL_SIZE:
            return False
        reply = reply[0]
    return isinstance(reply, int) and reply >= call.first
