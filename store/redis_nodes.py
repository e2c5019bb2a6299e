"""The Redis node(s) behind the store: a client per node, the cluster's slot map, and pipelines of
pre-packed commands grouped per node.

Readers use each node's redis-py client (its connection pool is thread-safe). The writer holds
one connection per node and writes RESP it packed itself, many commands per ``sendall``, reading
the replies of one chunk while Redis works on the next. PERF: redis-py's cluster pipeline sends a
``COMMAND GETKEYS`` per FCALL, which capped it at 3-4k merges/s here against ~22k/s with plain
per-node pipelines; our keys are known, so we group by slot owner ourselves.

A node that moved a slot answers MOVED (the map is refreshed and the call sent to the new owner)
or ASK (the call is sent once to the importing node after ``ASKING``). A failed node makes the
map be read again from any node that answers; until the cluster has promoted a replica the
calls fail and the store reports :class:`StoreUnavailable`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.connection import Connection
from redis.exceptions import ResponseError
from redis.retry import Retry

from servertrack.readmodel.errors import CorruptKey, StoreUnavailable
from servertrack.store.redis_url import StoreAddress

log = logging.getLogger(__name__)
SLOTS = 16384
NodeKey = tuple[str, int]
CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)


def corrupt_key(message: str) -> CorruptKey:
    """The :class:`CorruptKey` of the Function's ``CORRUPT <key>: <why>`` error reply."""
    key, _, why = message.removeprefix(CORRUPT).partition(": ")
    return CorruptKey(key, why)


CORRUPT = "CORRUPT "
"""How the Function's error reply for a server it cannot merge begins."""


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def pack(*args: bytes | str | int | float) -> bytes:
    """One RESP command from its arguments."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(bulk(raw))
    return b"".join(parts)


class Node:
    """One redis-server: a client for readers and one held connection for the writer."""

    def __init__(self, key: NodeKey, address: StoreAddress, timeout: float) -> None:
        self.key = key
        options: dict[str, Any] = {
            "host": key[0],
            "port": key[1],
            "db": address.db,
            "username": address.username,
            "password": address.password,
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 0,
            "protocol": 2,
        }
        if address.tls:
            options.update(ssl=True, ssl_ca_certs=address.ca_file)
        self.client = redis.Redis(**options)
        self.pool = self.client.connection_pool
        self._writer: Connection | None = None

    @property
    def name(self) -> str:
        return f"{self.key[0]}:{self.key[1]}"

    def writer(self) -> Connection:
        """The writer's connection (opened on first use)."""
        if self._writer is None:
            self._writer = self.pool.get_connection()
        return self._writer

    def request(self, packed: bytes, count: int) -> list[Any]:
        """Send ``count`` pre-packed commands on a pooled connection and read their replies (a
        ResponseError instance for an error reply). PERF: a third of a view's CPU went to
        redis-py's pipeline object; this is the same exchange without it."""
        conn = self.pool.get_connection()
        try:
            conn.send_packed_command([packed], check_health=False)
            replies: list[Any] = []
            for _ in range(count):
                try:
                    replies.append(conn.read_response(disable_decoding=True))
                except ResponseError as err:
                    replies.append(err)
        except BaseException:
            conn.disconnect()
            raise
        finally:
            self.pool.release(conn)
        return replies

    def drop_writer(self) -> None:
        if self._writer is not None:
            self._writer.disconnect()
            self.pool.release(self._writer)
            self._writer = None

    def close(self) -> None:
        self.drop_writer()
        self.pool.disconnect()


class Topology:
    """The node of each key slot: one node for a single redis-server, the cluster's slot map
    otherwise (read with CLUSTER SLOTS from any node that answers)."""

    def __init__(self, address: StoreAddress, timeout: float) -> None:
        self.address = address
        self.timeout = timeout
        self.nodes: dict[NodeKey, Node] = {}
        self._owner: list[NodeKey | None] = []
        self._lock = threading.Lock()
        self.refreshes = 0

    @property
    def cluster(self) -> bool:
        return self.address.cluster

    def node(self, key: NodeKey) -> Node:
        node = self.nodes.get(key)
        if node is None:
            with self._lock:
                node = self.nodes.setdefault(key, Node(key, self.address, self.timeout))
        return node

    def open(self) -> None:
        if not self.cluster:
            node = self.node(self.address.nodes[0])
            try:
                node.client.ping()
            except CONNECTION_ERRORS as err:
                raise StoreUnavailable(f"redis at {node.name} does not answer: {err}") from err
            return
        self.refresh()

    def refresh(self) -> None:
        """Read the slot map again (cluster only)."""
        if not self.cluster:
            return
        with self._lock:
            candidates = list(dict.fromkeys([*self._masters(), *self.address.nodes]))
        problems = []
        for key in candidates:
            try:
                reply = self.node(key).client.execute_command("CLUSTER SLOTS")
            except (*CONNECTION_ERRORS, ResponseError) as err:
                problems.append(f"{key[0]}:{key[1]}: {err}")
                continue
            owner = self._parse_slots(reply, key)
            with self._lock:
                self._owner = owner
                self.refreshes += 1
            return
        raise StoreUnavailable("no cluster node answers: " + "; ".join(problems))

    @staticmethod
    def _parse_slots(reply: Any, asked: NodeKey) -> list[NodeKey | None]:
        owner: list[NodeKey | None] = [None] * SLOTS
        if isinstance(reply, dict):  # redis-py's parsed form: {(start, end): {"primary": ...}}
            ranges = [(start, end, info["primary"]) for (start, end), info in reply.items()]
        else:
            ranges = [(entry[0], entry[1], entry[2]) for entry in reply]
        for start, end, master in ranges:
            host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
            if not host or host == "?":
                host = asked[0]
            key = (host, int(master[1]))
            owner[int(start) : int(end) + 1] = [key] * (int(end) - int(start) + 1)
        return owner

    def _masters(self) -> list[NodeKey]:
        return [key for key in dict.fromkeys(self._owner) if key is not None]

    def masters(self) -> list[Node]:
        """Every node that owns slots (the only node of a single redis-server)."""
        if not self.cluster:
            return [self.node(self.address.nodes[0])]
        return [self.node(key) for key in self._masters()]

    def node_for_slot(self, slot: int) -> Node:
        if not self.cluster:
            return self.node(self.address.nodes[0])
        owner = self._owner
        key = owner[slot] if owner else None
        if key is None:
            raise StoreUnavailable(f"no cluster node owns slot {slot}")
        return self.node(key)

    def moved(self, slot: int, host: str, port: int) -> None:
        """A MOVED answer: the slot has a new owner."""
        with self._lock:
            if self._owner:
                self._owner[slot] = (host, int(port))

    def close(self) -> None:
        with self._lock:
            nodes, self.nodes = list(self.nodes.values()), {}
        for node in nodes:
            node.close()


@dataclass(slots=True)
class NodeWork:
    """Commands for one node and, after :func:`run_pipelines`, their replies (a ResponseError
    instance for an error reply) or the connection problem that cut them short. A command is
    either packed bytes or an object whose ``packed()`` builds them when the command is sent,
    so that building the next chunk overlaps Redis working on the previous one."""

    node: Node
    commands: list[Any]
    replies: list[Any] = field(default_factory=list)
    error: Exception | None = None


def run_pipelines(
    works: Iterable[NodeWork],
    chunk: int = 256,
    on_reply: Callable[[NodeWork, int, Any], None] | None = None,
) -> None:
    """Send every node its commands on the writer's connection, ``chunk`` commands per write,
    keeping up to two chunks in flight per node, and read the replies; ``on_reply(work, k,
    reply)`` sees each reply as it is read, while Redis works on the next chunk. All nodes
    progress in turn, so their Redis processes work at the same time.

    Every reply sent for is read, error replies included (each in its own place), or the
    connection is dropped: one that still has replies in flight would hand them to the next
    commands. So anything raised here (by ``on_reply`` too) drops the connections with replies
    still unread."""
    active: list[tuple[NodeWork, Connection, list[int]]] = []
    try:
        _pipeline_rounds(works, chunk, on_reply, active)
    except BaseException:
        for work, _, sent in active:
            if len(work.replies) < sent[0]:
                work.node.drop_writer()
        raise


def _pipeline_rounds(
    works: Iterable[NodeWork],
    chunk: int,
    on_reply: Callable[[NodeWork, int, Any], None] | None,
    active: list[tuple[NodeWork, Connection, list[int]]],
) -> None:
    """The body of :func:`run_pipelines`; ``active`` holds the works under way."""
    for work in works:
        if not work.commands:
            continue
        try:
            active.append((work, work.node.writer(), [0]))
        except CONNECTION_ERRORS as err:
            work.error = err
            work.node.drop_writer()
    while active:
        for work, conn, sent in active:
            try:
                while sent[0] < len(work.commands) and sent[0] - len(work.replies) < 2 * chunk:
                    part = work.commands[sent[0] : sent[0] + chunk]
                    payload = b"".join(
                        item if isinstance(item, bytes) else item.packed() for item in part
                    )
                    conn.send_packed_command([payload], check_health=False)
                    sent[0] += len(part)
            except CONNECTION_ERRORS as err:
                work.error = err
        still = []
        for work, conn, sent in active:
            if work.error is None:
                try:
                    upto = min(sent[0], len(work.replies) + chunk)
                    replies = work.replies
                    while len(replies) < upto:
                        try:
                            reply = conn.read_response(disable_decoding=True)
                        except ResponseError as err:
                            reply = err
                        replies.append(reply)
                        if on_reply is not None:
                            on_reply(work, len(replies) - 1, reply)
                except CONNECTION_ERRORS as err:
                    work.error = err
            if work.error is not None:
                work.node.drop_writer()
            elif len(work.replies) < len(work.commands):
                still.append((work, conn, sent))
        active[:] = still
