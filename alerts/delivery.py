"""Delivery to Alertmanager: one :class:`AlertmanagerClient` per URL, each with its own thread
and a bounded queue, POSTing JSON to ``<url>/api/v2/alerts`` as Prometheus does.

:meth:`AlertmanagerClient.send` only queues and returns at once, so an Alertmanager that is down
or slow delays alerts and never holds up the caller. The queue holds one entry per alert (its
label set): a newer state of an alert that is still waiting replaces the older one where it
stands, so a queue that waited out an outage sends each alert's latest state once. When the queue
is full the oldest entry is dropped, as Prometheus' notifier does (firing alerts are sent again
every minute, so the newest states matter most). Every drop is counted by reason:

- ``queue_full``: the queue held ``queue_limit`` other alerts;
- ``rejected``: Alertmanager refused the batch as malformed (a 4xx other than 408 and 429),
  which no retry would change;
- ``closed``: still queued when the client was closed.

Any other failure (no connection, a timeout, a 5xx, 408 or 429) is counted in ``failed`` and the
batch goes back to the head of the queue, to be tried again after a capped exponential backoff
with jitter; a success resets the backoff.

Whoever creates a client starts it (:meth:`~AlertmanagerClient.start`) and closes it
(:meth:`~AlertmanagerClient.close`); nothing starts a thread on first use.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from servertrack.common.counters import ALERT_DROP_REASONS

log = logging.getLogger(__name__)

API_PATH = "/api/v2/alerts"
QUEUE_LIMIT = 10_000
"""Alerts waiting per Alertmanager at most (Prometheus' notification queue capacity)."""
BATCH_LIMIT = 64
"""Alerts per POST at most (Prometheus' notifier sends 64 at a time)."""
TIMEOUT = 10.0
BACKOFF_FIRST = 0.5
BACKOFF_CAP = 30.0
RETRIED_STATUSES = frozenset({408, 429})
"""4xx answers that say "later", not "never"."""

AlertKey = tuple[tuple[str, str], ...]
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""Straight to the Alertmanager: no proxy from the environment (Prometheus takes none either)."""


def alertmanager_url(text: str) -> str:
    """An Alertmanager's base URL (``http://host:9093``, maybe with a path prefix); raises
    ``ValueError`` with what is wrong."""
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL, got {text!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"must have no ?query or #fragment, got {text!r}")
    return text.rstrip("/")


def base_url_argument(text: str) -> str:
    """argparse ``type=`` for an http(s) base URL (``--alertmanager``, ``--external-url``): a
    bad one stops the command (exit 2) saying what is wrong."""
    try:
        return alertmanager_url(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def backoff_delay(failures: int, first: float, cap: float, unit: float) -> float:
    """Seconds to wait after ``failures`` failures in a row: ``first``, doubling, at most
    ``cap``, then scaled by a jitter between 0.5 and 1 (``unit`` is a uniform draw in [0, 1))
    so that several hosts do not retry in step."""
    return min(cap, first * 2.0 ** (failures - 1)) * (0.5 + unit / 2)


def _key(alert: Mapping[str, Any]) -> AlertKey:
    labels = alert.get("labels") or {}
    return tuple(sorted((str(k), str(v)) for k, v in labels.items()))


class AlertmanagerClient:
    """Sends alerts to one Alertmanager from a thread of its own; see the module's text.

    ``sleep(seconds)`` waits between retries and returns True when the client is closing (by
    default it waits on the client's stop event); ``jitter()`` draws the backoff's jitter in
    [0, 1). Both are there for tests.
    """

    def __init__(
        self,
        url: str,
        *,
        queue_limit: int = QUEUE_LIMIT,
        batch_limit: int = BATCH_LIMIT,
        timeout: float = TIMEOUT,
        backoff_first: float = BACKOFF_FIRST,
        backoff_cap: float = BACKOFF_CAP,
        sleep: Callable[[float], bool] | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.url = alertmanager_url(url)
        self.endpoint = self.url + API_PATH
        self.queue_limit = queue_limit
        self.batch_limit = batch_limit
        self.timeout = timeout
        self.backoff_first = backoff_first
        self.backoff_cap = backoff_cap
        self._stop = threading.Event()
        self._sleep = sleep or self._stop.wait
        self._jitter = jitter
        self._lock = threading.Condition()
        self._queue: OrderedDict[AlertKey, dict[str, Any]] = OrderedDict()
        self._thread: threading.Thread | None = None
        self.sent = 0
        self.failed = 0
        self.dropped = dict.fromkeys(ALERT_DROP_REASONS, 0)
        self.failures_in_row = 0

    # -- the caller's side -----------------------------------------------------------------------
    def send(self, alerts: Iterable[Mapping[str, Any]]) -> None:
        """Queue ``alerts`` (Alertmanager API v2 objects) and return at once."""
        with self._lock:
            for alert in alerts:
                key = _key(alert)
                if key not in self._queue and len(self._queue) >= self.queue_limit:
                    self._queue.popitem(last=False)
                    self.dropped["queue_full"] += 1
                self._queue[key] = dict(alert)
            self._lock.notify()

    def counts(self) -> dict[str, Any]:
        """``sent``, ``failed``, ``dropped`` by reason and ``queued`` now."""
        with self._lock:
            return {
                "sent": self.sent,
                "failed": self.failed,
                "dropped": dict(self.dropped),
                "queued": len(self._queue),
            }

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("an AlertmanagerClient starts once")
        self._thread = threading.Thread(
            target=self._run, name=f"alertmanager {self.url}", daemon=True
        )
        self._thread.start()

    def close(self, timeout: float | None = None) -> None:
        """Stop the thread (a POST under way ends within its timeout) and count what is still
        queued as dropped (``closed``). Safe to call twice, or without :meth:`start`."""
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(self.timeout + 5.0 if timeout is None else timeout)
            if self._thread.is_alive():
                log.warning("the Alertmanager thread for %s did not stop in time", self.url)
                return
        with self._lock:
            self.dropped["closed"] += len(self._queue)
            self._queue.clear()

    # -- the thread ------------------------------------------------------------------------------
    def _take(self) -> list[tuple[AlertKey, dict[str, Any]]] | None:
        """The next batch (oldest first), waiting for one; None when closing."""
        with self._lock:
            while not self._queue and not self._stop.is_set():
                self._lock.wait(1.0)
            if self._stop.is_set():
                return None
            count = min(self.batch_limit, len(self._queue))
            return [self._queue.popitem(last=False) for _ in range(count)]

    def _put_back(self, batch: Sequence[tuple[AlertKey, dict[str, Any]]]) -> None:
        """A failed batch returns to the head of the queue, each alert unless a newer state of
        it came meanwhile; past the limit the oldest are dropped."""
        with self._lock:
            for key, alert in reversed(batch):
                if key not in self._queue:
                    self._queue[key] = alert
                    self._queue.move_to_end(key, last=False)
            while len(self._queue) > self.queue_limit:
                self._queue.popitem(last=False)
                self.dropped["queue_full"] += 1

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            outcome = self._post([alert for _, alert in batch])
            with self._lock:
                if outcome == "sent":
                    self.sent += len(batch)
                    self.failures_in_row = 0
                elif outcome == "rejected":
                    self.dropped["rejected"] += len(batch)
                else:
                    self.failed += 1
                    self.failures_in_row += 1
                failures = self.failures_in_row
            if outcome == "failed":
                self._put_back(batch)
                delay = backoff_delay(
                    failures, self.backoff_first, self.backoff_cap, self._jitter()
                )
                if self._sleep(delay):
                    break

    def _post(self, alerts: list[dict[str, Any]]) -> str:
        """``sent``, ``rejected`` (never worth retrying) or ``failed`` (retry later)."""
        body = json.dumps(alerts).encode()
        request = urllib.request.Request(
            self.endpoint,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with DIRECT.open(request, timeout=self.timeout) as response:
                response.read()
            return "sent"
        except urllib.error.HTTPError as err:
            detail = err.read(500).decode(errors="replace")
            err.close()
            if 400 <= err.code < 500 and err.code not in RETRIED_STATUSES:
                log.warning(
                    "%s refused %d alerts (%d): %s", self.endpoint, len(alerts), err.code, detail
                )
                return "rejected"
            log.info("%s answered %d: %s", self.endpoint, err.code, detail)
            return "failed"
        except (OSError, ValueError) as err:  # URLError, timeouts, resets, a bad status line
            log.info("%s: %s", self.endpoint, getattr(err, "reason", err))
            return "failed"


class Alertmanagers:
    """The clients of every ``--alertmanager URL``: one ``send`` reaches all of them."""

    def __init__(self, urls: Sequence[str], **options: Any) -> None:
        self.clients = [AlertmanagerClient(url, **options) for url in urls]

    def start(self) -> None:
        for client in self.clients:
            client.start()

    def close(self, timeout: float | None = None) -> None:
        """Close every client, waiting ``timeout`` seconds at most for each thread (by default
        a POST under way's timeout): a host stopping waits briefly for an Alertmanager that
        hangs, its threads die with the process."""
        for client in self.clients:
            client.close(timeout)

    def send(self, alerts: Sequence[Mapping[str, Any]]) -> None:
        if alerts:
            for client in self.clients:
                client.send(alerts)

    def stats(self) -> dict[str, Any]:
        """The delivery counters of ``/stats`` (declared in ``common/counters.py``), by URL."""
        counts = {client.url: client.counts() for client in self.clients}
        return {
            "alertmanager_sent": {url: c["sent"] for url, c in counts.items()},
            "alertmanager_failed": {url: c["failed"] for url, c in counts.items()},
            "alertmanager_dropped": {url: c["dropped"] for url, c in counts.items()},
            "alertmanager_queued": {url: c["queued"] for url, c in counts.items()},
        }
