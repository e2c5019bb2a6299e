"""The API process's own counters (the ``api`` section of ``/stats``), shared by its threads.

They count what never reaches the receiver: records refused by the API itself (by reason, as
source ``http``), requests dropped because their client had gone, and connections the HTTP server
closed. A lock guards them; each update holds it for a dictionary increment.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import psutil

from servertrack.common.limits import FileShortage, out_of_files


class ApiStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rejected: Counter[str] = Counter()
        self._closed: Counter[str] = Counter()
        self._abandoned = 0
        self._prometheus: Counter[str] = Counter()
        self._process = psutil.Process()
        self.files = FileShortage("api")
        """Times the API ran out of file descriptors (its own lock; logged as they happen)."""
        self._sources: dict[str, Callable[[], Any]] = {}

    def include(self, key: str, source: Callable[[], Any]) -> None:
        """Report ``source()`` under ``key`` (counters kept elsewhere, such as the read
        cache's, which count without this lock)."""
        self._sources[key] = source

    def rejected(self, reason: str, samples: int = 1) -> None:
        """``samples`` records refused for ``reason`` (all the items of a refused batch)."""
        with self._lock:
            self._rejected[reason] += samples

    def prometheus_rejected(self, reason: str) -> None:
        """A scrape of ``/metrics/servers`` or a remote read refused for ``reason``."""
        with self._lock:
            self._prometheus[reason] += 1

    def abandoned(self) -> None:
        with self._lock:
            self._abandoned += 1

    def connection_closed(self, reason: str) -> None:
        with self._lock:
            self._closed[reason] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            section: dict[str, Any] = {
                "rejected": dict(self._rejected),
                "requests_abandoned": self._abandoned,
                "connections_closed": dict(self._closed),
                "prometheus_rejected": dict(self._prometheus),
            }
        section["files_exhausted"] = self.files.count
        for key, source in self._sources.items():
            section[key] = source()
        try:
            section["rss_bytes"] = int(self._process.memory_info().rss)
        except (psutil.Error, OSError) as err:  # /proc unreadable: leave it out
            if out_of_files(err):
                self.files.note("reading its memory use", err)
        return section
