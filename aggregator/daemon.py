"""The aggregator daemon: the sockets, the poll loop and the snapshot writer around one
:class:`~servertrack.aggregator.state.AggregatorState`.

One thread owns the state; it polls the batch socket and the query socket in turn, so no lock is
ever taken. Batches come first: every batch waiting is applied before queries are answered, and
queries are answered for at most ``QUERY_BUDGET`` seconds at a time, so no read load can hold up
ingest. A query whose client has given up (its deadline passed) is skipped unanswered.
"""

from __future__ import annotations

import concurrent.futures
import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import zmq

from servertrack.aggregator.alerts_file import AlertsFile
from servertrack.aggregator.rollups import Rollups
from servertrack.aggregator.snapshot import read_snapshot, write_snapshot
from servertrack.aggregator.state import AggregatorState
from servertrack.aggregator.store import RollupStore
from servertrack.alerts.delivery import Alertmanagers
from servertrack.alerts.evaluate import DEFAULT_EXTERNAL_URL, DEFAULT_INTERVAL, AlertEvaluator
from servertrack.alerts.rules import Rule
from servertrack.anomaly import STANDARD_THRESHOLD
from servertrack.common import endpoints, rpc
from servertrack.common.batch import Batch, MalformedBatch
from servertrack.common.buckets import MINUTE, Clock
from servertrack.common.gc_pause import gc_paused
from servertrack.common.lifecycle import Ticker
from servertrack.common.limits import FileShortage, out_of_files
from servertrack.readmodel.errors import StoreUnavailable

log = logging.getLogger(__name__)
MAX_BATCH_BYTES = 512 * 2**20
"""Largest batch message accepted: a second of 10M samples at 36 bytes each."""
REPLAY_PAUSE = 2.0
"""Seconds between two replay requests while a batch is missing."""
BATCHES_PER_WAKE = 16
QUERY_BUDGET = 0.05
"""Seconds of queries answered before the batch socket is looked at again."""
SLICE_QUERY_BUDGET = 0.01
"""The same between two slices of a large batch."""
STORE_BACKOFF_MAX = 5.0
"""Longest pause between two attempts to reach an unavailable store."""
STOP_FLUSH_WAIT = 30.0
"""Seconds a stop waits for the write in progress before the last one (then it gives up: the
receiver still holds those batches and sends them again to the next aggregator)."""
WRITER_NICENESS = 10
"""The snapshot writer yields the processor to the daemons: for 250,000 servers it spends
seconds on a file of 1.3 GB, and on 2 cores it took them from the receiver and the aggregator
(pages waited past the API's timeout at each snapshot)."""
TURN_MARGIN = 1.0
"""Seconds kept free between a snapshot writer's expected end and the next minute turn."""
WATCH_HOLD = 0.25
"""Seconds a ``watch`` is held at most before it is answered anyway: the API's heartbeat, by which
it knows within a second that the aggregator stopped answering (its read cache then stops)."""
MAX_WATCHERS = 256
"""Watches held at once; beyond it a watch is answered at once."""
ALERTS_STOP_WAIT = 2.0
"""Seconds a stop waits for each Alertmanager's thread (a POST to one that hangs takes up to its
10-s timeout, beyond the host's grace): what it had not sent is sent again after the restart."""
EXIT_OUT_OF_FILES = 3
"""A snapshot child's exit code when it ran out of file descriptors (so the parent counts it)."""


@dataclass(slots=True)
class AggregatorConfig:
    batches: str = endpoints.AGGREGATOR_BATCHES
    query: str = endpoints.AGGREGATOR_QUERY
    receiver_control: str = endpoints.RECEIVER_CONTROL
    receiver_timeout: float = 1.0
    snapshot: str | None = None
    snapshot_interval: float = 30.0
    max_servers: int | None = None
    store_flush: float = 1.0
    """Seconds between two writes of what the store holds back (Redis); nothing in memory."""
    rules: tuple[Rule, ...] = ()
    """The alert rules evaluated (none: no evaluation)."""
    rules_interval: float = DEFAULT_INTERVAL
    alertmanagers: tuple[str, ...] = ()
    external_url: str = DEFAULT_EXTERNAL_URL
    alerts_state: str | None = None
    """Where the alert state is kept when there is no snapshot to keep it in (a Redis store)."""


class AggregatorDaemon:
    """Owns the sockets and the schedule around one :class:`AggregatorState`."""

    def __init__(
        self,
        config: AggregatorConfig,
        store: RollupStore | None = None,
        context: zmq.SyncContext | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.config = config
        self.clock = clock
        evaluator = AlertEvaluator(
            config.rules,
            interval=config.rules_interval,
            external_url=config.external_url,
            anomaly_threshold=STANDARD_THRESHOLD,
        )
        self.state = AggregatorState(
            store if store is not None else Rollups(clock, max_servers=config.max_servers),
            clock,
            alerts=evaluator,
        )
        self.alertmanagers = Alertmanagers(config.alertmanagers)
        """One sending thread per Alertmanager: started by :meth:`run`, closed when it ends."""
        self.state.delivery_stats = self.alertmanagers.stats
        self.alerts_file = (
            AlertsFile(config.alerts_state) if config.alerts_state and not config.snapshot else None
        )
        """The alert state's own file, when no snapshot carries it."""
        self._alerts_saved: bytes | None = None
        self.context = context or zmq.Context.instance()
        self.stop = threading.Event()
        self.replay_asked = float("-inf")
        self._query: zmq.SyncSocket | None = None
        self._process = psutil.Process()
        self.files = FileShortage("aggregator")
        self._writer_pid = 0
        self._writer_pipe = -1
        self._writer_taken = 0.0
        self._writer_began = 0.0
        self.writer_seconds = 0.0
        """How long the last snapshot writer ran (monotonic seconds)."""
        self._snapshot_due = False
        self.store_retry_at = float("-inf")
        self.store_backoff = 0.0
        self.store_down = False
        self._flusher: concurrent.futures.ThreadPoolExecutor | None = None
        self._scorer: concurrent.futures.ThreadPoolExecutor | None = None
        """Redis mode: the thread that scores the fleet's minutes while this host holds the
        lease (reading and writing Redis), so the loop never waits for it."""
        self._scoring: concurrent.futures.Future[int] | None = None
        self._scoring_job: Callable[[float], Callable[[], int] | None] | None = None
        self._flush: tuple[object, concurrent.futures.Future[object], float] | None = None
        self._watchers: list[tuple[list[bytes], int, float]] = []
        """Held ``watch`` requests: envelope, the generation they know, when they came."""
        self.receiver = rpc.RpcClient(
            self.context, config.receiver_control, config.receiver_timeout
        )

    @property
    def store(self) -> RollupStore:
        return self.state.store

    def run(self) -> None:
        self.restore()
        self.restore_alerts()
        self.alertmanagers.start()
        if self.store.writes_behind:  # the writer thread, started here and stopped at the end
            self._flusher = concurrent.futures.ThreadPoolExecutor(1, "store-writer")
        self._scoring_job = getattr(self.store, "scoring_job", None)
        if self._scoring_job is not None:  # the scorer thread, likewise
            self._scorer = concurrent.futures.ThreadPoolExecutor(1, "anomaly-scorer")
            self.state.scores_behind = True
        pull = self.context.socket(zmq.PULL)
        query = None
        try:
            pull.setsockopt(zmq.LINGER, 0)
            pull.setsockopt(zmq.RCVHWM, 8)
            pull.setsockopt(zmq.MAXMSGSIZE, MAX_BATCH_BYTES)
            rpc.bind(pull, self.config.batches)
            query = rpc.bind_router(self.context, self.config.query)
            log.info(
                "aggregator ready: batches on %s, queries on %s",
                self.config.batches,
                self.config.query,
            )
            self.ask_replay()
            self._loop(pull, query)
        finally:
            self.save_snapshot(wait=True)
            self.save_alerts()
            self.alertmanagers.close(ALERTS_STOP_WAIT)
            self.finish_store()  # a clean stop leaves nothing held (the receiver keeps copies)
            if self._scorer is not None:
                self._scorer.shutdown(wait=True, cancel_futures=True)
                self.release_scoring()
            self.receiver.close()
            for sock in (pull, query):
                if sock is not None:
                    sock.close(linger=0)
            log.info("aggregator stopped")

    def _loop(self, pull: zmq.SyncSocket, query: zmq.SyncSocket) -> None:
        self._query = query
        poller = zmq.Poller()
        poller.register(pull, zmq.POLLIN)
        poller.register(query, zmq.POLLIN)
        snapshots = Ticker(self.config.snapshot_interval)
        second = Ticker(1.0)
        flushes = Ticker(self.config.store_flush)
        rules = Ticker(self.config.rules_interval)
        while not self.stop.is_set():
            try:
                self._turn(poller, pull, query, snapshots, second, flushes, rules)
            except (OSError, zmq.ZMQError) as err:
                if not out_of_files(err):
                    raise
                self.out_of_files("in its loop", err)  # what needs no new descriptor goes on
                self.stop.wait(0.01)

    def _turn(
        self,
        poller: zmq.Poller,
        pull: zmq.SyncSocket,
        query: zmq.SyncSocket,
        snapshots: Ticker,
        second: Ticker,
        flushes: Ticker,
        rules: Ticker,
    ) -> None:
        """One wake-up of the loop: the schedule's work, then batches, then queries."""
        self.reap_flush()
        if flushes.due() and time.monotonic() >= self.store_retry_at:
            self.start_flush()
        if snapshots.due():
            self._snapshot_due = True
        if self._snapshot_due and not self.minute_turns_soon():
            self._snapshot_due = False
            self.save_snapshot()
        self.reap_scoring()
        if second.due():
            self.read_memory()
            self.state.housekeeping(self.clock())
            self.start_scoring()
        if rules.due():
            self.evaluate_alerts()
        self.reap_snapshot()
        if self.state.ledger.missing() and time.monotonic() - self.replay_asked > REPLAY_PAUSE:
            self.ask_replay()
        ready = dict(poller.poll(timeout=200))
        if pull in ready:
            for _ in range(BATCHES_PER_WAKE):
                try:
                    frames = pull.recv_multipart(zmq.NOBLOCK, copy=True)
                except zmq.Again:
                    break
                self.handle_batch(frames)
        if query in ready:
            self.serve_queries(QUERY_BUDGET)
        self.answer_watchers()

    # -- alerts -------------------------------------------------------------------------------
    def evaluate_alerts(self) -> None:
        """Evaluate every rule over every server and hand what is due to the Alertmanagers'
        queues (it returns at once: their threads send). Not before a batch was applied since
        start: until then the data is as old as the snapshot, and every server would look
        silent. A store out of reach skips this evaluation (nothing is resolved for it)."""
        if not self.state.last_batch_applied:
            return
        try:
            due = self.state.evaluate_alerts(self.clock())
        except StoreUnavailable as err:
            log.warning("alerts not evaluated: %s", err)
            return
        except Exception:  # a failed evaluation must never stop the aggregator
            log.exception("alert evaluation failed")
            return
        self.alertmanagers.send(due)
        self.save_alerts()

    def restore_alerts(self) -> None:
        """Go on from the alert state's own file (with a snapshot, :meth:`restore` did)."""
        if self.alerts_file is None:
            return
        try:
            data = self.alerts_file.load()
        except OSError as err:
            log.error("alert state %s not read (%s); alerts start afresh", self.alerts_file, err)
            return
        if data is None:
            return
        why = self.state.restore_alerts(data)
        if why is not None:
            log.error(
                "alert state %s is unreadable (%s); alerts start afresh", self.alerts_file, why
            )
        self._alerts_saved = data

    def save_alerts(self) -> None:
        """Write the alert state to its own file when it changed."""
        if self.alerts_file is None:
            return
        data = self.state.alerts.to_bytes()
        if data == self._alerts_saved:
            return
        try:
            self.alerts_file.save(data)
        except OSError as err:
            if out_of_files(err):
                self.out_of_files("writing the alert state", err)
            log.error("alert state not written to %s: %s", self.alerts_file, err)
            return
        self._alerts_saved = data

    def out_of_files(self, doing: str, err: BaseException) -> None:
        """Count and log a shortage of file descriptors (``files_exhausted`` in /stats)."""
        self.files.note(doing, err)
        self.state.counters["files_exhausted"] = self.files.count

    def read_memory(self) -> None:
        """Resident memory, read from /proc (an open file); out of descriptors, the last one."""
        try:
            self.state.rss_bytes = int(self._process.memory_info().rss)
        except OSError as err:  # psutil lets EMFILE through as it is
            if not out_of_files(err):
                raise
            self.out_of_files("reading its memory use", err)

    def serve_queries(self, budget: float) -> None:
        """Answer the queries waiting now, for at most ``budget`` seconds."""
        query = self._query
        if query is None:
            return
        end = time.monotonic() + budget
        while time.monotonic() < end and query.poll(0, zmq.POLLIN):
            rpc.serve_one(query, self._answer, self._hold_watch)

    def _hold_watch(self, request: object, envelope: list[bytes]) -> bool:
        """Keep a ``watch`` that knows the current generation until it changes (long poll)."""
        if not isinstance(request, dict) or request.get("op") != "watch":
            return False
        if request.get("after") != self.state.generation or len(self._watchers) >= MAX_WATCHERS:
            return False  # answered at once
        self._watchers.append((envelope, self.state.generation, time.monotonic()))
        return True

    def answer_watchers(self) -> None:
        """Answer the held watches whose generation is gone, or that waited ``WATCH_HOLD``."""
        if not self._watchers or self._query is None:
            return
        now = time.monotonic()
        generation = self.state.generation
        keep = []
        for held in self._watchers:
            envelope, known, since = held
            if known != generation or now - since >= WATCH_HOLD:
                rpc.reply(self._query, envelope, self.state.watch_reply())
            else:
                keep.append(held)
        self._watchers = keep

    def _answer(self, request: object) -> bytes | None:
        return self.state.answer(request, self.clock(), time.time())

    def start_flush(self) -> None:
        """Hand what the store holds back to the writer thread (one write at a time), so that
        queries are answered while Redis takes it."""
        if self._flush is not None:
            return
        job = self.state.take_flush(self.clock())
        if job is None:
            return
        if self._flusher is None:  # a store that holds batches back has a writer from the start
            raise RuntimeError("the store holds batches back but the writer thread is not running")
        self._flush = (job, self._flusher.submit(job.run), time.monotonic())

    def reap_flush(self, wait: float = 0.0) -> bool:
        """Count the write in progress once it is over (waiting up to ``wait`` seconds); False
        while it still runs."""
        if self._flush is None:
            return True
        job, future, began = self._flush
        if not future.done():
            concurrent.futures.wait([future], timeout=wait)
            if not future.done():
                return False
        self._flush = None
        error = future.exception()
        self.state.settle_flush(job, error, time.monotonic() - began)
        self._store_answered(error)
        return True

    def start_scoring(self) -> None:
        """Hand the scoring of the minute due (if any) to the scorer thread, one at a time."""
        if self._scorer is None or self._scoring_job is None or self._scoring is not None:
            return
        job: Callable[[], int] | None = self._scoring_job(self.clock())
        if job is not None:
            self._scoring = self._scorer.submit(job)

    def release_scoring(self) -> None:
        """At stop, the scorer thread done: give the anomaly scoring lease back (Redis mode), so
        a planned restart does not pause the scoring for the lease's length."""
        release: Callable[[], bool] | None = getattr(self.store, "release_scoring", None)
        if release is None:
            return
        try:
            release()
        except StoreUnavailable as err:
            log.warning("could not give the anomaly scoring lease back (%s); it expires", err)

    def reap_scoring(self) -> None:
        """Count the scoring turn once it is over; a turn Redis did not answer is counted and
        tried again at the next second."""
        if self._scoring is None or not self._scoring.done():
            return
        future, self._scoring = self._scoring, None
        error = future.exception()
        if error is not None:
            if not isinstance(error, StoreUnavailable):
                log.error("anomaly scoring failed", exc_info=error)
            self.state.scoring_failed(error)
        elif self.state.scoring_done(future.result()):
            self.state.generation += 1

    def finish_store(self) -> None:
        """At stop: the write in progress, then one last write of what came in meanwhile."""
        if not self.reap_flush(wait=STOP_FLUSH_WAIT):
            log.error("the store write did not finish within %s s; leaving it", STOP_FLUSH_WAIT)
        else:
            try:
                self.state.flush_store(self.clock())
            except Exception as err:
                self._store_answered(err)
        if self._flusher is not None:
            self._flusher.shutdown(wait=False)

    def _store_answered(self, error: BaseException | None) -> None:
        """After a write: when it failed, keep everything and try again after a pause that
        doubles up to ``STORE_BACKOFF_MAX``."""
        if error is not None:
            if out_of_files(error):
                self.out_of_files("connecting to the store", error)
            self.store_backoff = min(STORE_BACKOFF_MAX, max(0.5, 2 * self.store_backoff))
            self.store_retry_at = time.monotonic() + self.store_backoff
            if not isinstance(error, StoreUnavailable):
                log.error("the store write failed", exc_info=error)
            elif not self.store_down:
                log.error("the store does not answer (%s); holding batches, retrying", error)
            self.store_down = True
            return
        if self.store_down:
            log.info("the store answers again")
        self.store_down, self.store_backoff = False, 0.0

    def handle_batch(self, frames: list[bytes]) -> None:
        try:
            with gc_paused():  # a batch announcing many new servers is many small objects
                batch = Batch.decode(frames)
        except MalformedBatch as err:
            self.state.malformed_batch()
            log.warning("dropped malformed batch: %s", err)
            return
        try:
            for _ in self.state.learn_in_slices(batch):
                self.serve_queries(SLICE_QUERY_BUDGET)
                self.answer_watchers()
            if self.state.holds_unknown_ids(batch):
                self._fetch_names()
            for _ in self.state.apply_in_slices(batch, self.clock()):
                self.serve_queries(SLICE_QUERY_BUDGET)
                self.answer_watchers()  # heartbeats go on through a long batch
            self.answer_watchers()
        except Exception:  # a bad batch must never stop the aggregator
            self.state.batch_error()
            log.exception("could not apply batch %d", batch.number)

    def _fetch_names(self) -> None:
        try:
            reply = self.receiver.call({"op": "names"})
        except (rpc.Unavailable, zmq.ZMQError) as err:
            if out_of_files(err):
                self.out_of_files("asking the receiver for names", err)
            log.warning("cannot fetch server names: %s", err)
            return
        self.state.learn_names(reply.get("epoch"), [(int(i), str(n)) for i, n in reply["names"]])

    # -- recovery -----------------------------------------------------------------------------
    def ask_replay(self) -> None:
        """Ask the receiver to send again every retained batch after the last one applied."""
        self.replay_asked = time.monotonic()
        try:
            reply = self.receiver.call(self.state.replay_request())
        except (rpc.Unavailable, zmq.ZMQError) as err:
            if out_of_files(err):
                self.out_of_files("asking the receiver for a replay", err)
            log.warning("cannot ask for a replay: %s", err)
            return
        self.state.replay_answered(reply)

    def save_snapshot(self, wait: bool = False) -> None:
        """Write a snapshot from a forked child, as Redis' BGSAVE does: the child sees the
        rollups frozen at the fork (copy-on-write) and writes them while this process goes on,
        so a large fleet's file (~5 KB a server) holds up neither batches nor queries. The child
        touches no socket, reports a failure through a pipe and leaves with ``os._exit``.
        ``wait`` writes in this process instead (at shutdown)."""
        path = self.config.snapshot
        if not path:
            return
        self.reap_snapshot(block=wait)
        if self._writer_pid:
            return  # the previous one is still being written
        arrays = self.store.snapshot()
        if arrays is None:
            return  # the store keeps its data itself
        taken = self.clock()
        if wait:
            try:
                size = write_snapshot(path, arrays, self.state.snapshot_meta(taken))
            except OSError as err:
                if out_of_files(err):
                    self.out_of_files("writing a snapshot", err)
                self._snapshot_failed(describe(err, path))
                return
            self.state.snapshot_written(taken)
            log.info("snapshot of %d servers written (%d bytes)", self.store.server_count(), size)
            return
        try:
            read_end, write_end = os.pipe()
        except OSError as err:
            if out_of_files(err):
                self.out_of_files("starting a snapshot", err)
            self._snapshot_failed(describe(err, path))
            return
        pid = os.fork()
        if pid == 0:  # the child: write and leave at once, running no cleanup of the parent's
            code = 1
            try:
                os.close(read_end)
                os.nice(WRITER_NICENESS)
                # The bookkeeping is gathered here too: for 250,000 servers it takes seconds,
                # which the parent would spend holding up batches and queries.
                write_snapshot(path, arrays, self.state.snapshot_meta(taken))
                code = 0
            except BaseException as err:
                if out_of_files(err):
                    code = EXIT_OUT_OF_FILES
                os.write(write_end, describe(err, path).encode()[:4096])
            finally:
                os._exit(code)
        os.close(write_end)
        self._writer_pid, self._writer_pipe, self._writer_taken = pid, read_end, taken
        self._writer_began = time.monotonic()
        self.state.shared = True

    def minute_turns_soon(self) -> bool:
        """Whether the minute would turn before a snapshot writer started now is done (as long
        as the last one ran, plus ``TURN_MARGIN``). A new minute empties a column of every
        server's buckets, so with a writer alive every page of the rollups would be copied at
        once (0.95 s at 250,000 servers): the snapshot waits for the turn instead (never when
        a writer takes most of a minute)."""
        needed = self.writer_seconds + TURN_MARGIN
        left = MINUTE - self.clock() % MINUTE
        return needed < MINUTE / 2 and left < needed

    def reap_snapshot(self, block: bool = False) -> None:
        """Collect a finished snapshot child and note its outcome."""
        if not self._writer_pid:
            return
        pid, status = os.waitpid(self._writer_pid, 0 if block else os.WNOHANG)
        if pid == 0:
            return
        with os.fdopen(self._writer_pipe, "rb") as pipe:
            why = pipe.read().decode(errors="replace")
        self._writer_pid, self._writer_pipe = 0, -1
        self.writer_seconds = time.monotonic() - self._writer_began
        self.state.shared = False
        code = os.waitstatus_to_exitcode(status)
        if code == 0:
            self.state.snapshot_written(self._writer_taken)
            return
        if code == EXIT_OUT_OF_FILES:
            self.out_of_files("writing a snapshot", OSError(errno.EMFILE, why))
        self._snapshot_failed(why or f"the writer exited with status {status}")

    def _snapshot_failed(self, why: str) -> None:
        self.state.snapshot_failed(why)
        log.error("snapshot not written: %s", why)

    def restore(self) -> None:
        """Load the snapshot, if any. One that cannot be read is moved aside (never deleted),
        logged and counted, and the aggregator starts empty: the receiver then re-sends every
        batch it still holds."""
        path = self.config.snapshot
        if not path:
            return
        try:
            loaded = read_snapshot(path)
            if loaded is None:
                return
            alerts_unreadable = self.state.restore(*loaded)
        except Exception as err:  # any unreadable file: truncated, corrupt, foreign
            try:
                aside: Path | str = quarantine(Path(path))
            except OSError as move_err:
                aside = f"nowhere ({move_err})"
            self.state.snapshot_quarantined()
            log.error(
                "snapshot %s is unreadable (%s: %s); moved to %s, starting without it",
                path,
                type(err).__name__,
                err,
                aside,
            )
            return
        if alerts_unreadable is not None:
            log.error(
                "the snapshot's alert state is unreadable (%s); alerts start afresh",
                alerts_unreadable,
            )
        log.info(
            "restored %d servers from %s (taken %.1f s ago), applied up to batch %d",
            self.store.server_count(),
            path,
            self.clock() - self.state.snapshot_taken,
            self.state.ledger.applied_upto,
        )


def describe(err: BaseException, path: str) -> str:
    """``[Errno 13] Permission denied: '/x/.aggregator.npz.k3j9'`` style text, with the path."""
    if isinstance(err, OSError):
        where = err.filename or path
        return f"{err.strerror or err} (errno {err.errno}) writing {where}"
    return f"{type(err).__name__}: {err} writing {path}"


def quarantine(path: Path) -> Path:
    """Rename an unreadable snapshot to ``<name>.unreadable-<n>`` beside it and return the name."""
    for number in range(1, 1000):
        aside = path.with_name(f"{path.name}.unreadable-{number}")
        if not aside.exists():
            os.replace(path, aside)
            return aside
    raise OSError(f"too many unreadable snapshots beside {path}")
