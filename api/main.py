"""``servertrack api``: serve the HTTP API with waitress (the default) or granian (``--http``)."""

from __future__ import annotations

import argparse
import logging
import threading
from typing import Any

import zmq

from servertrack.api.app import create_app
from servertrack.api.backend import Backend, ZmqBackend
from servertrack.api.cache import CachedReads
from servertrack.api.fastpath import FastReads
from servertrack.api.server import make_waitress
from servertrack.api.settings import ApiSettings
from servertrack.api.stats import ApiStats
from servertrack.api.store_backend import StoreBackend
from servertrack.common import endpoints
from servertrack.common.config import setup_logging
from servertrack.common.lifecycle import fatal, stop_on_signals
from servertrack.common.tokens import TokenFileError, read_token_file
from servertrack.store.options import MEMORY, store_password
from servertrack.store.redis_store import RedisStore

log = logging.getLogger(__name__)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="servertrack api", description=__doc__)
    ApiSettings.add_options(parser)
    return parser


def make_backend(args: argparse.Namespace, context: zmq.Context) -> ZmqBackend | StoreBackend:
    """ZeroMQ to the host's daemons (the in-memory store), or Redis straight for reads."""
    receiver = args.receiver_control
    aggregator = args.aggregator_query
    if args.store == MEMORY:
        return ZmqBackend(
            receiver or endpoints.RECEIVER_CONTROL,
            aggregator or endpoints.AGGREGATOR_QUERY,
            args.backend_timeout,
            context,
            record_timeout=args.record_timeout,
        )
    if aggregator and not receiver:
        fatal(
            "servertrack api: with a Redis --store, --aggregator-query needs --receiver-control "
            "(a host's daemons); give neither for a read replica"
        )
    daemons = None
    if receiver:
        daemons = ZmqBackend(
            receiver, aggregator, args.backend_timeout, context, record_timeout=args.record_timeout
        )
    try:
        store = RedisStore(
            args.store,
            password=store_password(args),
            timeout=min(args.store_timeout, args.backend_timeout * 2),
        )
    except ValueError as err:
        fatal(f"servertrack api: {err}")
    return StoreBackend(store, daemons)


def read_tokens(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """The record and read tokens; exits with a message when a token file is given but unusable.

    Paths, not tokens, are passed on the command line, so ``ps`` never shows a token.
    """
    try:
        record = read_token_file(args.token_file) if args.token_file else None
        read = read_token_file(args.read_token_file) if args.read_token_file else None
    except TokenFileError as err:
        fatal(f"servertrack api: {err}")
    log.info(
        "bearer token needed for records: %s, for reads: %s",
        "yes" if record else "no",
        "yes" if read else "no",
    )
    return record, read


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def build_app(
    args: argparse.Namespace,
    context: zmq.Context,
    record_token: str | None,
    read_token: str | None,
) -> tuple[Any, Backend, ApiStats]:
    """The app over its backend, behind the read cache: what either server runs (granian builds
    it in each worker process). Over the host's daemons the cache follows the aggregator's
    generation; over Redis, the store's change counter (every host's writer raises it)."""
    backend = make_backend(args, context)
    stats = ApiStats()
    cache = CachedReads(backend, backend.generation)
    stats.include("read_cache", cache.counts)
    backend.on_close(cache.close)
    app = create_app(
        cache,
        record_token=record_token,
        read_token=read_token,
        stats=stats,
        request_deadline=args.request_deadline,
    )
    return FastReads(app, cache, read_token, args.request_deadline), backend, stats


def run(args: argparse.Namespace) -> int:
    setup_logging()
    ApiSettings.checked(args)
    record_token, read_token = read_tokens(args)
    if args.http == "granian":
        from servertrack.api import granian_server  # only when chosen: an optional extra

        return granian_server.serve(args)
    return serve_waitress(args, record_token, read_token)


def serve_waitress(
    args: argparse.Namespace, record_token: str | None, read_token: str | None
) -> int:
    context = zmq.Context()
    try:
        app, backend, stats = build_app(args, context, record_token, read_token)
        try:
            server = make_waitress(
                app,
                args.host,
                args.port,
                args.threads,
                stats,
                idle_timeout=args.idle_timeout,
                request_timeout=args.request_timeout,
                connection_limit=args.connection_limit,
            )
        except OSError as err:
            backend.close()
            fatal(f"servertrack api: cannot listen on {args.host}:{args.port}: {err.strerror}")
        stop = threading.Event()
        serving = threading.Thread(target=server.run, name="waitress", daemon=True)
        log.info("api (waitress) listening on http://%s:%s", args.host, server.effective_port)
        with stop_on_signals(stop):
            serving.start()
            while not stop.wait(0.5) and serving.is_alive():
                pass
        # Stop accepting, let in-flight requests finish, then leave the loop thread behind.
        server.stop(timeout=2)
        backend.close()
    finally:
        context.destroy(linger=0)
    return 0
