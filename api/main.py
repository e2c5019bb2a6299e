"""``servertrack api``: serve the HTTP API with waitress (the default) or granian (``--http``)."""

from __future__ import annotations

import argparse
import logging
import threading
from typing import Any

import zmq

from servertrack.api.app import REQUEST_DEADLINE, create_app
from servertrack.api.backend import Backend, ZmqBackend
from servertrack.api.cache import CachedReads
from servertrack.api.exposure import FLAG as BEHIND_PROXY
from servertrack.api.exposure import granian_exposure_error
from servertrack.api.fastpath import FastReads
from servertrack.api.server import CONNECTION_LIMIT, IDLE_TIMEOUT, REQUEST_TIMEOUT, make_waitress
from servertrack.api.stats import ApiStats
from servertrack.api.store_backend import StoreBackend
from servertrack.common import endpoints
from servertrack.common.config import (
    add_option,
    add_switch,
    endpoint,
    port,
    positive_float,
    positive_int,
    setup_logging,
)
from servertrack.common.lifecycle import fatal, stop_on_signals
from servertrack.common.tokens import TokenFileError, read_token_file
from servertrack.store.options import MEMORY, add_store_options, store_password
from servertrack.store.redis_store import RedisStore

log = logging.getLogger(__name__)
SERVERS = ("waitress", "granian")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="servertrack api", description=__doc__)
    add_option(parser, "--host", "127.0.0.1", "address to listen on")
    add_option(parser, "--port", 8080, "HTTP port", port)
    add_option(
        parser,
        "--http",
        "waitress",
        "HTTP server: waitress (pure Python, every connection limit) or granian (Rust, the "
        "faster; pip install servertrack[fast])",
        choices=list(SERVERS),
    )
    add_switch(
        parser,
        BEHIND_PROXY,
        "granian: a proxy that buffers request bodies is in front, so it may listen beyond "
        "loopback (granian gives a slowly sent body no deadline)",
    )
    add_option(
        parser,
        "--workers",
        1,
        "granian: worker processes, each with its own app, caches and counters",
        positive_int,
    )
    add_option(
        parser,
        "--threads",
        64,
        "waitress worker threads (keep >= concurrent clients)",
        positive_int,
    )
    add_option(
        parser,
        "--idle-timeout",
        IDLE_TIMEOUT,
        "seconds a connection may stay open with no request before it is closed",
        positive_float,
    )
    add_option(
        parser,
        "--request-timeout",
        REQUEST_TIMEOUT,
        "seconds a request may take to arrive whole (slow-loris clients are cut after it)",
        positive_float,
    )
    add_option(
        parser,
        "--connection-limit",
        CONNECTION_LIMIT,
        "open connections at most; beyond it the longest-idle one is closed for the newcomer",
        positive_int,
    )
    add_option(
        parser,
        "--request-deadline",
        REQUEST_DEADLINE,
        "seconds a request may wait for a worker thread before it is answered 503 unworked",
        positive_float,
    )
    add_option(
        parser,
        "--receiver-control",
        None,
        f"receiver control endpoint, for records (default {endpoints.RECEIVER_CONTROL}; with a "
        "Redis --store: none, records answer 503; given alone, records go to that receiver)",
        endpoint,
    )
    add_option(
        parser,
        "--aggregator-query",
        None,
        f"aggregator query endpoint (default {endpoints.AGGREGATOR_QUERY}; with a Redis --store "
        "reads go to Redis and this gives /stats and the daemons' health)",
        endpoint,
    )
    add_option(
        parser,
        "--backend-timeout",
        0.5,
        "seconds to wait for the receiver/aggregator to take a request (503 after that)",
        positive_float,
    )
    add_option(
        parser,
        "--record-timeout",
        5.0,
        "seconds the receiver may take to confirm a record it has taken (large batches)",
        positive_float,
    )
    add_option(
        parser,
        "--token-file",
        None,
        "file whose first line is the bearer token POST requests need (default: none needed)",
    )
    add_option(
        parser,
        "--read-token-file",
        None,
        "file whose first line is the bearer token GET requests need (/health and "
        "/openapi.json stay open; default: none needed)",
    )
    add_store_options(parser, writer=False)
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
    exposure = granian_exposure_error(args.http, args.host, args.behind_buffering_proxy)
    if exposure:
        fatal(f"servertrack api: {exposure}")
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
