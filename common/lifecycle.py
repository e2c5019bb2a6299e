"""Daemon lifecycle helpers: signal handlers that only set a flag, a deadline schedule, the exit
code that tells a supervisor not to restart, an exclusive lock file, a probe for a port in use,
and children that die with their parent."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, NoReturn

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Each stops a daemon cleanly: a terminal hang-up (SIGHUP to the process group) included."""
EXIT_CONFIG = 78
"""``EX_CONFIG``: the daemon cannot run as configured (a port in use, a lock held elsewhere).
``servertrack run`` does not restart a child that exits with it; it stops the host instead."""
PR_SET_PDEATHSIG = 1


def fatal(message: str) -> NoReturn:
    """Print ``message`` to stderr and leave with ``EXIT_CONFIG`` (no traceback)."""
    print(message, file=sys.stderr, flush=True)
    raise SystemExit(EXIT_CONFIG)


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[threading.Event]:
    """Set ``stop`` on SIGINT, SIGTERM and SIGHUP for the duration; restore the old handlers
    afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {}
    for signum in STOP_SIGNALS:
        previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def die_with_parent() -> None:
    """In a child before ``exec`` (``preexec_fn``): the kernel sends it SIGTERM when the process
    that started it dies, even by ``kill -9``, so no child outlives its supervisor (Linux)."""
    import ctypes  # only in the supervisor's children, before exec

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() == 1:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)


def port_unavailable(host: str, number: int) -> str | None:
    """Why nothing can listen on ``host`` (an address, ``*`` for every one) and TCP port
    ``number`` now, in the system's words, or None when something can.

    It binds a socket with ``SO_REUSEADDR``, as the servers do, and closes it at once: checked
    before anything starts, a port in use stops a command with a message rather than a child
    that fails to listen."""
    address = "0.0.0.0" if host == "*" else host.strip("[]")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((address, number))
    except OSError as err:
        return err.strerror or str(err)
    return None


class LockHeld(OSError):
    """Another process holds the lock."""


def hold_lock(path: str | os.PathLike[str], what: str) -> IO[str]:
    """Take an exclusive lock on ``path`` for as long as the returned file stays open.

    The holder's pid is written into the file, so the message for a second process names it.
    Raises :class:`LockHeld` when another process holds it.
    """
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    handle = file.open("a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        if err.errno in (errno.EAGAIN, errno.EACCES):
            raise LockHeld(f"{what} {file.parent} is in use by process {holder}") from None
        raise
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


class Ticker:
    """A drift-free schedule on the monotonic clock that skips missed ticks instead of bursting."""

    def __init__(self, interval: float, monotonic: Callable[[], float] | None = None) -> None:
        self.interval = interval
        self.monotonic = monotonic or time.monotonic
        self.deadline = self.monotonic() + interval

    def remaining(self) -> float:
        return max(0.0, self.deadline - self.monotonic())

    def due(self) -> bool:
        """True once per tick; moves the deadline past now."""
        now = self.monotonic()
        if now < self.deadline:
            return False
        missed = int((now - self.deadline) // self.interval)
        self.deadline += (missed + 1) * self.interval
        return True
