"""The receiver daemon: a SUB socket for agents, a ROUTER for requests, a PUSH of batches, and
(when asked) a TCP port for Graphite plaintext, all served by one thread around one poller."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import msgpack
import psutil
import zmq

from servertrack.common import endpoints, rpc
from servertrack.common.buckets import Clock
from servertrack.common.gc_pause import gc_paused
from servertrack.common.lifecycle import Ticker
from servertrack.common.limits import (
    DEFAULT_DEDUP_LIMIT,
    DEFAULT_MAX_SERVERS,
    FileShortage,
    out_of_files,
)
from servertrack.common.wire import MSGPACK
from servertrack.receiver import curve
from servertrack.receiver.graphite import (
    CACHE_SIZE,
    DEFAULT_RATE,
    MAX_LINE,
    GraphiteIntake,
    PathMapper,
    Rule,
)
from servertrack.receiver.graphite_listener import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_LINE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MIN_RATE,
    GraphiteListener,
)
from servertrack.receiver.ingest_limit import IngestLimit, plan_connections
from servertrack.receiver.state import ReceiverState

log = logging.getLogger(__name__)

DRAIN_LIMIT = 4096
"""Messages read per wake-up before looking at the other sockets and the clock again."""
RESUME_PATIENCE = 3.0
"""Seconds a starting receiver keeps asking the aggregator for sequence numbers."""
GRAPHITE_BUDGET = 0.05
"""Seconds of Graphite reading per wake-up before the clock and the other sockets are looked at
again (never past the next flush)."""
CONTROL_BUDGET = 0.1
"""Seconds of requests (HTTP records) served before the clock and the agents are looked at again,
so no request load can hold up the one-second batches."""
MAX_FRAMES = 8
"""Frames of one message kept for the decoder (which refuses any count but 2)."""
MAX_WIRE_MESSAGE = 1024 * 1024
"""libzmq's limit on one incoming frame. Frames above ``MAX_PAYLOAD`` (16 KiB) and up to this are
read and counted as ``too_large``; libzmq itself drops the connection of a peer that sends a larger
one (the agent reconnects), so the limit is far above any real sample and any valid message that
follows an oversized one is still read."""


@dataclass(slots=True)
class ReceiverConfig:
    bind: str = endpoints.INGEST
    control: str = endpoints.RECEIVER_CONTROL
    aggregator: str = endpoints.AGGREGATOR_BATCHES
    accept_pickle: bool = False
    flush_interval: float = 1.0
    retention: float = 300.0
    rcvhwm: int = 1_000_000
    batch_hwm: int = 8
    max_servers: int = DEFAULT_MAX_SERVERS
    dedup_limit: int = DEFAULT_DEDUP_LIMIT
    curve_secret: str | None = None
    authorized_keys: str | None = None
    aggregator_query: str | None = None
    """Where to ask, at start, for each server's newest seq (see :meth:`resume`)."""
    graphite: str | None = None
    """``tcp://HOST:PORT`` to take Graphite plaintext on (None: off)."""
    graphite_rules: tuple[Rule, ...] = ()
    """Rules of ``--graphite-map``, tried before the built-in ones."""
    graphite_max_line: int = MAX_LINE
    graphite_rate: float = DEFAULT_RATE
    graphite_max_connections: int = DEFAULT_MAX_CONNECTIONS
    graphite_idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    graphite_line_timeout: float = DEFAULT_LINE_TIMEOUT
    graphite_min_rate: float = DEFAULT_MIN_RATE
    ingest_max_connections: int | None = None
    """Connections the ingest port holds at most (None: what the open-files limit leaves)."""


class ReceiverDaemon:
    """Owns the sockets and the schedule around one :class:`ReceiverState`."""

    def __init__(
        self,
        config: ReceiverConfig,
        context: zmq.SyncContext | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.config = config
        self.context = context or zmq.Context.instance()
        self.clock = clock
        self.state = ReceiverState(
            clock,
            accept_pickle=config.accept_pickle,
            retention=config.retention,
            max_servers=config.max_servers,
            dedup_limit=config.dedup_limit,
        )
        self.stop = threading.Event()
        self.files = FileShortage("receiver")
        self.ingest: IngestLimit | None = None
        self.graphite: GraphiteListener | None = None
        if config.graphite:
            intake = GraphiteIntake(
                self.state,
                # Room for every server's cpu and ram paths: a cache smaller than the paths
                # that come round each interval is emptied before any is read again.
                PathMapper(config.graphite_rules, max(CACHE_SIZE, 2 * config.max_servers)),
                config.graphite_max_line,
                config.graphite_rate,
            )
            self.graphite = GraphiteListener(
                config.graphite,
                intake,
                config.graphite_max_connections,
                config.graphite_idle_timeout,
                clock,
                line_timeout=config.graphite_line_timeout,
                min_rate=config.graphite_min_rate,
                files=self.files,
            )
        self._push: zmq.SyncSocket | None = None
        self._process = psutil.Process()
        self._rss = 0

    def run(self) -> None:
        """Serve until ``stop`` is set. Raises ``rpc.BindError`` for an endpoint it cannot bind
        and ``ingest_limit.FilesTooFew`` for an open-files limit too low to run with."""
        ingest_cap, graphite_cap = plan_connections(
            self.config.ingest_max_connections,
            None if self.graphite is None else self.config.graphite_max_connections,
        )
        log.info("at most %d connections on the ingest port", ingest_cap)
        ctx = self.context
        sub = ctx.socket(zmq.SUB)
        control = push = auth = None
        try:
            auth = curve.secure(sub, self.config.curve_secret, self.config.authorized_keys)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.RCVHWM, self.config.rcvhwm)
            sub.setsockopt(zmq.MAXMSGSIZE, MAX_WIRE_MESSAGE)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            self.ingest = IngestLimit(sub, ingest_cap, self.state)
            poller = zmq.Poller()
            poller.register(self.ingest.start(), zmq.POLLIN)  # before bind: none is missed
            self.resume()
            rpc.bind(sub, self.config.bind)
            if self.graphite is not None and graphite_cap is not None:
                self.graphite.max_connections = graphite_cap
                self.graphite.open(poller)
            control = rpc.bind_router(ctx, self.config.control)
            push = ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, 0)
            push.setsockopt(zmq.SNDHWM, self.config.batch_hwm)
            push.connect(self.config.aggregator)
            self._push = push
            log.info("receiver listening on %s", self.config.bind)
            self._loop(poller, sub, control, push)
        finally:
            if self.graphite is not None:
                self.graphite.close()
            if self.ingest is not None:
                self.ingest.close()
            for sock in (sub, control, push):
                if sock is not None:
                    sock.close(linger=0)
            curve.stop(auth)
            log.info("receiver stopped")

    def _loop(
        self, poller: zmq.Poller, sub: zmq.SyncSocket, control: zmq.SyncSocket, push: zmq.SyncSocket
    ) -> None:
        poller.register(sub, zmq.POLLIN)
        poller.register(control, zmq.POLLIN)
        ticker = Ticker(self.config.flush_interval)
        while not self.stop.is_set():
            try:
                self._turn(poller, sub, control, push, ticker)
            except (OSError, zmq.ZMQError) as err:
                if not out_of_files(err):
                    raise
                self.files.note("in its loop", err)  # what needs no new descriptor goes on
                self.stop.wait(0.01)

    def _turn(
        self,
        poller: zmq.Poller,
        sub: zmq.SyncSocket,
        control: zmq.SyncSocket,
        push: zmq.SyncSocket,
        ticker: Ticker,
    ) -> None:
        """One wake-up of the loop: read what is ready, and flush when the second is up."""
        graphite = self.graphite
        ready = dict(poller.poll(timeout=max(1, int(ticker.remaining() * 1000))))
        if self.ingest is not None and self.ingest.monitor in ready:
            self.ingest.serve()
        if sub in ready:
            self._drain(sub)
        if graphite is not None and ready:
            graphite.serve(ready, time.monotonic() + min(GRAPHITE_BUDGET, ticker.remaining()))
        if control in ready:
            end = time.monotonic() + min(CONTROL_BUDGET, ticker.remaining())
            while control.poll(0, zmq.POLLIN):
                rpc.serve_one(control, self._handle)
                if time.monotonic() >= end:
                    break
        if ticker.due():
            self.flush(push)
            if graphite is not None:
                graphite.sweep()

    def _drain(self, sub: zmq.SyncSocket) -> None:
        """Read up to ``DRAIN_LIMIT`` waiting messages into the state.

        PERF: ``recv_multipart`` asks ``getsockopt(RCVMORE)`` through pyzmq's enum layer after
        every frame (3.3 µs a message here); two ``recv(copy=False)`` reading ``Frame.more``
        take 1.8 µs. A message's frames arrive together, so the second recv never waits.
        """
        state = self.state
        recv = sub.recv
        now = self.clock()
        for _ in range(DRAIN_LIMIT):
            try:
                first = recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            frames = [first.bytes]
            more = first.more
            if more:
                second = recv(zmq.NOBLOCK, copy=False)
                if not second.more and frames[0] == MSGPACK:
                    state.offer_msgpack(second.bytes, now)
                    continue
                frames.append(second.bytes)
                more = second.more
            while more and len(frames) < MAX_FRAMES:
                frame = recv(zmq.NOBLOCK, copy=False)
                frames.append(frame.bytes)
                more = frame.more
            while more:  # frames past MAX_FRAMES are read and discarded with their message
                more = recv(zmq.NOBLOCK, copy=False).more
            state.offer_frames(frames, now)

    def resume(self) -> None:
        """Before agents are let in, take each server's newest seq from the aggregator, so that
        what agents sent while no receiver ran is counted as lost. Gives up after
        ``RESUME_PATIENCE`` seconds (then servers start afresh, and such a loss goes uncounted)."""
        if not self.config.aggregator_query:
            return
        deadline = time.monotonic() + RESUME_PATIENCE
        client = rpc.RpcClient(self.context, self.config.aggregator_query, 0.5, 2.0)
        try:
            while not self.stop.is_set():
                try:
                    reply = client.call({"op": "sequences"})
                except rpc.Unavailable as err:
                    if time.monotonic() > deadline:
                        log.warning("starting without sequence numbers: %s", err)
                        return
                    self.stop.wait(0.2)
                    continue
                if "names" not in reply:  # the aggregator's store did not answer
                    if time.monotonic() > deadline:
                        log.warning("starting without sequence numbers: %s", reply)
                        return
                    self.stop.wait(0.2)
                    continue
                taken = self.state.resume_sequences(reply["names"], reply["seq"], reply["ts"])
                log.info("resumed the sequence numbers of %d servers", taken)
                return
        finally:
            client.close()

    def flush(self, push: zmq.SyncSocket) -> None:
        now = self.clock()
        self.state.files_exhausted = self.files.count
        with gc_paused():  # a batch announcing many new servers is many small objects
            batch = self.state.flush(now)
            batch.counters["rss_bytes"] = self._memory()
            frames = batch.encode()
        self.state.remember(batch, frames, now)
        try:
            push.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.state.forward_dropped += len(batch)
            log.warning("aggregator backlog full: batch %d kept only for replay", batch.number)

    def _memory(self) -> int:
        """Resident memory, read from /proc (an open file); out of descriptors, the last figure."""
        try:
            self._rss = int(self._process.memory_info().rss)
        except OSError as err:  # psutil lets EMFILE through as it is
            if not out_of_files(err):
                raise
            self.files.note("reading its memory use", err)
        return self._rss

    # -- requests from the API and the aggregator ---------------------------------------------
    def _handle(self, request: Any) -> bytes:
        op = request.get("op") if isinstance(request, dict) else None
        if op == "record":
            return msgpack.packb(self.state.record(request.get("samples"), self.clock()))
        if op == "record_each":
            return msgpack.packb(self.state.record_each(request.get("samples"), self.clock()))
        if op == "names":
            return msgpack.packb({"epoch": self.state.epoch, "names": self.state.all_names()})
        if op == "replay":
            return msgpack.packb(self._replay(request.get("epoch"), int(request.get("after", -1))))
        if op == "ping":
            return msgpack.packb({"ok": True, "epoch": self.state.epoch})
        return msgpack.packb({"error": "bad_request", "message": f"unknown op {op!r}"})

    def _replay(self, epoch: Any, after: int) -> dict[str, Any]:
        """Push again the retained batches numbered above ``after`` (for a restarted aggregator;
        all of them for one that has applied none, ``epoch`` None). The aggregator applies each
        batch once, whatever arrives twice."""
        first = self.state.replay.oldest(self.state.batches)
        reply = {"epoch": self.state.epoch, "first": first, "last": self.state.batches - 1}
        sent = 0
        if epoch in (self.state.epoch, None) and self._push is not None:
            for frames in self.state.batches_after(after if epoch is not None else -1):
                try:
                    self._push.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break  # the aggregator will ask again for the rest
                sent += 1
        return {**reply, "sent": sent}
