"""A Graphite fleet that appears all at once, and timers of the dashboard's reads, for the tests
and the bench (product code never imports it).

:class:`FleetSchedule` says what one TCP client writes each second: first every server's name,
``servers / create_seconds`` new names a second (one cpu line each, the way a fleet of
collectd hosts appears when a monitoring host is switched on), then each server a cpu and a ram
line every ``report_every`` seconds. :func:`send_schedule` writes it on the monotonic clock, one
tick a second; :class:`ReadTimer` times a path of the API over one kept-alive connection while
it runs; :func:`run_fleet` does both against a running host and gathers what a test or the
bench judges: every read with its time, the aggregator's flush lag of each batch, the lines
taken. Only 127.0.0.1 is ever addressed, and every loop is bounded by the schedule or a
deadline.
"""

from __future__ import annotations

import http.client
import json
import math
import multiprocessing
import os
import queue
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from servertrack.common.testing import HostUnderTest, wait_until

LOOPBACK = "127.0.0.1"
CHUNK_BYTES = 256 * 1024
VALUE_POOL = 1009
"""Distinct pre-formatted values, cycled so lines differ from tick to tick."""
GIVE_UP_S = 10.0
"""A tick this late means the receiver stopped reading: the sender stops."""


def server_name(index: int) -> str:
    """The name of server ``index`` (the Graphite bench's names, so figures compare)."""
    return f"srv{index:06d}"


@dataclass(frozen=True, slots=True)
class FleetSchedule:
    servers: int
    create_seconds: int
    """Ticks over which every name is written once (a cpu line each)."""
    report_seconds: int
    """Ticks of reporting after that."""
    report_every: int = 5
    """Seconds between two reports of one server (a cpu and a ram line) while reporting."""

    @property
    def ticks(self) -> int:
        return self.create_seconds + self.report_seconds

    def servers_in(self, tick: int) -> range:
        """The servers that write in ``tick``."""
        if tick < self.create_seconds:
            per = -(-self.servers // self.create_seconds)
            return range(tick * per, min(self.servers, (tick + 1) * per))
        share = (tick - self.create_seconds) % self.report_every
        per = -(-self.servers // self.report_every)
        return range(share * per, min(self.servers, (share + 1) * per))

    def lines_in(self, tick: int) -> int:
        return len(self.servers_in(tick)) * (1 if tick < self.create_seconds else 2)

    @property
    def lines(self) -> int:
        return sum(self.lines_in(tick) for tick in range(self.ticks))


class Lines:
    """Pre-encoded line heads and values, so a tick costs one join."""

    def __init__(self, servers: int, seed: int = 1) -> None:
        rng = random.Random(seed)
        self.pool = [f"{rng.uniform(0.0, 100.0):.2f}".encode() for _ in range(VALUE_POOL)]
        names = [server_name(i) for i in range(servers)]
        self.cpu = [f"servertrack.{n}.cpu ".encode() for n in names]
        self.ram = [f"servertrack.{n}.ram ".encode() for n in names]

    def tick(self, schedule: FleetSchedule, tick: int, ts: int) -> bytes:
        tail = b" %d\n" % ts
        pool = self.pool
        parts: list[bytes] = []
        with_ram = tick >= schedule.create_seconds
        for i in schedule.servers_in(tick):
            j = (i * 7 + tick) % VALUE_POOL
            parts += (self.cpu[i], pool[j], tail)
            if with_ram:
                parts += (self.ram[i], pool[(j + 503) % VALUE_POOL], tail)
        return b"".join(parts)


def send_schedule(
    port: int, schedule: FleetSchedule, start_mono: float, base_ts: int
) -> dict[str, Any]:
    """Write ``schedule`` into the Graphite port, tick ``k`` at ``start_mono + k`` stamped
    ``base_ts + k``; returns the lines written, the late ticks (written after the next tick was
    due), the latest tick's delay and any error."""
    result: dict[str, Any] = {"lines": 0, "ticks": 0, "late_ticks": 0, "max_tick_s": 0.0}
    result["error"] = None
    lines = Lines(schedule.servers)
    sock = None
    try:
        sock = socket.create_connection((LOOPBACK, port), timeout=GIVE_UP_S)
        for tick in range(schedule.ticks):
            payload = lines.tick(schedule, tick, base_ts + tick)
            due = start_mono + tick
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            view = memoryview(payload)
            for offset in range(0, len(view), CHUNK_BYTES):
                sock.sendall(view[offset : offset + CHUNK_BYTES])
            done = time.monotonic()
            result["ticks"] += 1
            result["lines"] += schedule.lines_in(tick)
            result["max_tick_s"] = max(result["max_tick_s"], done - due)
            if done > due + 1.0:
                result["late_ticks"] += 1
            if done > due + GIVE_UP_S:
                result["error"] = f"fell {done - due:.1f} s behind at tick {tick}"
                break
    except OSError as err:
        result["error"] = f"{type(err).__name__}: {err}"
    finally:
        if sock is not None:
            sock.close()
        times = os.times()
        result["cpu_s"] = times.user + times.system
    return result


def sender_main(
    port: int, schedule: FleetSchedule, start_mono: float, base_ts: int, out: Any
) -> None:
    """:func:`send_schedule` in a child process (a spawned one shares no GIL with the timers),
    reporting on the queue ``out``."""
    out.put(send_schedule(port, schedule, start_mono, base_ts))


@dataclass(slots=True)
class Read:
    sent: float
    """Monotonic time the request was sent."""
    status: int
    seconds: float
    size: int
    with_names: bool = False
    """A grid answer that carried the names (the first, or after they changed)."""


@dataclass
class ReadTimer:
    """Times ``GET path`` on the API at ``port`` every ``every`` seconds in a thread of its own,
    over one kept-alive connection (opened again after an error), until :meth:`stop`."""

    port: int
    path: str
    every: float
    timeout: float = 10.0
    reads: list[Read] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> ReadTimer:
        self._thread = threading.Thread(target=self._run, name=f"read {self.path}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[Read]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 5)
        return self.reads

    _named = False

    def _path(self) -> str:
        return self.path

    def _seen(self, body: bytes) -> None:
        """A 200 answer's body (for a timer that follows what it was told)."""

    def _run(self) -> None:
        connection: http.client.HTTPConnection | None = None
        next_at = time.monotonic()
        try:
            while not self._stop.is_set():
                if connection is None:
                    connection = http.client.HTTPConnection(LOOPBACK, self.port, self.timeout)
                self._named = False
                sent = time.monotonic()
                try:
                    connection.request("GET", self._path())
                    response = connection.getresponse()
                    body = response.read()
                    status = response.status
                    if status == 200:
                        self._seen(body)
                except (OSError, http.client.HTTPException):
                    connection.close()
                    connection = None
                    status, body = 0, b""
                took = time.monotonic() - sent
                self.reads.append(Read(sent, status, took, len(body), self._named))
                next_at = max(next_at + self.every, time.monotonic())
                self._stop.wait(next_at - time.monotonic())
        finally:
            if connection is not None:
                connection.close()


class GridTimer(ReadTimer):
    """Times ``/fleet/grid`` as the dashboard reads it: sending back the ``names_version`` of
    the names it holds, so each answer's size is what a refresh costs (the names themselves
    only when they changed)."""

    version: str | None = None

    def _path(self) -> str:
        return self.path if self.version is None else f"{self.path}?names={self.version}"

    def _seen(self, body: bytes) -> None:
        try:
            answer = json.loads(body)
            self.version = answer["names_version"]
        except (ValueError, KeyError, TypeError):
            self.version = None
            return
        self._named = "servers" in answer


def within(reads: list[Read], start: float, end: float) -> list[Read]:
    """The reads sent from ``start`` to ``end`` (monotonic)."""
    return [read for read in reads if start <= read.sent < end]


# -- one run against a host ---------------------------------------------------------------------
START_DELAY_S = 4.0
"""Time for a spawned sender to import and build its lines before its first tick."""
FLEET_EVERY_S = 0.25
"""A /fleet page four times a second: a few dashboards and their sort clicks."""
GRID_EVERY_S = 5.0
"""The grid as each dashboard reads it (every 5 s), holding the names it was sent."""
SETTLE_DEADLINE_S = 60.0


@dataclass
class FleetRun:
    """What :func:`run_fleet` saw."""

    schedule: FleetSchedule
    start: float
    """Monotonic time of the first tick."""
    sender: dict[str, Any]
    fleet_reads: list[Read]
    grid_reads: list[Read]
    lags: dict[int, float]
    """The aggregator's flush lag of each batch seen, by batch number."""
    batch_at_start: int
    """The number of the batch cut as the first tick was written (one a second after it)."""
    totals: dict[str, int]
    """Lines received, accepted, rejected, duplicates, and samples applied, during the run."""

    @property
    def created(self) -> float:
        return self.start + self.schedule.create_seconds

    @property
    def finished(self) -> float:
        return self.start + self.schedule.ticks

    def creating(self) -> list[Read]:
        return within(self.fleet_reads, self.start, self.created)

    def reporting(self) -> list[Read]:
        return within(self.fleet_reads, self.created, self.finished)

    def lags_creating(self) -> list[float]:
        """Lags of the batches cut from the first tick to a second after the last new name."""
        last = self.batch_at_start + self.schedule.create_seconds + 1
        return [lag for n, lag in sorted(self.lags.items()) if self.batch_at_start <= n <= last]

    def lags_reporting(self) -> list[float]:
        first = self.batch_at_start + self.schedule.create_seconds + 2
        last = self.batch_at_start + self.schedule.ticks + 1
        return [lag for n, lag in sorted(self.lags.items()) if first <= n <= last]


def _stats(host: HostUnderTest) -> dict[str, Any] | None:
    status, stats = host.get("/stats")
    return stats if status == 200 else None


def _totals(stats: dict[str, Any]) -> dict[str, int]:
    receiver, aggregator = stats["receiver"], stats["aggregator"]
    return {
        "received": receiver["received"]["graphite"],
        "accepted": receiver["accepted"]["graphite"],
        "rejected": sum(receiver["rejected"]["graphite"].values()),
        "duplicates": receiver["duplicates"],
        "applied": aggregator["applied"],
    }


def _note_lags(stats: dict[str, Any] | None, lags: dict[int, float]) -> None:
    """Add the aggregator's recent lags (it keeps the last 60), by batch number."""
    if stats is None:
        return
    aggregator = stats["aggregator"]
    newest = int(aggregator["applied_upto_batch"])
    for back, lag in enumerate(reversed(aggregator["flush_lag_recent_seconds"])):
        lags[newest - back] = float(lag)


def run_fleet(host: HostUnderTest, port: int, schedule: FleetSchedule) -> FleetRun:
    """Write ``schedule`` into the Graphite ``port`` of ``host`` from a spawned process while
    /fleet and /fleet/grid are timed, then wait until every line is taken and applied."""

    def first_batch() -> dict[str, Any] | None:
        stats = _stats(host)
        return stats if stats and stats["receiver"].get("batches") is not None else None

    stats = wait_until(first_batch, 10.0, "the first batch")
    before = _totals(stats)
    batch_zero, at_zero = int(stats["receiver"]["batches"]), time.monotonic()
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    start = time.monotonic() + START_DELAY_S
    base_ts = int(time.time() + START_DELAY_S)
    sender = context.Process(
        target=sender_main, args=(port, schedule, start, base_ts, results), daemon=True
    )
    timers = [
        ReadTimer(host.api_port, "/fleet", FLEET_EVERY_S),
        GridTimer(host.api_port, "/fleet/grid", GRID_EVERY_S),
    ]
    lags: dict[int, float] = {}
    report: dict[str, Any] | None = None
    try:
        sender.start()
        for timer in timers:
            timer.start()
        end = start + schedule.ticks + GIVE_UP_S + 30
        while report is None and time.monotonic() < end:
            try:
                report = results.get(timeout=5.0)
            except queue.Empty:
                _note_lags(_stats(host), lags)
        report = report or {"error": "no report from the sender", "lines": 0, "late_ticks": -1}

        def settled() -> dict[str, Any] | None:
            stats = _stats(host)
            if stats is None:
                return None
            totals = _totals(stats)
            taken = totals["accepted"] + totals["rejected"] + totals["duplicates"]
            done = taken - before["accepted"] - before["rejected"] - before["duplicates"]
            applied = totals["applied"] - before["applied"]
            if done >= report["lines"] and applied >= totals["accepted"] - before["accepted"]:
                return stats
            return None

        stats = wait_until(settled, SETTLE_DEADLINE_S, "every line taken and applied", 0.25)
    finally:
        reads = [timer.stop() for timer in timers]
        sender.join(timeout=10)
        if sender.is_alive():
            sender.kill()
            sender.join(timeout=10)
        results.close()
    _note_lags(stats, lags)
    totals = _totals(stats)
    return FleetRun(
        schedule=schedule,
        start=start,
        sender=report,
        fleet_reads=reads[0],
        grid_reads=reads[1],
        lags=lags,
        batch_at_start=batch_zero + math.floor(start - at_zero),
        totals={key: totals[key] - before[key] for key in totals},
    )
