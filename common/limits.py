"""Limits that bound memory and open files, shared by the daemons that enforce them, and the one
way a daemon meets its open-files limit: counted and logged, never a crash."""

from __future__ import annotations

import contextlib
import errno
import logging
import resource
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

DEFAULT_MAX_SERVERS = 250_000
"""Server names tracked at most: about 2 GB of aggregator memory and 0.5 GB of receiver memory."""
DEFAULT_DEDUP_LIMIT = 1_000_000
"""(server, ts) keys of seq-less samples remembered for de-duplication, about 150 MB."""
OUT_OF_FILES = frozenset({errno.EMFILE, errno.ENFILE})
"""``Too many open files`` (this process's limit) and ``Too many open files in system``."""
LOG_EVERY = 60.0
"""Seconds between two warnings about running out of files (a client can cause them at will)."""


def raise_open_files_limit(wanted: int) -> int:
    """Raise this process's soft limit of open files towards ``wanted`` (up to the hard limit);
    returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft


def out_of_files(err: BaseException | None) -> bool:
    """Whether ``err``, or an error it was raised from or during, is EMFILE or ENFILE: an
    ``OSError``, a ``zmq.ZMQError`` (which carries the errno too), or a library's own error
    wrapping one (redis-py's ``ConnectionError``)."""
    for _ in range(8):  # a chain is short; a cycle must not loop forever
        if err is None:
            return False
        if getattr(err, "errno", None) in OUT_OF_FILES:
            return True
        err = err.__cause__ or err.__context__
    return False


class FileShortage:
    """Counts the times a daemon ran out of file descriptors and carried on without the one it
    wanted (the connection not accepted, the snapshot not written, the memory figure not read),
    and logs a warning at most once a minute. Safe to share between threads."""

    def __init__(self, daemon: str, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.daemon = daemon
        self.monotonic = monotonic
        self.count = 0
        self._logged = float("-inf")
        self._lock = threading.Lock()

    def note(self, doing: str, err: BaseException) -> None:
        """``err`` (EMFILE or ENFILE) stopped ``doing``; count it, and log it now and then."""
        with self._lock:
            self.count += 1
            now = self.monotonic()
            if now - self._logged < LOG_EVERY:
                return
            self._logged = now
            count = self.count
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        log.warning(
            "%s out of file descriptors (limit %d) %s: %s; carrying on (%d times so far, logged "
            "at most once a minute; files_exhausted in /stats counts them all)",
            self.daemon,
            soft,
            doing,
            err,
            count,
        )
