"""The forwarder's loop: reads the API when a window is due, queues its points, keeps the sink
written, and keeps count. The window arithmetic (:mod:`.windows`), the point arithmetic
(:mod:`.points`) and the queue (:class:`.sink.PointQueue`) have no I/O; this loop owns the clocks,
the API connections, the sink's socket and the state file.

Fresh answers only: every answer must be as of the newest window's end or later (``as_of``),
whatever cache stands between the store and this process. An answer that is not is read again,
after a short pause, and counted; one still behind after ``rereads`` tries fails the read.

Exactly once: ``--state`` holds the end of the last window handled, and it is written (atomically)
*before* that window's points are queued. After a crash or a restart nothing is sent twice and
timestamps only increase; the price is that points still queued when the process ends are lost.
At SIGTERM the sink gets a short drain; what it does not take is counted as ``dropped``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Protocol

from servertrack.common.buckets import iso_utc
from servertrack.forward.points import (
    MalformedAnswer,
    WindowCollector,
    WindowPoints,
    answer_time,
    window_points,
)
from servertrack.forward.sink import GraphiteSink, LineBatch
from servertrack.forward.source import SourceError
from servertrack.forward.state_file import StateFile
from servertrack.forward.windows import Plan, Schedule, align_up, oldest_readable, scale_of

log = logging.getLogger(__name__)

API_RETRY = 30.0
"""Seconds before a failed read of the API (down, 503, unusable answer) is tried again."""
DRAIN = 5.0
"""Seconds the sink gets at exit to take what is queued."""
FLUSH_BUDGET = 1.0
REPORT_EVERY = 3600.0
MAX_SLEEP = 1.0
"""Longest wait between two looks at the stop flag and the wall clock."""
REREAD_PAUSE = 0.5
"""Seconds before answers older than the window's end are read again: the API's read cache
serves an answer one batch old for at most 0.5 s."""
REREADS = 10
"""Times such answers are read again before the read fails (``stale_answer``)."""


class Source(Protocol):
    def servers(self) -> list[tuple[str, float | None]]: ...

    def loads(self, names: list[str], stop: threading.Event | None = None) -> dict[str, Any]: ...

    def close(self) -> None: ...


@dataclass(slots=True)
class ForwardConfig:
    interval: int = 300
    grace: int = 15
    backfill: int | None = None
    prefix: str = "servertrack"
    servers: str = "*"
    anomaly: bool = False
    """Also send each scored minute's ``cpu_anomaly`` and ``ram_anomaly``."""
    api_retry: float = API_RETRY
    reread_pause: float = REREAD_PAUSE
    rereads: int = REREADS
    drain: float = DRAIN
    report_every: float = REPORT_EVERY


@dataclass(slots=True)
class Counters:
    windows_sent: int = 0
    """Windows whose points were all written to the sink."""
    windows_empty: int = 0
    """Complete windows without samples: nothing to send."""
    windows_dropped: int = 0
    """Windows of which some points were dropped (queue full, or still queued at exit)."""
    skipped: int = 0
    """Windows never read: older than --backfill (or the API's buckets) when their turn came."""
    points_sent: int = 0
    answers_reread: int = 0
    """Server answers read again because they were older than the newest window's end."""
    api_errors: dict[str, int] = field(default_factory=dict)
    state_errors: int = 0
    shared_names: int = 0
    """Window series that pooled several servers with the same sanitised name."""


@dataclass(slots=True)
class InFlight:
    servers: int
    points: int


class Forwarder:
    def __init__(
        self,
        config: ForwardConfig,
        source: Source,
        sink: GraphiteSink,
        state: StateFile | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        stop: threading.Event | None = None,
    ) -> None:
        self.config = config
        self.source = source
        self.sink = sink
        self.queue = sink.queue
        self.state = state
        self.clock = clock
        self.monotonic = monotonic
        self.stop = stop or threading.Event()
        done_until = state.load() if state is not None else None
        if done_until is not None:
            done_until = self._not_ahead(done_until, clock(), config.interval)
        self.schedule = Schedule(config.interval, config.grace, config.backfill, done_until)
        self.counters = Counters()
        self.in_flight: dict[int, InFlight] = {}
        self.retry_at = float("-inf")
        self.next_report = monotonic() + config.report_every

    def _not_ahead(self, done_until: int, now: float, interval: int) -> int:
        """``done_until``, or the end of the window in progress when the state file says windows
        were handled beyond it (written while the clock ran ahead). Kept as it is, nothing would
        be sent until the clock caught up with it, maybe for days; so the forwarder resumes
        from now: the first window sent is the one starting at the end of the window in
        progress, and nothing the file counts as handled is sent again."""
        if done_until <= now:
            return done_until
        resumed = min(done_until, align_up(now, interval))
        log.warning(
            "state file %s says windows up to %s were handled, %.0f s ahead of this clock (was "
            "the clock ahead when it was written?); resuming from now: the first window sent "
            "starts at %s (the sink may hold points stamped later)",
            self.state.path if self.state is not None else "",
            iso_utc(done_until),
            done_until - now,
            iso_utc(resumed),
        )
        return resumed

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> None:
        """Until ``stop`` is set; then drain, close and log the counters."""
        done = self.schedule.done_until
        log.info(
            "forwarding %s every %d s to %s as %s.*; %s",
            getattr(self.source, "url", "the API"),
            self.config.interval,
            self.sink.target,
            self.config.prefix,
            f"windows before {iso_utc(done)} already handled"
            if done is not None
            else f"no earlier state: starting {self.schedule.backfill} s back",
        )
        try:
            while not self.stop.is_set():
                self.stop.wait(min(self.step(), MAX_SLEEP))
        finally:
            self.shutdown()

    def step(self) -> float:
        """One pass: read and queue what is due, write to the sink, report. Returns the seconds
        until there is something to do again."""
        now = self.clock()
        if self.monotonic() >= self.retry_at and self.schedule.next_due(now) <= now:
            self._tick(now)
        self.sink.flush(FLUSH_BUDGET)
        self._settle(self.queue.take_finished())
        mono = self.monotonic()
        if mono >= self.next_report:
            self.report("counters")
            self.next_report = mono + self.config.report_every
        now = self.clock()
        waits = [
            max(self.schedule.next_due(now) - now, self.retry_at - mono),
            self.next_report - mono,
        ]
        wakeup = self.sink.wakeup()
        if wakeup is not None:
            waits.append(wakeup - mono)
        return max(0.0, min(waits))

    def shutdown(self) -> None:
        dropped = self.sink.drain(self.config.drain)
        self._settle(self.queue.take_finished())
        if dropped:
            log.warning("%d points still queued at exit were dropped", dropped)
        self.source.close()
        self.report("counters at exit")

    # -- reading and queueing -------------------------------------------------------------------
    def _tick(self, now: float) -> None:
        plan = self.schedule.plan(now)
        if plan.done_until is None:
            return
        if self.schedule.done_until is None:
            # First run: from here on, windows that fall out of --backfill before they could be
            # read (the API down from the start) are counted as skipped too.
            self.schedule.done_until = plan.windows[0]
        late = 0
        windows: list[WindowPoints] = []
        if plan.windows:
            try:
                windows, late = self._read(plan)
            except (SourceError, MalformedAnswer) as err:
                self._api_failed(err.reason, str(err), plan)
                return
        if self.state is not None:
            try:
                self.state.save(plan.done_until)
            except OSError as err:
                self.counters.state_errors += 1
                self.retry_at = self.monotonic() + self.config.api_retry
                log.error("cannot write the state file (%s); nothing sent, retrying", err)
                return
        self.schedule.commit(plan)
        self._note_skipped(plan, late)
        for window in windows:
            self._queue(window)

    def _read(self, plan: Plan) -> tuple[list[WindowPoints], int]:
        first = plan.windows[0]
        names = [
            name
            for name, seen in self.source.servers()
            if fnmatchcase(name, self.config.servers) and (seen is None or seen >= first)
        ]
        answers = self._fresh_loads(names, plan.windows[-1] + self.config.interval)
        oldest = oldest_readable(self.clock(), self.config.interval)
        readable = [t for t in plan.windows if t >= oldest]
        collector = WindowCollector(
            readable, self.config.interval, scale_of(self.config.interval), self.config.anomaly
        )
        for name, view in answers.items():
            collector.add(name, view)
        scores = collector.anomaly or {}
        windows = [
            window_points(t, collector.windows[t], self.config.prefix, scores.get(t))
            for t in readable
        ]
        return windows, len(plan.windows) - len(readable)

    def _fresh_loads(self, names: list[str], until: int) -> dict[str, Any]:
        """Each server's answer, as of ``until`` or later: answers older than that are read
        again (a server that vanished meanwhile is left out)."""
        answers = self.source.loads(names, self.stop)
        for tries in range(self.config.rereads + 1):
            behind = [name for name, view in answers.items() if answer_time(name, view) < until]
            if not behind:
                return answers
            if tries == self.config.rereads:
                break
            self.counters.answers_reread += len(behind)
            log.info(
                "%d answers older than %s (e.g. %s): reading them again",
                len(behind),
                iso_utc(until),
                behind[0],
            )
            if self.stop.wait(self.config.reread_pause):
                raise SourceError("stopped", "stopping")
            again = self.source.loads(behind, self.stop)
            for name in behind:
                if name in again:
                    answers[name] = again[name]
                else:
                    del answers[name]
        raise SourceError(
            "stale_answer",
            f"{len(behind)} answers still older than {iso_utc(until)} after "
            f"{self.config.rereads} reads again (e.g. {behind[0]})",
        )

    def _api_failed(self, reason: str, message: str, plan: Plan) -> None:
        errors = self.counters.api_errors
        errors[reason] = errors.get(reason, 0) + 1
        self.retry_at = self.monotonic() + self.config.api_retry
        if reason != "stopped":
            log.warning(
                "cannot read the API (%s); window %s and after read again in %.0f s",
                message,
                iso_utc(plan.windows[0]),
                self.config.api_retry,
            )

    def _note_skipped(self, plan: Plan, late: int) -> None:
        if plan.skipped:
            self.counters.skipped += plan.skipped
            assert plan.skipped_from is not None
            log.warning(
                "skipped %d windows from %s: older than --backfill (%d s) when their turn came",
                plan.skipped,
                iso_utc(plan.skipped_from),
                self.schedule.backfill,
            )
        if late:
            self.counters.skipped += late
            log.warning(
                "skipped %d windows from %s: their buckets left the API's window during the read",
                late,
                iso_utc(plan.windows[0]),
            )

    def _queue(self, window: WindowPoints) -> None:
        stamp = iso_utc(window.t)
        for name, members in window.shared_names.items():
            self.counters.shared_names += 1
            log.warning("window %s: servers %s are pooled in series %s", stamp, members, name)
        if not window.lines:
            self.counters.windows_empty += 1
            log.info("window %s: no samples, nothing to send", stamp)
            return
        self.in_flight[window.t] = InFlight(window.servers, len(window.lines))
        self.queue.put(window.t, window.lines)

    def _settle(self, finished: list[LineBatch]) -> None:
        for batch in finished:
            info = self.in_flight.pop(batch.tag, InFlight(0, len(batch.lines)))
            self.counters.points_sent += batch.written
            stamp = iso_utc(batch.tag)
            if batch.dropped:
                self.counters.windows_dropped += 1
                log.warning(
                    "window %s: %d of %d points sent, %d dropped (%d queue full, %d at exit)",
                    stamp,
                    batch.written,
                    info.points,
                    batch.dropped,
                    batch.dropped_full,
                    batch.dropped_exit,
                )
            else:
                self.counters.windows_sent += 1
                log.info("window %s: %d points sent (%d servers)", stamp, info.points, info.servers)

    # -- counters -------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Every counter, the sink's and the queue's included."""
        counters = asdict(self.counters)
        sink = self.sink.counters
        return {
            "windows_sent": counters.pop("windows_sent"),
            "points_sent": counters.pop("points_sent"),
            "reconnects": sink.reconnects,
            "dropped": self.queue.dropped_full + self.queue.dropped_exit,
            "skipped": counters.pop("skipped"),
            "dropped_queue_full": self.queue.dropped_full,
            "dropped_at_exit": self.queue.dropped_exit,
            "queued": self.queue.size,
            **counters,
            "connect_failures": sink.connect_failures,
            "write_failures": sink.write_failures,
            "peer_closed": sink.peer_closed,
        }

    def report(self, label: str) -> None:
        text = " ".join(
            f"{key}={value}" if not isinstance(value, dict) else f"{key}={_inline(value)}"
            for key, value in self.snapshot().items()
        )
        log.info("%s: %s", label, text)


def _inline(counts: dict[str, int]) -> str:
    return ",".join(f"{key}:{value}" for key, value in sorted(counts.items())) or "0"
