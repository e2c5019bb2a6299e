"""Group commit of single records: the records that request threads hand in while one trip to the
receiver is under way go together in the next one, each with its own verdict.

One thread owns the receiver socket. It takes every record waiting, sends them as one
``record_each`` request (``[[fqdn, ts, cpu, ram], ...]``) and hands each waiting request the
receiver's verdict for its own record: accepted, duplicate, or the reason it was refused. A request
is answered 202 only once the receiver has its record, as before; one client's bad record refuses
nobody else's. Nothing is delayed on purpose: when the receiver answers quickly each group holds
one record, and under load groups grow by themselves (the records that arrived during the
previous trip).

PERF: at 64 connections single POSTs went from one receiver round trip per request (about 3,500
req/s on waitress here, the receiver mostly busy sending replies) to one per group of tens of
records (see ``bench/results``).
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from servertrack.common import rpc
from servertrack.common.limits import out_of_files
from servertrack.common.rpc import Unavailable
from servertrack.common.sample import Sample

log = logging.getLogger(__name__)
MAX_GROUP = 2048
"""Records per trip at most (about 80 KB of msgpack)."""


class _Waiting:
    """One request's record and, once the trip is over, its verdict or the error."""

    __slots__ = ("cause", "done", "error", "row", "verdict")

    def __init__(self, row: list[Any]) -> None:
        self.row = row
        self.verdict: Any = None
        self.error: str | None = None
        self.cause: BaseException | None = None
        """The exception behind ``error``, if any (raised from, so a handler can tell)."""
        self.done = threading.Lock()
        self.done.acquire()  # released by the committer: a lock is the cheapest one-shot signal


class GroupCommit:
    """Hands single records to the receiver in groups; :meth:`record` blocks until its verdict."""

    def __init__(self, client: rpc.RpcClient, wait: float) -> None:
        self.client = client
        self.wait = wait
        """Seconds a request waits for its verdict (the receiver's timeouts and a margin)."""
        self._queue: queue.SimpleQueue[_Waiting | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.trips = 0
        self.records = 0

    def record(self, sample: Sample) -> dict[str, Any]:
        """The receiver's verdict on one sample, shaped like a ``record`` reply."""
        if self._thread is None:
            raise Unavailable("single records are not taken yet: the group commit is not started")
        waiting = _Waiting([sample.fqdn, sample.ts, sample.cpu, sample.ram])
        self._queue.put(waiting)
        if not waiting.done.acquire(timeout=self.wait):
            raise Unavailable(
                f"{self.client.endpoint} did not confirm the record within {self.wait:.1f} s; "
                "it may still have been applied"
            )
        if waiting.error is not None:
            raise Unavailable(waiting.error) from waiting.cause
        verdict = waiting.verdict
        if verdict is None:
            return {"accepted": 1, "duplicates": 0}
        if verdict == "duplicate":
            return {"accepted": 0, "duplicates": 1}
        if isinstance(verdict, dict):  # the receiver refused the request as a whole
            return verdict
        return {"error": str(verdict), "index": None}

    def start(self) -> None:
        """Start the thread that sends the groups (its owner does, once)."""
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        take = self._queue.get
        take_now = self._queue.get_nowait
        try:
            while True:
                first = take()
                if first is None:
                    return
                group = [first]
                stop = False
                while len(group) < MAX_GROUP:
                    try:
                        more = take_now()
                    except queue.Empty:
                        break
                    if more is None:
                        stop = True
                        break
                    group.append(more)
                self._send(group)
                if stop:
                    return
        finally:
            self.client.close()

    def _send(self, group: list[_Waiting]) -> None:
        self.trips += 1
        self.records += len(group)
        error = None
        cause: BaseException | None = None
        verdicts: Any = None
        try:
            reply = self.client.call({"op": "record_each", "samples": [w.row for w in group]})
            verdicts = reply.get("verdicts") if isinstance(reply, dict) else None
            if not isinstance(verdicts, list) or len(verdicts) != len(group):
                verdicts = [reply] * len(group) if isinstance(reply, dict) else None
                if verdicts is None:
                    error = "the receiver answered a record with something unreadable"
        except Unavailable as err:
            error = str(err)
        except Exception as err:  # never leave a request waiting on a thread that died
            if not out_of_files(err):  # that one is counted and logged by the app
                log.exception("group commit failed")
            error, cause = f"record failed: {err}", err
        for index, waiting in enumerate(group):
            if error is None:
                waiting.verdict = verdicts[index]
            else:
                waiting.error, waiting.cause = error, cause
            waiting.done.release()

    def close(self) -> None:
        """Send what is queued, stop the thread and close the receiver socket; safe to call
        twice, or without a start."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is None:
            self.client.close()
            return
        self._queue.put(None)
        thread.join(timeout=self.wait + 1)
