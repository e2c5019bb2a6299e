"""The one object that owns the API's read path and every thread it runs.

``api/main.py`` builds it over a backend, starts it before serving and closes it after, the way
pyzmq's authenticator thread is started and stopped: the generation source (the aggregator's
long poll or the store's change counter), the read cache's refresher and the group commit of
single records all start in :meth:`ReadPath.start` and stop in :meth:`ReadPath.close`. No data
object starts a thread on first use.
"""

from __future__ import annotations

from servertrack.api.backend import Backend, Threaded
from servertrack.api.cache import CachedReads
from servertrack.readmodel.answers import Answer
from servertrack.readmodel.errors import CorruptKey


class ReadPath:
    """The backend, the read cache in front of its server reads, and the threads of both."""

    def __init__(self, backend: Backend, cache: CachedReads | None = None) -> None:
        self.backend = backend
        self.cache = cache or CachedReads(backend)
        self._threads: list[Threaded] = [*backend.threads(), self.cache]
        self._started: list[Threaded] = []

    def start(self) -> None:
        for part in self._threads:
            part.start()
            self._started.append(part)

    def view(self, name: str, deadline: float | None = None) -> Answer | CorruptKey | None:
        """A server's answer, from the cache when it may serve it."""
        return self.cache.view(name, deadline)

    def peek(self, name: str) -> Answer | None:
        """A server's answer if the cache may serve it now, without asking anyone."""
        return self.cache.peek(name)

    def close(self) -> None:
        """Stop every thread (the last started first), then close the backend's sockets."""
        while self._started:
            self._started.pop().close()
        self.cache.close()
        self.backend.close()
