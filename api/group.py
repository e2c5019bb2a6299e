"""Group commit of single records: the records that request threads hand in while one trip to the
receiver is under way go together in the next one, each with its own verdict.

One thread owns the receiver socket. It takes every record waiting, sends them as one
``record_each`` request (``[[fqdn, ts, cpu, ram], ...]``) and hands each waiting request the
receiver's verdict for its own record: accepted, duplicate, or the reason it was refused. A request
is answered 202 only once the receiver has its record, as before; one client's bad record refuses
nobody else's. Nothing is delayed on purpose: when the receiver answers quickly each group holds
one record, and under load groups grow by themselves (the records that arrived during the
previous trip).

Hand-overs: a request appends its row to the group being gathered (under a lock held for the
append) and waits on that group's one gate, a lock; the committer takes the whole group, makes
the trip, and opens the gate once; each request let through opens it for the next. So the
committer wakes a group with one release, not one per record, and no queue sits between them.

PERF: at 64 connections single POSTs went from one receiver round trip per request (about 3,500
req/s on waitress here, the receiver mostly busy sending replies) to one per group of tens of
records (see ``bench/results``). The one gate a group took the CPU of a record's hand-overs from
14.5 to 8.8 us in process with 64 threads (an instant receiver; 14.2 to 11.8 us with a 0.3 ms
trip) against a queue and a lock a record; over HTTP on granian the two were alike within the
noise. Either way the wait itself is what a single POST costs most: a sleeping request thread
woken and winning the GIL back is 4 to 5 context switches and 40 to 50 us of the worker's CPU
(``python -m bench.post_limits``).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from servertrack.common import rpc
from servertrack.common.limits import out_of_files
from servertrack.common.rpc import Unavailable
from servertrack.common.sample import Sample

log = logging.getLogger(__name__)
MAX_GROUP = 2048
"""Records per trip at most (about 80 KB of msgpack); a larger group makes several trips."""


class _Group:
    """The rows gathered for one trip and, once it is over, their verdicts or the error."""

    __slots__ = ("cause", "error", "gate", "rows", "verdicts")

    def __init__(self) -> None:
        self.rows: list[list[Any]] = []
        self.verdicts: list[Any] = []
        self.error: str | None = None
        self.cause: BaseException | None = None
        """The exception behind ``error``, if any (raised from, so a handler can tell)."""
        self.gate = threading.Lock()
        self.gate.acquire()  # opened by the committer once the verdicts are in


class GroupCommit:
    """Hands single records to the receiver in groups; :meth:`record` blocks until its verdict."""

    def __init__(self, client: rpc.RpcClient, wait: float) -> None:
        self.client = client
        self.wait = wait
        """Seconds a request waits for its verdict (the receiver's timeouts and a margin)."""
        self._lock = threading.Lock()
        """Guards the group being gathered, the thread and whether it is closed."""
        self._gathering = _Group()
        self._ready = threading.Lock()
        """Opened by the first record of each group: the committer takes a group once it is."""
        self._ready.acquire()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.trips = 0
        self.records = 0

    def record(self, sample: Sample) -> dict[str, Any]:
        """The receiver's verdict on one sample, shaped like a ``record`` reply."""
        row = [sample.fqdn, sample.ts, sample.cpu, sample.ram]
        with self._lock:
            if self._thread is None or self._closed:
                raise Unavailable(
                    "single records are not taken: the group commit is not started, or closed"
                )
            group = self._gathering
            index = len(group.rows)
            group.rows.append(row)
            if index == 0:
                self._ready.release()  # the committer took the group before: it is closed
        if not group.gate.acquire(timeout=self.wait):
            raise Unavailable(
                f"{self.client.endpoint} did not confirm the record within {self.wait:.1f} s; "
                "it may still have been applied"
            )
        group.gate.release()  # the next request of the group
        if group.error is not None:
            raise Unavailable(group.error) from group.cause
        verdict = group.verdicts[index]
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
        try:
            while True:
                self._ready.acquire()
                with self._lock:
                    group, self._gathering = self._gathering, _Group()
                    last = self._closed  # no record is taken after: this group is the last
                if group.rows:
                    self._send(group)
                if last:
                    return
        finally:
            self.client.close()

    def _send(self, group: _Group) -> None:
        try:
            for start in range(0, len(group.rows), MAX_GROUP):
                group.verdicts += self._trip(group.rows[start : start + MAX_GROUP])
        except Unavailable as err:
            group.error = str(err)
        except Exception as err:  # never leave a request waiting on a thread that died
            if not out_of_files(err):  # that one is counted and logged by the app
                log.exception("group commit failed")
            group.error, group.cause = f"record failed: {err}", err
        group.gate.release()

    def _trip(self, rows: list[list[Any]]) -> list[Any]:
        """The receiver's verdict on each of ``rows``, in one ``record_each`` trip."""
        self.trips += 1
        self.records += len(rows)
        reply = self.client.call({"op": "record_each", "samples": rows})
        verdicts = reply.get("verdicts") if isinstance(reply, dict) else None
        if isinstance(verdicts, list) and len(verdicts) == len(rows):
            return verdicts
        if isinstance(reply, dict):  # the receiver refused the request as a whole
            return [reply] * len(rows)
        raise Unavailable("the receiver answered a record with something unreadable")

    def close(self) -> None:
        """Send what is gathered, stop the thread and close the receiver socket; safe to call
        twice, or without a start."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            if thread is not None and not self._gathering.rows:
                self._ready.release()  # else the group's first record did
        if thread is None:
            self.client.close()
            return
        thread.join(timeout=self.wait + 1)
