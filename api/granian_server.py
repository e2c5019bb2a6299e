"""``servertrack api --http granian``: the same app on granian (Rust, hyper) instead of waitress.

Granian runs WSGI apps in worker processes that import a target, so the app is built there:
``servertrack api`` checks its flags and token files, puts its settings into the environment
(``SERVERTRACK_API_WORKER``, JSON: paths and numbers, never a token) and hands over to granian;
each worker calls :func:`worker_app`, which reads them back, reads the token files and builds the
app with :func:`servertrack.api.assembly.build_app` over its own ZeroMQ context, and starts its
read path.

What bounds clients here (measured with the same 300 + 300 slow-loris test as waitress):
- ``--request-timeout``: hyper's header read timeout. A request's headers must arrive within it,
  and a connection waiting for its next request is closed after it too (hyper starts the timer
  as soon as the connection waits), so ``--idle-timeout`` is not used;
- ``--connection-limit``: granian's backpressure, connections served at once per worker. Unlike
  waitress nobody is evicted: a newcomer beyond it waits in the listen backlog until a connection
  closes, which the header timeout bounds;
- ``--threads``: Python threads per worker running the app; requests beyond them wait in Rust,
  where a waiting connection costs no thread;
- bodies: :class:`servertrack.api.bodies.BodySlots` reads each ``POST`` body whole in one of
  ``--threads`` / 2 body slots before the app runs (a chunked one up to one byte past the 4 MiB
  limit, so it is refused 413 as on waitress); a ``POST`` that finds every slot taken is
  answered 503 at once. Granian gives a body no time limit, and a WSGI read cannot be given one,
  so a client trickling a body holds its slot until it finishes or leaves; the threads outside
  the slots keep answering everything else. Hence beyond loopback granian listens only with
  ``--behind-buffering-proxy`` (:mod:`servertrack.api.exposure`).
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
from typing import Any

import zmq

from servertrack.api.assembly import build_app
from servertrack.api.bodies import BodySlots, slots_for
from servertrack.common.lifecycle import die_with_parent, fatal, port_unavailable
from servertrack.common.limits import raise_open_files_limit
from servertrack.common.tokens import read_token_file

log = logging.getLogger(__name__)
CONFIG_VARIABLE = "SERVERTRACK_API_WORKER"
"""Where ``servertrack api`` leaves its settings for granian's worker processes."""
TARGET = "servertrack.api.granian_server:worker_app"
BACKLOG = 2048


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """The flags a worker needs, as JSON-safe values (token file paths, not tokens)."""
    keys = (
        "receiver_control",
        "aggregator_query",
        "threads",
        "backend_timeout",
        "record_timeout",
        "request_deadline",
        "token_file",
        "read_token_file",
        "store",
        "store_password_file",
        "store_timeout",
    )
    return {key: getattr(args, key) for key in keys}


def serve(args: argparse.Namespace) -> int:
    """Run granian until SIGTERM or SIGINT (it stops its workers, letting requests finish)."""
    try:
        import granian  # noqa: F401
    except ImportError:
        fatal("servertrack api: --http granian needs granian: pip install 'servertrack[fast]'")
    taken = port_unavailable(args.host, args.port)  # before granian starts its workers
    if taken:
        fatal(f"servertrack api: cannot listen on {args.host}:{args.port}: {taken}")
    raise_open_files_limit(args.connection_limit + 256)
    os.environ[CONFIG_VARIABLE] = json.dumps(settings_of(args))
    server = make_granian(
        TARGET,
        args.host,
        args.port,
        workers=args.workers,
        threads=args.threads,
        connection_limit=args.connection_limit,
        request_timeout=args.request_timeout,
    )
    server.signal_handler_reload = server.signal_handler_interrupt  # SIGHUP stops, as elsewhere
    log.info("api (granian, %d worker(s)) on http://%s:%s", args.workers, args.host, args.port)
    server.serve()
    return 0


def make_granian(
    target: str,
    host: str,
    port: int,
    workers: int = 1,
    threads: int = 64,
    connection_limit: int = 1000,
    request_timeout: float = 10.0,
) -> Any:
    """A granian server for the WSGI app ``target`` ("module:factory") with the settings the
    module docstring describes (not yet serving: call ``serve()``, which blocks)."""
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings
    from granian.server import Server

    server = Server(
        target,
        address=host,
        port=port,
        interface=Interfaces.WSGI,
        factory=True,
        workers=workers,
        blocking_threads=threads,
        backpressure=connection_limit,
        backlog=BACKLOG,
        http=HTTPModes.http1,
        websockets=False,
        http1_settings=HTTP1Settings(
            header_read_timeout=int(request_timeout * 1000), keep_alive=True
        ),
        log_access=False,
        workers_kill_timeout=5,
    )
    logging.getLogger("_granian").addFilter(_ExpectedThreads())
    return server


class _ExpectedThreads(logging.Filter):
    """Drops granian's warning that many app threads are configured: they are meant to be (a
    request waiting for the receiver holds its thread while doing no work)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Python threads" not in record.getMessage()


def worker_app() -> Any:
    """Granian's factory target: the app, built in a worker process from the settings that
    ``servertrack api`` put in the environment."""
    die_with_parent()  # a worker must not outlive an API killed with -9
    settings = json.loads(os.environ[CONFIG_VARIABLE])
    args = argparse.Namespace(**settings)
    record = read_token_file(args.token_file) if args.token_file else None
    read = read_token_file(args.read_token_file) if args.read_token_file else None
    app, reads, stats = build_app(args, zmq.Context(), record, read)
    reads.start()
    atexit.register(reads.close)  # granian gives a WSGI worker no stop hook of its own
    return BodySlots(app, slots_for(args.threads), stats, app.admission)
